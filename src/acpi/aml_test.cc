#include "acpi/aml.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>

#include "acpi/bytes.h"
#include "acpi/iasl_test_util.h"

namespace clonevm::acpi::aml {
namespace {

using ::testing::ElementsAre;

Bytes Str(std::string_view s) { return Bytes(s.begin(), s.end()); }

Bytes Cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Decodes a PkgLength: returns {encoded value, number of bytes it occupies}.
std::pair<size_t, size_t> DecodePkgLength(const Bytes& b) {
  const size_t follow = b[0] >> 6;
  if (follow == 0) return {b[0] & 0x3F, 1};
  size_t value = b[0] & 0x0F;
  for (size_t i = 0; i < follow; ++i) value |= size_t{b[1 + i]} << (4 + 8 * i);
  return {value, 1 + follow};
}

TEST(AmlPkgLengthTest, PicksTheShortestEncodingAtEveryBoundary) {
  struct Case {
    size_t content;
    size_t bytes;
  };
  // The encoded value includes the PkgLength bytes: 1 byte up to 63, 2 up to 4095 (12 bits),
  // 3 up to 2^20 - 1, 4 up to 2^28 - 1.
  const Case cases[] = {
      {0, 1},    {62, 1},      {63, 2},      {64, 2},      {4093, 2},     {4094, 3},      {4095, 3},
      {4096, 3}, {0xFFFFC, 3}, {0xFFFFD, 4}, {0xFFFFF, 4}, {0x100000, 4}, {0xFFFFFFB, 4},
  };
  for (const Case& c : cases) {
    const Bytes encoded = PkgLength(c.content);
    ASSERT_EQ(encoded.size(), c.bytes) << "content " << c.content;
    const auto [value, used] = DecodePkgLength(encoded);
    EXPECT_EQ(used, c.bytes);
    EXPECT_EQ(value, c.content + c.bytes) << "content " << c.content;
    if (c.bytes > 1) {
      EXPECT_EQ(encoded[0] & 0x30, 0) << "reserved bits must be zero";
    }
  }
}

TEST(AmlPkgLengthTest, KnownEncodings) {
  EXPECT_THAT(PkgLength(0), ElementsAre(0x01));
  EXPECT_THAT(PkgLength(62), ElementsAre(0x3F));
  EXPECT_THAT(PkgLength(63), ElementsAre(0x41, 0x04));                     // 65 = 0x041
  EXPECT_THAT(PkgLength(4093), ElementsAre(0x4F, 0xFF));                   // 4095 = 0xFFF
  EXPECT_THAT(PkgLength(4094), ElementsAre(0x81, 0x00, 0x01));             // 4097 = 0x1001
  EXPECT_THAT(PkgLength(0xFFFFFFB), ElementsAre(0xCF, 0xFF, 0xFF, 0xFF));  // 2^28 - 1
}

TEST(AmlPkgLengthTest, RoundTripsEverySizeUpTo70000) {
  for (size_t content = 0; content < 70000; ++content) {
    const Bytes encoded = PkgLength(content);
    const auto [value, used] = DecodePkgLength(encoded);
    ASSERT_EQ(used, encoded.size());
    ASSERT_EQ(value, content + used) << content;
  }
}

TEST(AmlIntegerTest, PicksTheShortestPrefix) {
  EXPECT_THAT(Integer(0).bytes, ElementsAre(0x00));             // ZeroOp
  EXPECT_THAT(Integer(1).bytes, ElementsAre(0x01));             // OneOp
  EXPECT_THAT(Integer(~uint64_t{0}).bytes, ElementsAre(0xFF));  // OnesOp
  EXPECT_THAT(Integer(2).bytes, ElementsAre(0x0A, 0x02));
  EXPECT_THAT(Integer(0xFF).bytes, ElementsAre(0x0A, 0xFF));
  EXPECT_THAT(Integer(0x100).bytes, ElementsAre(0x0B, 0x00, 0x01));
  EXPECT_THAT(Integer(0xFFFF).bytes, ElementsAre(0x0B, 0xFF, 0xFF));
  EXPECT_THAT(Integer(0x10000).bytes, ElementsAre(0x0C, 0x00, 0x00, 0x01, 0x00));
  EXPECT_THAT(Integer(0xFFFFFFFF).bytes, ElementsAre(0x0C, 0xFF, 0xFF, 0xFF, 0xFF));
  EXPECT_THAT(Integer(0x100000000).bytes, ElementsAre(0x0E, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00));
  EXPECT_THAT(Integer(0xFFFFFFFFFFFFFFFE).bytes, ElementsAre(0x0E, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF));
}

TEST(AmlNameTest, PadsSegmentsAndEncodesPrefixes) {
  EXPECT_EQ(NameSeg("_SB"), Str("_SB_"));
  EXPECT_EQ(NameSeg("COM1"), Str("COM1"));
  EXPECT_EQ(NameSeg("A"), Str("A___"));
  EXPECT_EQ(NameString("ADDR"), Str("ADDR"));
  EXPECT_EQ(NameString("\\_SB"), Str("\\_SB_"));
  EXPECT_EQ(NameString("\\_SB.COM1"), Cat({Str("\\"), {0x2E}, Str("_SB_COM1")}));
  EXPECT_EQ(NameString("_SB.PCI0.S08"), Cat({{0x2F, 0x03}, Str("_SB_PCI0S08_")}));
  EXPECT_EQ(NameString("^^FOO"), Str("^^FOO_"));
  EXPECT_EQ(NameString("\\"), Cat({Str("\\"), {0x00}}));
}

TEST(AmlEisaIdTest, CompressesVendorAndProduct) {
  EXPECT_THAT(EisaId("PNP0501").bytes, ElementsAre(0x0C, 0x41, 0xD0, 0x05, 0x01));  // 0x0105D041
  EXPECT_THAT(EisaId("PNP0A03").bytes, ElementsAre(0x0C, 0x41, 0xD0, 0x0A, 0x03));
  EXPECT_THAT(EisaId("PNP0C0C").bytes, ElementsAre(0x0C, 0x41, 0xD0, 0x0C, 0x0C));
  // 'Q'=17 'E'=5 'M'=13: 0b0_10001_00101_01101 = 0x44AD.
  EXPECT_THAT(EisaId("QEM0002").bytes, ElementsAre(0x0C, 0x44, 0xAD, 0x00, 0x02));
}

TEST(AmlDataTest, StringBufferPackage) {
  EXPECT_THAT(String("COM1").bytes, ElementsAre(0x0D, 'C', 'O', 'M', '1', 0x00));
  EXPECT_THAT(String("").bytes, ElementsAre(0x0D, 0x00));
  const uint8_t data[] = {0xAA, 0xBB};
  // BufferOp, PkgLength 5, BufferSize (BytePrefix 2), bytes.
  EXPECT_THAT(Buffer(data).bytes, ElementsAre(0x11, 0x05, 0x0A, 0x02, 0xAA, 0xBB));
  EXPECT_THAT(Package({Integer(5), Integer(0)}).bytes, ElementsAre(0x12, 0x05, 0x02, 0x0A, 0x05, 0x00));
}

TEST(AmlObjectTest, NameScopeDeviceMethodReturn) {
  EXPECT_EQ(Name("_UID", Integer(0)).bytes, Cat({{0x08}, Str("_UID"), {0x00}}));
  EXPECT_EQ(Device("COM1", {Name("_UID", Integer(0))}).bytes,
            Cat({{0x5B, 0x82, 0x0B}, Str("COM1"), {0x08}, Str("_UID"), {0x00}}));
  EXPECT_EQ(Scope("\\_SB", {}).bytes, Cat({{0x10, 0x06}, Str("\\_SB_")}));
  // MethodOp, PkgLength, name, flags (1 arg | serialized), ReturnOp Arg0.
  EXPECT_EQ(Method("_EVT", 1, Serialize::kSerialized, {Return(Arg(0))}).bytes,
            Cat({{0x14, 0x08}, Str("_EVT"), {0x09, 0xA4, 0x68}}));
  EXPECT_EQ(Method("_STA", 0, Serialize::kNotSerialized, {}).bytes, Cat({{0x14, 0x06}, Str("_STA"), {0x00}}));
  EXPECT_EQ(If(Equal(Arg(0), Integer(16)), {Notify(Path("\\_SB.VGEN"), Integer(0x80))}).bytes,
            Cat({{0xA0, 0x12, 0x93, 0x68, 0x0A, 0x10, 0x86, '\\', 0x2E}, Str("_SB_VGEN"), {0x0A, 0x80}}));
}

TEST(AmlResourceTest, SmallDescriptors) {
  EXPECT_THAT(Io(0x3F8, 0x3F8, 1, 8).bytes, ElementsAre(0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08));
  EXPECT_THAT(IrqNoFlags(4).bytes, ElementsAre(0x22, 0x10, 0x00));
  EXPECT_THAT(IrqNoFlags(12).bytes, ElementsAre(0x22, 0x00, 0x10));
}

TEST(AmlResourceTest, Memory32FixedAndInterrupt) {
  EXPECT_THAT(Memory32Fixed(Access::kReadWrite, 0xD0000000, 0x1000).bytes,
              ElementsAre(0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xD0, 0x00, 0x10, 0x00, 0x00));
  EXPECT_THAT(Interrupt(Usage::kConsumer, Trigger::kEdge, Polarity::kActiveHigh, Sharing::kExclusive, {16}).bytes,
              ElementsAre(0x89, 0x06, 0x00, 0x03, 0x01, 0x10, 0x00, 0x00, 0x00));
  EXPECT_THAT(Interrupt(Usage::kProducer, Trigger::kLevel, Polarity::kActiveLow, Sharing::kShared, {5, 0x123456}).bytes,
              ElementsAre(0x89, 0x0A, 0x00, 0x0C, 0x02, 0x05, 0x00, 0x00, 0x00, 0x56, 0x34, 0x12, 0x00));
}

TEST(AmlResourceTest, AddressSpaceWindows) {
  // The same bytes iasl emits for WordBusNumber (ResourceProducer, MinFixed, MaxFixed,
  // PosDecode, 0, 0, 0xFF, 0, 0x100).
  EXPECT_THAT(
      WordBusNumber(Usage::kProducer, 0, 0xFF).bytes,
      ElementsAre(0x88, 0x0D, 0x00, 0x02, 0x0C, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0x00, 0x00, 0x00, 0x00, 0x01));
  // WordIO (..., EntireRange, 0, 0, 0xCF7, 0, 0xCF8).
  EXPECT_THAT(WordIo(Usage::kProducer, 0, 0xCF7).bytes, ElementsAre(0x88, 0x0D, 0x00, 0x01, 0x0C, 0x03, 0x00, 0x00,
                                                                    0x00, 0x00, 0xF7, 0x0C, 0x00, 0x00, 0xF8, 0x0C));
  const Bytes dword =
      DWordMemory(Usage::kProducer, Cacheability::kNonCacheable, Access::kReadWrite, 0xC0000000, 0xFEBFFFFF).bytes;
  ASSERT_EQ(dword.size(), 26u);
  EXPECT_THAT(std::span(dword).first(6), ElementsAre(0x87, 0x17, 0x00, 0x00, 0x0C, 0x01));
  const Bytes qword =
      QWordMemory(Usage::kConsumer, Cacheability::kPrefetchable, Access::kReadOnly, 0x100000000, 0x1FFFFFFFF).bytes;
  ASSERT_EQ(qword.size(), 46u);
  EXPECT_THAT(std::span(qword).first(6), ElementsAre(0x8A, 0x2B, 0x00, 0x00, 0x0D, 0x06));
  uint64_t length;
  std::memcpy(&length, qword.data() + 38, 8);
  EXPECT_EQ(length, 0x100000000u);
}

TEST(AmlResourceTest, TemplateEndsWithChecksummedEndTag) {
  const Term crs = ResourceTemplate({Io(0x3F8, 0x3F8, 1, 8), IrqNoFlags(4)});
  // BufferOp, PkgLength, BufferSize 13, then 8 + 3 descriptor bytes and the end tag.
  ASSERT_EQ(crs.bytes.size(), 17u);
  EXPECT_THAT(std::span(crs.bytes).first(3), ElementsAre(0x11, 0x10, 0x0A));
  EXPECT_EQ(crs.bytes[3], 13);
  const std::span<const uint8_t> data = std::span(crs.bytes).subspan(4);
  EXPECT_EQ(data[data.size() - 2], 0x79);
  EXPECT_EQ(std::accumulate(data.begin(), data.end(), 0u) % 256, 0u);

  const Term empty = ResourceTemplate({});
  EXPECT_THAT(empty.bytes, ElementsAre(0x11, 0x05, 0x0A, 0x02, 0x79, 0x87));
}

TEST(AmlDeathTest, RejectsProgrammerErrors) {
  EXPECT_DEATH(NameSeg("abc"), "CHECK");
  EXPECT_DEATH(NameSeg("TOOLONG"), "CHECK");
  EXPECT_DEATH(NameSeg("1ABC"), "CHECK");
  EXPECT_DEATH(NameString(""), "CHECK");
  EXPECT_DEATH(EisaId("pnp0501"), "CHECK");
  EXPECT_DEATH(EisaId("PNP05G1"), "CHECK");
  EXPECT_DEATH(IrqNoFlags(16), "CHECK");
  EXPECT_DEATH(Interrupt(Usage::kConsumer, Trigger::kEdge, Polarity::kActiveHigh, Sharing::kExclusive, {}), "CHECK");
  EXPECT_DEATH(WordIo(Usage::kProducer, 0, 0xFFFF), "CHECK");  // length 0x10000 overflows
  EXPECT_DEATH(Method("_EVT", 8, Serialize::kNotSerialized, {}), "CHECK");
  EXPECT_DEATH(String("bad\n"), "CHECK");
}

// A DSDT around `body`, as tables.cc would emit it (revision 2, checksummed).
Bytes WrapInDsdt(const Bytes& body) {
  // Sized once (an insert after the header trips GCC 12's -O3 -Warray-bounds false positive).
  Bytes table(36 + body.size(), 0);
  std::memcpy(table.data(), "DSDT", 4);
  table[8] = 2;
  std::memcpy(table.data() + 10, "CLONE CLONTEST", 14);
  std::memcpy(table.data() + 28, "CLON", 4);
  std::copy(body.begin(), body.end(), table.begin() + 36);
  StoreLe(table, 4, table.size(), 4);
  table[9] = Checksum(table);
  return table;
}

// Every builder, including those the DSDT does not use yet, through the real ACPICA tools.
TEST(AmlIaslTest, EveryBuilderDisassemblesAndRecompiles) {
  iasl::TempDir dir;
  ASSERT_TRUE(dir.ok());
  const Bytes body = TermList({
      Name("_S5_", Package({Integer(5), Integer(0), Integer(0), Integer(0)})),
      Scope(
          "\\_SB",
          {Device("PCI0", {Name("_HID", EisaId("PNP0A08")), Name("_CID", EisaId("PNP0A03")), Name("_UID", Integer(0)),
                           Name("_CRS", ResourceTemplate({
                                            WordBusNumber(Usage::kProducer, 0, 0xFF),
                                            WordIo(Usage::kProducer, 0, 0xCF7),
                                            WordIo(Usage::kProducer, 0xD00, 0xFFFF),
                                            DWordMemory(Usage::kProducer, Cacheability::kNonCacheable,
                                                        Access::kReadWrite, 0xC0000000, 0xFEBFFFFF),
                                            QWordMemory(Usage::kProducer, Cacheability::kPrefetchable,
                                                        Access::kReadWrite, 0x100000000, 0x7FFFFFFFFF),
                                        }))}),
           Device("GED_", {Name("_HID", String("ACPI0013")),
                           Name("_CRS", ResourceTemplate({Interrupt(Usage::kConsumer, Trigger::kLevel,
                                                                    Polarity::kActiveLow, Sharing::kShared, {5, 6})})),
                           Method("_EVT", 1, Serialize::kSerialized,
                                  {If(Equal(Arg(0), Integer(5)), {Notify(Path("\\_SB.VGEN"), Integer(0x80))})})}),
           Device("VGEN", {Name("_HID", String("CLON0001")), Name("ADDR", Package({Integer(0x1000), Integer(1)}))})}),
  });
  const std::string dsl = iasl::Disassemble(dir, "dsdt", WrapInDsdt(body));
  for (std::string_view expected : {
           "WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode,",
           "WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange,",
           "0x0CF7,             // Range Maximum",
           "DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,",
           "QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Prefetchable, ReadWrite,",
           "0x0000007FFFFFFFFF, // Range Maximum",
           "Interrupt (ResourceConsumer, Level, ActiveLow, Shared, ,, )",
           "Method (_EVT, 1, Serialized)",
           "If ((Arg0 == 0x05))",
           "Notify (\\_SB.VGEN, 0x80)",
       }) {
    EXPECT_NE(dsl.find(expected), std::string::npos) << expected << "\n" << dsl.substr(0, 8000);
  }
  iasl::Compile(dir, "dsdt");
}

// A 1 MiB + 1 buffer needs a 4-byte PkgLength. Only disassembled: iasl takes minutes to
// compile a buffer this large.
TEST(AmlIaslTest, FourBytePkgLengthDisassembles) {
  iasl::TempDir dir;
  ASSERT_TRUE(dir.ok());
  const Term big = Name("BIGB", Buffer(Bytes(0x100001, 0x5A)));
  ASSERT_EQ(big.bytes[6] >> 6, 3) << "expected a 4-byte PkgLength";
  const std::string dsl = iasl::Disassemble(dir, "dsdt", WrapInDsdt(big.bytes));
  EXPECT_NE(dsl.find("Name (BIGB, Buffer (0x00100001)"), std::string::npos) << dsl.substr(0, 2000);
}

}  // namespace
}  // namespace clonevm::acpi::aml

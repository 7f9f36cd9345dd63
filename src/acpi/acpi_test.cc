// Tests of the generated ACPI tables: structure and checksums by hand, then the real ACPICA
// `iasl` as the judge of what the guest kernel's ACPICA will make of them.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <numeric>
#include <regex>
#include <string>

#include "acpi/iasl_test_util.h"
#include "acpi/tables.h"
#include "base/bytes.h"

namespace clonevm::acpi {
namespace {

constexpr uint64_t kBase = 0xE0000;
constexpr size_t kMaxSize = 0x20000;

uint64_t Le(std::span<const uint8_t> b, size_t offset, size_t width) {
  uint64_t v = 0;
  for (size_t i = 0; i < width; ++i) v |= uint64_t{b[offset + i]} << (8 * i);
  return v;
}

uint8_t Sum(std::span<const uint8_t> b) { return static_cast<uint8_t>(std::accumulate(b.begin(), b.end(), 0u)); }

std::string Signature(std::span<const uint8_t> table) { return std::string(table.begin(), table.begin() + 4); }

// The tables of a blob, found the way the guest finds them: RSDP -> XSDT -> FADT -> X_DSDT.
struct Tables {
  std::span<const uint8_t> rsdp, xsdt, fadt, dsdt, madt;
};

// Returns the table at `gpa` after checking that it lies inside the blob.
void TableAt(const AcpiBlob& blob, uint64_t gpa, std::span<const uint8_t>* out) {
  ASSERT_GE(gpa, blob.base_gpa);
  const uint64_t offset = gpa - blob.base_gpa;
  ASSERT_LE(offset + 36, blob.bytes.size());
  const uint64_t length = Le(blob.bytes, offset + 4, 4);
  ASSERT_LE(offset + length, blob.bytes.size());
  *out = std::span(blob.bytes).subspan(offset, length);
}

void Locate(const AcpiBlob& blob, Tables* t) {
  ASSERT_EQ(blob.rsdp_gpa, blob.base_gpa);
  ASSERT_GE(blob.bytes.size(), 36u);
  t->rsdp = std::span(blob.bytes).first(36);
  ASSERT_NO_FATAL_FAILURE(TableAt(blob, Le(t->rsdp, 24, 8), &t->xsdt));
  ASSERT_EQ(Signature(t->xsdt), "XSDT");
  ASSERT_EQ(t->xsdt.size(), 36u + 16u);
  for (size_t entry = 36; entry < t->xsdt.size(); entry += 8) {
    std::span<const uint8_t> table;
    ASSERT_NO_FATAL_FAILURE(TableAt(blob, Le(t->xsdt, entry, 8), &table));
    if (Signature(table) == "FACP") t->fadt = table;
    if (Signature(table) == "APIC") t->madt = table;
  }
  ASSERT_FALSE(t->fadt.empty());
  ASSERT_FALSE(t->madt.empty());
  ASSERT_NO_FATAL_FAILURE(TableAt(blob, Le(t->fadt, 140, 8), &t->dsdt));
  ASSERT_EQ(Signature(t->dsdt), "DSDT");
}

AcpiConfig RichConfig() {
  AcpiConfig config;
  config.num_cpus = 4;
  config.ioapic_id = 4;
  for (uint32_t i = 0; i < 3; ++i) {
    config.virtio_mmio.push_back({0xD0000000 + 0x1000 * i, 0x1000, 16 + i});
  }
  config.vmgenid_gpa = 0x1'2345'6780;
  config.ged_gsi = 9;
  return config;
}

Tables Build(const AcpiConfig& config, AcpiBlob* blob) {
  auto built = BuildAcpiTables(config, kBase, kMaxSize);
  EXPECT_TRUE(built) << built.error().message();
  Tables t;
  if (!built) return t;
  *blob = std::move(*built);
  Locate(*blob, &t);
  return t;
}

TEST(AcpiTablesTest, RsdpPointsToXsdtWithValidChecksums) {
  AcpiBlob blob;
  const Tables t = Build(RichConfig(), &blob);
  ASSERT_FALSE(t.rsdp.empty());
  EXPECT_EQ(blob.base_gpa, kBase);
  EXPECT_EQ(std::string(t.rsdp.begin(), t.rsdp.begin() + 8), "RSD PTR ");
  EXPECT_EQ(t.rsdp[15], 2) << "revision";
  EXPECT_EQ(Sum(t.rsdp.first(20)), 0) << "ACPI 1.0 checksum";
  EXPECT_EQ(Sum(t.rsdp), 0) << "extended checksum";
  EXPECT_EQ(Le(t.rsdp, 16, 4), 0u) << "no RSDT";
  EXPECT_EQ(Le(t.rsdp, 20, 4), 36u);
  EXPECT_EQ(std::string(t.rsdp.begin() + 9, t.rsdp.begin() + 15), "CLONE ");
}

TEST(AcpiTablesTest, EveryTableChecksumsToZeroAndIs16ByteAligned) {
  AcpiBlob blob;
  const Tables t = Build(RichConfig(), &blob);
  ASSERT_FALSE(t.dsdt.empty());
  for (std::span<const uint8_t> table : {t.xsdt, t.fadt, t.dsdt, t.madt}) {
    EXPECT_EQ(Sum(table), 0) << Signature(table);
    EXPECT_EQ((table.data() - blob.bytes.data()) % 16, 0) << Signature(table);
    EXPECT_EQ(std::string(table.begin() + 10, table.begin() + 16), "CLONE ");
  }
  // Layout order RSDP, XSDT, FADT, DSDT, MADT, and nothing after the MADT.
  EXPECT_LT(t.xsdt.data(), t.fadt.data());
  EXPECT_LT(t.fadt.data(), t.dsdt.data());
  EXPECT_LT(t.dsdt.data(), t.madt.data());
  EXPECT_EQ(t.madt.data() + t.madt.size(), blob.bytes.data() + blob.bytes.size());
}

TEST(AcpiTablesTest, FadtDescribesAHardwareReducedPlatform) {
  AcpiConfig config = RichConfig();
  config.pm_io_base = 0x700;
  AcpiBlob blob;
  const Tables t = Build(config, &blob);
  ASSERT_EQ(t.fadt.size(), 276u);
  EXPECT_EQ(t.fadt[8], 6) << "revision";
  const uint32_t flags = static_cast<uint32_t>(Le(t.fadt, 112, 4));
  EXPECT_TRUE(flags & (1u << 20)) << "HW_REDUCED_ACPI";
  EXPECT_TRUE(flags & (1u << 10)) << "RESET_REG_SUP";
  EXPECT_EQ(Le(t.fadt, 109, 2), 1u << 2) << "IAPC_BOOT_ARCH: only VGA Not Present";
  EXPECT_EQ(Le(t.fadt, 40, 4), 0u) << "32-bit DSDT unused";
  EXPECT_EQ(Le(t.fadt, 36, 4), 0u) << "no FACS";
  // RESET_REG, SLEEP_CONTROL_REG, SLEEP_STATUS_REG: SystemIO, 8 bits, byte access.
  const std::pair<size_t, uint16_t> regs[] = {
      {116, 0x700 + kResetOffset}, {244, 0x700 + kSleepControlOffset}, {256, 0x700 + kSleepStatusOffset}};
  for (auto [offset, port] : regs) {
    EXPECT_EQ(t.fadt[offset], 1) << offset;
    EXPECT_EQ(t.fadt[offset + 1], 8) << offset;
    EXPECT_EQ(t.fadt[offset + 2], 0) << offset;
    EXPECT_EQ(t.fadt[offset + 3], 1) << offset;
    EXPECT_EQ(Le(t.fadt, offset + 4, 8), port) << offset;
  }
  EXPECT_EQ(t.fadt[128], kResetValue);
  EXPECT_EQ(std::string(t.fadt.begin() + 268, t.fadt.end()), "CLONEVMM");
}

TEST(AcpiTablesTest, MadtListsCpusIoApicAndNmi) {
  AcpiBlob blob;
  const Tables t = Build(RichConfig(), &blob);
  ASSERT_EQ(t.madt.size(), 44u + 4 * 8 + 12 + 6);
  EXPECT_EQ(Le(t.madt, 36, 4), 0xFEE00000u);
  EXPECT_EQ(Le(t.madt, 40, 4), 0u) << "PCAT_COMPAT clear";
  for (uint8_t cpu = 0; cpu < 4; ++cpu) {
    const auto lapic = t.madt.subspan(44 + 8 * cpu, 8);
    EXPECT_EQ(lapic[0], 0);
    EXPECT_EQ(lapic[1], 8);
    EXPECT_EQ(lapic[2], cpu) << "processor UID";
    EXPECT_EQ(lapic[3], cpu) << "APIC id";
    EXPECT_EQ(Le(lapic, 4, 4), 1u) << "enabled";
  }
  const auto ioapic = t.madt.subspan(44 + 32, 12);
  EXPECT_EQ(ioapic[0], 1);
  EXPECT_EQ(ioapic[2], 4) << "I/O APIC id";
  EXPECT_EQ(Le(ioapic, 4, 4), 0xFEC00000u);
  EXPECT_EQ(Le(ioapic, 8, 4), 0u) << "GSI base";
  const auto nmi = t.madt.subspan(44 + 32 + 12, 6);
  EXPECT_EQ(nmi[0], 4);
  EXPECT_EQ(nmi[2], 0xFF) << "all processors";
  EXPECT_EQ(nmi[5], 1) << "LINT1";
}

bool Contains(std::span<const uint8_t> haystack, std::string_view needle) {
  return std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end()) != haystack.end();
}

TEST(AcpiTablesTest, DsdtHasOnlyTheConfiguredDevices) {
  AcpiConfig config;
  config.com1 = false;
  config.cmos_rtc = false;
  AcpiBlob blob;
  const Tables t = Build(config, &blob);
  ASSERT_FALSE(t.dsdt.empty());
  EXPECT_TRUE(Contains(t.dsdt, "_S5_"));
  EXPECT_FALSE(Contains(t.dsdt, "COM1"));
  EXPECT_FALSE(Contains(t.dsdt, "RTC_"));
  EXPECT_FALSE(Contains(t.dsdt, "LNRO0005"));
  EXPECT_FALSE(Contains(t.dsdt, "VGEN"));
  EXPECT_FALSE(Contains(t.dsdt, "ACPI0013"));

  const Tables rich = Build(RichConfig(), &blob);
  EXPECT_TRUE(Contains(rich.dsdt, "COM1"));
  EXPECT_TRUE(Contains(rich.dsdt, "RTC_"));
  EXPECT_TRUE(Contains(rich.dsdt, "LNRO0005"));
  EXPECT_TRUE(Contains(rich.dsdt, "VGEN"));
  EXPECT_TRUE(Contains(rich.dsdt, "ACPI0013"));

  // VGEN without a GED: the id is there, only change notifications are missing.
  AcpiConfig no_ged = RichConfig();
  no_ged.ged_gsi.reset();
  const Tables quiet = Build(no_ged, &blob);
  EXPECT_TRUE(Contains(quiet.dsdt, "VGEN"));
  EXPECT_FALSE(Contains(quiet.dsdt, "ACPI0013"));
  EXPECT_FALSE(Contains(quiet.dsdt, "_EVT"));
}

// The GED's _CRS, byte for byte: the extended interrupt descriptor the guest's evged requests,
// and the same edge/active-high shape the MADT implies for an ISA GSI without an override.
TEST(AcpiTablesTest, GedInterruptIsEdgeActiveHighOnItsGsi) {
  AcpiConfig config = RichConfig();
  config.ged_gsi = 9;
  AcpiBlob blob;
  const Tables t = Build(config, &blob);
  ASSERT_FALSE(t.dsdt.empty());
  // Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {9}: tag 0x89, length 6, flags
  // consumer|edge = 0x03, one GSI, then the end tag.
  const uint8_t descriptor[] = {0x89, 0x06, 0x00, 0x03, 0x01, 0x09, 0x00, 0x00, 0x00, 0x79};
  EXPECT_TRUE(std::search(t.dsdt.begin(), t.dsdt.end(), std::begin(descriptor), std::end(descriptor)) != t.dsdt.end());
  EXPECT_TRUE(Contains(t.dsdt, "GED0"));
  EXPECT_TRUE(Contains(t.dsdt, "_EVT"));
}

TEST(AcpiTablesTest, RejectsInvalidConfigs) {
  struct Case {
    std::string what;
    AcpiConfig config;
  };
  std::vector<Case> cases;
  cases.push_back({"no cpus", AcpiConfig{.num_cpus = 0}});
  cases.push_back({"256 cpus", AcpiConfig{.num_cpus = 256}});
  cases.push_back({"pm block past port 0xFFFF", AcpiConfig{.pm_io_base = 0xFFFC}});
  AcpiConfig high;
  high.virtio_mmio.push_back({0xFFFFF000, 0x2000, 5});
  cases.push_back({"virtio window crossing 4 GiB", high});
  AcpiConfig empty_window;
  empty_window.virtio_mmio.push_back({0xD0000000, 0, 5});
  cases.push_back({"empty virtio window", empty_window});
  cases.push_back({"unaligned vmgenid", AcpiConfig{.vmgenid_gpa = 0x1004}});
  cases.push_back({"GED without VGEN", AcpiConfig{.ged_gsi = 9}});
  for (uint32_t taken : {4u, 8u, 17u}) {  // COM1, RTC, the second virtio device
    AcpiConfig clash = RichConfig();
    clash.ged_gsi = taken;
    cases.push_back({fmt::format("GED on GSI {}", taken), clash});
  }
  AcpiConfig high_gsi = RichConfig();
  high_gsi.ged_gsi = 256;
  cases.push_back({"GED GSI above 255", high_gsi});
  for (const Case& c : cases) {
    auto built = BuildAcpiTables(c.config, kBase, kMaxSize);
    EXPECT_FALSE(built) << c.what;
    if (!built) {
      EXPECT_NE(built.error().message().find("ACPI tables"), std::string::npos) << c.what;
    }
  }
  EXPECT_FALSE(BuildAcpiTables(AcpiConfig{}, kBase + 8, kMaxSize)) << "unaligned base";
  EXPECT_FALSE(BuildAcpiTables(AcpiConfig{}, ~uint64_t{0} & ~uint64_t{15}, kMaxSize)) << "base + size overflows";
  EXPECT_TRUE(BuildAcpiTables(AcpiConfig{.num_cpus = 255}, kBase, kMaxSize));
  EXPECT_TRUE(BuildAcpiTables(AcpiConfig{.pm_io_base = 0xFFF8}, kBase, kMaxSize));
  // Without COM1 or the RTC their IRQs are free for the GED.
  AcpiConfig no_legacy = RichConfig();
  no_legacy.com1 = false;
  no_legacy.cmos_rtc = false;
  for (uint32_t gsi : {4u, 8u}) {
    no_legacy.ged_gsi = gsi;
    EXPECT_TRUE(BuildAcpiTables(no_legacy, kBase, kMaxSize)) << gsi;
  }
}

TEST(AcpiTablesTest, MaxSizeIsAHardLimit) {
  auto built = BuildAcpiTables(RichConfig(), kBase, kMaxSize);
  ASSERT_TRUE(built);
  const size_t needed = built->bytes.size();
  EXPECT_TRUE(BuildAcpiTables(RichConfig(), kBase, needed));
  auto too_small = BuildAcpiTables(RichConfig(), kBase, needed - 1);
  ASSERT_FALSE(too_small);
  EXPECT_NE(too_small.error().message().find("more than the"), std::string::npos);
}

TEST(AcpiTablesTest, ALargeVmFitsTheDefaultWindow) {
  AcpiConfig config;
  config.num_cpus = 255;
  for (uint32_t i = 0; i < 256; ++i) config.virtio_mmio.push_back({0xD0000000 + 0x1000 * i, 0x1000, 16 + i});
  config.vmgenid_gpa = 0x1000;
  auto built = BuildAcpiTables(config, kBase, kMaxSize);
  ASSERT_TRUE(built) << built.error().message();
  EXPECT_LT(built->bytes.size(), 32u * 1024);
}

// ---- iasl: the tables as ACPICA sees them ---------------------------------------------------

TEST(AcpiIaslTest, IaslIsInstalled) { ASSERT_FALSE(iasl::IaslPath().empty()) << iasl::kIaslMissing; }

// Compares our table with iasl's recompilation of its own disassembly. iasl stamps its own
// compiler id/revision (bytes 28-35) and therefore a different checksum (byte 9).
void ExpectSameExceptCompilerId(std::span<const uint8_t> ours, const std::vector<uint8_t>& iasl) {
  ASSERT_EQ(ours.size(), iasl.size());
  for (size_t i = 0; i < ours.size(); ++i) {
    if (i == 9 || (i >= 28 && i < 36)) continue;
    EXPECT_EQ(ours[i], iasl[i]) << "byte " << i;
  }
}

bool Matches(const std::string& text, const std::string& pattern) {
  return std::regex_search(text, std::regex(pattern));
}

// The lines of a disassembled data table from `title` to the next blank line.
std::string Section(const std::string& dsl, const std::string& title) {
  const size_t start = dsl.find(title);
  if (start == std::string::npos) return "";
  const size_t end = dsl.find("\n\n", start);
  return dsl.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

TEST(AcpiIaslTest, FadtDisassemblesAsHardwareReduced) {
  AcpiBlob blob;
  const Tables t = Build(RichConfig(), &blob);
  iasl::TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string dsl = iasl::Disassemble(dir, "facp", t.fadt);
  for (std::string_view flag :
       {"Hardware Reduced (V5) : 1", "Reset Register Supported (V2) : 1", "VGA Not Present (V4) : 1",
        "8042 Present on ports 60/64 (V2) : 0", "CMOS RTC Not Present (V5) : 0", "Value to cause reset : 01"}) {
    EXPECT_NE(dsl.find(flag), std::string::npos) << flag << "\n" << dsl;
  }
  const std::pair<std::string, std::string> registers[] = {
      {"Reset Register : [Generic Address Structure]", "Address : 0000000000000604"},
      {"Sleep Control Register : [Generic Address Structure]", "Address : 0000000000000600"},
      {"Sleep Status Register : [Generic Address Structure]", "Address : 0000000000000601"},
  };
  for (const auto& [title, address] : registers) {
    const std::string gas = Section(dsl, title);
    for (const std::string& field :
         {std::string("Space ID : 01 [SystemIO]"), std::string("Bit Width : 08"), std::string("Bit Offset : 00"),
          std::string("Encoded Access Width : 01 [Byte Access:8]"), address}) {
      EXPECT_NE(gas.find(field), std::string::npos) << title << ": " << field << "\n" << gas;
    }
  }
  const uint64_t dsdt_gpa = blob.base_gpa + static_cast<uint64_t>(t.dsdt.data() - blob.bytes.data());
  EXPECT_NE(dsl.find(fmt::format("DSDT Address : {:016X}", dsdt_gpa)), std::string::npos);
  ExpectSameExceptCompilerId(t.fadt, iasl::Compile(dir, "facp"));
}

TEST(AcpiIaslTest, MadtDisassemblesWithOneLocalApicPerCpu) {
  AcpiConfig config = RichConfig();
  config.num_cpus = 7;
  config.ioapic_id = 7;
  AcpiBlob blob;
  const Tables t = Build(config, &blob);
  iasl::TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string dsl = iasl::Disassemble(dir, "apic", t.madt);
  EXPECT_EQ(iasl::CountOccurrences(dsl, "[Processor Local APIC]"), 7u) << dsl;
  EXPECT_EQ(iasl::CountOccurrences(dsl, "[I/O APIC]"), 1u);
  EXPECT_EQ(iasl::CountOccurrences(dsl, "[Local APIC NMI]"), 1u);
  for (const std::string& pattern : {
           std::string(R"(Local Apic Address : FEE00000)"),
           std::string(R"(PC-AT Compatibility : 0)"),
           std::string(R"(Processor ID : 06\s+.*Local Apic ID : 06\s+.*\s+Processor Enabled : 1)"),
           std::string(R"(I/O Apic ID : 07)"),
           std::string(R"(Address : FEC00000)"),
           std::string(R"(Interrupt Input LINT : 01)"),
       }) {
    EXPECT_TRUE(Matches(dsl, pattern)) << pattern << "\n" << dsl;
  }
  ExpectSameExceptCompilerId(t.madt, iasl::Compile(dir, "apic"));
}

TEST(AcpiIaslTest, XsdtDisassemblesWithFadtAndMadt) {
  AcpiBlob blob;
  const Tables t = Build(RichConfig(), &blob);
  iasl::TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string dsl = iasl::Disassemble(dir, "xsdt", t.xsdt);
  EXPECT_TRUE(Matches(dsl, fmt::format(R"(ACPI Table Address\s+0 : {:016X})", Le(t.xsdt, 36, 8))));
  EXPECT_TRUE(Matches(dsl, fmt::format(R"(ACPI Table Address\s+1 : {:016X})", Le(t.xsdt, 44, 8))));
  ExpectSameExceptCompilerId(t.xsdt, iasl::Compile(dir, "xsdt"));
}

// This iasl cannot disassemble an RSDP file, so the RSDP is checked the other way round: iasl's
// data-table compiler builds one from the same field values, checksums included.
TEST(AcpiIaslTest, RsdpMatchesIaslDataTableCompiler) {
  AcpiBlob blob;
  const Tables t = Build(RichConfig(), &blob);
  iasl::TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string source = fmt::format(
      "[0008]                          Signature : \"RSD PTR \"\n"
      "[0001]                           Checksum : 00\n"
      "[0006]                             Oem ID : \"CLONE \"\n"
      "[0001]                           Revision : 02\n"
      "[0004]                       RSDT Address : 00000000\n"
      "[0004]                             Length : 00000024\n"
      "[0008]                       XSDT Address : {:016X}\n"
      "[0001]                  Extended Checksum : 00\n"
      "[0003]                           Reserved : 000000\n",
      Le(t.rsdp, 24, 8));
  iasl::WriteBinary(dir.File("rsdp.dsl"), AsBytes(source));
  const std::vector<uint8_t> compiled = iasl::Compile(dir, "rsdp");
  EXPECT_TRUE(std::equal(t.rsdp.begin(), t.rsdp.end(), compiled.begin(), compiled.end()));
}

// The device's block of a disassembled DSDT: from "Device (NAME)" to the next Device or the end.
std::string DeviceBlock(const std::string& dsl, const std::string& name) {
  const size_t start = dsl.find("Device (" + name + ")");
  if (start == std::string::npos) return "";
  const size_t end = dsl.find("Device (", start + 1);
  return dsl.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

TEST(AcpiIaslTest, DsdtDisassemblesAndRecompiles) {
  AcpiConfig config = RichConfig();
  AcpiBlob blob;
  const Tables t = Build(config, &blob);
  iasl::TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string dsl = iasl::Disassemble(dir, "dsdt", t.dsdt);
  EXPECT_TRUE(Matches(dsl, R"(Name \(_S5, Package \(0x04\)[^{]*\{\s*0x05,\s*Zero,\s*Zero,\s*Zero)")) << dsl;
  EXPECT_TRUE(Matches(dsl, R"(Scope \(\\_SB\))"));

  const std::string com1 = DeviceBlock(dsl, "COM1");
  EXPECT_NE(com1.find(R"(Name (_HID, EisaId ("PNP0501"))"), std::string::npos) << dsl;
  EXPECT_TRUE(Matches(com1, R"(Return \(0x0F\))")) << com1;
  EXPECT_TRUE(Matches(com1, R"(IO \(Decode16,\s*0x03F8,.*\s*0x03F8,.*\s*0x01,.*\s*0x08,)")) << com1;
  EXPECT_TRUE(Matches(com1, R"(IRQNoFlags \(\)\s*\{4\})")) << com1;

  const std::string rtc = DeviceBlock(dsl, "RTC");
  EXPECT_NE(rtc.find(R"(Name (_HID, EisaId ("PNP0B00"))"), std::string::npos) << dsl;
  EXPECT_TRUE(Matches(rtc, R"(IO \(Decode16,\s*0x0070,.*\s*0x0070,.*\s*0x01,.*\s*0x02,)")) << rtc;
  EXPECT_TRUE(Matches(rtc, R"(IRQNoFlags \(\)\s*\{8\})")) << rtc;

  EXPECT_EQ(iasl::CountOccurrences(dsl, R"(Name (_HID, "LNRO0005"))"), 3u);
  for (uint32_t i = 0; i < 3; ++i) {
    const std::string dev = DeviceBlock(dsl, fmt::format("V{:03X}", i));
    ASSERT_FALSE(dev.empty()) << i << "\n" << dsl;
    EXPECT_NE(dev.find(R"("LNRO0005")"), std::string::npos) << dev;
    EXPECT_TRUE(Matches(dev, i == 0 ? R"(_UID, Zero)" : i == 1 ? R"(_UID, One)" : R"(_UID, 0x02)")) << dev;
    EXPECT_TRUE(Matches(
        dev, fmt::format(R"(Memory32Fixed \(ReadWrite,\s*0x{:08X},.*\s*0x00001000,)", config.virtio_mmio[i].base)))
        << dev;
    EXPECT_TRUE(Matches(
        dev, fmt::format(R"(Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)\s*\{{\s*0x{:08X},)",
                         config.virtio_mmio[i].gsi)))
        << dev;
  }

  const std::string vgen = DeviceBlock(dsl, "VGEN");
  EXPECT_NE(vgen.find(R"(Name (_HID, "CLON0001"))"), std::string::npos) << vgen;
  EXPECT_NE(vgen.find(R"(Name (_CID, "VM_Gen_Counter"))"), std::string::npos) << vgen;
  EXPECT_NE(vgen.find(R"(Name (_DDN, "VM_Gen_Counter"))"), std::string::npos) << vgen;
  EXPECT_TRUE(
      Matches(vgen, R"(Method \(ADDR, 0, NotSerialized\)\s*\{\s*Return \(Package \(0x02\)\s*\{\s*0x23456780,\s*One)"))
      << vgen;

  // The GED: _HID ACPI0013, one edge/active-high exclusive interrupt on GSI 9, and _EVT(Arg0)
  // notifying VGEN with 0x80 when Arg0 is that GSI.
  const std::string ged = DeviceBlock(dsl, "GED0");
  EXPECT_NE(ged.find(R"(Name (_HID, "ACPI0013")"), std::string::npos) << dsl;  // iasl appends a comment
  EXPECT_TRUE(Matches(ged, R"(Interrupt \(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \)\s*\{\s*0x00000009,)"))
      << ged;
  EXPECT_TRUE(Matches(
      ged, R"(Method \(_EVT, 1, Serialized\)[^{]*\{\s*If \(\(Arg0 == 0x09\)\)\s*\{\s*Notify \(\\_SB\.VGEN, 0x80\))"))
      << ged;

  iasl::Compile(dir, "dsdt");
}

TEST(AcpiIaslTest, MinimalConfigDisassemblesAndRecompiles) {
  AcpiConfig config;
  config.com1 = false;
  config.cmos_rtc = false;
  AcpiBlob blob;
  const Tables t = Build(config, &blob);
  iasl::TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string dsl = iasl::Disassemble(dir, "dsdt", t.dsdt);
  EXPECT_NE(dsl.find("Name (_S5, Package (0x04)"), std::string::npos) << dsl;
  iasl::Compile(dir, "dsdt");
  EXPECT_EQ(iasl::CountOccurrences(iasl::Disassemble(dir, "apic", t.madt), "[Processor Local APIC]"), 1u);
}

// 255 CPUs and 4096 virtio devices: the \_SB scope needs a 3-byte PkgLength.
TEST(AcpiIaslTest, LargestConfigDisassemblesAndRecompiles) {
  AcpiConfig config;
  config.num_cpus = 255;
  config.ioapic_id = 255;
  for (uint32_t i = 0; i < 4096; ++i) {
    config.virtio_mmio.push_back({0xC0000000 + 0x1000 * uint64_t{i}, 0x1000, 16 + i});
  }
  AcpiBlob blob;
  auto built = BuildAcpiTables(config, kBase, 1 << 20);
  ASSERT_TRUE(built) << built.error().message();
  blob = std::move(*built);
  Tables t;
  ASSERT_NO_FATAL_FAILURE(Locate(blob, &t));
  iasl::TempDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string dsl = iasl::Disassemble(dir, "dsdt", t.dsdt);
  EXPECT_EQ(iasl::CountOccurrences(dsl, R"("LNRO0005")"), 4096u);
  const std::string last = DeviceBlock(dsl, "VFFF");
  EXPECT_TRUE(Matches(last, R"(0xC0FFF000,)")) << last;
  EXPECT_TRUE(Matches(last, R"(0x0000100F,)")) << last;
  iasl::Compile(dir, "dsdt");
  const std::string madt = iasl::Disassemble(dir, "apic", t.madt);
  EXPECT_EQ(iasl::CountOccurrences(madt, "[Processor Local APIC]"), 255u);
}

}  // namespace
}  // namespace clonevm::acpi

#include "acpi/aml.h"

#include <initializer_list>
#include <limits>

#include "acpi/bytes.h"
#include "base/check.h"

namespace clonevm::acpi::aml {
namespace {

// Opcodes and prefixes (ACPI 6.4 §20.3).
constexpr uint8_t kZeroOp = 0x00;
constexpr uint8_t kOneOp = 0x01;
constexpr uint8_t kNameOp = 0x08;
constexpr uint8_t kBytePrefix = 0x0A;
constexpr uint8_t kWordPrefix = 0x0B;
constexpr uint8_t kDWordPrefix = 0x0C;
constexpr uint8_t kStringPrefix = 0x0D;
constexpr uint8_t kQWordPrefix = 0x0E;
constexpr uint8_t kScopeOp = 0x10;
constexpr uint8_t kBufferOp = 0x11;
constexpr uint8_t kPackageOp = 0x12;
constexpr uint8_t kMethodOp = 0x14;
constexpr uint8_t kDualNamePrefix = 0x2E;
constexpr uint8_t kMultiNamePrefix = 0x2F;
constexpr uint8_t kExtOpPrefix = 0x5B;
constexpr uint8_t kRootChar = '\\';
constexpr uint8_t kParentPrefixChar = '^';
constexpr uint8_t kArg0Op = 0x68;
constexpr uint8_t kDeviceOp = 0x82;  // after kExtOpPrefix
constexpr uint8_t kNotifyOp = 0x86;
constexpr uint8_t kLEqualOp = 0x93;
constexpr uint8_t kIfOp = 0xA0;
constexpr uint8_t kReturnOp = 0xA4;
constexpr uint8_t kOnesOp = 0xFF;
constexpr uint8_t kNullName = 0x00;

// Resource descriptor tags (ACPI 6.4 §6.4.2, §6.4.3).
constexpr uint8_t kIrqNoFlagsTag = 0x22;  // small item IRQ (0x4), length 2
constexpr uint8_t kIoTag = 0x47;          // small item I/O port (0x8), length 7
constexpr uint8_t kEndTag = 0x79;         // small item End Tag (0xF), length 1
constexpr uint8_t kMemory32FixedTag = 0x86;
constexpr uint8_t kDWordAddressTag = 0x87;
constexpr uint8_t kWordAddressTag = 0x88;
constexpr uint8_t kExtendedInterruptTag = 0x89;
constexpr uint8_t kQWordAddressTag = 0x8A;

// Address space descriptor fields.
constexpr uint8_t kAddressSpaceMemory = 0;
constexpr uint8_t kAddressSpaceIo = 1;
constexpr uint8_t kAddressSpaceBusNumber = 2;
constexpr uint8_t kMinFixed = 1 << 2;
constexpr uint8_t kMaxFixed = 1 << 3;
constexpr uint8_t kIoEntireRange = 3;

// PkgLength can encode at most 28 bits (ACPI 6.4 §20.2.4).
constexpr size_t kMaxPkgLength = (size_t{1} << 28) - 1;

void Append(Bytes& out, std::span<const uint8_t> bytes) { out.insert(out.end(), bytes.begin(), bytes.end()); }

Bytes Concat(std::initializer_list<std::span<const uint8_t>> parts) {
  Bytes out;
  for (auto part : parts) Append(out, part);
  return out;
}

// Prefixes `body` with its PkgLength, then `opcode` (one or two bytes) in front of both.
Term PkgTerm(std::initializer_list<uint8_t> opcode, const Bytes& body) {
  Bytes out(opcode);
  Append(out, PkgLength(body.size()));
  Append(out, body);
  return Term{std::move(out)};
}

bool IsLeadNameChar(char c) { return (c >= 'A' && c <= 'Z') || c == '_'; }
bool IsNameChar(char c) { return IsLeadNameChar(c) || (c >= '0' && c <= '9'); }

std::vector<std::string_view> SplitDots(std::string_view path) {
  std::vector<std::string_view> segs;
  while (true) {
    size_t dot = path.find('.');
    segs.push_back(path.substr(0, dot));
    if (dot == std::string_view::npos) return segs;
    path.remove_prefix(dot + 1);
  }
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The common head of Word/DWord/QWord address space descriptors; the caller appends the five
// `width`-byte fields (granularity, min, max, translation, length).
Bytes AddressSpaceHead(uint8_t tag, size_t width, uint8_t space, Usage usage, uint8_t type_flags) {
  Bytes out{tag};
  AppendLe(out, 3 + 5 * width, 2);
  out.push_back(space);
  out.push_back(static_cast<uint8_t>(kMinFixed | kMaxFixed | static_cast<uint8_t>(usage)));
  out.push_back(type_flags);
  return out;
}

Resource FixedWindow(uint8_t tag, size_t width, uint8_t space, Usage usage, uint8_t type_flags, uint64_t min,
                     uint64_t max) {
  const uint64_t field_max = width == 8 ? std::numeric_limits<uint64_t>::max() : (uint64_t{1} << (8 * width)) - 1;
  CLONE_CHECK(min <= max && max <= field_max);
  CLONE_CHECK(max - min < field_max);  // the length field must not overflow
  Bytes out = AddressSpaceHead(tag, width, space, usage, type_flags);
  AppendLe(out, 0, width);  // granularity
  AppendLe(out, min, width);
  AppendLe(out, max, width);
  AppendLe(out, 0, width);  // translation offset
  AppendLe(out, max - min + 1, width);
  return Resource{std::move(out)};
}

uint8_t MemoryTypeFlags(Cacheability cacheability, Access access) {
  return static_cast<uint8_t>(static_cast<uint8_t>(cacheability) << 1 | static_cast<uint8_t>(access));
}

}  // namespace

Bytes PkgLength(size_t content_size) {
  CLONE_CHECK(content_size <= kMaxPkgLength - 4);
  size_t extra = 0;  // bytes following the lead byte
  if (content_size + 1 > 0x3F) extra = 1;
  if (content_size + 2 > 0xFFF) extra = 2;
  if (content_size + 3 > 0xFFFFF) extra = 3;
  const size_t total = content_size + 1 + extra;
  if (extra == 0) return Bytes{static_cast<uint8_t>(total)};
  Bytes out{static_cast<uint8_t>(extra << 6 | (total & 0x0F))};
  for (size_t i = 0; i < extra; ++i) out.push_back(static_cast<uint8_t>(total >> (4 + 8 * i)));
  return out;
}

Bytes NameSeg(std::string_view seg) {
  CLONE_CHECK(!seg.empty() && seg.size() <= 4 && IsLeadNameChar(seg[0]));
  Bytes out;
  for (char c : seg) {
    CLONE_CHECK(IsNameChar(c));
    out.push_back(static_cast<uint8_t>(c));
  }
  out.resize(4, '_');
  return out;
}

Bytes NameString(std::string_view path) {
  Bytes out;
  if (!path.empty() && path[0] == kRootChar) {
    out.push_back(kRootChar);
    path.remove_prefix(1);
  } else {
    while (!path.empty() && path[0] == kParentPrefixChar) {
      out.push_back(kParentPrefixChar);
      path.remove_prefix(1);
    }
  }
  if (path.empty()) {
    CLONE_CHECK(!out.empty());  // "" is not a name; "\" and "^" are
    out.push_back(kNullName);
    return out;
  }
  const std::vector<std::string_view> segs = SplitDots(path);
  CLONE_CHECK(segs.size() <= 255);
  if (segs.size() == 2) out.push_back(kDualNamePrefix);
  if (segs.size() > 2) {
    out.push_back(kMultiNamePrefix);
    out.push_back(static_cast<uint8_t>(segs.size()));
  }
  for (std::string_view seg : segs) Append(out, NameSeg(seg));
  return out;
}

Bytes TermList(const std::vector<Term>& terms) {
  Bytes out;
  for (const Term& term : terms) Append(out, term.bytes);
  return out;
}

Term Integer(uint64_t value) {
  if (value == 0) return Term{{kZeroOp}};
  if (value == 1) return Term{{kOneOp}};
  if (value == std::numeric_limits<uint64_t>::max()) return Term{{kOnesOp}};
  Bytes out;
  if (value <= 0xFF) {
    out.push_back(kBytePrefix);
    AppendLe(out, value, 1);
  } else if (value <= 0xFFFF) {
    out.push_back(kWordPrefix);
    AppendLe(out, value, 2);
  } else if (value <= 0xFFFF'FFFF) {
    out.push_back(kDWordPrefix);
    AppendLe(out, value, 4);
  } else {
    out.push_back(kQWordPrefix);
    AppendLe(out, value, 8);
  }
  return Term{std::move(out)};
}

Term String(std::string_view text) {
  Bytes out{kStringPrefix};
  for (char c : text) {
    CLONE_CHECK(c >= 0x20 && c <= 0x7E);
    out.push_back(static_cast<uint8_t>(c));
  }
  out.push_back(0);
  return Term{std::move(out)};
}

Term Buffer(std::span<const uint8_t> data) {
  Bytes body = Integer(data.size()).bytes;
  Append(body, data);
  return PkgTerm({kBufferOp}, body);
}

Term Package(const std::vector<Term>& elements) {
  CLONE_CHECK(elements.size() <= 255);
  Bytes body{static_cast<uint8_t>(elements.size())};
  Append(body, TermList(elements));
  return PkgTerm({kPackageOp}, body);
}

Term EisaId(std::string_view id) {
  CLONE_CHECK(id.size() == 7);
  uint32_t vendor = 0;
  for (size_t i = 0; i < 3; ++i) {
    CLONE_CHECK(id[i] >= 'A' && id[i] <= 'Z');
    vendor = vendor << 5 | static_cast<uint32_t>(id[i] - '@');
  }
  uint32_t product = 0;
  for (size_t i = 3; i < 7; ++i) {
    const int digit = HexValue(id[i]);
    CLONE_CHECK(digit >= 0);
    product = product << 4 | static_cast<uint32_t>(digit);
  }
  // The 32-bit id is stored big-endian: the 15-bit vendor code (bit 15 zero), then the
  // product number.
  const uint32_t big_endian = vendor << 16 | product;
  const uint32_t value = __builtin_bswap32(big_endian);
  return Integer(value);
}

Term Path(std::string_view path) { return Term{NameString(path)}; }

Term Name(std::string_view name, const Term& object) {
  return Term{Concat({Bytes{kNameOp}, NameString(name), object.bytes})};
}

Term Scope(std::string_view path, const std::vector<Term>& terms) {
  return PkgTerm({kScopeOp}, Concat({NameString(path), TermList(terms)}));
}

Term Device(std::string_view path, const std::vector<Term>& terms) {
  return PkgTerm({kExtOpPrefix, kDeviceOp}, Concat({NameString(path), TermList(terms)}));
}

Term Method(std::string_view name, uint8_t arg_count, Serialize serialize, const std::vector<Term>& terms) {
  CLONE_CHECK(arg_count <= 7);
  const uint8_t flags = static_cast<uint8_t>(arg_count | static_cast<uint8_t>(serialize) << 3);
  return PkgTerm({kMethodOp}, Concat({NameString(name), Bytes{flags}, TermList(terms)}));
}

Term Return(const Term& value) { return Term{Concat({Bytes{kReturnOp}, value.bytes})}; }

Term Arg(uint8_t index) {
  CLONE_CHECK(index <= 6);
  return Term{{static_cast<uint8_t>(kArg0Op + index)}};
}

Term Equal(const Term& a, const Term& b) { return Term{Concat({Bytes{kLEqualOp}, a.bytes, b.bytes})}; }

Term If(const Term& predicate, const std::vector<Term>& terms) {
  return PkgTerm({kIfOp}, Concat({predicate.bytes, TermList(terms)}));
}

Term Notify(const Term& object, const Term& value) {
  return Term{Concat({Bytes{kNotifyOp}, object.bytes, value.bytes})};
}

Resource Io(uint16_t min, uint16_t max, uint8_t alignment, uint8_t length) {
  CLONE_CHECK(min <= max);
  Bytes out{kIoTag, 0x01};  // information: 16-bit decode
  AppendLe(out, min, 2);
  AppendLe(out, max, 2);
  out.push_back(alignment);
  out.push_back(length);
  return Resource{std::move(out)};
}

Resource IrqNoFlags(uint8_t irq) {
  CLONE_CHECK(irq <= 15);
  Bytes out{kIrqNoFlagsTag};
  AppendLe(out, 1u << irq, 2);
  return Resource{std::move(out)};
}

Resource Memory32Fixed(Access access, uint32_t base, uint32_t size) {
  Bytes out{kMemory32FixedTag};
  AppendLe(out, 9, 2);
  out.push_back(static_cast<uint8_t>(access));
  AppendLe(out, base, 4);
  AppendLe(out, size, 4);
  return Resource{std::move(out)};
}

Resource Interrupt(Usage usage, Trigger trigger, Polarity polarity, Sharing sharing,
                   const std::vector<uint32_t>& gsis) {
  CLONE_CHECK(!gsis.empty() && gsis.size() <= 255);
  Bytes out{kExtendedInterruptTag};
  AppendLe(out, 2 + 4 * gsis.size(), 2);
  out.push_back(static_cast<uint8_t>(static_cast<uint8_t>(usage) | static_cast<uint8_t>(trigger) << 1 |
                                     static_cast<uint8_t>(polarity) << 2 | static_cast<uint8_t>(sharing) << 3));
  out.push_back(static_cast<uint8_t>(gsis.size()));
  for (uint32_t gsi : gsis) AppendLe(out, gsi, 4);
  return Resource{std::move(out)};
}

Resource QWordMemory(Usage usage, Cacheability cacheability, Access access, uint64_t min, uint64_t max) {
  return FixedWindow(kQWordAddressTag, 8, kAddressSpaceMemory, usage, MemoryTypeFlags(cacheability, access), min, max);
}

Resource DWordMemory(Usage usage, Cacheability cacheability, Access access, uint32_t min, uint32_t max) {
  return FixedWindow(kDWordAddressTag, 4, kAddressSpaceMemory, usage, MemoryTypeFlags(cacheability, access), min, max);
}

Resource WordBusNumber(Usage usage, uint16_t min, uint16_t max) {
  return FixedWindow(kWordAddressTag, 2, kAddressSpaceBusNumber, usage, 0, min, max);
}

Resource WordIo(Usage usage, uint16_t min, uint16_t max) {
  return FixedWindow(kWordAddressTag, 2, kAddressSpaceIo, usage, kIoEntireRange, min, max);
}

Term ResourceTemplate(const std::vector<Resource>& resources) {
  Bytes data;
  for (const Resource& r : resources) Append(data, r.bytes);
  data.push_back(kEndTag);
  data.push_back(Checksum(data));
  return Buffer(data);
}

}  // namespace clonevm::acpi::aml

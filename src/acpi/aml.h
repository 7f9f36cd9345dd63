// A small AML (ACPI Machine Language) encoder for the DSDT, after ACPI 6.4 chapter 20 (AML
// grammar) and section 6.4 (resource descriptors).
//
// Builders return encoded fragments by value and nest by copying, e.g.
//   aml::Device("COM1", {aml::Name("_HID", aml::EisaId("PNP0501")),
//                        aml::Name("_CRS", aml::ResourceTemplate({aml::IrqNoFlags(4)}))})
// Two fragment types keep the grammar honest: a `Term` is an object or statement that can go in a
// TermList or a Package; a `Resource` is a resource descriptor and only ResourceTemplate takes it.
//
// Contract: inputs come from Clone's own code (device layout, constants), never from a guest.
// A malformed name or an out-of-range argument is a programmer error and aborts (CLONE_CHECK).
// Integers assume a revision-2 definition block (64-bit integers), which is what tables.cc emits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace clonevm::acpi::aml {

using Bytes = std::vector<uint8_t>;

// An encoded AML term: a data object, a named object, a statement or an expression.
struct Term {
  Bytes bytes;
};

// An encoded resource descriptor (ACPI 6.4 §6.4); only valid inside ResourceTemplate().
struct Resource {
  Bytes bytes;
};

// ---- Encoding primitives -------------------------------------------------------------------

// The PkgLength that precedes `content_size` bytes: 1 to 4 bytes, and the encoded value counts
// the PkgLength bytes themselves (ACPI 6.4 §20.2.4). Content of 2^28 - 5 bytes or more aborts.
Bytes PkgLength(size_t content_size);

// A 4-character NameSeg: 1-4 characters [A-Z_][A-Z0-9_]*, padded with '_' ("_SB" -> "_SB_").
Bytes NameSeg(std::string_view seg);

// A NameString: optional root '\' or parent '^' prefixes, then dot-separated NameSegs, e.g.
// "\_SB.PCI0", "^COM1", "ADDR", or "\" alone (the root). Uses Dual/MultiNamePrefix as needed.
Bytes NameString(std::string_view path);

// Concatenates terms, e.g. the body of a definition block.
Bytes TermList(const std::vector<Term>& terms);

// ---- Data objects ---------------------------------------------------------------------------

// The shortest encoding: ZeroOp, OneOp, OnesOp (all 64 bits set), or Byte/Word/DWord/QWord.
Term Integer(uint64_t value);
// A String: printable ASCII without NUL, NUL-terminated in AML.
Term String(std::string_view text);
Term Buffer(std::span<const uint8_t> data);
// A Package of data objects (integers, strings, buffers, packages, name references); at most
// 255 elements.
Term Package(const std::vector<Term>& elements);
// A compressed EISA id ("PNP0501" -> DWord 0x0105D041): 3 uppercase letters, 4 hex digits.
Term EisaId(std::string_view id);
// A reference to a named object, e.g. for Notify(Path("\\_SB.VGEN"), ...).
Term Path(std::string_view path);

// ---- Named objects and statements -----------------------------------------------------------

Term Name(std::string_view name, const Term& object);
Term Scope(std::string_view path, const std::vector<Term>& terms);
Term Device(std::string_view path, const std::vector<Term>& terms);

enum class Serialize : uint8_t { kNotSerialized = 0, kSerialized = 1 };
// A control method with `arg_count` (0-7) arguments and sync level 0.
Term Method(std::string_view name, uint8_t arg_count, Serialize serialize, const std::vector<Term>& terms);
Term Return(const Term& value);
// ArgN inside a method, 0 <= index <= 6.
Term Arg(uint8_t index);
// LEqual(a, b).
Term Equal(const Term& a, const Term& b);
Term If(const Term& predicate, const std::vector<Term>& terms);
Term Notify(const Term& object, const Term& value);

// ---- Resource descriptors (ACPI 6.4 §6.4) ---------------------------------------------------

enum class Usage : uint8_t { kProducer = 0, kConsumer = 1 };  // ResourceProducer/Consumer
enum class Trigger : uint8_t { kLevel = 0, kEdge = 1 };
enum class Polarity : uint8_t { kActiveHigh = 0, kActiveLow = 1 };
enum class Sharing : uint8_t { kExclusive = 0, kShared = 1 };
enum class Access : uint8_t { kReadOnly = 0, kReadWrite = 1 };
enum class Cacheability : uint8_t {
  kNonCacheable = 0,
  kCacheable = 1,
  kWriteCombining = 2,
  kPrefetchable = 3,
};

// IO (Decode16, min, max, alignment, length): a small I/O port descriptor.
Resource Io(uint16_t min, uint16_t max, uint8_t alignment, uint8_t length);
// IRQNoFlags () {irq}: ISA IRQ 0-15, edge-triggered, active high, exclusive.
Resource IrqNoFlags(uint8_t irq);
Resource Memory32Fixed(Access access, uint32_t base, uint32_t size);
// Interrupt (usage, trigger, polarity, sharing) {gsis...}: the extended interrupt descriptor;
// 1-255 interrupt numbers (GSIs on x86).
Resource Interrupt(Usage usage, Trigger trigger, Polarity polarity, Sharing sharing, const std::vector<uint32_t>& gsis);

// Address space descriptors describe a fixed window [min, max]: MinFixed, MaxFixed, PosDecode,
// granularity 0, translation 0, length max - min + 1 (the shape a PCI root bridge uses for its
// windows, with Usage::kProducer). `max - min + 1` must not overflow.
Resource QWordMemory(Usage usage, Cacheability cacheability, Access access, uint64_t min, uint64_t max);
Resource DWordMemory(Usage usage, Cacheability cacheability, Access access, uint32_t min, uint32_t max);
Resource WordBusNumber(Usage usage, uint16_t min, uint16_t max);
// WordIO with EntireRange decode.
Resource WordIo(Usage usage, uint16_t min, uint16_t max);

// A Buffer holding the descriptors followed by an EndTag whose checksum makes the template's
// bytes sum to zero.
Term ResourceTemplate(const std::vector<Resource>& resources);

}  // namespace clonevm::acpi::aml

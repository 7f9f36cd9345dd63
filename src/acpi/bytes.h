// Little-endian byte helpers shared by the AML encoder and the table builders.
//
// ACPI structures are little-endian and byte-packed; building them with explicit stores keeps
// the layout independent of host struct padding and endianness.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "base/check.h"

namespace clonevm::acpi {

// Appends the low `width` bytes of `value` (width 1, 2, 4 or 8), least significant first.
inline void AppendLe(std::vector<uint8_t>& out, uint64_t value, size_t width) {
  CLONE_CHECK(width == 1 || width == 2 || width == 4 || width == 8);
  for (size_t i = 0; i < width; ++i) out.push_back(static_cast<uint8_t>(value >> (8 * i)));
}

// Overwrites out[offset, offset + width) with `value`, least significant byte first.
inline void StoreLe(std::span<uint8_t> out, size_t offset, uint64_t value, size_t width) {
  CLONE_CHECK(width == 1 || width == 2 || width == 4 || width == 8);
  CLONE_CHECK(offset <= out.size() && width <= out.size() - offset);
  for (size_t i = 0; i < width; ++i) out[offset + i] = static_cast<uint8_t>(value >> (8 * i));
}

// The byte that, added to `bytes`, makes their sum zero modulo 256 (ACPI checksum rule).
inline uint8_t Checksum(std::span<const uint8_t> bytes) {
  uint8_t sum = 0;
  for (uint8_t b : bytes) sum = static_cast<uint8_t>(sum + b);
  return static_cast<uint8_t>(0x100 - sum);
}

}  // namespace clonevm::acpi

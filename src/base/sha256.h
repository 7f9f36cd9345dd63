// SHA-256 of a byte string (OpenSSL libcrypto), as lowercase hex.
#pragma once

#include <span>
#include <string>

namespace clonevm {

std::string Sha256Hex(std::span<const uint8_t> data);
// True if `hex` is 64 hexadecimal digits (either case).
bool IsSha256Hex(std::string_view hex);

}  // namespace clonevm

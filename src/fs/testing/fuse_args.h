// Test helper: a FUSE request's argument bytes as the guest kernel lays them out — a fixed struct,
// then NUL-terminated strings (names, link targets), then raw bytes (WRITE data).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace clonevm::fs::testing {

template <typename T>
std::vector<uint8_t> FuseArgs(const T& value, const std::vector<std::string>& strings = {},
                              const std::string& tail = {}) {
  std::vector<uint8_t> bytes(sizeof(T));
  std::memcpy(bytes.data(), &value, sizeof(T));
  for (const auto& s : strings) {
    bytes.insert(bytes.end(), s.begin(), s.end());
    bytes.push_back(0);
  }
  bytes.insert(bytes.end(), tail.begin(), tail.end());
  return bytes;
}

}  // namespace clonevm::fs::testing

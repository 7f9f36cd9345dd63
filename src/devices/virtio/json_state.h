// Helpers for versioned JSON state (snapshots).
//
// Every component's state is a JSON object with an integer "version". A reader accepts every version
// up to the one it writes; fields added later are optional with a default, so older snapshots keep
// loading. A newer version than the reader knows is an error. nlohmann::json throws on type
// mismatches; ParseJsonState turns those exceptions into an Error at this boundary.
#pragma once

#include <limits>
#include <nlohmann/json.hpp>
#include <string_view>

#include "base/result.h"

namespace clonevm::virtio {

// The "version" of `state`, or an error when it is missing, not an integer, or above `supported`.
[[nodiscard]] Result<int> StateVersion(const nlohmann::json& state, int supported, std::string_view what);

// The unsigned integer field `key` of `object`; an error when it is missing, not an unsigned integer,
// or does not fit T.
template <typename T>
[[nodiscard]] Result<T> JsonUint(const nlohmann::json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_number_unsigned()) return Fail("missing or non-integer \"{}\"", key);
  auto value = it->get<uint64_t>();
  if (value > std::numeric_limits<T>::max()) return Fail("\"{}\" = {} is out of range", key, value);
  return static_cast<T>(value);
}

// The boolean field `key` of `object`.
[[nodiscard]] Result<bool> JsonBool(const nlohmann::json& object, const char* key);

// Runs fn() (which reads JSON and may throw) and converts nlohmann::json exceptions to an Error.
template <typename Fn>
[[nodiscard]] Result<void> ParseJsonState(std::string_view what, Fn&& fn) {
  try {
    return fn();
  } catch (const nlohmann::json::exception& e) {
    return Fail("restoring {}: {}", what, e.what());
  }
}

}  // namespace clonevm::virtio

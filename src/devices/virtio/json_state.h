// Helpers for versioned JSON state (snapshots).
//
// Every component's state is a JSON object with an integer "version". A reader accepts every version
// up to the one it writes; fields added later are optional with a default, so older snapshots keep
// loading. A newer version than the reader knows is an error. nlohmann::json throws on type
// mismatches; ParseJsonState turns those exceptions into an Error at this boundary.
#pragma once

#include <nlohmann/json.hpp>
#include <string_view>

#include "base/json.h"
#include "base/result.h"

namespace clonevm::virtio {

// Shorthands over JsonReader (base/json.h, the one checked JSON reader) for flat state objects.

// The "version" of `state`, or an error when it is missing, not an integer, or above `supported`.
[[nodiscard]] inline Result<int> StateVersion(const nlohmann::json& state, int supported, std::string_view what) {
  return JsonReader(state).Version(supported, what);
}

// The unsigned integer field `key` of `object`; an error when it is missing, not an unsigned integer,
// or does not fit T.
template <typename T>
[[nodiscard]] Result<T> JsonUint(const nlohmann::json& object, const char* key) {
  return JsonReader(object).Uint<T>(key);
}

// The boolean field `key` of `object`.
[[nodiscard]] inline Result<bool> JsonBool(const nlohmann::json& object, const char* key) {
  return JsonReader(object).Bool(key);
}

// The string field `key` of `object` (paths and names: at most 64 KiB, no NUL).
[[nodiscard]] inline Result<std::string> JsonString(const nlohmann::json& object, const char* key) {
  return JsonReader(object).String(key, 64 * 1024);
}

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

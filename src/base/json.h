// JsonReader: the one checked reader of JSON objects from outside the process (agent messages, API
// request bodies, VM specs, snapshot configs and device states).
//
// nlohmann::json throws on a type mismatch and happily converts -1 to a huge unsigned or 1.5 to 1.
// Every accessor here checks presence, type and range instead and fails (never throws) with one
// line naming the field by its path from the document root, e.g. "disks[0].path: expected a string"
// or "rows: expected an integer in [1, 65535]". A JSON null counts as absent.
//
// Two styles share the checks: required/optional getters that return a value (String, Uint, ...),
// and Get(key, &field) that overwrites a default only when the key is present (the VM spec's
// "every field optional" form).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "base/result.h"

namespace clonevm {

class JsonReader {
  template <typename T>
  using Id = std::type_identity_t<T>;  // bounds do not take part in deducing T

 public:
  static constexpr size_t kDefaultMaxString = 4096;

  // `path` names `j` in messages ("" for the document root, "disks[0]" for an element).
  explicit JsonReader(const nlohmann::json& j, std::string path = "") : j_(j), path_(std::move(path)) {}

  // Fails unless the value is an object.
  [[nodiscard]] Result<void> ExpectObject() const;
  // Fails for a non-object or a key not in `known` (typos in requests are errors, not ignored).
  [[nodiscard]] Result<void> Expect(std::initializer_list<const char*> known) const;
  // The "version" of a versioned state object: an integer in [1, supported].
  [[nodiscard]] Result<int> Version(int supported, std::string_view what) const;

  // The value at `key`, or nullptr when absent or null.
  const nlohmann::json* Find(const char* key) const;
  bool Has(const char* key) const { return Find(key) != nullptr; }

  // --- Required (missing is an error) and optional getters ---
  [[nodiscard]] Result<std::string> String(const char* key, size_t max_size = kDefaultMaxString) const;
  [[nodiscard]] Result<std::optional<std::string>> OptString(const char* key,
                                                             size_t max_size = kDefaultMaxString) const;
  [[nodiscard]] Result<bool> Bool(const char* key) const;
  [[nodiscard]] Result<bool> BoolOr(const char* key, bool fallback) const;
  [[nodiscard]] Result<double> Number(const char* key) const;
  [[nodiscard]] Result<std::optional<double>> OptNumber(const char* key) const;
  [[nodiscard]] Result<std::vector<std::string>> StringList(const char* key, size_t max_items, bool required) const;

  template <typename T = uint64_t>
  [[nodiscard]] Result<T> Uint(const char* key, Id<T> min = 0, Id<T> max = std::numeric_limits<T>::max()) const {
    const nlohmann::json* v = Find(key);
    if (!v) return Missing(key);
    return static_cast<T>(CLONE_TRY(CheckUint(key, *v, min, max)));
  }
  template <typename T = uint64_t>
  [[nodiscard]] Result<std::optional<T>> OptUint(const char* key, Id<T> min = 0,
                                                 Id<T> max = std::numeric_limits<T>::max()) const {
    const nlohmann::json* v = Find(key);
    if (!v) return std::optional<T>();
    return std::optional<T>(static_cast<T>(CLONE_TRY(CheckUint(key, *v, min, max))));
  }
  template <typename T = uint64_t>
  [[nodiscard]] Result<T> UintOr(const char* key, Id<T> fallback, Id<T> min = 0,
                                 Id<T> max = std::numeric_limits<T>::max()) const {
    return CLONE_TRY(OptUint<T>(key, min, max)).value_or(fallback);
  }

  // The array of unsigned integers at `key` (each fitting T), at most max_items long.
  template <typename T>
  [[nodiscard]] Result<std::vector<T>> UintList(const char* key, size_t max_items, bool required) const {
    std::vector<T> out;
    const nlohmann::json* v = Find(key);
    if (!v) {
      if (required) return Missing(key);
      return out;
    }
    if (!v->is_array()) return Fail("{}: expected an array of integers", Field(key));
    if (v->size() > max_items) return Fail("{}: more than {} items", Field(key), max_items);
    for (size_t i = 0; i < v->size(); ++i) {
      std::string name = fmt::format("{}[{}]", key, i);
      out.push_back(static_cast<T>(CLONE_TRY(CheckUint(name.c_str(), (*v)[i], 0, std::numeric_limits<T>::max()))));
    }
    return out;
  }

  // --- Present-only setters: *out keeps its default when the key is absent ---
  [[nodiscard]] Result<void> Get(const char* key, std::string* out) const;
  [[nodiscard]] Result<void> Get(const char* key, bool* out) const;
  template <typename T>
  [[nodiscard]] Result<void> GetUnsigned(const char* key, T* out) const {
    if (const nlohmann::json* v = Find(key)) {
      *out = static_cast<T>(CLONE_TRY(CheckUint(key, *v, 0, std::numeric_limits<T>::max())));
    }
    return {};
  }

  // Appends read(element) for each element of the array at `key` to *out; errors name "key[i]".
  template <typename T>
  [[nodiscard]] Result<void> Each(const char* key, Result<T> (*read)(const JsonReader&), std::vector<T>* out) const {
    const nlohmann::json* v = Find(key);
    if (!v) return {};
    if (!v->is_array()) return Fail("{}: expected an array", Field(key));
    for (size_t i = 0; i < v->size(); ++i) {
      out->push_back(CLONE_TRY(read(JsonReader((*v)[i], fmt::format("{}[{}]", Field(key), i)))));
    }
    return {};
  }
  // The reader of an array at `key` with at most max_items elements (absent: an empty array).
  [[nodiscard]] Result<std::vector<JsonReader>> Array(const char* key, size_t max_items) const;
  // The reader of the value at `key`, if present.
  std::optional<JsonReader> Child(const char* key) const;

  // "path.key" (or "key" at the root): how messages name a field.
  std::string Field(std::string_view key) const;
  const std::string& path() const { return path_; }
  const nlohmann::json& value() const { return j_; }

 private:
  tl::unexpected<Error> Missing(const char* key) const;
  Result<uint64_t> CheckUint(const char* key, const nlohmann::json& v, uint64_t min, uint64_t max) const;
  Result<std::string> CheckString(const char* key, const nlohmann::json& v, size_t max_size) const;

  const nlohmann::json& j_;
  std::string path_;
};

// Parses `text` as a JSON object; one-line errors ("not valid JSON", "not a JSON object").
[[nodiscard]] Result<nlohmann::json> ParseJsonObject(std::string_view text, std::string_view what);

}  // namespace clonevm

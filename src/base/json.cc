#include "base/json.h"

#include <algorithm>
#include <cmath>

namespace clonevm {

using nlohmann::json;

std::string JsonReader::Field(std::string_view key) const {
  return path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key);
}

tl::unexpected<Error> JsonReader::Missing(const char* key) const {
  return Fail("{}: required field missing", Field(key));
}

Result<void> JsonReader::ExpectObject() const {
  if (j_.is_object()) return {};
  if (path_.empty()) return Fail("expected a JSON object");
  return Fail("{}: expected an object", path_);
}

Result<void> JsonReader::Expect(std::initializer_list<const char*> known) const {
  CLONE_TRY_VOID(ExpectObject());
  for (const auto& item : j_.items()) {
    // (not a structured binding: clang 14 cannot capture one in the lambda)
    const std::string& key = item.key();
    if (std::none_of(known.begin(), known.end(), [&](const char* k) { return key == k; })) {
      return Fail("{}: unknown field", Field(key));
    }
  }
  return {};
}

Result<int> JsonReader::Version(int supported, std::string_view what) const {
  if (!j_.is_object()) return Fail("restoring {}: state is not an object", what);
  const json* v = Find("version");
  if (!v || !v->is_number_integer()) return Fail("restoring {}: no integer \"version\"", what);
  int64_t version = v->get<int64_t>();
  if (version < 1 || version > supported) {
    return Fail("restoring {}: state version {} is not supported (this build reads 1..{})", what, version, supported);
  }
  return static_cast<int>(version);
}

const json* JsonReader::Find(const char* key) const {
  if (!j_.is_object()) return nullptr;
  auto it = j_.find(key);
  if (it == j_.end() || it->is_null()) return nullptr;
  return &*it;
}

Result<std::string> JsonReader::CheckString(const char* key, const json& v, size_t max_size) const {
  if (!v.is_string()) return Fail("{}: expected a string", Field(key));
  const auto& s = v.get_ref<const std::string&>();
  if (s.size() > max_size) return Fail("{}: longer than {} bytes", Field(key), max_size);
  if (s.find('\0') != std::string::npos) return Fail("{}: contains a NUL byte", Field(key));
  return s;
}

Result<uint64_t> JsonReader::CheckUint(const char* key, const json& v, uint64_t min, uint64_t max) const {
  auto range = [&]() -> tl::unexpected<Error> {
    if (min == 0) return Fail("{}: expected a non-negative integer up to {}", Field(key), max);
    return Fail("{}: expected an integer in [{}, {}]", Field(key), min, max);
  };
  uint64_t n;
  if (v.is_number_unsigned()) {
    n = v.get<uint64_t>();
  } else if (v.is_number_integer()) {
    int64_t i = v.get<int64_t>();
    if (i < 0) return range();
    n = static_cast<uint64_t>(i);
  } else {
    return range();
  }
  if (n < min || n > max) return range();
  return n;
}

Result<std::string> JsonReader::String(const char* key, size_t max_size) const {
  const json* v = Find(key);
  if (!v) return Missing(key);
  return CheckString(key, *v, max_size);
}

Result<std::optional<std::string>> JsonReader::OptString(const char* key, size_t max_size) const {
  const json* v = Find(key);
  if (!v) return std::optional<std::string>();
  return std::optional<std::string>(CLONE_TRY(CheckString(key, *v, max_size)));
}

Result<bool> JsonReader::BoolOr(const char* key, bool fallback) const {
  const json* v = Find(key);
  if (!v) return fallback;
  if (!v->is_boolean()) return Fail("{}: expected true or false", Field(key));
  return v->get<bool>();
}

Result<bool> JsonReader::Bool(const char* key) const {
  if (!Find(key)) return Missing(key);
  return BoolOr(key, false);
}

Result<std::optional<double>> JsonReader::OptNumber(const char* key) const {
  const json* v = Find(key);
  if (!v) return std::optional<double>();
  if (!v->is_number()) return Fail("{}: expected a number", Field(key));
  double d = v->get<double>();
  if (!std::isfinite(d)) return Fail("{}: expected a finite number", Field(key));
  return std::optional<double>(d);
}

Result<double> JsonReader::Number(const char* key) const {
  if (!Find(key)) return Missing(key);
  return *CLONE_TRY(OptNumber(key));
}

Result<std::vector<std::string>> JsonReader::StringList(const char* key, size_t max_items, bool required) const {
  std::vector<std::string> out;
  const json* v = Find(key);
  if (!v) {
    if (required) return Missing(key);
    return out;
  }
  if (!v->is_array()) return Fail("{}: expected an array of strings", Field(key));
  if (v->size() > max_items) return Fail("{}: more than {} items", Field(key), max_items);
  out.reserve(v->size());
  for (size_t i = 0; i < v->size(); ++i) {
    const json& item = (*v)[i];
    std::string name = fmt::format("{}[{}]", key, i);
    out.push_back(CLONE_TRY(
        CheckString(name.c_str(), item, std::numeric_limits<size_t>::max())));  // the message bounds the whole list
  }
  return out;
}

Result<void> JsonReader::Get(const char* key, std::string* out) const {
  if (const json* v = Find(key)) *out = CLONE_TRY(CheckString(key, *v, std::numeric_limits<size_t>::max()));
  return {};
}

Result<void> JsonReader::Get(const char* key, bool* out) const {
  if (Find(key)) *out = CLONE_TRY(BoolOr(key, false));
  return {};
}

Result<std::vector<JsonReader>> JsonReader::Array(const char* key, size_t max_items) const {
  std::vector<JsonReader> out;
  const json* v = Find(key);
  if (!v) return out;
  if (!v->is_array()) return Fail("{}: expected an array", Field(key));
  if (v->size() > max_items) return Fail("{}: more than {} items", Field(key), max_items);
  out.reserve(v->size());
  for (size_t i = 0; i < v->size(); ++i) out.emplace_back((*v)[i], fmt::format("{}[{}]", Field(key), i));
  return out;
}

std::optional<JsonReader> JsonReader::Child(const char* key) const {
  const json* v = Find(key);
  if (!v) return std::nullopt;
  return JsonReader(*v, Field(key));
}

Result<json> ParseJsonObject(std::string_view text, std::string_view what) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Fail("{} is not valid JSON", what);
  if (!j.is_object()) return Fail("{} is not a JSON object", what);
  return j;
}

}  // namespace clonevm

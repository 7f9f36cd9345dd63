#include "devices/virtio/json_state.h"

namespace clonevm::virtio {

Result<int> StateVersion(const nlohmann::json& state, int supported, std::string_view what) {
  if (!state.is_object()) return Fail("restoring {}: state is not an object", what);
  auto it = state.find("version");
  if (it == state.end() || !it->is_number_integer()) return Fail("restoring {}: no integer \"version\"", what);
  int version = it->get<int>();
  if (version < 1 || version > supported) {
    return Fail("restoring {}: state version {} is not supported (this build reads 1..{})", what, version, supported);
  }
  return version;
}

Result<bool> JsonBool(const nlohmann::json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_boolean()) return Fail("missing or non-boolean \"{}\"", key);
  return it->get<bool>();
}

}  // namespace clonevm::virtio

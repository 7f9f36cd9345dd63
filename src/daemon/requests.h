// The daemon API's typed request bodies (docs/daemon.md), read with JsonReader and the VM spec's
// JSON form: every bad field is a one-line error naming it ("mem_mib 8: ...", "count: expected an
// integer in [1, 64]", "restart: expected \"no\", \"on-failure\" or \"always\"").
//
// Thread-safety: plain values and free functions.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "base/result.h"
#include "spec/vm_spec.h"

namespace clonevm::daemon {

// What the daemon does when a VM process ends without being asked to (stop/destroy).
enum class RestartPolicy { kNo, kOnFailure, kAlways };
[[nodiscard]] Result<RestartPolicy> ParseRestartPolicy(const std::string& value);
std::string RestartPolicyName(RestartPolicy policy);

inline constexpr uint32_t kMaxForkCount = 64;

// POST /vms: a VmSpec (its JSON form) with two fields of the daemon's own.
struct CreateRequest {
  spec::VmSpec spec;
  bool start = true;  // false: created stopped
  RestartPolicy restart = RestartPolicy::kNo;
};
[[nodiscard]] Result<CreateRequest> ParseCreateRequest(const nlohmann::json& body);

// POST /templates/{name}/fork: the fork overrides' JSON form (spec::OverridesFromJson) with count
// and restart. With count > 1 and a name, the forks are NAME-1 .. NAME-count.
struct ForkRequest {
  spec::ForkOverrides overrides;
  uint32_t count = 1;
  RestartPolicy restart = RestartPolicy::kNo;
};
[[nodiscard]] Result<ForkRequest> ParseForkRequest(const nlohmann::json& body);

// PUT /vms/{id}/snapshot: save the running VM as the template `template` (a snapshot name).
struct SnapshotRequest {
  std::string template_name;
};
[[nodiscard]] Result<SnapshotRequest> ParseSnapshotRequest(const nlohmann::json& body);

// POST /vms/{id}/stop: "agent" asks the guest to power off (forced after timeout_ms), "force" ends
// the VM process at once.
enum class StopMode { kAgent, kForce };
struct StopRequest {
  StopMode mode = StopMode::kAgent;
  uint32_t timeout_ms = 20'000;
};
[[nodiscard]] Result<StopRequest> ParseStopRequest(const nlohmann::json& body);

// A template name (a snapshot name: the rule is snapshot/take.h's ValidateName).
[[nodiscard]] Result<void> CheckTemplateName(const std::string& name);

}  // namespace clonevm::daemon

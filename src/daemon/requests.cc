#include "daemon/requests.h"

#include "base/json.h"
#include "snapshot/format.h"

namespace clonevm::daemon {
namespace {

// Reads "restart" from `r` (absent: kNo).
Result<RestartPolicy> ReadRestart(const JsonReader& r) {
  auto value = CLONE_TRY(r.OptString("restart", 32));
  if (!value) return RestartPolicy::kNo;
  auto policy = ParseRestartPolicy(*value);
  if (!policy) return Fail("restart: {}", policy.error().message());
  return *policy;
}

// `body` without the daemon's own fields, for the spec's reader (which refuses unknown fields).
nlohmann::json Without(const nlohmann::json& body, std::initializer_list<const char*> keys) {
  nlohmann::json rest = body;
  for (const char* key : keys) rest.erase(key);
  return rest;
}

// The daemon's VM processes do not run in the caller's directory: every path must be absolute.
Result<void> CheckAbsolutePaths(const spec::VmSpec& s) {
  auto check = [](const std::string& field, const std::string& path) -> Result<void> {
    if (!path.empty() && path[0] != '/') return Fail("{} '{}': must be an absolute path", field, path);
    return {};
  };
  CLONE_TRY_VOID(check("kernel", s.kernel));
  CLONE_TRY_VOID(check("initrd", s.initrd));
  CLONE_TRY_VOID(check("rootfs.image", s.rootfs.image));
  CLONE_TRY_VOID(check("rootfs.modules", s.rootfs.modules));
  if (s.rootfs.overlay != "tmpfs" && s.rootfs.overlay != "auto")
    CLONE_TRY_VOID(check("rootfs.overlay", s.rootfs.overlay));
  for (size_t i = 0; i < s.disks.size(); ++i) CLONE_TRY_VOID(check(fmt::format("disks[{}].path", i), s.disks[i].path));
  for (size_t i = 0; i < s.shares.size(); ++i) {
    CLONE_TRY_VOID(check(fmt::format("shares[{}].host_path", i), s.shares[i].host_path));
  }
  return {};
}

}  // namespace

Result<RestartPolicy> ParseRestartPolicy(const std::string& value) {
  if (value == "no") return RestartPolicy::kNo;
  if (value == "on-failure") return RestartPolicy::kOnFailure;
  if (value == "always") return RestartPolicy::kAlways;
  return Fail("'{}': expected \"no\", \"on-failure\" or \"always\"", value);
}

std::string RestartPolicyName(RestartPolicy policy) {
  switch (policy) {
    case RestartPolicy::kNo:
      return "no";
    case RestartPolicy::kOnFailure:
      return "on-failure";
    case RestartPolicy::kAlways:
      return "always";
  }
  return "no";
}

Result<CreateRequest> ParseCreateRequest(const nlohmann::json& body) {
  JsonReader r(body);
  CLONE_TRY_VOID(r.ExpectObject());
  CreateRequest request;
  request.start = CLONE_TRY(r.BoolOr("start", true));
  request.restart = CLONE_TRY(ReadRestart(r));
  request.spec = CLONE_TRY(spec::SpecFromJson(Without(body, {"start", "restart"})));
  if (request.spec.kernel.empty()) return Fail("kernel: a kernel image path is required");
  CLONE_TRY_VOID(CheckAbsolutePaths(request.spec));
  return request;
}

Result<ForkRequest> ParseForkRequest(const nlohmann::json& body) {
  JsonReader r(body);
  CLONE_TRY_VOID(r.ExpectObject());
  ForkRequest request;
  request.count = CLONE_TRY(r.UintOr<uint32_t>("count", 1, 1, kMaxForkCount));
  request.restart = CLONE_TRY(ReadRestart(r));
  request.overrides = CLONE_TRY(spec::OverridesFromJson(Without(body, {"count", "restart"})));
  if (request.count > 1 && !request.overrides.taps.empty()) {
    return Fail("taps: a TAP can serve one fork only (count {})", request.count);
  }
  if (request.count > 1 && request.overrides.cid) return Fail("cid: one CID cannot serve {} forks", request.count);
  // NAME-count must still be a VM id.
  if (!request.overrides.name.empty() && request.count > 1 &&
      !spec::IsValidVmId(fmt::format("{}-{}", request.overrides.name, request.count))) {
    return Fail("name '{}': too long for {} forks (NAME-{} must be a VM id)", request.overrides.name, request.count,
                request.count);
  }
  return request;
}

Result<SnapshotRequest> ParseSnapshotRequest(const nlohmann::json& body) {
  JsonReader r(body);
  CLONE_TRY_VOID(r.Expect({"template"}));
  SnapshotRequest request;
  request.template_name = CLONE_TRY(r.String("template", 128));
  CLONE_TRY_VOID(CheckTemplateName(request.template_name));
  return request;
}

Result<StopRequest> ParseStopRequest(const nlohmann::json& body) {
  JsonReader r(body);
  CLONE_TRY_VOID(r.Expect({"mode", "timeout_ms"}));
  StopRequest request;
  auto mode = CLONE_TRY(r.OptString("mode", 16));
  if (mode && *mode == "force") {
    request.mode = StopMode::kForce;
  } else if (mode && *mode != "agent") {
    return Fail("mode '{}': expected \"agent\" or \"force\"", *mode);
  }
  request.timeout_ms = CLONE_TRY(r.UintOr<uint32_t>("timeout_ms", request.timeout_ms, 0, 600'000));
  return request;
}

Result<void> CheckTemplateName(const std::string& name) {
  if (auto valid = snapshot::ValidateName(name); !valid) return Fail("template: {}", valid.error().message());
  return {};
}

}  // namespace clonevm::daemon

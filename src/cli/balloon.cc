#include "cli/balloon.h"

#include "base/log.h"
#include "cli/exit_codes.h"
#include "control/client.h"
#include "runtime/balloon_policy.h"
#include "runtime/vm_dir.h"

namespace clonevm::cli {
namespace {

constexpr std::chrono::milliseconds kRequestTimeout{5000};

Result<int> SetTarget(const BalloonOptions& o) {
  uint64_t mib = CLONE_TRY(ParseMemoryMib(o.target).map_error([](const Error& e) { return e.Wrap("--target"); }));
  VmEntry vm = CLONE_TRY(FindVm(o.vm_id));
  auto response = CLONE_TRY(
      control::Call(vm.control_socket(), "PUT", "/vm/balloon", nlohmann::json{{"target_mib", mib}}, kRequestTimeout));
  auto body = control::ResponseJson(response);
  if (!body) return Fail(body.error().Wrap(vm.id));
  if (o.json) {
    fmt::print("{}\n", body->dump(2));
  } else {
    fmt::print("{}: the guest is asked to keep {} MiB (now {:.0f} MiB; the balloon holds {:.0f} MiB)\n", vm.id, mib,
               body->value("actual_mib", 0.0), body->value("balloon_mib", 0.0));
  }
  return kExitOk;
}

}  // namespace

void AddBalloonFlags(CLI::App* run, spec::VmSpec& vm) {
  run->add_flag_callback(
      "--no-ksm", [&vm] { vm.ksm = false; },
      "Do not offer guest RAM to KSM (default: MADV_MERGEABLE; whether KSM runs is the host's setting, see 'clone "
      "check')");
  spec::BalloonSpec& spec = vm.balloon;
  run->add_option("--balloon", spec.mode,
                  "Memory balloon: manual (default: free page reporting gives freed guest memory back, "
                  "'clone balloon' sets a target), auto (manual + inflate while the agent reports the guest "
                  "idle, deflate when it is active), off (no balloon device)")
      ->capture_default_str();
  run->add_option("--balloon-floor", spec.floor, "auto: memory an idle guest keeps at the last step (default 24M)");
  run->add_option("--balloon-times", spec.times,
                  "auto: IDLE1,IDLE2,IDLE3,COOLDOWN,BURST_COOLDOWN (default 30s,2m,5m,60s,3m)");
  run->add_flag_callback(
      "--no-balloon", [&spec] { spec.mode = "off"; }, "No balloon device (--balloon off)");
  run->add_flag_callback(
      "--no-free-page-reporting", [&spec] { spec.free_page_reporting = false; },
      "Keep the balloon but do not give pages the guest frees back to the host");
  run->add_option("--balloon-stats-interval", spec.stats_interval_s,
                  "Seconds between refreshes of the guest's memory statistics in 'GET /vm' (0: none)")
      ->capture_default_str();
}

void AddBalloonCommand(CLI::App& app, BalloonOptions& o) {
  auto* balloon = app.add_subcommand("balloon", "Set how much memory a running VM's guest keeps (its balloon target)");
  balloon->add_option("--vm-id", o.vm_id, "The VM (default: the only running VM)");
  balloon->add_option("--target", o.target, "Memory the guest keeps: 64M, 1G, 256 (MiB); its RAM size deflates fully")
      ->required();
  balloon->add_flag("--json", o.json, "Print the balloon's state as JSON");
  balloon->footer(
      "Examples:\n"
      "  clone balloon --target 64M                 # the only VM gives all but 64 MiB back\n"
      "  clone balloon --vm-id web1 --target 512M    # deflate a 512 MiB VM completely\n"
      "The guest's balloon driver gives pages back in steps; 'clone status' shows the result.");
}

int BalloonCommand(const BalloonOptions& o) {
  auto status = SetTarget(o);
  if (!status) {
    Log(LogLevel::kError, "balloon: {}", status.error().message());
    return kExitError;
  }
  return *status;
}

}  // namespace clonevm::cli

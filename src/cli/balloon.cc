#include "cli/balloon.h"

#include <charconv>

#include "base/log.h"
#include "cli/exit_codes.h"
#include "control/client.h"
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

Result<uint64_t> ParseMemoryMib(const std::string& text) {
  uint64_t value = 0;
  const char* end = text.data() + text.size();
  auto [rest, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || rest == text.data()) return Fail("'{}': expected a size such as 64M, 1G or 256", text);
  std::string_view unit(rest, static_cast<size_t>(end - rest));
  uint64_t kib = 0;
  constexpr uint64_t kMax = uint64_t{1} << 40;  // KiB: far above any guest
  if (value > kMax) return Fail("'{}': too large", text);
  if (unit.empty() || unit == "M" || unit == "m" || unit == "MiB") {
    kib = value * 1024;
  } else if (unit == "G" || unit == "g" || unit == "GiB") {
    kib = value * 1024 * 1024;
  } else if (unit == "K" || unit == "k" || unit == "KiB") {
    kib = value;
  } else {
    return Fail("'{}': unknown unit '{}' (use K, M or G)", text, unit);
  }
  if (kib < 1024) return Fail("'{}': at least 1M", text);
  return kib / 1024;
}

void AddBalloonFlags(CLI::App* run, spec::BalloonSpec& spec) {
  run->add_option("--balloon", spec.mode,
                  "Memory balloon: manual (default: free page reporting gives freed guest memory back, "
                  "'clone balloon' sets a target), off (no balloon device)")
      ->capture_default_str();
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

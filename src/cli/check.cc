#include "cli/check.h"

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "base/fd.h"
#include "cli/exit_codes.h"
#include "host/check.h"

namespace clonevm::cli {

void AddCheckCommand(CLI::App& app, CheckOptions& o) {
  auto* check = app.add_subcommand(
      "check",
      "Can Clone run here? KVM (kind, permissions, capabilities), vhost, TUN, KSM, userfaultfd, IOMMU/VFIO, tools.\n"
      "Exit status 0 when stock Linux guests run on this host, 1 when they cannot. Needs no root.\n"
      "Example: clone check && clone run --kernel vmlinuz --initrd initrd.img");
  check->add_flag("--json", o.json, "Print JSON (stock_guests, kvm_kind, reason, checks[], ksm)");
  check->add_flag("-q,--quiet", o.quiet, "Print nothing: only the exit status");
}

int CheckCommand(const CheckOptions& o) {
  host::System system;
  host::Report report = host::Check(system);
  if (o.json) {
    std::string out = report.ToJson().dump(2) + "\n";
    [[maybe_unused]] auto r = WriteAll(STDOUT_FILENO, out.data(), out.size());
  } else if (!o.quiet) {
    const char* term = ::getenv("TERM");
    bool color = ::isatty(STDOUT_FILENO) && ::getenv("NO_COLOR") == nullptr && term != nullptr &&
                 std::string_view(term) != "dumb";
    std::string out = report.ToText(color);
    [[maybe_unused]] auto r = WriteAll(STDOUT_FILENO, out.data(), out.size());
  }
  return report.stock_guests() ? kExitOk : kExitError;
}

}  // namespace clonevm::cli

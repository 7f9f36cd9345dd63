#include "vmm/boot_timer.h"

#include <fmt/format.h>

namespace clonevm {

std::string BootTimer::Summary() const {
  std::lock_guard lock(mu_);
  std::string out;
  for (const auto& m : marks_) {
    double ms = std::chrono::duration<double, std::milli>(m.when - start_).count();
    if (!out.empty()) out += ", ";
    out += fmt::format("{} {:.2f} ms", m.phase, ms);
  }
  return out;
}

}  // namespace clonevm

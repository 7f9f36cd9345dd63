// The balloon's part of a VM's control API (docs/api/openapi.yaml, docs/density.md).
//
//   PUT /vm/balloon {"target_mib": N}: the guest should keep N MiB (0 < N <= its RAM): the balloon
//     is asked to hold the rest. N = the guest's RAM deflates the balloon completely. 400 for a bad
//     body, 409 when the VM has no balloon.
//   GET /vm "balloon": BalloonJson() — null without a balloon.
//
// Sizes are what the guest has, not what the balloon holds: target_mib is the memory the guest is
// asked to keep, actual_mib what it keeps now (RAM minus the driver's "actual"); balloon_mib is the
// balloon itself. Handlers run on the VM's event loop.
#pragma once

#include <nlohmann/json.hpp>

#include "control/router.h"
#include "vmm/vm.h"

namespace clonevm {

nlohmann::json BalloonJson(const Vm& vm);
control::Router::Handler BalloonRoute(Vm& vm);

}  // namespace clonevm

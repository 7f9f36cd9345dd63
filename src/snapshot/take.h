// Taking a snapshot of a running Vm and turning a snapshot's config back into a VmConfig.
//
// Take() runs on the VM's event-loop thread (the control API handler does): that thread is what
// serves virtqueue notifications, device fds and console input, so while it writes the snapshot
// nothing else touches device state. The vCPUs are parked (Vm::Pause), out-of-VMM data paths
// stopped and block I/O completed (Vm::PauseDevices), then the state and the memory are written
// (format.h) and everything is resumed — the vCPUs only when `resume` is set. The loop is blocked
// for the write (hundreds of ms for a 256 MiB guest): acceptable for a paused VM, and it keeps the
// protocol free of cross-thread hand-offs. A failure leaves the VM as it was (running or paused)
// and no snapshot under the name.
//
// Disks are recorded and frozen as snapshot/disks.h says, while the devices are paused.
//
// Incremental snapshots: after the first successful Take() of a VM, the VM tracks dirty pages
// (Vm::StartDirtyTracking, with everything still paused) and remembers that snapshot as its base
// (name, directory, the random id in its config); every later Take() re-bases it. With
// `parent` set, Take() requires the VM's base to be exactly that snapshot (same directory, and the
// snapshot on disk still carries the recorded id) and writes only the pages dirtied since
// (Vm::CollectDirtyPages), as format.h's incremental snapshot. A failed write hands the collected
// pages back, so nothing dirty is forgotten.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "base/result.h"
#include "control/router.h"
#include "snapshot/disks.h"
#include "snapshot/format.h"
#include "vmm/vm.h"

namespace clonevm::snapshot {

struct TakeOptions {
  std::string dir;  // the templates directory
  std::string name;
  std::string parent;  // non-empty: an incremental snapshot over this one (see above)
  bool resume = true;  // resume the vCPUs afterwards (false: the VM stays paused)
  std::string source_vm;
  nlohmann::json info = nlohmann::json::object();  // facts recorded in the config (kernel, ...)
};

struct TakeResult {
  WriteResult written;
  double paused_ms = 0;  // how long the vCPUs were stopped
};

// Loop thread (see above).
[[nodiscard]] Result<TakeResult> Take(Vm& vm, const TakeOptions& options);

// The snapshot's shared directories as the VM takes them (RestoreVmConfig uses this; a fork
// resolves --shared-dir overrides against it before anything starts).
std::vector<SharedDirConfig> RecordedSharedDirs(const SnapshotConfig& config);

// The config a VM must be built with to restore `config`'s snapshot (in directory `snapshot_path`):
// memory, vCPUs, virtio-rng, vsock with the saved CID, and the disks as disks.h says — read-only
// ones reopened (paths rewritten by `disks.rewrites`), writable ones as new qcow2 overlays in
// `disks.overlay_dir` on the snapshot's frozen bases. A missing or changed base is an error and
// leaves no overlay behind; on success the caller owns the overlays (they live as long as the
// overlay directory: the new VM's runtime directory). The kernel, initrd and console are left
// empty for the caller.
[[nodiscard]] Result<VmConfig> RestoreVmConfig(const SnapshotConfig& config, const std::string& snapshot_path,
                                               const DiskPlan& disks);

// Whether `parent` can be the parent of an incremental snapshot of `vm` in `dir` (see above); the
// error says what to do instead. Loop thread.
[[nodiscard]] Result<SnapshotParent> CheckParent(const Vm& vm, const std::string& dir, const std::string& parent);

// PUT /vm/snapshot {"name": "...", "dir": "...", "resume": true, "parent": "..."}: Take() on the
// loop thread; 201 {"name", "path", "memory_bytes", "data_bytes", "paused_ms", "parent"?}; 400 for a
// bad body or name, 409 when the name exists, the VM cannot be snapshotted or the parent is not
// this VM's base, 500 for host failures.
control::Router::Handler SnapshotRoute(Vm& vm, std::string source_vm, nlohmann::json info);

}  // namespace clonevm::snapshot

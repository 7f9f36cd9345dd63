// The VM process from a spec: one entry point, three ways to build the VM.
//
//   boot     the spec's kernel, initrd or rootfs, disks, networks and shares, opened here;
//   restore  a snapshot's VM continued as the same machine (machine-id, CID, hostname kept unless
//            the spec says otherwise);
//   fork     a snapshot's VM as a new machine: ApplyForkIdentity below.
//
// RunVmProcess builds the VM in the calling process (which becomes the VM process: KVM binds a VM
// to the process that created it), serves it (runtime directory, sockets, agent link; VmService)
// and runs it to its end. `clone run`, `clone restore`, `clone fork` and the daemon's VM processes
// all start VMs through it; the CLI only parses flags into a spec and maps the result to an exit
// status.
//
// Everything that can fail because of a file, a permission or the snapshot fails before KVM is
// opened and is returned as an Error; every step undoes itself (network lease and TAP, runtime
// directory, overlays). Once the VM has run, the result is how it ended (VmExit).
//
// A fork's identity, applied in one place and in this order (ApplyForkIdentity): the vsock CID
// (the first free one unless the spec names one; the device queues TRANSPORT_RESET so the guest
// re-reads it), the TAPs and MACs (the spec's: --net leases its own), the identity page (generation
// + 1, a fresh token and entropy seed), the VMGenID (changed, the guest notified before its first
// instruction) and the agent's identity on its first connection (hostname = VM id, a new
// machine-id, the address, the time, entropy). The last three are VmService's, told by
// ServiceOptions; the first two are the VM config's.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "snapshot/format.h"
#include "spec/vm_spec.h"
#include "vmm/boot_timer.h"
#include "vmm/vm.h"

namespace clonevm {

enum class LaunchKind { kBoot, kRestore, kFork };

struct Launch {
  LaunchKind kind = LaunchKind::kBoot;
  spec::VmSpec spec;                       // validated (ValidateSpec / ApplyOverrides)
  snapshot::Loaded* loaded = nullptr;      // restore and fork: the snapshot, read and checked
  std::vector<std::string> disk_rewrites;  // restore and fork: FROM=TO (snapshot/disks.h)
  bool detached = false;                   // console to <dir>/console.log; stdio let go once running
  std::string vmm_log;                     // detached: stderr once running (empty: <dir>/vmm.log)
  // The agent sets the guest's hostname to the VM id: a named boot or restore, and every fork.
  bool set_hostname = false;
  // When the user asked (for a fork, before the VM process was forked): GET /vm's timings start here.
  std::chrono::steady_clock::time_point launched = std::chrono::steady_clock::now();
};

// Runs the VM process for `launch`; `ready` (a detached parent's pipe, may be empty) is told
// "ok <id>" once the VM runs (ReportDetachedReady). Returns how the VM ended, or why it did not start.
[[nodiscard]] Result<VmExit> RunVmProcess(const Launch& launch, Fd ready, BootTimer& timer);

// A snapshot's network devices are fixed: the spec must supply one TAP per recorded device (--net
// counts as one). The error says how many of each.
[[nodiscard]] Result<void> CheckNetworks(const snapshot::SnapshotConfig& config, const spec::VmSpec& spec);

// In a detached VM process once the VM runs: tells the parent "ok <id>\n", then lets go of the
// terminal (stdin and stdout to /dev/null) and sends stderr to `log_path` (the VM's vmm.log).
void ReportDetachedReady(Fd& ready, const std::string& id, const std::string& log_path);

}  // namespace clonevm

// `clone fork`: new VMs from a template, each a distinct machine.
//
//   clone fork --template N [--count K] [--name ID] [-d] [--net | --tap T ...] [--cid C]
//              [--block FROM=TO ...] [--dir D]
//   clone fork --vm-id SRC [--template N] ...        fork a running VM (it keeps running)
//
// A fork is a restore (snapshot/format.h: the template's memory mapped MAP_PRIVATE, so all forks
// share its page cache and copy on write) that gets a fresh identity before its first instruction:
// a new VM id, identity page (generation + 1, token, entropy seed, VMGenID), vsock CID (the first
// free one, or --cid; the vsock device queues TRANSPORT_RESET so the guest driver re-reads it), a
// new TAP and MAC when networked (--net: its own lease; --tap: the given TAPs), and on the agent's
// first connection hostname = VM id, a new /etc/machine-id, the address, the host's time and
// credited entropy with a forced CRNG reseed. The kvmclock is advanced to now at restore.
//
// The snapshot is read and checked once, in the calling process, before anything forks; then each
// fork is a VM process of its own (--count K starts them all, then waits for each to report). A
// fork that fails removes what it made (runtime directory, lease, TAP) before it exits; the others
// are not affected. --count > 1 implies --detach: the ids are printed one per line.
//
// --vm-id SRC: PUT /vm/snapshot on the running VM (vCPUs paused only for the write, resumed after),
// then forks from that snapshot: under --template N when given (kept), else a temporary one that
// is removed once the forks have started (they hold its files open).
//
// A fork's spec is the template's recorded spec with the flags applied (spec::ApplyOverrides): a
// writable shared directory of the template must be given a directory of the fork's own
// (--shared-dir DIR:TAG) or be served read-only (--shared-dir HOST:TAG:ro); --block FROM=TO
// re-points a recorded disk (a plain image path is refused: the guest's devices are fixed).
//
// `clone restore` shares the VM-process half (RunFromSnapshot → runtime/launch.h) and differs only
// in identity: it continues the same machine (machine-id, CID and hostname kept unless told otherwise).
#pragma once

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "snapshot/format.h"
#include "spec/vm_spec.h"
#include "vmm/boot_timer.h"

namespace clonevm::cli {

struct ForkOptions {
  std::string template_name;  // --template
  std::string vm_id;          // --vm-id: fork this running VM
  uint32_t count = 1;
  std::string name;  // the fork's id (with --count K: NAME-1 .. NAME-K)
  bool detach = false;
  bool net = false;
  std::vector<std::string> taps;
  std::vector<std::string> shared_dirs;  // --shared-dir HOST:TAG[:ro]: a new directory for TAG
  uint64_t cid = 0;                      // 0: the first free CID
  std::vector<std::string> blocks;       // --block FROM=TO: disk path rewrites
  std::string dir;
  bool seccomp = false;  // --seccomp (also implied by a template of a confined VM)
};

// The flags fork and restore share, as the overrides of the snapshot's recorded spec
// (spec/vm_spec.h); a bad value is a usage error naming the flag. cid 0: not given.
struct OverrideFlags {
  bool net = false;
  std::vector<std::string> taps;
  std::vector<std::string> shared_dirs;
  std::vector<std::string> blocks;
  uint64_t cid = 0;
  bool seccomp = false;
};
[[nodiscard]] Result<spec::ForkOverrides> ParseOverrideFlags(const OverrideFlags& flags);

// Runs the VM process for a snapshot (restore or fork) in the calling process: the recorded spec
// with `overrides` applied, checked (usage errors → kExitUsage) before anything is made; returns the
// exit status. `ready` (from ForkDetached) is told the id once the VM runs; `vmm_log` as Launch's.
int RunFromSnapshot(snapshot::Loaded& loaded, const spec::ForkOverrides& overrides, spec::SnapshotUse use,
                    bool detached, bool set_hostname, std::chrono::steady_clock::time_point launched, Fd ready,
                    BootTimer& timer, const std::string& vmm_log = "");

void AddForkCommand(CLI::App& app, ForkOptions& options);
int ForkCommand(const ForkOptions& options, BootTimer& timer);

}  // namespace clonevm::cli

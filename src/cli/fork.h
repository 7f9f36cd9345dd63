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
// `clone restore` shares the VM-process half (RunSnapshotVm) and differs only in identity: it
// continues the same machine (machine-id, CID and hostname kept unless told otherwise).
#pragma once

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "base/fd.h"
#include "snapshot/format.h"
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

// What one VM process made from a snapshot needs (restore or fork).
struct SnapshotVmSpec {
  snapshot::Loaded* loaded = nullptr;  // read and checked
  std::string id;                      // the VM id (empty: a random one)
  bool detach = false;
  bool fork = false;  // fresh identity (machine-id, hostname) vs. the same machine
  bool set_hostname = false;
  std::optional<uint64_t> cid;           // vsock CID override (0: the first free one)
  std::vector<std::string> shared_dirs;  // --shared-dir overrides of the snapshot's directories
  bool net = false;
  std::vector<std::string> taps;
  std::vector<std::string> blocks;
  bool seccomp = false;  // --seccomp; a snapshot of a confined VM (config info "seccomp") implies it
  std::chrono::steady_clock::time_point launched = std::chrono::steady_clock::now();
};

// Runs the VM process for `spec` (in the calling process, which it becomes): returns its exit
// status. `ready` (from ForkDetached) is told the id once the VM runs.
int RunSnapshotVm(const SnapshotVmSpec& spec, Fd ready, BootTimer& timer);

void AddForkCommand(CLI::App& app, ForkOptions& options);
int ForkCommand(const ForkOptions& options, BootTimer& timer);

}  // namespace clonevm::cli

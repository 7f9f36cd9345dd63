// `clone run`: boot a kernel in a new VM in the foreground, console on stdin/stdout.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "block/image.h"
#include "net/vm_network.h"
#include "runtime/vm_service.h"
#include "vmm/vm.h"

namespace clonevm::cli {

inline constexpr const char* kDefaultCmdline = "console=ttyS0 quiet";

struct RunOptions {
  std::string kernel;
  std::string initrd;
  std::string cmdline = kDefaultCmdline;
  uint64_t mem_mb = 512;
  uint32_t vcpus = 1;
  std::string kernel_sha256;
  bool boot_timing = false;
  std::vector<std::string> blocks;       // --block PATH[,ro][,format=raw|qcow2]
  uint64_t cid = 0;                      // --cid N: the guest's vsock CID (0: automatic)
  std::vector<std::string> taps;         // --tap NAME[,mac=XX:XX:XX:XX:XX:XX][,vhost=on|off]
  std::vector<std::string> shared_dirs;  // --shared-dir HOST:TAG[:ro] (virtio-fs)
  bool net = false;                      // --net: a TAP on Clone's NAT bridge, address set by the agent
  std::string rootfs;                    // --rootfs IMG: boot from a disk image via a generated initrd
  std::string overlay;                   // --overlay[=tmpfs]: share the rootfs read-only under an overlay
  std::string modules;                   // --modules DIR: the kernel's modules (default /lib/modules/RELEASE)
  std::string name;                      // --name ID: the VM id (default: a random vm-xxxxxx)
  bool detach = false;                   // --detach: run in the background, print the id
  bool seccomp = false;                  // --seccomp: confine each thread to its role (sandbox/seccomp.h)
};

// A parsed --block value.
struct BlockSpec {
  std::string path;
  bool read_only = false;
  Format format = Format::kAuto;
};
[[nodiscard]] Result<BlockSpec> ParseBlockSpec(const std::string& value);

// A parsed --tap value.
struct TapSpec {
  std::string name;
  std::optional<virtio::MacAddress> mac;  // default: a random locally administered MAC
  virtio::VhostMode vhost = virtio::VhostMode::kAuto;
};
[[nodiscard]] Result<TapSpec> ParseTapSpec(const std::string& value);

// A parsed --shared-dir HOST:TAG[:ro][:squash-root] (the options in either order): the host path
// made absolute (not checked for existence); the tag 1..36 characters of [A-Za-z0-9._-]. HOST
// may itself contain ':'.
[[nodiscard]] Result<SharedDirConfig> ParseSharedDirSpec(const std::string& value);
// Checks a VM's shared directories: each host path an existing directory, no tag twice.
[[nodiscard]] Result<void> CheckSharedDirs(const std::vector<SharedDirConfig>& dirs);
// A restore's or fork's shared directories: the snapshot's `recorded` ones, where a --shared-dir
// HOST:TAG[:ro][:squash-root] names a new host directory (and modes) for a recorded TAG. A tag the snapshot does
// not have is an error (the guest's devices are fixed); the result is checked (CheckSharedDirs).
[[nodiscard]] Result<std::vector<SharedDirConfig>> ResolveSharedDirs(const std::vector<SharedDirConfig>& recorded,
                                                                     const std::vector<std::string>& specs);

void AddRunCommand(CLI::App& app, RunOptions& options);

// Checks the values that need no file access (sizes, counts, formats).
[[nodiscard]] Result<void> ValidateRunOptions(const RunOptions& options);
// Reads and verifies the kernel and initrd: everything a bad file can break, before KVM is opened.
[[nodiscard]] Result<VmConfig> PrepareVmConfig(const RunOptions& options);

// --tap values: each TAP opened (IFF_VNET_HDR) and appended to *nets.
[[nodiscard]] Result<void> AddTaps(const std::vector<std::string>& taps, std::vector<NetConfig>* nets);
// --net: a lease, the shared bridge + NAT and a TAP of the VM's own (net/vm_network.h), appended
// to *nets; the guest's address goes into service->network (applied by the agent) and info.
[[nodiscard]] Result<net::VmNetwork> AttachAutoNetwork(const std::string& id, std::vector<NetConfig>* nets,
                                                       ServiceOptions* service);

// The VM process's life once its VM is built: Serve (identity page, sockets, agent link), tell a
// detached parent (`ready`), Run to the end with the terminal raw, tear down; logs how the VM
// ended and returns the exit status (ExitStatusFor).
int ServeAndRun(std::unique_ptr<VmService> service, std::unique_ptr<Vm> vm, Fd& ready);

// Runs the VM; returns the process exit status.
int RunCommand(const RunOptions& options, BootTimer& timer);

// The exit status of `clone run` (and `clone restore`) for how the VM ended (see exit_codes.h).
int ExitStatusFor(const VmExit& exit);

// --detach for commands that start a VM process: forks before KVM is touched; returns the parent's
// exit status in the parent (after the child reported "ok <id>" or failed) and nullopt in the
// child, which calls ReportDetachedReady once the VM runs: it reports the id, then lets go of the
// terminal (stdin and stdout to /dev/null) and sends its stderr to `log_path` (the VM directory's
// vmm.log), so a detached VM's warnings, errors and a seccomp report are not lost.
std::optional<int> ForkDetached(Fd* ready);
void ReportDetachedReady(Fd& ready, const std::string& id, const std::string& log_path);
// The parent's side: reads the pipe to EOF; "<id>\n" when the child reported "ok <id>\n", nullopt
// when it ended without (it failed and logged why).
std::optional<std::string> AwaitReady(const Fd& pipe);

}  // namespace clonevm::cli

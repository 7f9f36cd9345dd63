#include "cli/run.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include "base/log.h"
#include "cli/balloon.h"
#include "cli/exit_codes.h"
#include "runtime/launch.h"

namespace clonevm::cli {

int ExitStatusFor(const VmExit& exit) {
  switch (exit.reason) {
    case VmExitReason::kPowerOff:
      return kExitOk;
    case VmExitReason::kReset:
      return kExitGuestReboot;
    case VmExitReason::kCrash:
      return kExitGuestCrash;
    case VmExitReason::kSignal:
      return kExitSignalBase + exit.signal;
    case VmExitReason::kError:
      return kExitError;
  }
  return kExitError;
}

void AddRunCommand(CLI::App& app, RunOptions& o) {
  auto* run = app.add_subcommand("run", "Boot a Linux kernel in a new VM, console on this terminal");
  run->footer(
      "Examples:\n"
      "  clone run --kernel /boot/vmlinuz --initrd initrd.img\n"
      "  clone run --kernel vmlinuz --initrd initrd.img --vcpus 2 --mem-mb 1024 --cmdline 'console=ttyS0'\n"
      "  clone run --kernel vmlinuz --initrd initrd.img --shared-dir /srv/data:data --shared-dir /srv/ref:ref:ro\n"
      "    (guest: mount -t virtiofs data /mnt)\n"
      "On a terminal, Ctrl-A x stops the VM.\n"
      "Exit status: 0 guest powered off, 1 VMM error, 2 usage error, 3 guest rebooted,\n"
      "4 guest crashed, 128+N stopped by signal N.");
  AddSpecFlags(run, o);
  run->add_flag("--boot-timing", o.boot_timing, "Print VMM phase timings and the time to the first guest output");
  run->add_flag("-d,--detach", o.detach,
                "Run in the background: print the VM id once it runs and return; the console goes to "
                "the VM's console socket ('clone attach') and console.log");
}

void AddSpecFlags(CLI::App* run, RunOptions& o) {
  run->add_option("--kernel", o.spec.kernel, "Kernel image: bzImage or ELF vmlinux (PVH entry used if present)")
      ->required();
  run->add_option("--initrd", o.spec.initrd, "Initial ramdisk (cpio, optionally compressed)");
  run->add_option("--cmdline", o.spec.cmdline, "Kernel command line ('reboot=acpi' is appended unless it sets reboot=)")
      ->capture_default_str();
  run->add_option("--mem-mb", o.spec.mem_mib, "Guest RAM in MiB (committed on first touch)")->capture_default_str();
  run->add_option("--vcpus", o.spec.vcpus, "Number of vCPUs")->capture_default_str();
  run->add_option("--kernel-sha256", o.spec.kernel_sha256, "Refuse to boot unless the kernel's SHA-256 is this (hex)");
  run->add_option("--block", o.blocks,
                  "Attach a disk image as virtio-blk (repeatable; the first is /dev/vda): "
                  "PATH[,ro][,format=raw|qcow2]; the format is probed when not given");
  run->add_option("--cid", o.spec.cid,
                  "The guest's vsock CID (3..4294967294); without it, a free CID is chosen when "
                  "/dev/vhost-vsock exists");
  run->add_option("--tap", o.taps,
                  "Attach an existing TAP interface as virtio-net (repeatable; in order after --net's, which is eth0): "
                  "NAME[,mac=52:54:00:12:34:56][,vhost=on|off] (vhost-net when available by default)");
  run->add_option("--shared-dir", o.shared_dirs,
                  "Share a host directory as virtio-fs (repeatable): HOST:TAG[:ro][:squash-root]; the guest "
                  "mounts it with 'mount -t virtiofs TAG /mnt'. TAG: 1-36 of A-Z a-z 0-9 . _ -; ro refuses "
                  "every change (EROFS). Served in-process; the guest cannot reach outside HOST. As root, "
                  "new files belong to the guest caller and guest root is root on the share; squash-root "
                  "runs every request as its caller with guest root as nobody (docs/virtiofs.md)");
  run->add_option("--rootfs", o.spec.rootfs.image,
                  "Boot from this disk image (ext4; becomes /dev/vda): Clone generates an initrd that "
                  "mounts it and runs its /sbin/init");
  run->add_option("--overlay", o.spec.rootfs.overlay,
                  "With --rootfs: open the image read-only (shareable by many VMs) and keep this VM's "
                  "changes in an overlay: --overlay (=tmpfs, discarded at exit), --overlay PATH.qcow2 "
                  "(persistent; created if missing), --overlay auto (a temporary qcow2 under "
                  "~/.clone/overlays, removed at exit)")
      ->expected(0, 1)
      ->default_str("tmpfs");
  run->add_option("--modules", o.spec.rootfs.modules,
                  "With --rootfs: the kernel's modules directory (default /lib/modules/<kernel release>)");
  run->add_flag("--net", o.spec.net,
                "Automatic networking: a TAP on the bridge clonebr0 (created if missing, 172.30.0.1/24) "
                "with NAT to the host's uplink; the guest's address (leased per VM) and MAC are applied "
                "by the guest agent. Removed when the VM exits (the bridge stays for other VMs)");
  run->add_option("--name", o.spec.name,
                  "The VM id used by attach/exec/list (a-z, 0-9, '-'; default: a random vm-xxxxxx)");
  run->add_flag("--seccomp", o.spec.seccomp,
                "Confine the VM process with seccomp: the event loop, each vCPU and the agent/request workers may "
                "make only the syscalls their role needs (no exec, no new processes, no executable memory); "
                "a forbidden call stops the VM with one line on stderr naming the thread role and syscall");
  AddBalloonFlags(run, o.spec);
}

Result<spec::VmSpec> SpecFromRunOptions(const RunOptions& o) {
  spec::VmSpec s = o.spec;
  for (const auto& value : o.blocks) s.disks.push_back(CLONE_TRY(spec::ParseDiskSpec(value)));
  for (const auto& value : o.taps) s.taps.push_back(CLONE_TRY(spec::ParseTapSpec(value)));
  for (const auto& value : o.shared_dirs) s.shares.push_back(CLONE_TRY(spec::ParseShareSpec(value)));
  CLONE_TRY_VOID(spec::ValidateSpec(s, spec::Spelling::kFlags));
  return s;
}

// --detach: forks before anything else (KVM binds a VM to the process that created it). The parent
// waits until the child reports the VM running ("ok <id>" on a pipe) and prints the id, or returns
// the child's exit status when it failed (the child has printed why on the inherited stderr).
// Returns nullopt in the child, with the pipe's write end in *ready.
std::optional<int> ForkDetached(Fd* ready) {
  auto pipe = Pipe();
  if (!pipe) {
    Log(LogLevel::kError, "{}", pipe.error().message());
    return kExitError;
  }
  pid_t pid = ::fork();
  if (pid < 0) {
    Log(LogLevel::kError, "fork: {}", std::strerror(errno));
    return kExitError;
  }
  if (pid == 0) {
    pipe->read.reset();
    ::setsid();
    *ready = std::move(pipe->write);
    return std::nullopt;
  }
  pipe->write.reset();
  Fd read_end = std::move(pipe->read);
  if (auto id = AwaitReady(read_end)) {
    [[maybe_unused]] auto r = WriteAll(STDOUT_FILENO, id->data(), id->size());
    return kExitOk;
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status) == 0 ? kExitError : WEXITSTATUS(status);
  return kExitError;
}

std::optional<std::string> AwaitReady(const Fd& pipe) {
  std::string message;
  char buf[256];
  for (;;) {
    ssize_t n = ::read(pipe.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    message.append(buf, static_cast<size_t>(n));
  }
  if (!message.starts_with("ok ")) return std::nullopt;
  return message.substr(3);
}

int ExitStatusOf(const Result<VmExit>& result) {
  if (!result) {
    Log(LogLevel::kError, "{}", result.error().message());
    return kExitError;
  }
  int status = ExitStatusFor(*result);
  LogLevel level = status == kExitOk ? LogLevel::kInfo : LogLevel::kWarn;
  if (result->reason == VmExitReason::kError) level = LogLevel::kError;
  Log(level, "{} (exit status {})", result->detail, status);
  return status;
}

int RunCommand(const RunOptions& options, BootTimer& timer) {
  auto spec = SpecFromRunOptions(options);
  if (!spec) {
    Log(LogLevel::kError, "{}", spec.error().message());
    return kExitUsage;
  }
  Fd ready;
  if (options.detach) {
    if (auto parent_status = ForkDetached(&ready)) return *parent_status;
  }
  Launch launch;
  launch.kind = LaunchKind::kBoot;
  launch.spec = std::move(*spec);
  launch.detached = options.detach;
  launch.set_hostname = !launch.spec.name.empty();
  int status = ExitStatusOf(RunVmProcess(launch, std::move(ready), timer));
  if (options.boot_timing) {
    std::string line = fmt::format("clone: boot timing: {}\n", timer.Summary());
    [[maybe_unused]] auto r = WriteAll(STDERR_FILENO, line.data(), line.size());
  }
  return status;
}

}  // namespace clonevm::cli

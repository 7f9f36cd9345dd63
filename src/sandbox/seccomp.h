// Seccomp confinement of a VM process, per thread role (`clone run|restore|fork --seccomp`).
//
// Roles and what each may do (the allow-lists with a comment per syscall are in seccomp.cc):
//   vmm     the event-loop (main) thread: epoll, eventfds, timerfd, signalfd reads, the control and
//           console sockets (accept/recv/send), io_uring_enter, KVM VM/vCPU ioctls for pause and
//           snapshots, vhost/TAP ioctls, snapshot files (openat/mkdir/fsync/rename/...), thread
//           creation (clone with CLONE_THREAD only) and teardown (unlink the runtime directory,
//           restore the terminal, release the --net lease).
//   vcpu    a vCPU thread: KVM_RUN and the ioctls of the devices a register write can reach (serial
//           IRQ line, vhost/TAP activation on DRIVER_OK), the fd I/O of a queue a guest notifies
//           through the registers, console writes, futex, signal return, exit. No open, no socket,
//           no clone, no mmap of new memory beyond malloc's.
//   worker  the agent-link thread and the request workers (exec, shutdown): vsock/unix sockets to
//           the guest agent, poll, futex, getrandom, eventfd writes to post results to the loop.
//           No files.
//   fs      a virtio-fs worker thread: the worker's list plus file syscalls (openat, read, write,
//           getdents, stat, rename, chown, xattrs, ...) on the shared directory. The device starts
//           its thread when it is created (before Run) and installs this role on it first thing
//           (InstallForThisThread(ThreadRole::kFs)); it does not inherit vmm.
// Everywhere: no execve, no ptrace, no mount, sockets only of the listed families, mmap/mprotect
// never with PROT_EXEC, clone3 answered with ENOSYS (glibc then uses clone, whose flags are
// checked), ioctl only with the listed request numbers.
//
// Violations: the default action is SCMP_ACT_TRAP. A process-wide SIGSYS handler (installed by
// Compile) writes one line with async-signal-safe calls only,
//   clone: seccomp: thread vcpu called forbidden syscall openat (257) [args 0x..., ...]
// then repeats a syscall no role allows while SIGSYS is blocked, so the kernel forces the default
// action: the whole process dies by SIGSYS. Nothing forbidden ever runs. For bringing up a new code
// path, CLONE_SECCOMP_REPORT_ONLY=1 in the environment reports every forbidden call and fails it
// with ENOSYS instead (still nothing forbidden runs, but the VM may go on half-working).
//
// Order (filters are inherited by threads created later and stack as an intersection):
//   1. SeccompFilters::Compile() on the main thread during setup: libseccomp builds every role's
//      BPF program once; installing later is two syscalls, no allocation, no libseccomp.
//   2. Threads started before Vm::Run install their role first thing: the agent thread (VmService::
//      Serve) `worker`, a virtio-fs device's thread `fs`.
//   3. Vm::Run installs `vmm` on the main thread once setup is done, before it starts any vCPU.
//   4. Each vCPU thread installs `vcpu` before its first KVM_RUN; workers started later by the loop
//      install `worker` first thing. They inherited `vmm`, so their effective list is role ∩ vmm:
//      the vcpu and worker lists are subsets of vmm's (seccomp_test checks it), so each thread gets
//      exactly its own list. vmm therefore allows prctl(PR_SET_NO_NEW_PRIVS) and
//      seccomp(SECCOMP_SET_MODE_FILTER, 0) — stacking can only take permissions away.
// io_uring requests run in the kernel and are not seen by seccomp; the rings are set up before the
// filters and only reach the disk images' fds.
#pragma once

#include <linux/filter.h>

#include <array>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace clonevm::sandbox {

enum class SeccompMode { kOff, kOn };
enum class ThreadRole { kVmm, kVcpu, kWorker, kFs };
inline constexpr size_t kThreadRoleCount = 4;

std::string_view RoleName(ThreadRole role);

// The syscall names a role allows (some only with the argument checks seccomp.cc gives them),
// sorted. For tests and docs.
std::vector<std::string> AllowedSyscalls(ThreadRole role);
// The ioctl request numbers a role allows (none for roles without ioctl).
std::vector<unsigned long> AllowedIoctls(ThreadRole role);

// Every role's compiled BPF program. Immutable once compiled: any thread may install from it.
class SeccompFilters {
 public:
  // Builds the programs with libseccomp for this process (tgkill is limited to its pid) and
  // installs the SIGSYS handler. Call before the first thread that will be confined starts.
  [[nodiscard]] static Result<SeccompFilters> Compile();

  // Confines the calling thread to `role` for the rest of its life (and threads it creates).
  [[nodiscard]] Result<void> InstallForThisThread(ThreadRole role) const;

  // Instructions in the role's BPF program.
  size_t program_size(ThreadRole role) const { return programs_[static_cast<size_t>(role)].size(); }

 private:
  std::array<std::vector<sock_filter>, kThreadRoleCount> programs_;
};

}  // namespace clonevm::sandbox

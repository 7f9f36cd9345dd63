// The allow-lists (one table of syscalls, one of ioctl requests, each entry naming who needs it),
// their compilation with libseccomp into one BPF program per role, and the SIGSYS reporter.
// Design and installation order: seccomp.h.
#include "sandbox/seccomp.h"

#include <errno.h>
#include <linux/fs.h>
#include <linux/if_tun.h>
#include <linux/seccomp.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <termios.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>

#include "base/fd.h"
#include "kvm/uapi.h"

namespace clonevm::sandbox {
namespace {

// Roles as bits, so one table row says who may use a syscall.
constexpr uint8_t kVmm = 1 << 0;
constexpr uint8_t kVcpu = 1 << 1;
constexpr uint8_t kWorker = 1 << 2;
constexpr uint8_t kFs = 1 << 3;
constexpr uint8_t kAll = kVmm | kVcpu | kWorker | kFs;
constexpr uint8_t kVmmWorkers = kVmm | kWorker | kFs;
constexpr uint8_t kVmmVcpu = kVmm | kVcpu;
constexpr uint8_t kVmmFs = kVmm | kFs;
constexpr uint8_t kVmmVcpuFs = kVmm | kVcpu | kFs;

uint8_t Bit(ThreadRole role) { return static_cast<uint8_t>(1u << static_cast<unsigned>(role)); }

// How a syscall's arguments are checked (besides its number).
enum class Check {
  kNone,
  kIoctl,         // request (arg 1) in kIoctls for the role
  kSocket,        // family (arg 0) AF_UNIX or AF_VSOCK
  kNoExec,        // mmap/mprotect: prot (arg 2) without PROT_EXEC
  kThreadClone,   // clone: flags (arg 0) include CLONE_THREAD — threads, never processes
  kEnosys,        // not allowed but answered ENOSYS (clone3: glibc falls back to clone)
  kNoNewPrivs,    // prctl(PR_SET_NO_NEW_PRIVS) only
  kFilterOnly,    // seccomp(SECCOMP_SET_MODE_FILTER, 0, ...) only: stacking a role's filter
  kOwnProcess,    // tgkill: thread group (arg 0) is this process
  kGlibcSignals,  // rt_sigaction: only glibc's internal SIGCANCEL/SIGSETXID (32, 33)
};

struct Syscall {
  const char* name;
  uint8_t roles;
  Check check = Check::kNone;
};

// clang-format off
constexpr Syscall kSyscalls[] = {
    // --- every thread ---
    {"write", kAll},                 // console output (vCPU serial), log lines, eventfd signals, SIGSYS report
    {"futex", kAll},                 // std::mutex / condition_variable (pause, exit, queues, workers)
    {"rt_sigreturn", kAll},          // return from the vCPU kick handler (SIGUSR1)
    {"rt_sigprocmask", kAll},        // glibc: abort(), thread start/exit
    {"exit", kAll},                  // a thread ends
    {"exit_group", kAll},            // the process ends
    {"brk", kAll},                   // malloc
    {"mmap", kAll, Check::kNoExec},  // malloc arenas, thread stacks; never executable
    {"mprotect", kAll, Check::kNoExec},  // malloc arena growth, stack guard pages; never executable
    {"munmap", kAll},                // free, thread stacks
    {"mremap", kAll},                // realloc of large blocks
    {"madvise", kAll},               // glibc free (MADV_DONTNEED), thread stack release; balloon discards
    {"clock_gettime", kAll},         // steady_clock / system_clock when the vDSO falls back
    {"gettimeofday", kAll},          // same, vDSO fallback
    {"clock_nanosleep", kAll},       // sleep_for (agent reconnect backoff, pause polling)
    {"nanosleep", kAll},             // sleep_for on older glibc paths
    {"sched_yield", kAll},           // std::this_thread::yield
    {"getpid", kAll},                // logging, abort()
    {"gettid", kAll},                // abort() -> raise()
    {"tgkill", kAll, Check::kOwnProcess},  // abort() -> raise(); the loop kicks vCPUs (pthread_kill)
    {"restart_syscall", kAll},       // a sleep interrupted by the kick signal
    {"rseq", kAll},                  // glibc registers restartable sequences per thread
    {"ioctl", kVmmVcpu, Check::kIoctl},  // KVM, vhost, TAP, terminal: request numbers in kIoctls
    // --- fd I/O on fds that already exist ---
    {"read", kAll},                  // eventfds, signalfd, sockets, TAP (userspace net rx), files
    {"readv", kVmmVcpuFs},           // virtio-blk synchronous path
    {"writev", kAll},                // TAP tx (userspace net), sockets
    {"pread64", kVmmVcpuFs},         // disk images (sync path, qcow2 metadata), snapshot files
    {"pwrite64", kVmmVcpuFs},        // disk images, snapshot files
    {"preadv", kVmmVcpuFs},          // virtio-blk sync path
    {"pwritev", kVmmVcpuFs},         // virtio-blk sync path
    {"fdatasync", kVmmVcpuFs},       // virtio-blk flush (sync path), snapshot files
    {"fallocate", kVmmVcpuFs},       // virtio-blk discard / write-zeroes, snapshot sparse files
    {"io_uring_enter", kVmmVcpu},    // virtio-blk submissions and waits (a vCPU resets a device)
    {"sendto", kAll},                // console clients (send MSG_DONTWAIT, also from vCPU output), agent
    {"recvfrom", kVmmWorkers},       // console clients, control connections, agent replies
    {"sendmsg", kVmmWorkers},        // control responses, agent frames
    {"recvmsg", kVmmWorkers},        // agent frames
    {"close", kVmmWorkers},          // connections, snapshot files, teardown
    {"shutdown", kVmmWorkers},       // ending agent/control connections
    {"poll", kVmmWorkers},           // agent connection timeouts
    {"ppoll", kVmmWorkers},          // same (glibc poll)
    {"fcntl", kVmmWorkers},          // O_NONBLOCK on new connections; fs: F_OFD_GETLK/F_OFD_SETLK (guest POSIX locks), F_GETFL
    {"getsockopt", kVmmWorkers},     // SO_ERROR after a non-blocking connect
    {"setsockopt", kVmmWorkers},     // socket options on agent connections
    {"socket", kVmmWorkers, Check::kSocket},  // vsock to the guest agent; AF_UNIX only otherwise
    {"connect", kVmmWorkers},        // to the guest agent
    {"getrandom", kVmmWorkers},      // agent identity entropy, snapshot ids, virtio-rng on the loop
    {"eventfd2", kVmmWorkers},       // posting work to the event loop
    // --- the event loop ---
    {"epoll_wait", kVmm},            // the event loop
    {"epoll_pwait", kVmm},           // the event loop (glibc's epoll_wait)
    {"epoll_ctl", kVmm},             // adding/removing connections, console input
    {"accept4", kVmm},               // control and console socket clients
    {"timerfd_settime", kVmmVcpu},   // loop timers; virtio-balloon stats timer (armed at DRIVER_OK, a vCPU write)
    {"timerfd_create", kVmm},        // loop timers
    {"dup", kVmm},                   // exec sessions hand a connection over
    {"clone", kVmm, Check::kThreadClone},  // vCPU and worker threads (never processes)
    {"clone3", kVmm, Check::kEnosys},      // refused with ENOSYS: glibc then uses clone, whose flags are checked
    {"rt_sigaction", kVmm, Check::kGlibcSignals},  // glibc's first pthread_create (no vsock: no agent thread before Run)
    {"set_robust_list", kVmm},       // glibc, in every new thread before it installs its role
    {"prctl", kVmm, Check::kNoNewPrivs},  // a new thread installing its role (no_new_privs)
    {"seccomp", kVmm, Check::kFilterOnly},  // a new thread installing its role (can only narrow)
    {"sched_getaffinity", kVmm},     // glibc thread creation
    {"getcwd", kVmmFs},              // std::filesystem::absolute (snapshot paths)
    {"geteuid", kVmmFs},             // runtime directory checks; shared directory permission checks
    {"umask", kVmm},                 // snapshot files
    // --- files: snapshots and teardown (vmm), the shared directory (fs) ---
    {"openat", kVmmFs},              // snapshot files, --net lease lock at exit
    {"mkdir", kVmmFs},               // snapshot directory
    {"mkdirat", kVmmFs},             // same
    {"rename", kVmmFs},              // snapshot commit
    {"renameat", kVmmFs},            // same
    {"renameat2", kVmmFs},           // same (RENAME_NOREPLACE / EXCHANGE)
    {"link", kVmmFs},                // snapshots sharing a parent's files
    {"linkat", kVmmFs},              // same
    {"unlink", kVmmFs},              // runtime directory sockets, failed snapshots, lease file
    {"unlinkat", kVmmFs},            // same (std::filesystem::remove_all)
    {"rmdir", kVmmFs},               // runtime directory at exit
    {"fsync", kVmmFs},               // snapshot durability
    {"fstat", kVmmFs},               // files
    {"newfstatat", kVmmFs},          // stat/lstat in glibc
    {"statx", kVmmFs},               // std::filesystem
    {"lseek", kVmmFs},               // files (SEEK_DATA when copying sparse disks)
    {"ftruncate", kVmmFs},           // snapshot files
    {"copy_file_range", kVmmFs},     // freezing a writable disk into a snapshot
    {"getdents64", kVmmFs},          // directory listings (snapshot, teardown)
    {"flock", kVmmFs},               // --net lease release, disk locks; fs: guest flock (LOCK_NB only, never waits)
    {"utimensat", kVmmFs},           // snapshot files
    {"fchmod", kVmmFs},              // snapshot files
    {"readlink", kVmmFs},            // std::filesystem
    {"fstatfs", kVmmFs},             // std::filesystem space checks
    {"chmod", kVmm},                 // snapshot files (glibc chmod)
    {"truncate", kVmmFs},            // std::filesystem::resize_file (snapshot files)
    {"sendfile", kVmm},              // std::filesystem::copy_file (snapshot files)
    {"fchown", kFs},                 // shared directory: setattr
    {"fchownat", kFs},               // same
    {"fchmodat", kVmmFs},            // chmod of snapshot files; shared directory setattr
    {"symlinkat", kFs},              // shared directory
    {"readlinkat", kFs},             // shared directory
    {"mknodat", kFs},                // shared directory
    {"statfs", kFs},                 // shared directory: statfs
    {"openat2", kFs},                // shared directory: lookups confined beneath the root (RESOLVE_BENEATH)
    {"faccessat", kFs},              // shared directory: access
    {"faccessat2", kFs},             // same (glibc)
    {"fgetxattr", kFs},              // shared directory: xattrs
    {"fsetxattr", kFs},              // same
    {"flistxattr", kFs},             // same
    {"fremovexattr", kFs},           // same
    {"getxattr", kFs},               // shared directory: xattrs through /proc/self/fd/N (O_PATH fds)
    {"setxattr", kFs},               // same
    {"listxattr", kFs},              // same
    {"removexattr", kFs},            // same
    {"setfsuid", kFs},               // shared directory: each request runs with the caller's fsuid
    {"setfsgid", kFs},               // same, fsgid
    {"setgroups", kFs},              // same, supplementary groups (raw syscall: this thread only)
    {"getgroups", kVmmFs},           // shared directory server creation: the groups put back after a request
};

struct Ioctl {
  unsigned long request;
  uint8_t roles;
};

constexpr Ioctl kIoctls[] = {
    // vCPU thread: its run loop and what a guest register write reaches.
    {KVM_RUN, kVmmVcpu},                      // vCPU run loop (vmm: pausing completes a pending exit)
    {KVM_IRQ_LINE, kVmmVcpu},                 // serial IRQ (vCPU), GED pulse (loop)
    {VHOST_SET_FEATURES, kVmmVcpu},           // vhost start on DRIVER_OK (vCPU) or restore/resume (loop)
    {kvm::uapi::kVhostSetMemTable, kVmmVcpu}, // same
    {VHOST_SET_VRING_NUM, kVmmVcpu},          // same
    {VHOST_SET_VRING_ADDR, kVmmVcpu},         // same
    {VHOST_SET_VRING_BASE, kVmmVcpu},         // same
    {VHOST_GET_VRING_BASE, kVmmVcpu},         // vhost stop on reset (vCPU) or pause (loop)
    {VHOST_SET_VRING_KICK, kVmmVcpu},         // vhost start
    {VHOST_SET_VRING_CALL, kVmmVcpu},         // vhost start
    {VHOST_SET_LOG_BASE, kVmmVcpu},           // vhost dirty log (incremental snapshots)
    {VHOST_NET_SET_BACKEND, kVmmVcpu},        // vhost-net start/stop
    {VHOST_VSOCK_SET_RUNNING, kVmmVcpu},      // vhost-vsock start/stop
    {TUNSETOFFLOAD, kVmmVcpu},                // virtio-net offloads follow the driver's features
    {TUNSETVNETHDRSZ, kVmmVcpu},              // same
    {BLKDISCARD, kVmmVcpu},                   // virtio-blk discard on a block device (sync path)
    // Loop thread only: pause, snapshots, dirty tracking, teardown.
    {VHOST_VSOCK_SET_GUEST_CID, kVmm},        // restoring a vsock device
    {KVM_SET_USER_MEMORY_REGION, kVmm},       // dirty tracking on/off
    {KVM_GET_DIRTY_LOG, kVmm},                // incremental snapshots
    {KVM_GET_IRQCHIP, kVmm},                  // snapshot
    {KVM_GET_PIT2, kVmm},                     // snapshot
    {KVM_GET_CLOCK, kVmm},                    // snapshot
    {KVM_GET_REGS, kVmmVcpu},                 // snapshot; a vCPU's stall report (vm.cc ReportStall)
    {KVM_GET_SREGS, kVmmVcpu},                // same
    {KVM_GET_FPU, kVmm},                      // snapshot
    {kvm::uapi::kGetCpuid2, kVmm},            // snapshot
    {kvm::uapi::kGetMsrs, kVmm},              // snapshot
    {kvm::uapi::kGetMsrIndexList, kVmm},      // snapshot (which MSRs to save)
    {kvm::uapi::kGetXsave, kVmm},             // snapshot
    {kvm::uapi::kGetXsave2, kVmm},            // snapshot
    {KVM_GET_XCRS, kVmm},                     // snapshot
    {KVM_GET_LAPIC, kVmm},                    // snapshot
    {KVM_GET_VCPU_EVENTS, kVmm},              // snapshot
    {KVM_GET_MP_STATE, kVmmVcpu},             // snapshot; a vCPU's stall report (halted or not)
    {KVM_GET_DEBUGREGS, kVmm},                // snapshot
    {KVM_GET_TSC_KHZ, kVmm},                  // snapshot
    {KVM_CHECK_EXTENSION, kVmm},              // snapshot (XSAVE2 size)
    {KVM_KVMCLOCK_CTRL, kVmm},                // resume after a snapshot: tell the guest it was stopped
    {FICLONE, kVmm},                          // freezing a writable disk into a snapshot
    {TCGETS, kVmm},                           // the console terminal, restored at exit
    {TCSETS, kVmm},                           // same
    {TCSETSW, kVmm},                          // same
    {TCSETSF, kVmm},                          // same
    {FIONBIO, kVmm},                          // non-blocking sockets
};
// clang-format on

int Number(const char* name) { return seccomp_syscall_resolve_name(name); }

// SIGSYS reporting. The handler may not allocate, so the syscall names are resolved once (Compile)
// into this table, and each thread's role name is a thread_local set before its filter goes in.
constexpr int kMaxSyscall = 512;
constexpr size_t kNameLen = 28;
char g_syscall_names[kMaxSyscall][kNameLen];  // written once under g_names_once, then read-only
std::once_flag g_names_once;
// CLONE_SECCOMP_REPORT_ONLY=1 (read by Compile, before any filter exists): report every forbidden call and fail it
// with ENOSYS instead of dying, so one lab run lists everything a new code path is missing.
bool g_report_only = false;
thread_local const char* t_role_name = "unconfined";

void FillNames() {
  for (int nr = 0; nr < kMaxSyscall; ++nr) {
    char* name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
    if (name != nullptr) {
      std::strncpy(g_syscall_names[nr], name, kNameLen - 1);
      std::free(name);
    }
  }
}

// Async-signal-safe formatting into a fixed buffer.
struct Line {
  char buf[256];
  size_t len = 0;
  void Add(const char* s) {
    while (*s != '\0' && len < sizeof(buf) - 1) buf[len++] = *s++;
  }
  void AddDecimal(unsigned long v) {
    char digits[24];
    int n = 0;
    do {
      digits[n++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v != 0);
    while (n > 0 && len < sizeof(buf) - 1) buf[len++] = digits[--n];
  }
  void AddHex(unsigned long v) {
    Add("0x");
    char digits[20];
    int n = 0;
    do {
      digits[n++] = "0123456789abcdef"[v & 0xf];
      v >>= 4;
    } while (v != 0);
    while (n > 0 && len < sizeof(buf) - 1) buf[len++] = digits[--n];
  }
};

void OnSigsys(int, siginfo_t* info, void* context) {
  int saved_errno = errno;
  int nr = info->si_syscall;
  Line line;
  line.Add("clone: seccomp: thread ");
  line.Add(t_role_name);
  line.Add(" called forbidden syscall ");
  line.Add(nr >= 0 && nr < kMaxSyscall && g_syscall_names[nr][0] != '\0' ? g_syscall_names[nr] : "?");
  line.Add(" (");
  line.AddDecimal(static_cast<unsigned long>(nr));
  line.Add(") [args ");
  // SAFETY: the kernel passes a ucontext_t as the third argument of an SA_SIGINFO handler.
  auto* uc = static_cast<ucontext_t*>(context);
  line.AddHex(static_cast<unsigned long>(uc->uc_mcontext.gregs[REG_RDI]));
  line.Add(", ");
  line.AddHex(static_cast<unsigned long>(uc->uc_mcontext.gregs[REG_RSI]));
  line.Add(", ");
  line.AddHex(static_cast<unsigned long>(uc->uc_mcontext.gregs[REG_RDX]));
  line.Add("]\n");
  [[maybe_unused]] long n = ::syscall(SYS_write, STDERR_FILENO, line.buf, line.len);
  if (g_report_only) {
    uc->uc_mcontext.gregs[REG_RAX] = -ENOSYS;  // the trapped call returns ENOSYS; the thread goes on
    errno = saved_errno;
    return;
  }
  // SIGSYS is blocked while this handler runs: a second trapped syscall makes the kernel force the
  // default action (terminate the process). reboot is on no role's list; were it reachable, the
  // zero magic numbers make it fail with EINVAL.
  ::syscall(SYS_reboot, 0, 0, 0, nullptr);
  errno = saved_errno;
  ::syscall(SYS_exit_group, 128 + SIGSYS);
}

Result<void> InstallSigsysHandler() {
  std::call_once(g_names_once, FillNames);
  const char* report_only = std::getenv("CLONE_SECCOMP_REPORT_ONLY");
  g_report_only = report_only != nullptr && std::strcmp(report_only, "1") == 0;
  struct sigaction sa {};
  sa.sa_sigaction = OnSigsys;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_SIGINFO;
  if (::sigaction(SIGSYS, &sa, nullptr) != 0) return FailErrno("sigaction(SIGSYS)");
  return {};
}

struct CtxDeleter {
  void operator()(void* ctx) const { seccomp_release(ctx); }
};
using Ctx = std::unique_ptr<void, CtxDeleter>;

Result<void> Checked(int rc, const char* what, const char* name) {
  if (rc < 0) return Fail(Error::FromErrno(fmt::format("seccomp: {} ({})", what, name), -rc));
  return {};
}

Result<void> AddRule(void* ctx, const Syscall& s, ThreadRole role) {
  int nr = Number(s.name);
  if (nr == __NR_SCMP_ERROR) return Fail("seccomp: unknown syscall {}", s.name);
  const uint32_t allow = SCMP_ACT_ALLOW;
  switch (s.check) {
    case Check::kNone:
      return Checked(seccomp_rule_add(ctx, allow, nr, 0), "rule", s.name);
    case Check::kIoctl:
      for (const Ioctl& ioctl : kIoctls) {
        if ((ioctl.roles & Bit(role)) == 0) continue;
        CLONE_TRY_VOID(
            Checked(seccomp_rule_add(ctx, allow, nr, 1, SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu, ioctl.request)),
                    "ioctl rule", s.name));
      }
      return {};
    case Check::kSocket:
      for (int family : {AF_UNIX, AF_VSOCK}) {
        CLONE_TRY_VOID(Checked(seccomp_rule_add(ctx, allow, nr, 1, SCMP_A0(SCMP_CMP_EQ, static_cast<uint64_t>(family))),
                               "rule", s.name));
      }
      return {};
    case Check::kNoExec:
      return Checked(seccomp_rule_add(ctx, allow, nr, 1, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)), "rule", s.name);
    case Check::kThreadClone:
      return Checked(seccomp_rule_add(ctx, allow, nr, 1, SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD)),
                     "rule", s.name);
    case Check::kEnosys:
      return Checked(seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), nr, 0), "rule", s.name);
    case Check::kNoNewPrivs:
      return Checked(seccomp_rule_add(ctx, allow, nr, 1, SCMP_A0(SCMP_CMP_EQ, PR_SET_NO_NEW_PRIVS)), "rule", s.name);
    case Check::kFilterOnly:
      return Checked(
          seccomp_rule_add(ctx, allow, nr, 2, SCMP_A0(SCMP_CMP_EQ, SECCOMP_SET_MODE_FILTER), SCMP_A1(SCMP_CMP_EQ, 0)),
          "rule", s.name);
    case Check::kGlibcSignals:
      for (uint64_t signal : {32, 33}) {
        CLONE_TRY_VOID(Checked(seccomp_rule_add(ctx, allow, nr, 1, SCMP_A0(SCMP_CMP_EQ, signal)), "rule", s.name));
      }
      return {};
    case Check::kOwnProcess:
      return Checked(seccomp_rule_add(ctx, allow, nr, 1, SCMP_A0(SCMP_CMP_EQ, static_cast<uint64_t>(::getpid()))),
                     "rule", s.name);
  }
  return {};
}

Result<std::vector<sock_filter>> CompileRole(ThreadRole role) {
  Ctx ctx(seccomp_init(SCMP_ACT_TRAP));
  if (!ctx) return Fail("seccomp_init failed");
  // Threads install their own filters; the kernel's no_new_privs is set per thread at install.
  CLONE_TRY_VOID(Checked(seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_NNP, 0), "attr", "NNP"));
  CLONE_TRY_VOID(Checked(seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_OPTIMIZE, 2), "attr", "OPTIMIZE"));
  for (const Syscall& s : kSyscalls) {
    if ((s.roles & Bit(role)) == 0) continue;
    CLONE_TRY_VOID(AddRule(ctx.get(), s, role));
  }
  Fd memfd(::memfd_create("clone-seccomp", MFD_CLOEXEC));
  if (!memfd) return FailErrno("memfd_create");
  CLONE_TRY_VOID(Checked(seccomp_export_bpf(ctx.get(), memfd.get()), "export", RoleName(role).data()));
  off_t size = ::lseek(memfd.get(), 0, SEEK_END);
  if (size <= 0 || size % sizeof(sock_filter) != 0) return Fail("seccomp: exported program has {} bytes", size);
  std::vector<sock_filter> program(static_cast<size_t>(size) / sizeof(sock_filter));
  if (::pread(memfd.get(), program.data(), static_cast<size_t>(size), 0) != size)
    return FailErrno("pread (seccomp program)");
  return program;
}

}  // namespace

std::string_view RoleName(ThreadRole role) {
  switch (role) {
    case ThreadRole::kVmm:
      return "vmm";
    case ThreadRole::kVcpu:
      return "vcpu";
    case ThreadRole::kWorker:
      return "worker";
    case ThreadRole::kFs:
      return "fs";
  }
  return "?";
}

std::vector<std::string> AllowedSyscalls(ThreadRole role) {
  std::vector<std::string> names;
  for (const Syscall& s : kSyscalls) {
    if ((s.roles & Bit(role)) != 0 && s.check != Check::kEnosys) names.emplace_back(s.name);
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

std::vector<unsigned long> AllowedIoctls(ThreadRole role) {
  bool has_ioctl = std::any_of(std::begin(kSyscalls), std::end(kSyscalls), [&](const Syscall& s) {
    return s.check == Check::kIoctl && (s.roles & Bit(role)) != 0;
  });
  std::vector<unsigned long> requests;
  if (!has_ioctl) return requests;
  for (const Ioctl& ioctl : kIoctls) {
    if ((ioctl.roles & Bit(role)) != 0) requests.push_back(ioctl.request);
  }
  std::sort(requests.begin(), requests.end());
  return requests;
}

Result<SeccompFilters> SeccompFilters::Compile() {
  SeccompFilters filters;
  for (size_t i = 0; i < kThreadRoleCount; ++i) {
    filters.programs_[i] = CLONE_TRY(CompileRole(static_cast<ThreadRole>(i)));
  }
  CLONE_TRY_VOID(InstallSigsysHandler());
  // glibc reads /etc/localtime on the first gmtime_r/localtime_r, which a vCPU thread makes when the
  // guest reads the CMOS clock: load the time zone now, while this thread may still open files.
  ::tzset();
  return filters;
}

Result<void> SeccompFilters::InstallForThisThread(ThreadRole role) const {
  const std::vector<sock_filter>& program = programs_[static_cast<size_t>(role)];
  // Role names are string literals: the pointer stays valid for the SIGSYS handler.
  t_role_name = RoleName(role).data();
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return FailErrno("prctl(PR_SET_NO_NEW_PRIVS)");
  sock_fprog prog{static_cast<unsigned short>(program.size()), const_cast<sock_filter*>(program.data())};
  if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
    return FailErrno("seccomp(SECCOMP_SET_MODE_FILTER)", RoleName(role));
  }
  return {};
}

}  // namespace clonevm::sandbox

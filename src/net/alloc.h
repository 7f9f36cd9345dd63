// Per-VM IPv4 leases for `--net`: which guest gets which address on a bridge's subnet, shared by
// every Clone process on the host through files under the runtime directory.
//
// Layout: <runtime>/net/<bridge>/
//   .lock        flock(LOCK_EX) serialises acquire and release across processes and threads
//   172.30.0.2   one file per leased address, containing "pid=<pid> owner=<vm id>\n"
// A lease is HELD while some process holds flock(LOCK_EX) on its file: the IpLease object keeps
// that fd open for its whole life. The kernel drops the lock when the holder dies (crash,
// SIGKILL), so a lease whose process is gone is free again without any PID bookkeeping — and a
// reused PID cannot keep a dead VM's lease alive. Files without a lock holder are taken over by the
// next AcquireLease; the pid/owner text is for people and ListLeases only.
//
// AcquireLease picks the lowest free address from gateway + 1 to broadcast - 1 (the gateway,
// network + 1, belongs to the bridge). Concurrent VM starts never get the same address: the scan
// runs under `.lock`, and taking an address is an exclusive non-blocking flock on its file.
// The lease's fd is close-on-exec. A process that fork()s WITHOUT exec shares the lock with its
// child; the child must call IpLease::CloseInChild() or the address stays held until both exit.
//
// Runtime directory (DefaultRuntimeDir): $CLONE_RUNTIME_DIR if set; else /run/clone for root;
// else $XDG_RUNTIME_DIR/clone. The VMM keeps per-VM sockets in <runtime>/vms/<id>/.
// Threads: any; every call opens its own fds, so threads of one process exclude each other too.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "net/address.h"

namespace clonevm::net {

[[nodiscard]] Result<std::string> DefaultRuntimeDir();

// flock(LOCK_EX) on a file (created if missing) for the object's lifetime. Blocks until granted.
// Two FileLocks on one path exclude each other even within one process.
class FileLock {
 public:
  [[nodiscard]] static Result<FileLock> Exclusive(const std::string& path);

 private:
  explicit FileLock(Fd fd) : fd_(std::move(fd)) {}
  Fd fd_;  // closing it drops the lock
};
// <runtime>/net/<bridge>
std::string LeaseDirectory(std::string_view runtime_dir, std::string_view bridge);

// Subnets `--net` accepts: /16 to /30 (at least two guest addresses besides the gateway).
[[nodiscard]] Result<void> ValidateLeaseSubnet(const Ipv4Subnet& subnet);

class IpLease {
 public:
  IpLease() = default;
  IpLease(IpLease&& other) noexcept;
  IpLease& operator=(IpLease&& other) noexcept;
  IpLease(const IpLease&) = delete;
  IpLease& operator=(const IpLease&) = delete;
  ~IpLease() { Release(); }

  bool held() const { return fd_.valid(); }
  uint32_t ip() const { return ip_; }
  MacAddress mac() const { return MacForIpv4(ip_); }
  const std::string& path() const { return path_; }

  // Removes the lease file and drops the lock. Idempotent; errors are ignored (a file left
  // behind without a lock holder is simply reused later).
  void Release();
  // In a child created by fork() without exec: closes the inherited fd without touching the file,
  // so the lease belongs to the parent alone again.
  void CloseInChild();

 private:
  friend Result<IpLease> AcquireLease(const std::string&, const Ipv4Subnet&, std::string_view);
  IpLease(Fd fd, std::string dir, std::string path, uint32_t ip)
      : fd_(std::move(fd)), dir_(std::move(dir)), path_(std::move(path)), ip_(ip) {}

  Fd fd_;
  std::string dir_;
  std::string path_;
  uint32_t ip_ = 0;
};

// Takes the lowest free address of `subnet` in `lease_dir` (created, mode 0755, if missing).
// Fails when every address is held ("no free IP address in 172.30.0.0/24: 253 VMs hold them").
[[nodiscard]] Result<IpLease> AcquireLease(const std::string& lease_dir, const Ipv4Subnet& subnet,
                                           std::string_view owner);

struct LeaseEntry {
  uint32_t ip = 0;
  bool held = false;  // a live process holds the lock
  pid_t pid = 0;      // as recorded in the file (0 if unreadable)
  std::string owner;
};

// Every lease file in `lease_dir`, held or stale, sorted by address. A missing directory is empty.
[[nodiscard]] Result<std::vector<LeaseEntry>> ListLeases(const std::string& lease_dir);

}  // namespace clonevm::net

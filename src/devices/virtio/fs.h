// Fs: virtio-fs, host directory sharing (virtio 1.2, 5.11) served by an in-process FUSE server
// (fs::PassthroughFs) — no external virtiofsd.
//
//   auto server = CLONE_TRY(fs::PassthroughFs::Create("/srv/share", {.read_only = false}));
//   auto device = CLONE_TRY(virtio::Fs::Create("myfs", std::move(server)));
//   // guest: mount -t virtiofs myfs /mnt
//
// Config space: struct virtio_fs_config — the tag (1..kMaxTagLength bytes, NUL-padded, no '\0'
// inside) and num_request_queues = 1. Queues: 0 = hiprio (FORGET/BATCH_FORGET; no reply), 1 = the
// request queue. No device feature bits (no DAX window, no notification queue).
//
// Requests: a chain's readable part is the FUSE request (fuse_in_header, arguments, WRITE data),
// its writable part receives the reply (fuse_out_header + payload). Guest errors (ProcessQueue
// returns an Error → NEEDS_RESET): a readable part shorter than fuse_in_header, an in header whose
// len is smaller than the header or larger than the readable part (extra readable bytes past len
// are ignored), a request larger than kMaxRequestBytes, or a request that needs a reply (every
// opcode but FORGET/BATCH_FORGET) with less than a fuse_out_header of writable space. Everything
// about the request's content (unknown opcode, short arguments, bad names) is the server's to
// answer with an errno (passthrough.h).
//
// Threads: file-system syscalls block, so they never run on the event loop or under the transport
// lock. ProcessQueue() (transport lock, event loop or vCPU thread) validates each chain, copies the
// request out of guest memory and queues it for the device's one worker thread ("clone-fs"). The
// worker runs the server, writes the reply into the chain's writable buffers (guest memory stays
// mapped, and Reset() waits for the worker before the driver gets its buffers back), queues the
// chain as done and signals completion_fd(). HandleFdEvent() (event loop, transport lock) returns
// the done chains to their used rings and interrupts the driver.
//
// Lock waits: a FUSE_SETLKW whose lock is held elsewhere is parked by the server (Handle returns
// kParked) and its chain kept in parked_, neither queued nor in flight; the worker retries every
// parked lock (RetryParked, non-blocking) after each lock-changing request (SETLK, SETLKW, FLUSH,
// RELEASE, which may free a guest-held lock at once) and every kLockRetry while any waits (a host
// process's unlock has no event to wait for), and completes the chain when the server answers.
// Why polling on the one worker rather than a waiter thread blocking in F_OFD_SETLKW: no extra
// thread (and seccomp role) per wait, nothing to interrupt with signals on reset, FIFO order among
// guest waiters and EDEADLK detection in one place; the cost is up to kLockRetry of latency
// after a host process unlocks, and a guest waiter does not queue in the host kernel (a stream of
// host lockers can overtake it). The guest cannot interrupt the wait (Linux's virtio-fs sends no
// FUSE_INTERRUPT; the waiting process sleeps uninterruptibly, as with any virtio-fs server).
//
// Pause() (snapshots) stops taking chains, waits until the worker has nothing queued or in flight,
// answers parked lock waits ENOLCK (a restored VM holds no host locks, so the wait cannot be
// carried into the snapshot) and returns every finished chain to the used ring, so guest memory,
// the rings and the server's tables are stable for SaveState(). Resume() takes chains again.
// Reset() waits for the request in flight, abandons queued, parked and finished chains (the driver
// reset them) and ends the FUSE session (the server forgets every inode but the root and every
// handle and closes its fds, releasing every host lock; the next mount sends INIT).
//
// State: {"version", "tag", "read_only", "server": PassthroughFs::SaveState()}, computed on the
// worker thread (it reads /proc/self/fd links and stats the inodes). The first
// Activate() after RestoreState() takes the chains already in the avail rings (a notification the
// snapshotted VMM had not handled yet is not repeated). The server is
// recreated by the VMM (possibly over another host directory, for a fork) and handed to a fresh
// device; RestoreState() requires the same tag (the guest has read it) and restores the server's
// tables, whose entries missing under the new root become stale instead of failing the restore.
#pragma once

#include <linux/virtio_fs.h>

#include <array>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "devices/virtio/virtio_device.h"
#include "devices/virtio/virtio_spec.h"
#include "fs/passthrough.h"

namespace clonevm::virtio {

class Fs : public VirtioDevice {
 public:
  static constexpr uint16_t kHiprioQueueSize = 128;
  static constexpr uint16_t kRequestQueueSize = 1024;
  static constexpr size_t kMaxTagLength = sizeof(virtio_fs_config::tag);  // 36
  // The largest request: headers and arguments (names, paths) plus a WRITE of max_write bytes.
  static constexpr uint64_t kMaxRequestBytes = fs::PassthroughFs::kMaxIoBytes + 2 * 4096 + 256;
  // The largest reply buffer used (READ of max_write bytes + header); larger writable parts are
  // served up to this size.
  static constexpr uint64_t kMaxReplyBytes = fs::PassthroughFs::kMaxIoBytes + 4096;
  // How often parked lock waits are retried.
  static constexpr std::chrono::milliseconds kLockRetry{5};

  // Fails for an empty tag, one longer than kMaxTagLength or containing '\0', or a null server.
  // `worker_start`, when set, runs first on the worker thread (e.g. to confine it with seccomp).
  [[nodiscard]] static Result<std::unique_ptr<Fs>> Create(std::string tag, std::unique_ptr<fs::PassthroughFs> server,
                                                          bool read_only = false,
                                                          std::function<void()> worker_start = {});
  ~Fs() override;

  uint32_t device_type() const override { return kDeviceTypeFs; }
  std::span<const uint16_t> queue_max_sizes() const override { return kQueueSizes; }
  uint64_t device_features() const override { return 0; }

  uint32_t config_size() const override { return sizeof(config_); }
  void ReadConfig(uint64_t offset, std::span<uint8_t> data) override;

  Result<void> Activate(const DeviceContext& context) override;
  void Reset() override;
  Result<void> ProcessQueue(size_t index) override;

  // completion_fd(): finished requests, served by HandleFdEvent().
  std::vector<WatchedFd> watched_fds() const override;
  Result<void> HandleFdEvent(size_t index, uint32_t events) override;
  Result<void> Pause() override;
  Result<void> Resume() override;

  nlohmann::json SaveState() const override;
  Result<void> RestoreState(const nlohmann::json& state) override;

  const std::string& tag() const { return tag_; }
  int completion_fd() const { return completion_.fd(); }
  // Requests queued for, running on or parked by the worker (tests).
  size_t requests_in_flight() const;
  // Lock waits parked (tests).
  size_t parked_requests() const;

 private:
  static constexpr std::array<uint16_t, 2> kQueueSizes = {kHiprioQueueSize, kRequestQueueSize};

  struct Work {
    size_t queue = 0;
    std::optional<DescriptorChain> chain;
    uint32_t length = 0;  // the request's bytes (fuse_in_header.len, checked against the chain)
  };
  struct Done {
    size_t queue = 0;
    std::optional<DescriptorChain> chain;
    uint32_t written = 0;
  };

  Fs(std::string tag, std::unique_ptr<fs::PassthroughFs> server, bool read_only, EventFd completion);
  void WorkerLoop(const std::function<void()>& worker_start);
  // Validates and queues every available chain of queue `index`.
  [[nodiscard]] Result<void> TakeRequests(size_t index);
  // Returns finished chains to their used rings; interrupts the driver when it asks.
  void CompleteDone();
  // Waits until the worker has nothing queued or running (mu_ held through `lock`).
  void WaitIdle(std::unique_lock<std::mutex>& lock);
  // Serves one request on the worker (server_mu_ not held).
  void Serve(Work work, std::vector<uint8_t>& request, std::vector<uint8_t>& reply);
  // Retries the parked lock waits and queues as done those the server answers (on the worker,
  // with server_mu_ held and mu_ not). True when it answered any: the caller signals
  // completion_fd(), once with whatever else it completed.
  [[nodiscard]] bool RetryParkedLocked();
  // Runs `fn` on the worker thread, after the requests queued before it, and waits for it: every
  // file-system syscall of the device stays on that thread (its seccomp role allows them).
  void RunOnWorker(const std::function<void()>& fn) const;

  std::string tag_;
  bool read_only_;
  virtio_fs_config config_{};
  std::optional<DeviceContext> context_;  // set while active (transport lock)
  bool paused_ = false;                   // transport lock
  bool restored_ = false;                 // RestoreState() ran; the next Activate() polls the queues

  // Shared with the worker.
  mutable std::mutex mu_;
  mutable std::condition_variable work_cv_;              // work or a task queued, or stop
  mutable std::condition_variable idle_cv_;              // the worker finished a request or a task
  mutable const std::function<void()>* task_ = nullptr;  // RunOnWorker()'s, until done
  std::deque<Work> pending_;
  std::vector<Done> done_;
  std::unordered_map<uint64_t, Work> parked_;  // lock waits, by the ticket given to the server
  uint64_t next_ticket_ = 1;                   // worker only
  bool busy_ = false;
  bool stop_ = false;
  // The server: used by the worker, and by SaveState/RestoreState/Reset with the worker idle;
  // server_mu_ makes that exclusion explicit.
  mutable std::mutex server_mu_;
  std::unique_ptr<fs::PassthroughFs> server_;
  EventFd completion_;
  std::thread worker_;  // last: started after everything it uses exists
};

}  // namespace clonevm::virtio

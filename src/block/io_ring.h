// IoRing: asynchronous positioned file I/O through io_uring (liburing), with completions announced
// on an eventfd so an epoll loop can reap them.
//
//   auto ring = IoRing::Create(64);  // an Error when io_uring is unavailable: fall back to sync I/O
//   loop.Add(ring->event_fd(), EPOLLIN, [&](uint32_t) { ring->Reap(on_done); });
//   if (ring->Readv(fd, iov, offset, /*tag=*/7)) CLONE_TRY_VOID(ring->Submit());
//
// Create() fails when io_uring_queue_init() does (ENOSYS on old kernels, EPERM under a seccomp
// filter or with kernel.io_uring_disabled, ENOMEM over RLIMIT_MEMLOCK on old kernels); callers then
// do their I/O synchronously. The eventfd is registered with io_uring_register_eventfd(), so each
// completion increments it; Reap() resets it and hands every available completion to the callback.
//
// Capacity: at most depth() operations are in flight (queued, submitted or not yet reaped). A
// Readv/Writev/Fsync call returns false when there is no room for all of its operations; nothing is
// queued then. Operations are queued until Submit().
//
// Ordering: io_uring may run and complete operations in any order. FsyncOrder::kAfterSubmitted
// sets IOSQE_IO_DRAIN: the fsync starts only after every operation queued before it has completed.
// Writev(..., SyncAfter::kDataSync) links an fdatasync behind the write (IOSQE_IO_LINK), two
// completions with the same tag; if the write fails or is short the fsync completes -ECANCELED.
//
// Lifetime: the iovec arrays and the buffers they point to must stay valid until the operation's
// completion has been reaped. The destructor submits what is still queued and waits for every
// operation in flight, dropping their completions: declare buffers so they outlive the ring.
//
// Thread-safety: none; one thread at a time (callers hold their device lock). The eventfd may be
// watched from any thread.
#pragma once

#include <liburing.h>
#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include "base/fd.h"
#include "base/result.h"

namespace clonevm {

enum class FsyncOrder {
  kAny,             // may run concurrently with earlier operations
  kAfterSubmitted,  // IOSQE_IO_DRAIN: after every earlier operation completed
};

enum class SyncAfter { kNone, kDataSync };

class IoRing {
 public:
  // (tag, res): res is the operation's result, bytes transferred or -errno.
  using Completion = std::function<void(uint64_t tag, int32_t res)>;

  static constexpr unsigned kMaxDepth = 4096;

  // depth: 1..kMaxDepth operations in flight.
  [[nodiscard]] static Result<std::unique_ptr<IoRing>> Create(unsigned depth);
  ~IoRing();
  IoRing(const IoRing&) = delete;
  IoRing& operator=(const IoRing&) = delete;

  int event_fd() const { return event_fd_.fd(); }
  unsigned depth() const { return depth_; }
  unsigned in_flight() const { return in_flight_; }
  unsigned room() const { return depth_ - in_flight_; }

  // preadv(fd, iov, offset). False (nothing queued) when the ring is full.
  [[nodiscard]] bool Readv(int fd, std::span<const iovec> iov, uint64_t offset, uint64_t tag);
  // pwritev(fd, iov, offset), optionally followed by a linked fdatasync (two completions).
  [[nodiscard]] bool Writev(int fd, std::span<const iovec> iov, uint64_t offset, uint64_t tag,
                            SyncAfter sync = SyncAfter::kNone);
  // fdatasync(fd).
  [[nodiscard]] bool Fsync(int fd, uint64_t tag, FsyncOrder order);

  // Hands the queued operations to the kernel.
  [[nodiscard]] Result<void> Submit();
  // Resets the eventfd and calls done() for every available completion. Returns how many.
  size_t Reap(const Completion& done);
  // Submits what is queued and waits until nothing is in flight, calling done() for each completion.
  [[nodiscard]] Result<void> WaitAll(const Completion& done);

 private:
  IoRing(unsigned depth, EventFd event_fd) : depth_(depth), event_fd_(std::move(event_fd)) {}
  io_uring_sqe* NextSqe(uint64_t tag);
  void HandleCqe(io_uring_cqe* cqe, const Completion& done);

  const unsigned depth_;
  EventFd event_fd_;
  io_uring ring_{};
  bool ring_ready_ = false;
  unsigned in_flight_ = 0;
};

}  // namespace clonevm

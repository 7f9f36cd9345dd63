#include "block/io_ring.h"

#include <sys/eventfd.h>

#include <cerrno>
#include <cstdlib>

#include "base/check.h"
#include "base/log.h"

namespace clonevm {

Result<std::unique_ptr<IoRing>> IoRing::Create(unsigned depth) {
  if (depth == 0 || depth > kMaxDepth) return Fail("io_uring: depth {} is not in 1..{}", depth, kMaxDepth);
  EventFd event_fd = CLONE_TRY(EventFd::Create(EFD_NONBLOCK));
  std::unique_ptr<IoRing> ring(new IoRing(depth, std::move(event_fd)));
  // Every in-flight operation has its SQE slot; the CQ ring (twice the SQ ring) cannot overflow.
  int rc = io_uring_queue_init(depth, &ring->ring_, 0);
  if (rc < 0) return tl::unexpected(Error::FromErrno("io_uring_queue_init", -rc, fmt::format("depth {}", depth)));
  ring->ring_ready_ = true;
  rc = io_uring_register_eventfd(&ring->ring_, ring->event_fd_.fd());
  if (rc < 0) return tl::unexpected(Error::FromErrno("io_uring_register_eventfd", -rc));
  return ring;
}

IoRing::~IoRing() {
  if (!ring_ready_) return;
  if (auto r = WaitAll([](uint64_t, int32_t) {}); !r) {
    // The kernel may still write into buffers we are about to release: never continue past this.
    Log(LogLevel::kError, "io_uring: cannot wait for in-flight I/O: {}", r.error().message());
    std::abort();
  }
  io_uring_queue_exit(&ring_);
}

io_uring_sqe* IoRing::NextSqe(uint64_t tag) {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  // INVARIANT: in_flight_ <= depth_ == SQ ring size, and queued SQEs count as in flight.
  CLONE_CHECK(sqe != nullptr);
  io_uring_sqe_set_data64(sqe, tag);
  ++in_flight_;
  return sqe;
}

bool IoRing::Readv(int fd, std::span<const iovec> iov, uint64_t offset, uint64_t tag) {
  if (room() < 1) return false;
  io_uring_prep_readv(NextSqe(tag), fd, iov.data(), static_cast<unsigned>(iov.size()), offset);
  return true;
}

bool IoRing::Writev(int fd, std::span<const iovec> iov, uint64_t offset, uint64_t tag, SyncAfter sync) {
  if (room() < (sync == SyncAfter::kDataSync ? 2u : 1u)) return false;
  io_uring_sqe* write = NextSqe(tag);
  io_uring_prep_writev(write, fd, iov.data(), static_cast<unsigned>(iov.size()), offset);
  if (sync == SyncAfter::kDataSync) {
    io_uring_sqe_set_flags(write, IOSQE_IO_LINK);
    io_uring_prep_fsync(NextSqe(tag), fd, IORING_FSYNC_DATASYNC);
  }
  return true;
}

bool IoRing::Fsync(int fd, uint64_t tag, FsyncOrder order) {
  if (room() < 1) return false;
  io_uring_sqe* sqe = NextSqe(tag);
  io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
  if (order == FsyncOrder::kAfterSubmitted) io_uring_sqe_set_flags(sqe, IOSQE_IO_DRAIN);
  return true;
}

Result<void> IoRing::Submit() {
  for (;;) {
    int rc = io_uring_submit(&ring_);
    if (rc >= 0) return {};
    if (rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) return tl::unexpected(Error::FromErrno("io_uring_submit", -rc));
    // EAGAIN/EBUSY: the kernel is short of resources or the CQ is backed up; completions free both.
    if (rc != -EINTR) {
      io_uring_cqe* cqe = nullptr;
      int wait = io_uring_wait_cqe(&ring_, &cqe);
      if (wait < 0 && wait != -EINTR) return tl::unexpected(Error::FromErrno("io_uring_wait_cqe", -wait));
      return {};  // the caller reaps on the eventfd; the SQEs stay queued for the next Submit()
    }
  }
}

void IoRing::HandleCqe(io_uring_cqe* cqe, const Completion& done) {
  uint64_t tag = io_uring_cqe_get_data64(cqe);
  int32_t res = cqe->res;
  io_uring_cqe_seen(&ring_, cqe);
  CLONE_CHECK(in_flight_ > 0);
  --in_flight_;
  done(tag, res);
}

size_t IoRing::Reap(const Completion& done) {
  event_fd_.Drain();
  size_t count = 0;
  io_uring_cqe* cqe = nullptr;
  while (io_uring_peek_cqe(&ring_, &cqe) == 0 && cqe != nullptr) {
    HandleCqe(cqe, done);
    ++count;
  }
  return count;
}

Result<void> IoRing::WaitAll(const Completion& done) {
  while (in_flight_ > 0) {
    if (io_uring_sq_ready(&ring_) > 0) CLONE_TRY_VOID(Submit());
    io_uring_cqe* cqe = nullptr;
    int rc = io_uring_wait_cqe(&ring_, &cqe);
    if (rc == -EINTR) continue;
    if (rc < 0) return tl::unexpected(Error::FromErrno("io_uring_wait_cqe", -rc));
    HandleCqe(cqe, done);
  }
  event_fd_.Drain();
  return {};
}

}  // namespace clonevm

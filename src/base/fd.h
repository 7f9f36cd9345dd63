// Fd: a move-only owner of a file descriptor. There is no implicit conversion to int; call get().
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <string>
#include <utility>

#include "base/result.h"

namespace clonevm {

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }
  [[nodiscard]] int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// open(2) with O_CLOEXEC; the error names the path.
[[nodiscard]] Result<Fd> OpenFile(const std::string& path, int flags, mode_t mode = 0);

// Reads a whole file; fails with a message naming the path.
[[nodiscard]] Result<std::string> ReadFile(const std::string& path);

// Writes all of data, retrying short writes and EINTR.
[[nodiscard]] Result<void> WriteAll(int fd, const void* data, size_t size);

// pipe2(2): {read end, write end}, close-on-exec unless `flags` says otherwise.
struct PipeFds {
  Fd read;
  Fd write;
};
[[nodiscard]] Result<PipeFds> Pipe(int flags = O_CLOEXEC);

// An eventfd used to wake another thread's epoll loop.
class EventFd {
 public:
  static Result<EventFd> Create(int flags = 0);
  int fd() const { return fd_.get(); }
  void Signal(uint64_t n = 1) const;
  // Reads and returns the counter (0 when non-blocking and nothing is pending).
  uint64_t Drain() const;

 private:
  explicit EventFd(Fd fd) : fd_(std::move(fd)) {}
  Fd fd_;
};

}  // namespace clonevm

#include "base/fd.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/stat.h>

#include <cerrno>

namespace clonevm {

Result<Fd> OpenFile(const std::string& path, int flags, mode_t mode) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) return FailErrno("open", path);
  return Fd(fd);
}

Result<std::string> ReadFile(const std::string& path) {
  Fd fd = CLONE_TRY(OpenFile(path, O_RDONLY));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return FailErrno("stat", path);
  if (S_ISDIR(st.st_mode)) return Fail("{}: is a directory", path);
  std::string data;
  data.resize(st.st_size > 0 ? static_cast<size_t>(st.st_size) : 0);
  size_t done = 0;
  for (;;) {
    if (done == data.size()) data.resize(data.size() + 65536);
    ssize_t n = ::read(fd.get(), data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return FailErrno("read", path);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  data.resize(done);
  return data;
}

Result<void> WriteAll(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return FailErrno("write");
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return {};
}

Result<EventFd> EventFd::Create(int flags) {
  int fd = ::eventfd(0, EFD_CLOEXEC | flags);
  if (fd < 0) return FailErrno("eventfd");
  return EventFd(Fd(fd));
}

void EventFd::Signal(uint64_t n) const {
  // An eventfd write only fails on counter overflow, which is harmless for a wakeup.
  [[maybe_unused]] ssize_t r = ::write(fd_.get(), &n, sizeof(n));
}

uint64_t EventFd::Drain() const {
  uint64_t value = 0;
  if (::read(fd_.get(), &value, sizeof(value)) != sizeof(value)) return 0;
  return value;
}

Result<PipeFds> Pipe(int flags) {
  int fds[2] = {-1, -1};
  if (::pipe2(fds, flags) != 0) return FailErrno("pipe2");
  return PipeFds{Fd(fds[0]), Fd(fds[1])};
}

}  // namespace clonevm

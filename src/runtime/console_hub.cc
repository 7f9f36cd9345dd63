#include "runtime/console_hub.h"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "base/log.h"

namespace clonevm {

ConsoleHub::~ConsoleHub() {
  if (loop_ != nullptr) {
    if (listener_) loop_->Remove(listener_.get());
    std::lock_guard lock(mu_);
    for (auto& [fd, conn] : clients_) loop_->Remove(fd);
  }
  if (!path_.empty()) ::unlink(path_.c_str());
}

void ConsoleHub::Output(std::span<const uint8_t> bytes) {
  if (terminal_fd_ >= 0) [[maybe_unused]]
    auto r = WriteAll(terminal_fd_, bytes.data(), bytes.size());
  if (log_) [[maybe_unused]]
    auto r = WriteAll(log_.get(), bytes.data(), bytes.size());
  std::lock_guard lock(mu_);
  replay_.insert(replay_.end(), bytes.begin(), bytes.end());
  if (replay_.size() > kReplayBytes)
    replay_.erase(replay_.begin(), replay_.begin() + static_cast<long>(replay_.size() - kReplayBytes));
  for (auto& [fd, conn] : clients_) {
    // Non-blocking: a slow client loses output instead of stalling the guest.
    ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < static_cast<ssize_t>(bytes.size())) {
      CLONE_LOG_RATELIMITED(LogLevel::kDebug, "console client {} dropped {} bytes", fd,
                            bytes.size() - std::max<ssize_t>(n, 0));
    }
  }
}

Result<void> ConsoleHub::Listen(EventLoop& loop, const std::string& path,
                                std::function<void(std::span<const uint8_t>)> input) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) return Fail("console socket path too long: {}", path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return FailErrno("console socket");
  Fd listener(fd);
  ::unlink(path.c_str());
  mode_t old = ::umask(0077);
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  ::umask(old);
  if (rc != 0) return FailErrno("cannot bind console socket {}", path);
  if (::listen(fd, 16) != 0) return FailErrno("listen {}", path);
  path_ = path;
  loop_ = &loop;
  input_ = std::move(input);
  CLONE_TRY_VOID(loop.Add(fd, EPOLLIN, [this](uint32_t) { Accept(); }));
  listener_ = std::move(listener);
  return {};
}

size_t ConsoleHub::client_count() const {
  std::lock_guard lock(mu_);
  return clients_.size();
}

void ConsoleHub::Accept() {
  int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (fd < 0) return;
  Fd conn(fd);
  {
    std::lock_guard lock(mu_);
    std::vector<uint8_t> replay(replay_.begin(), replay_.end());
    if (!replay.empty()) [[maybe_unused]]
      auto n = ::send(fd, replay.data(), replay.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    clients_.emplace(fd, std::move(conn));
  }
  if (auto added = loop_->Add(fd, EPOLLIN | EPOLLRDHUP, [this, fd](uint32_t) { ReadClient(fd); }); !added) {
    Log(LogLevel::kWarn, "console client: {}", added.error().message());
    std::lock_guard lock(mu_);
    clients_.erase(fd);
  }
}

void ConsoleHub::ReadClient(int fd) {
  uint8_t buf[512];
  ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) {
    DropClient(fd);
    return;
  }
  if (input_) input_(std::span<const uint8_t>(buf, static_cast<size_t>(n)));
}

void ConsoleHub::DropClient(int fd) {
  loop_->Remove(fd);
  std::lock_guard lock(mu_);
  clients_.erase(fd);
}

}  // namespace clonevm

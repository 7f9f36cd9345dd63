#include "control/client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

namespace clonevm::control {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kMaxReceivedFds = 32;

// Waits until `fd` is ready for `events`, or fails once `deadline` passes.
Result<void> WaitFor(int fd, short events, Clock::time_point deadline, std::string_view what) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return Fail("control request {} timed out", what);
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left + 1, 1 << 30)));
    if (n < 0 && errno != EINTR) return FailErrno("poll", what);
    if (n > 0) return {};
  }
}

Result<Fd> Connect(const std::string& socket_path, Clock::time_point deadline, std::string_view what) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof(addr.sun_path)) {
    return Fail("control socket path must be 1 to {} bytes: {}", sizeof(addr.sun_path) - 1, socket_path);
  }
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return FailErrno("socket(AF_UNIX)");
  for (;;) {
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) return fd;
    if (errno == EINTR) continue;
    if (errno == ENOENT || errno == ECONNREFUSED) {
      return Fail("no VM is serving {} ({})", socket_path, std::strerror(errno));
    }
    if (errno != EAGAIN) return FailErrno("connect", socket_path);
    // The server's backlog is full: retry until the deadline.
    if (Clock::now() >= deadline) return Fail("control request {} timed out connecting", what);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// Sends all of `data`. A server that answers early (e.g. 413) and closes makes the rest unsendable;
// that is not an error here: the response says what happened.
Result<void> SendAll(int fd, std::string_view data, Clock::time_point deadline, std::string_view what) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) {
      data.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EPIPE || errno == ECONNRESET) return {};
    if (errno != EAGAIN) return FailErrno("send", what);
    CLONE_TRY_VOID(WaitFor(fd, POLLOUT, deadline, what));
  }
  return {};
}

// One recvmsg: appends data to `in` and received descriptors to `fds`. Returns bytes read (0: EOF),
// or -1 for "try again later".
Result<ssize_t> Receive(int fd, std::string* in, std::vector<Fd>* fds) {
  char buf[64 * 1024];
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxReceivedFds)];
  iovec iov{buf, sizeof(buf)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return -1;
    return FailErrno("recvmsg(control socket)");
  }
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int raw;
      // SAFETY: the kernel wrote `count` ints at CMSG_DATA(c), inside `control`.
      std::memcpy(&raw, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds->emplace_back(raw);
    }
  }
  if (msg.msg_flags & MSG_CTRUNC)
    return Fail("control response carried more than {} file descriptors", kMaxReceivedFds);
  in->append(buf, static_cast<size_t>(n));
  return n;
}

}  // namespace

Result<Response> Call(const std::string& socket_path, std::string_view method, std::string_view path,
                      const std::optional<nlohmann::json>& body, std::chrono::milliseconds timeout,
                      std::vector<Fd>* received_fds) {
  const Clock::time_point deadline = Clock::now() + timeout;
  const std::string what = fmt::format("{} {} on {}", method, path, socket_path);
  const bool bad_target = path.empty() || path.front() != '/' ||
                          std::any_of(path.begin(), path.end(), [](char c) { return c <= ' ' || c == 0x7f; });
  const bool bad_method = method.empty() || std::any_of(method.begin(), method.end(), [](char c) {
                            return !((c >= 'A' && c <= 'Z') || c == '-' || c == '_');
                          });
  if (bad_target || bad_method) return Fail("invalid control request method or path: {} {}", method, path);
  Fd fd = CLONE_TRY(Connect(socket_path, deadline, what));
  const std::string body_text =
      body ? body->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) : std::string();
  const std::string request = SerializeRequest(method, path, {{"Connection", "close"}}, body_text, body.has_value());
  CLONE_TRY_VOID(SendAll(fd.get(), request, deadline, what));

  ResponseParser parser(method == "HEAD");
  std::string in;
  std::vector<Fd> fds;
  bool eof = false;
  for (;;) {
    ResponseParser::Step step = parser.Parse(in, eof);
    if (step.status == ResponseParser::Status::kResponse) {
      if (received_fds != nullptr) {
        for (Fd& f : fds) received_fds->push_back(std::move(f));
      }
      return std::move(step.response);
    }
    if (step.status == ResponseParser::Status::kError) return Fail("control response to {}: {}", what, step.error);
    ssize_t n = -1;
    while (n < 0) {
      n = CLONE_TRY(Receive(fd.get(), &in, &fds));
      if (n < 0) CLONE_TRY_VOID(WaitFor(fd.get(), POLLIN, deadline, what));
    }
    eof = n == 0;
  }
}

Result<nlohmann::json> ResponseJson(const Response& response) {
  nlohmann::json body = response.body.empty() ? nlohmann::json() : nlohmann::json::parse(response.body, nullptr, false);
  if (response.status >= 200 && response.status < 300) {
    if (body.is_discarded()) return Fail("HTTP {}: response body is not JSON", response.status);
    return body;
  }
  if (!body.is_discarded() && body.is_object() && body.contains("error") && body["error"].is_string()) {
    return Fail("HTTP {}: {}", response.status, body["error"].get<std::string>());
  }
  return Fail("HTTP {}: {}", response.status, response.body);
}

}  // namespace clonevm::control

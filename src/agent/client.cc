#include "agent/client.h"

#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace clonevm::agent {

namespace {

constexpr size_t kHighWater = 1 << 20;

Result<void> SetNonBlocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return FailErrno("fcntl O_NONBLOCK");
  return {};
}

int PollTimeout(Deadline deadline) {
  if (!deadline) return -1;
  auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, 1 << 30));
}

tl::unexpected<Error> TimedOut(std::string message) { return tl::unexpected(Error(std::move(message), ETIMEDOUT)); }

// Non-blocking connect, then wait for it within `timeout`.
Result<Fd> ConnectSocket(int domain, const sockaddr* addr, socklen_t len, std::chrono::milliseconds timeout,
                         const std::string& what) {
  Fd fd(::socket(domain, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return FailErrno("socket", what);
  if (::connect(fd.get(), addr, len) == 0) return fd;
  if (errno != EINPROGRESS && errno != EAGAIN) return FailErrno("connect", what);
  Deadline deadline = DeadlineAfter(timeout);
  for (;;) {
    pollfd p{fd.get(), POLLOUT, 0};
    int n = ::poll(&p, 1, PollTimeout(deadline));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FailErrno("poll", what);
    if (n == 0) return TimedOut(fmt::format("connect {}: timed out after {} ms", what, timeout.count()));
    break;
  }
  int err = 0;
  socklen_t err_len = sizeof(err);
  if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &err_len) != 0) return FailErrno("getsockopt", what);
  if (err != 0) return tl::unexpected(Error::FromErrno("connect", err, what));
  return fd;
}

// Writes all of data to a possibly non-blocking fd.
Result<void> WriteAllPolling(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        pollfd p{fd, POLLOUT, 0};
        ::poll(&p, 1, -1);
        continue;
      }
      return FailErrno("write exec output");
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

// One exec conversation, shared by RunExec (fds) and ExecCapture (memory).
struct ExecDriverParams {
  int stdin_fd = -1;                        // forwarded until EOF, or
  const std::string* stdin_data = nullptr;  // forwarded from memory
  std::function<Result<void>(std::string_view)> on_stdout, on_stderr;
  int resize_fd = -1;
  std::function<std::pair<uint16_t, uint16_t>()> window_size;
  int signal_fd = -1;
  std::chrono::milliseconds start_timeout{0}, timeout{0}, idle_timeout{0};
};

class ExecDriver {
 public:
  ExecDriver(int conn, const ExecRequest& request, ExecDriverParams params)
      : conn_(conn), request_(request), p_(std::move(params)) {}

  Result<int> Run() {
    CLONE_TRY_VOID(SetNonBlocking(conn_));
    Queue(MessageType::kExec, EncodePayload(request_));
    stdin_open_ = request_.forward_stdin;
    auto now = Clock::now();
    start_deadline_ = now + p_.start_timeout;
    if (p_.timeout.count() > 0) overall_deadline_ = now + p_.timeout;
    last_frame_ = now;
    while (!status_) CLONE_TRY_VOID(Step());
    return *status_;
  }

 private:
  void Queue(MessageType type, std::string_view payload) { out_ += EncodeFrame(type, payload); }
  size_t pending() const { return out_.size() - out_pos_; }

  Deadline NextDeadline() const {
    Deadline d = overall_deadline_;
    auto earlier = [&d](Clock::time_point t) { d = d ? std::min(*d, t) : t; };
    if (!started_) earlier(start_deadline_);
    if (p_.idle_timeout.count() > 0) earlier(last_frame_ + p_.idle_timeout);
    return d;
  }

  Result<void> CheckDeadlines() const {
    auto now = Clock::now();
    if (!started_ && now >= start_deadline_) {
      return TimedOut(fmt::format("the agent did not start the program within {} ms", p_.start_timeout.count()));
    }
    if (overall_deadline_ && now >= *overall_deadline_) {
      return TimedOut(fmt::format("exec timed out after {} ms", p_.timeout.count()));
    }
    if (p_.idle_timeout.count() > 0 && now >= last_frame_ + p_.idle_timeout) {
      return TimedOut(fmt::format("no word from the agent for {} ms", p_.idle_timeout.count()));
    }
    return {};
  }

  Result<void> Step() {
    // Forward in-memory stdin as room allows.
    if (stdin_open_ && p_.stdin_data) {
      while (pending() < kHighWater && stdin_pos_ < p_.stdin_data->size()) {
        size_t n = std::min(kStreamChunk, p_.stdin_data->size() - stdin_pos_);
        Queue(MessageType::kStdin, std::string_view(*p_.stdin_data).substr(stdin_pos_, n));
        stdin_pos_ += n;
      }
      if (stdin_pos_ == p_.stdin_data->size()) CloseStdin();
    }
    std::vector<pollfd> fds;
    auto add = [&](int fd, short events) {
      fds.push_back({fd, events, 0});
      return fds.size() - 1;
    };
    size_t conn_i = add(conn_, static_cast<short>(POLLIN | (pending() > 0 ? POLLOUT : 0)));
    bool read_stdin = stdin_open_ && p_.stdin_fd >= 0 && pending() < kHighWater;
    size_t in_i = read_stdin ? add(p_.stdin_fd, POLLIN) : SIZE_MAX;
    size_t resize_i = p_.resize_fd >= 0 ? add(p_.resize_fd, POLLIN) : SIZE_MAX;
    size_t signal_i = p_.signal_fd >= 0 ? add(p_.signal_fd, POLLIN) : SIZE_MAX;
    int n = ::poll(fds.data(), fds.size(), PollTimeout(NextDeadline()));
    if (n < 0) {
      if (errno == EINTR) return {};
      return FailErrno("poll");
    }
    if (n == 0) return CheckDeadlines();
    if (fds[conn_i].revents & POLLOUT) CLONE_TRY_VOID(Flush());
    if (fds[conn_i].revents & (POLLIN | POLLHUP | POLLERR)) CLONE_TRY_VOID(ReadConnection());
    if (status_) return {};
    if (in_i != SIZE_MAX && fds[in_i].revents) CLONE_TRY_VOID(ReadStdin());
    if (resize_i != SIZE_MAX && fds[resize_i].revents) HandleResize();
    if (signal_i != SIZE_MAX && fds[signal_i].revents) HandleSignal();
    return CheckDeadlines();
  }

  Result<void> Flush() {
    ssize_t n = ::send(conn_, out_.data() + out_pos_, pending(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return {};
      // The agent may have closed after an Error frame: read that first if there is one.
      if (errno == EPIPE || errno == ECONNRESET) return ReadConnection();
      return FailErrno("send to agent");
    }
    out_pos_ += static_cast<size_t>(n);
    if (out_pos_ == out_.size()) {
      out_.clear();
      out_pos_ = 0;
    }
    return {};
  }

  Result<void> ReadConnection() {
    char buf[64 * 1024];
    ssize_t n = ::recv(conn_, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return {};
      return FailErrno("recv from agent");
    }
    if (n == 0) return Fail("the agent closed the connection before the program exited");
    last_frame_ = Clock::now();
    decoder_.Feed(std::string_view(buf, static_cast<size_t>(n)));
    while (!status_) {
      std::optional<Frame> frame = CLONE_TRY(decoder_.Next());
      if (!frame) break;
      CLONE_TRY_VOID(HandleFrame(*frame));
    }
    return {};
  }

  Result<void> HandleFrame(const Frame& frame) {
    switch (frame.type) {
      case MessageType::kStarted:
        CLONE_TRY(FrameAs<Started>(frame));
        started_ = true;
        return {};
      case MessageType::kStdout:
        return p_.on_stdout(frame.payload);
      case MessageType::kStderr:
        return p_.on_stderr(frame.payload);
      case MessageType::kExited: {
        Exited exited = CLONE_TRY(FrameAs<Exited>(frame));
        status_ = exited.ShellStatus();
        return {};
      }
      default: {
        auto unexpected = FrameAs<Exited>(frame);  // turns Error frames into their message
        return tl::unexpected(unexpected.error());
      }
    }
  }

  Result<void> ReadStdin() {
    char buf[kStreamChunk];
    ssize_t n = ::read(p_.stdin_fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return {};
      return FailErrno("read stdin");
    }
    if (n == 0) {
      CloseStdin();
      return {};
    }
    Queue(MessageType::kStdin, std::string_view(buf, static_cast<size_t>(n)));
    return {};
  }

  void CloseStdin() {
    if (!stdin_open_) return;
    stdin_open_ = false;
    Queue(MessageType::kStdinClose, "");
  }

  void HandleResize() {
    char buf[256];
    [[maybe_unused]] ssize_t n = ::read(p_.resize_fd, buf, sizeof(buf));
    if (!p_.window_size) return;
    auto [rows, cols] = p_.window_size();
    Queue(MessageType::kResize, EncodePayload(Resize{rows, cols}));
  }

  void HandleSignal() {
    signalfd_siginfo info{};
    if (::read(p_.signal_fd, &info, sizeof(info)) != sizeof(info)) return;
    if (info.ssi_signo >= 1 && info.ssi_signo <= 64) {
      Queue(MessageType::kSignal, EncodePayload(SignalMessage{static_cast<int>(info.ssi_signo)}));
    }
  }

  int conn_;
  const ExecRequest& request_;
  ExecDriverParams p_;
  FrameDecoder decoder_;
  std::string out_;
  size_t out_pos_ = 0;
  size_t stdin_pos_ = 0;
  bool stdin_open_ = false;
  bool started_ = false;
  Clock::time_point start_deadline_, last_frame_;
  Deadline overall_deadline_;
  std::optional<int> status_;
};

Result<void> PowerRequest(Fd& conn, MessageType type, std::chrono::milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  CLONE_TRY_VOID(WriteFrame(conn.get(), type, "", deadline));
  Frame reply = CLONE_TRY(ReadFrame(conn.get(), deadline));
  if (reply.type == MessageType::kPowerOk) return {};
  auto unexpected = FrameAs<IdentityOk>(reply);  // an Error frame's message, or "unexpected"
  if (!unexpected) return tl::unexpected(unexpected.error());
  return Fail("unexpected IdentityOk reply to {}", TypeName(type));
}

}  // namespace

std::string_view RoleName(Role role) {
  switch (role) {
    case Role::kExec:
      return "exec";
    case Role::kMonitor:
      return "monitor";
    case Role::kControl:
      return "control";
  }
  return "exec";
}

Result<Token> GenerateToken() {
  Token token{};
  if (::getrandom(token.data(), token.size(), 0) != static_cast<ssize_t>(token.size())) return FailErrno("getrandom");
  return token;
}

Result<Fd> ConnectVsock(uint32_t cid, uint32_t port, std::chrono::milliseconds timeout) {
  sockaddr_vm addr{};
  addr.svm_family = AF_VSOCK;
  addr.svm_cid = cid;
  addr.svm_port = port;
  return ConnectSocket(AF_VSOCK, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr), timeout,
                       fmt::format("vsock cid {} port {}", cid, port));
}

Result<Fd> ConnectUnix(const std::string& path, std::chrono::milliseconds timeout) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) return Fail("socket path too long: {}", path);
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  return ConnectSocket(AF_UNIX, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr), timeout, path);
}

Result<HelloOk> Handshake(Fd& conn, const Token& token, Role role, std::chrono::milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  Hello hello{kProtocolVersion, ToHex(token), std::string(RoleName(role))};
  auto sent = WriteMessage(conn.get(), hello, deadline);
  auto reply = ReadMessage<HelloOk>(conn.get(), deadline);
  if (!reply && reply.error().error_number() == ETIMEDOUT) {
    return TimedOut(fmt::format("the agent did not answer Hello within {} ms", timeout.count()));
  }
  if (!reply) return Fail("agent handshake: {}", reply.error().message());
  if (!sent) return Fail("agent handshake: {}", sent.error().message());
  return reply;
}

Result<AgentConnection> Connect(const AgentEndpoint& endpoint, const Token& token, Role role,
                                std::chrono::milliseconds timeout) {
  AgentConnection c;
  if (endpoint.unix_path.empty()) {
    c.fd = CLONE_TRY(ConnectVsock(endpoint.cid, endpoint.port, timeout));
  } else {
    c.fd = CLONE_TRY(ConnectUnix(endpoint.unix_path, timeout));
  }
  c.hello = CLONE_TRY(Handshake(c.fd, token, role, timeout));
  return c;
}

Result<int> RunExec(Fd& conn, const ExecRequest& request, const ExecIo& io) {
  ExecDriverParams p;
  p.stdin_fd = io.stdin_fd;
  int out = io.stdout_fd, err = io.stderr_fd;
  p.on_stdout = [out](std::string_view data) { return WriteAllPolling(out, data); };
  p.on_stderr = [err](std::string_view data) { return WriteAllPolling(err, data); };
  p.resize_fd = io.resize_fd;
  p.window_size = io.window_size;
  p.signal_fd = io.signal_fd;
  p.start_timeout = io.start_timeout;
  p.timeout = io.timeout;
  p.idle_timeout = io.idle_timeout;
  if (request.forward_stdin && io.stdin_fd < 0) return Fail("exec: forward_stdin without a stdin fd");
  ExecDriver driver(conn.get(), request, std::move(p));
  return driver.Run();
}

Result<ExecResult> ExecCapture(Fd& conn, const ExecRequest& request, const ExecCaptureOptions& options) {
  ExecResult result;
  auto keep = [](std::string* buffer, bool* truncated, size_t limit) {
    return [=](std::string_view data) -> Result<void> {
      size_t room = limit - std::min(limit, buffer->size());
      if (data.size() > room) *truncated = true;
      buffer->append(data.substr(0, room));
      return {};
    };
  };
  ExecDriverParams p;
  p.stdin_data = &options.stdin_data;
  p.on_stdout = keep(&result.stdout_data, &result.stdout_truncated, options.max_stdout);
  p.on_stderr = keep(&result.stderr_data, &result.stderr_truncated, options.max_stderr);
  p.start_timeout = options.start_timeout;
  p.timeout = options.timeout;
  ExecDriver driver(conn.get(), request, std::move(p));
  result.status = CLONE_TRY(driver.Run());
  return result;
}

// ---- monitor ----

Result<AgentMonitor> AgentMonitor::Start(Fd conn, const Token& token, std::chrono::milliseconds interval,
                                         std::chrono::milliseconds timeout) {
  HelloOk hello = CLONE_TRY(Handshake(conn, token, Role::kMonitor, timeout));
  Monitor request{static_cast<uint32_t>(std::clamp<int64_t>(interval.count(), 10, 3'600'000))};
  CLONE_TRY_VOID(WriteMessage(conn.get(), request, DeadlineAfter(timeout)));
  CLONE_TRY_VOID(SetNonBlocking(conn.get()));
  return AgentMonitor(std::move(conn), std::move(hello));
}

Result<std::optional<Report>> AgentMonitor::NextBuffered() {
  std::optional<Frame> frame = CLONE_TRY(decoder_.Next());
  if (!frame) return std::optional<Report>();
  Report report = CLONE_TRY(FrameAs<Report>(*frame));
  return std::optional<Report>(report);
}

Result<bool> AgentMonitor::ReadSome() {
  char buf[16 * 1024];
  ssize_t n = ::recv(conn_.get(), buf, sizeof(buf), MSG_DONTWAIT);
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return false;
    return FailErrno("recv from agent");
  }
  if (n == 0) {
    closed_ = true;
    return false;
  }
  decoder_.Feed(std::string_view(buf, static_cast<size_t>(n)));
  return true;
}

Result<Report> AgentMonitor::Next(std::chrono::milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  for (;;) {
    std::optional<Report> report = CLONE_TRY(NextBuffered());
    if (report) return *report;
    if (closed_) return Fail("the agent closed the monitor connection");
    pollfd p{conn_.get(), POLLIN, 0};
    int n = ::poll(&p, 1, PollTimeout(deadline));
    if (n < 0 && errno != EINTR) return FailErrno("poll");
    if (n == 0) return TimedOut(fmt::format("no Report from the agent within {} ms", timeout.count()));
    if (n > 0) CLONE_TRY(ReadSome());
  }
}

Result<std::vector<Report>> AgentMonitor::Poll() {
  while (CLONE_TRY(ReadSome())) {
  }
  std::vector<Report> reports;
  for (;;) {
    std::optional<Report> report = CLONE_TRY(NextBuffered());
    if (!report) break;
    reports.push_back(*report);
  }
  // Reports that arrived before the close are delivered first; the close is reported next time.
  if (reports.empty() && closed_) return Fail("the agent closed the monitor connection");
  return reports;
}

// ---- control ----

Result<void> SendShutdown(Fd& conn, std::chrono::milliseconds timeout) {
  return PowerRequest(conn, MessageType::kShutdown, timeout);
}

Result<void> SendReboot(Fd& conn, std::chrono::milliseconds timeout) {
  return PowerRequest(conn, MessageType::kReboot, timeout);
}

Result<IdentityOk> SendIdentity(Fd& conn, const SetIdentity& request, std::chrono::milliseconds timeout) {
  Deadline deadline = DeadlineAfter(timeout);
  CLONE_TRY_VOID(WriteMessage(conn.get(), request, deadline));
  return ReadMessage<IdentityOk>(conn.get(), deadline);
}

}  // namespace clonevm::agent

#include "control/server.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>

#include "base/check.h"
#include "base/log.h"

namespace clonevm::control {

struct Server::Link {
  std::mutex mu;
  EventLoop* loop = nullptr;  // guarded by mu; null once the Server is gone
  Server* server = nullptr;   // read and cleared on the loop thread only
};

struct Server::Connection {
  struct Chunk {
    std::string data;
    size_t offset = 0;
    std::vector<Fd> fds;  // sent with the chunk's first byte
  };

  uint64_t id = 0;
  Fd fd;
  std::string in;  // received bytes not yet consumed by a request
  RequestParser parser;
  std::deque<Chunk> out;
  bool readable = false;  // edge-triggered readiness, cleared on EAGAIN
  bool writable = true;
  bool peer_eof = false;            // the client will send nothing more
  bool close_after_output = false;  // close once `out` is written
  bool in_flight = false;           // a handler owns the current request
  bool continue_sent = false;
  std::string refused;  // why the peer may not use the server (SO_PEERCRED): its request gets a 403
  uid_t peer_uid = 0;   // SO_PEERCRED at accept
  gid_t peer_gid = 0;
  pid_t peer_pid = 0;
  // The request being handled: how to frame its response.
  bool keep_alive = true;
  int version_minor = 1;
  bool head_request = false;
  HijackCallback hijack;  // set when a hijack head is queued; called once it is written
  Clock::time_point last_write{};
  std::optional<Clock::time_point> idle_since;
  std::optional<Clock::time_point> request_since;
  Clock::time_point deadline = Clock::time_point::max();
};

namespace {

constexpr size_t kReadChunk = 64 * 1024;

Result<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return Fail("control socket path must be 1 to {} bytes: {}", sizeof(addr.sun_path) - 1, path);
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

// Why the peer of connection `fd` may not use this server (nullopt: it may): it must be root or `owner`
// (any uid with kAnyPeer). *peer gets the peer's credentials.
std::optional<std::string> CheckPeer(int fd, uid_t owner, PeerPolicy policy, ucred* peer) {
  ucred& cred = *peer;
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return fmt::format("SO_PEERCRED: {}", std::strerror(errno));
  }
  if (policy == PeerPolicy::kAnyPeer || cred.uid == 0 || cred.uid == owner) return std::nullopt;
  return fmt::format("uid {} (pid {}) is not the owner of this VM (uid {}) or root", cred.uid, cred.pid, owner);
}

// True if a server accepts connections on `path` (an AF_UNIX socket file).
Result<bool> SomeoneListens(const sockaddr_un& addr, const std::string& path) {
  Fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!probe) return FailErrno("socket(AF_UNIX)");
  if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) return true;
  if (errno == EAGAIN) return true;  // a live server with a full backlog
  if (errno == ECONNREFUSED) return false;
  return FailErrno("connect", path);
}

}  // namespace

Server::Server(EventLoop& loop, std::string socket_path, Router router, Limits limits)
    : loop_(loop),
      socket_path_(std::move(socket_path)),
      router_(std::move(router)),
      limits_(limits),
      link_(std::make_shared<Link>()) {
  link_->loop = &loop_;
  link_->server = this;
}

Result<std::unique_ptr<Server>> Server::Create(EventLoop& loop, std::string socket_path, Router router, Limits limits) {
  auto server = std::unique_ptr<Server>(new Server(loop, std::move(socket_path), std::move(router), limits));
  CLONE_TRY_VOID(server->Listen());
  Server* self = server.get();
  int timer = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (timer < 0) return FailErrno("timerfd_create");
  server->timer_fd_ = Fd(timer);
  CLONE_TRY_VOID(loop.Add(timer, EPOLLIN, [self](uint32_t) { self->OnTimer(); }));
  CLONE_TRY_VOID(loop.Add(server->listen_fd_.get(), EPOLLIN | EPOLLET, [self](uint32_t) { self->OnAccept(); }));
  return server;
}

Result<void> Server::Listen() {
  const sockaddr_un addr = CLONE_TRY(UnixAddress(socket_path_));
  std::filesystem::path parent = std::filesystem::path(socket_path_).parent_path();
  if (parent.empty()) parent = ".";
  Fd dir = CLONE_TRY(OpenFile(parent.string(), O_RDONLY | O_DIRECTORY));
  // Serialises check-unlink-bind with other Clone processes; filesystems without flock still work,
  // only without that protection.
  while (::flock(dir.get(), LOCK_EX) != 0 && errno == EINTR) {
  }
  struct stat st {};
  if (::lstat(socket_path_.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return Fail("{} exists and is not a socket", socket_path_);
    if (CLONE_TRY(SomeoneListens(addr, socket_path_))) return Fail("another VM is serving {}", socket_path_);
    if (::unlink(socket_path_.c_str()) != 0 && errno != ENOENT) return FailErrno("unlink stale socket", socket_path_);
  } else if (errno != ENOENT) {
    return FailErrno("stat", socket_path_);
  }
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return FailErrno("socket(AF_UNIX)");
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return FailErrno("bind", socket_path_);
  }
  // Before listen(): until then a connect() is refused, so nobody gets in through a wider mode.
  if (::chmod(socket_path_.c_str(), 0600) != 0 || ::stat(socket_path_.c_str(), &st) != 0 ||
      ::listen(fd.get(), 64) != 0) {
    Error error = Error::FromErrno("chmod/listen", errno, socket_path_);
    ::unlink(socket_path_.c_str());
    return tl::unexpected(error);
  }
  socket_dev_ = st.st_dev;
  socket_ino_ = st.st_ino;
  listen_fd_ = std::move(fd);
  return {};
}

Server::~Server() {
  {
    std::lock_guard lock(link_->mu);
    link_->loop = nullptr;
    link_->server = nullptr;
  }
  for (auto& [id, conn] : connections_) loop_.Remove(conn->fd.get());
  connections_.clear();
  if (timer_fd_) loop_.Remove(timer_fd_.get());
  if (listen_fd_) {
    loop_.Remove(listen_fd_.get());
    struct stat st {};
    // Only our own socket: another VM may have replaced a path we were told to serve.
    if (::stat(socket_path_.c_str(), &st) == 0 && st.st_dev == socket_dev_ && st.st_ino == socket_ino_) {
      ::unlink(socket_path_.c_str());
    }
  }
}

void Server::OnAccept() {
  for (;;) {
    int raw = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (raw < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      // EAGAIN: all accepted. EMFILE and friends: retried on the next connection (edge-triggered).
      if (errno != EAGAIN) CLONE_LOG_RATELIMITED(LogLevel::kWarn, "control socket accept: {}", std::strerror(errno));
      return;
    }
    Fd fd(raw);
    ucred peer{};
    std::optional<std::string> refused = CheckPeer(fd.get(), limits_.owner_uid, limits_.peers, &peer);
    if (refused) CLONE_LOG_RATELIMITED(LogLevel::kWarn, "control socket {}: {}", socket_path_, *refused);
    if (connections_.size() >= limits_.max_connections) {
      std::string busy = SerializeResponse(Response::Error(503, "too many control connections"), {.keep_alive = false});
      [[maybe_unused]] ssize_t ignored = ::send(fd.get(), busy.data(), busy.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      continue;
    }
    const uint64_t id = next_id_++;
    auto conn = std::make_unique<Connection>();
    conn->id = id;
    conn->fd = std::move(fd);
    conn->parser = RequestParser(limits_.parser);
    if (refused) conn->refused = std::move(*refused);
    conn->peer_uid = peer.uid;
    conn->peer_gid = peer.gid;
    conn->peer_pid = peer.pid;
    Connection& ref = *conn;
    const int conn_fd = conn->fd.get();
    connections_.emplace(id, std::move(conn));
    auto added = loop_.Add(conn_fd, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                           [this, id](uint32_t events) { OnEvents(id, events); });
    if (!added) {
      CLONE_LOG_RATELIMITED(LogLevel::kWarn, "control socket: {}", added.error().message());
      connections_.erase(id);
      continue;
    }
    UpdateDeadline(ref);
  }
}

void Server::OnEvents(uint64_t id, uint32_t events) {
  auto it = connections_.find(id);
  if (it == connections_.end()) return;
  Connection& conn = *it->second;
  if (events & (EPOLLHUP | EPOLLERR)) return CloseConnection(id);
  if (events & (EPOLLIN | EPOLLRDHUP)) conn.readable = true;
  if (events & EPOLLOUT) conn.writable = true;
  Pump(conn);
}

// Moves the connection forward as far as it can go without blocking: write pending output, hand
// over a hijacked socket, close, parse and dispatch the next request, or read more bytes.
void Server::Pump(Connection& conn) {
  for (;;) {
    if (!Flush(conn)) return;
    if (!conn.out.empty()) break;  // EPOLLOUT resumes
    if (conn.hijack) {
      HijackCallback on_taken = std::move(conn.hijack);
      HijackedConnection taken{std::move(conn.fd), std::move(conn.in)};
      loop_.Remove(taken.socket.get());
      const uint64_t id = conn.id;  // `conn` dies in the erase
      connections_.erase(id);
      on_taken(std::move(taken));
      return;
    }
    if (conn.close_after_output) return CloseConnection(conn.id);
    if (conn.in_flight) break;
    ParseNext(conn);
    if (conn.in_flight || !conn.out.empty() || conn.close_after_output) continue;
    if (conn.peer_eof) return CloseConnection(conn.id);  // a partial request can never complete
    if (!conn.readable) break;
    if (!ReadSome(conn)) return;
  }
  UpdateDeadline(conn);
}

bool Server::Flush(Connection& conn) {
  while (!conn.out.empty() && conn.writable) {
    Connection::Chunk& chunk = conn.out.front();
    const char* data = chunk.data.data() + chunk.offset;
    const size_t size = chunk.data.size() - chunk.offset;
    ssize_t n;
    if (!chunk.fds.empty()) {
      iovec iov{const_cast<char*>(data), size};
      std::vector<char> control(CMSG_SPACE(sizeof(int) * chunk.fds.size()));
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control.data();
      msg.msg_controllen = control.size();
      cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
      cmsg->cmsg_level = SOL_SOCKET;
      cmsg->cmsg_type = SCM_RIGHTS;
      cmsg->cmsg_len = CMSG_LEN(sizeof(int) * chunk.fds.size());
      for (size_t i = 0; i < chunk.fds.size(); ++i) {
        const int raw = chunk.fds[i].get();
        // SAFETY: CMSG_DATA points into `control`, sized by CMSG_SPACE for all the fds.
        std::memcpy(CMSG_DATA(cmsg) + i * sizeof(int), &raw, sizeof(int));
      }
      n = ::sendmsg(conn.fd.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) chunk.fds.clear();  // the kernel holds its own references now
    } else {
      n = ::send(conn.fd.get(), data, size, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        conn.writable = false;
        break;
      }
      CloseConnection(conn.id);
      return false;
    }
    conn.last_write = Clock::now();
    chunk.offset += static_cast<size_t>(n);
    if (chunk.offset == chunk.data.size()) conn.out.pop_front();
  }
  return true;
}

bool Server::ReadSome(Connection& conn) {
  char buf[kReadChunk];
  ssize_t n = ::read(conn.fd.get(), buf, sizeof(buf));
  if (n < 0) {
    if (errno == EINTR) return true;
    if (errno == EAGAIN) {
      conn.readable = false;
      return true;
    }
    CloseConnection(conn.id);
    return false;
  }
  if (n == 0) {
    conn.peer_eof = true;
    conn.readable = false;
    return true;
  }
  conn.in.append(buf, static_cast<size_t>(n));
  return true;
}

void Server::ParseNext(Connection& conn) {
  if (conn.in.empty()) return;
  RequestParser::Step step = conn.parser.Parse(conn.in);
  switch (step.status) {
    case RequestParser::Status::kNeedMore:
      if (conn.parser.expects_continue() && !conn.continue_sent) {
        conn.continue_sent = true;
        conn.out.push_back({"HTTP/1.1 100 Continue\r\n\r\n", 0, {}});
      }
      return;
    case RequestParser::Status::kError:
      conn.version_minor = 1;
      conn.head_request = false;
      Queue(conn, Response::Error(step.error.status, step.error.message), /*close_after=*/true);
      return;
    case RequestParser::Status::kRequest:
      break;
  }
  conn.in.erase(0, step.consumed);
  conn.continue_sent = false;
  conn.in_flight = true;
  conn.keep_alive = step.request.keep_alive;
  conn.version_minor = step.request.version_minor;
  conn.head_request = step.request.method == "HEAD";
  conn.request_since.reset();
  if (!conn.refused.empty()) {  // answered here, never dispatched; the client can read why
    conn.in.clear();
    conn.in_flight = false;
    Queue(conn, Response::Error(403, conn.refused), /*close_after=*/true);
    return;
  }
  step.request.peer_uid = conn.peer_uid;
  step.request.peer_gid = conn.peer_gid;
  step.request.peer_pid = conn.peer_pid;
  Responder responder([link = link_, id = conn.id](Completion completion) {
    auto shared = std::make_shared<Completion>(std::move(completion));
    std::lock_guard lock(link->mu);
    if (link->loop == nullptr) return;  // the server is gone: drop the response
    link->loop->Post([link, id, shared] {
      if (link->server != nullptr) link->server->Complete(id, std::move(*shared));
    });
  });
  router_.Dispatch(std::move(step.request), std::move(responder));
}

void Server::Complete(uint64_t id, Completion completion) {
  auto it = connections_.find(id);
  if (it == connections_.end()) {
    if (completion.on_hijacked) completion.on_hijacked(Fail("control connection closed before the hijack"));
    return;
  }
  Connection& conn = *it->second;
  CLONE_CHECK(conn.in_flight);
  conn.in_flight = false;
  if (completion.on_hijacked) {
    conn.hijack = std::move(completion.on_hijacked);
    Queue(conn, std::move(completion.response), /*close_after=*/false);
  } else {
    Queue(conn, std::move(completion.response), !conn.keep_alive || conn.peer_eof);
  }
  Pump(conn);
}

void Server::Queue(Connection& conn, Response response, bool close_after) {
  ResponseHeadOptions options{.keep_alive = !close_after && !conn.hijack,
                              .version_minor = conn.version_minor,
                              .head_request = conn.head_request};
  if (conn.hijack) options.keep_alive = true;  // the stream continues; no Connection: close
  conn.out.push_back({SerializeResponse(response, options), 0, std::move(response.fds)});
  conn.close_after_output = conn.close_after_output || close_after;
  conn.last_write = Clock::now();
}

void Server::CloseConnection(uint64_t id) {
  auto it = connections_.find(id);
  if (it == connections_.end()) return;
  std::unique_ptr<Connection> conn = std::move(it->second);
  connections_.erase(it);
  loop_.Remove(conn->fd.get());
  if (conn->hijack) conn->hijack(Fail("control connection closed before the hijack"));
}

void Server::UpdateDeadline(Connection& conn) {
  const Clock::time_point now = Clock::now();
  const bool waiting = conn.out.empty() && !conn.in_flight;
  if (!waiting || !conn.in.empty()) conn.idle_since.reset();
  if (!waiting || conn.in.empty()) conn.request_since.reset();
  if (!conn.out.empty()) {
    conn.deadline = conn.last_write + limits_.idle_timeout;
  } else if (conn.in_flight) {
    conn.deadline = Clock::time_point::max();
  } else if (!conn.in.empty()) {
    if (!conn.request_since) conn.request_since = now;
    conn.deadline = *conn.request_since + limits_.request_timeout;
  } else {
    if (!conn.idle_since) conn.idle_since = now;
    conn.deadline = *conn.idle_since + limits_.idle_timeout;
  }
  if (conn.deadline != Clock::time_point::max()) ArmTimer(conn.deadline);
}

void Server::ArmTimer(Clock::time_point deadline) {
  if (deadline >= timer_deadline_) return;
  timer_deadline_ = deadline;
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch()).count();
  itimerspec spec{};
  // steady_clock is CLOCK_MONOTONIC; a deadline in the past fires at once (a zero value would disarm).
  spec.it_value.tv_sec = ns / 1'000'000'000;
  spec.it_value.tv_nsec = std::max<int64_t>(ns % 1'000'000'000, 1);
  ::timerfd_settime(timer_fd_.get(), TFD_TIMER_ABSTIME, &spec, nullptr);
}

void Server::OnTimer() {
  uint64_t expirations = 0;
  [[maybe_unused]] ssize_t ignored = ::read(timer_fd_.get(), &expirations, sizeof(expirations));
  timer_deadline_ = Clock::time_point::max();
  const Clock::time_point now = Clock::now();
  std::vector<uint64_t> expired;
  for (auto& [id, conn] : connections_)
    if (conn->deadline <= now) expired.push_back(id);
  for (uint64_t id : expired) {
    auto it = connections_.find(id);
    if (it == connections_.end()) continue;
    Connection& conn = *it->second;
    if (!conn.out.empty() || conn.in.empty() || conn.in_flight) {
      CloseConnection(id);  // idle, or not reading its response
      continue;
    }
    conn.version_minor = 1;
    conn.head_request = false;
    Queue(conn, Response::Error(408, "request not received in time"), /*close_after=*/true);
    Pump(conn);
  }
  for (auto& [id, conn] : connections_)
    if (conn->deadline != Clock::time_point::max()) ArmTimer(conn->deadline);
}

}  // namespace clonevm::control

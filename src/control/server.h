// Server: the per-VM control API endpoint — HTTP/1.1 + JSON on a Unix stream socket, served on
// an EventLoop (base/event_loop.h). `curl --unix-socket PATH http://localhost/vm` talks to it.
//
// Why hand-written: Debian bookworm's cpp-httplib (0.11.4) can neither listen on nor connect to
// AF_UNIX sockets; the protocol subset we need is small (http.h) and runs on our own loop.
//
// Socket: Create() binds `socket_path` (its directory must exist; at most 107 bytes) with mode
// 0600 (chmod before listen(), so nobody can connect in between). An existing path is replaced
// only if it is a stale socket (connect() is refused): if something accepts connections there,
// Create fails with "another VM is serving PATH"; a path that is not a socket is never removed.
// Creation is serialised with other Clone processes by an flock on the socket's directory. The
// destructor unlinks the socket if it is still ours (same inode).
//
// Connections (all on the loop thread, edge-triggered, non-blocking):
//   * Requests are parsed by RequestParser with `limits.parser`; malformed ones get their 4xx/5xx
//     with {"error": ...} and the connection is closed after the response is written. Every other
//     connection, and the VM, are unaffected.
//   * One request per connection is handled at a time; pipelined requests wait in the buffer and
//     are answered in order. While a request is being handled or a response is being written, the
//     server does not read from that client (backpressure: a client that does not read its
//     responses cannot make the server buffer more than one response).
//   * `Expect: 100-continue` gets "100 Continue" once the head is accepted (a too-large body gets
//     its 413 instead, before the client sends it).
//   * Keep-alive per HTTP/1.1 (and HTTP/1.0 with Connection: keep-alive); `Connection: close`, EOF
//     from the client or an error close the connection after the last response is written. A
//     client hang-up (EPOLLHUP/EPOLLERR) closes it at once; its pending response is dropped.
//   * Timeouts: a connection waiting for a request is closed after `idle_timeout`; a request must
//     arrive completely within `request_timeout` of its first byte (else 408 and close — this
//     defeats slowloris clients); a response that the client does not read for `idle_timeout` is
//     abandoned. No timeout runs while a handler owns the request (handlers bound their own work).
//   * At most `max_connections` at once; a client beyond that gets 503 and is closed.
//   * Owner check: the peer of every connection (SO_PEERCRED) must be root or have this process's
//     effective uid; anyone else gets 403 {"error": ...} for its first request (which is never
//     dispatched) and is closed. The
//     socket's mode (0600) already keeps others out; this holds even if the socket or its directory
//     is made accessible (a group, a bind mount, a daemon serving several users).
//     With PeerPolicy::kAnyPeer nobody is refused here; every request carries its peer's uid and
//     pid (Request::peer_uid/peer_pid) for the handlers to check.
//   * Responses carrying file descriptors send them with SCM_RIGHTS on the first byte of the
//     response (the client must use recvmsg; client.h does). The server closes its copies once sent.
//
// Handlers: the Router runs on the loop thread with a Responder (responder.h) that may be completed
// from any thread; the completion is posted back to the loop. Handlers must not block the loop.
//
// Threads: Create, the destructor and everything else run on the loop's thread (or before the loop
// runs). The Server must be destroyed before its EventLoop. Responders may outlive the Server:
// completing them afterwards is a no-op (the response is dropped).
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>

#include "base/event_loop.h"
#include "base/fd.h"
#include "base/result.h"
#include "control/http.h"
#include "control/responder.h"
#include "control/router.h"

namespace clonevm::control {

// Who may use the server: root and `owner_uid` (a VM's control socket), or every peer that can
// connect (the daemon: the socket's mode and group decide, and handlers check Request::peer_uid).
enum class PeerPolicy { kOwnerOrRoot, kAnyPeer };

struct Limits {
  ParserLimits parser;
  size_t max_connections = 64;
  std::chrono::milliseconds idle_timeout{60'000};
  std::chrono::milliseconds request_timeout{10'000};
  uid_t owner_uid = ::geteuid();  // besides root, the only uid served (see "Owner check")
  PeerPolicy peers = PeerPolicy::kOwnerOrRoot;
};

class Server {
 public:
  [[nodiscard]] static Result<std::unique_ptr<Server>> Create(EventLoop& loop, std::string socket_path, Router router,
                                                              Limits limits = {});
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  const std::string& socket_path() const { return socket_path_; }
  size_t connection_count() const { return connections_.size(); }

  // Shared with Responders so that completions posted after ~Server are dropped. Internal.
  struct Link;

 private:
  struct Connection;
  using Clock = std::chrono::steady_clock;

  Server(EventLoop& loop, std::string socket_path, Router router, Limits limits);
  Result<void> Listen();
  void OnAccept();
  void OnEvents(uint64_t id, uint32_t events);
  void Pump(Connection& conn);
  bool Flush(Connection& conn);     // false: the connection failed and was closed
  bool ReadSome(Connection& conn);  // false: the connection failed and was closed
  void ParseNext(Connection& conn);
  void Complete(uint64_t id, Completion completion);
  void Queue(Connection& conn, Response response, bool close_after);
  void CloseConnection(uint64_t id);
  void UpdateDeadline(Connection& conn);
  void ArmTimer(Clock::time_point deadline);  // makes the timer fire no later than `deadline`
  void OnTimer();

  EventLoop& loop_;
  std::string socket_path_;
  Router router_;
  Limits limits_;
  Fd listen_fd_;
  Fd timer_fd_;  // fires at the earliest connection deadline (a sweep re-arms it)
  Clock::time_point timer_deadline_ = Clock::time_point::max();
  dev_t socket_dev_ = 0;
  ino_t socket_ino_ = 0;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Connection>> connections_;
  std::shared_ptr<Link> link_;
};

}  // namespace clonevm::control

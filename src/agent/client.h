// Agent client: the host side of the agent protocol (agent/proto.h), used by the VMM (monitor,
// identity, power) and the CLI / REST API (exec).
//
// A connection serves one role, fixed by its Hello: "exec" (one program), "monitor" (a stream of
// Reports) or "control" (any number of Shutdown/Reboot/SetIdentity requests). Connect() opens and
// authenticates one; the functions below then speak that role's protocol.
//
// Timeouts: every call that waits for the agent takes a timeout and fails with an Error (errno
// ETIMEDOUT) when it expires, so an absent or hung agent never hangs the caller. Exec waits for
// Started within ExecIo::start_timeout; after that a program may legitimately run silently for a
// long time, so only the optional overall/idle timeouts apply. Dropping an exec connection (the
// Fd) makes the agent kill the program's process group.
//
// Agent input is validated by agent/proto (sizes, types, field ranges); a malformed frame fails
// the call, it never crashes the host.
//
// Threads: no shared state; one connection is used by one thread at a time. Connections are
// non-blocking fds (the helpers poll), so they can also sit in an EventLoop (AgentMonitor::fd()).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>

#include "agent/proto.h"
#include "base/fd.h"
#include "base/result.h"

namespace clonevm::agent {

enum class Role { kExec, kMonitor, kControl };
std::string_view RoleName(Role role);

// A fresh random token for an identity page (getrandom(2)).
[[nodiscard]] Result<Token> GenerateToken();

// Connects to the agent of guest `cid` (vhost-vsock) / to a Unix socket (tests, `--listen
// unix:`). Fails with ETIMEDOUT when the connection is not established within `timeout`.
[[nodiscard]] Result<Fd> ConnectVsock(uint32_t cid, uint32_t port, std::chrono::milliseconds timeout);
[[nodiscard]] Result<Fd> ConnectUnix(const std::string& path, std::chrono::milliseconds timeout);

// Sends Hello and waits for HelloOk. An Error reply (wrong token, no identity page) fails with the
// agent's message.
[[nodiscard]] Result<HelloOk> Handshake(Fd& conn, const Token& token, Role role, std::chrono::milliseconds timeout);

// Where the agent listens: a vsock CID (port kAgentPort unless set) or a Unix socket path.
struct AgentEndpoint {
  uint32_t cid = 0;
  uint32_t port = kAgentPort;
  std::string unix_path;  // used instead of vsock when non-empty
};
struct AgentConnection {
  Fd fd;
  HelloOk hello;
};
// Connect + Handshake, each within `timeout`.
[[nodiscard]] Result<AgentConnection> Connect(const AgentEndpoint& endpoint, const Token& token, Role role,
                                              std::chrono::milliseconds timeout);

// ---- exec ----

struct ExecIo {
  int stdin_fd = -1;  // read until EOF when request.forward_stdin (then StdinClose is sent)
  int stdout_fd = 1;  // the program's stdout (with a tty: all terminal output)
  int stderr_fd = 2;  // the program's stderr (unused with a tty)
  // Optional: when resize_fd becomes readable it is drained (eventfd, pipe or signalfd for
  // SIGWINCH) and window_size() is sent as a Resize.
  int resize_fd = -1;
  std::function<std::pair<uint16_t, uint16_t>()> window_size;  // rows, cols
  // Optional: a signalfd; each signal read from it is forwarded to the program (Signal).
  int signal_fd = -1;
  std::chrono::milliseconds start_timeout{10'000};  // until Started
  std::chrono::milliseconds timeout{0};             // whole run; 0: none
  std::chrono::milliseconds idle_timeout{0};        // no frame from the agent for this long; 0: none
};

// Runs request on a connection handshaken with Role::kExec and streams stdio until the program
// exits. Returns the shell-style status: the exit code, or 128 + N for death by signal N.
// Output is written to the ExecIo fds as it arrives (byte-exact; a slow stdout slows the
// program, nothing is dropped). The connection is finished afterwards.
[[nodiscard]] Result<int> RunExec(Fd& conn, const ExecRequest& request, const ExecIo& io);

struct ExecCaptureOptions {
  std::string stdin_data;        // sent when request.forward_stdin, then StdinClose
  size_t max_stdout = 16 << 20;  // bytes kept; the rest is read and dropped
  size_t max_stderr = 1 << 20;
  std::chrono::milliseconds start_timeout{10'000};
  std::chrono::milliseconds timeout{60'000};  // whole run; 0: none
};
struct ExecResult {
  int status = 0;  // shell-style, as RunExec
  std::string stdout_data, stderr_data;
  bool stdout_truncated = false, stderr_truncated = false;
};
// Buffered exec (the REST API's POST /vm/exec): like RunExec, output collected in memory.
[[nodiscard]] Result<ExecResult> ExecCapture(Fd& conn, const ExecRequest& request, const ExecCaptureOptions& options);

// ---- monitor ----

// A monitor session: Start() handshakes with Role::kMonitor and asks for a Report every
// `interval`. Next() blocks for the next Report; for an event loop, watch fd() for readability and
// call Poll(), which never blocks and returns the Reports that are complete.
class AgentMonitor {
 public:
  [[nodiscard]] static Result<AgentMonitor> Start(Fd conn, const Token& token, std::chrono::milliseconds interval,
                                                  std::chrono::milliseconds timeout);
  [[nodiscard]] Result<Report> Next(std::chrono::milliseconds timeout);
  // Reads what is available now, without blocking. Fails when the agent sent garbage, or closed
  // the connection and no Report is left.
  [[nodiscard]] Result<std::vector<Report>> Poll();
  int fd() const { return conn_.get(); }
  const HelloOk& hello() const { return hello_; }

 private:
  AgentMonitor(Fd conn, HelloOk hello) : conn_(std::move(conn)), hello_(std::move(hello)) {}
  // Reads once; returns false when nothing was available or at EOF (then sets closed_).
  Result<bool> ReadSome();
  Result<std::optional<Report>> NextBuffered();

  Fd conn_;
  HelloOk hello_;
  FrameDecoder decoder_;
  bool closed_ = false;
};

// ---- control (connection handshaken with Role::kControl) ----

// Ask the agent to power off / reboot the guest; returns once it accepted (PowerOk). The guest
// then syncs and goes down; the connection ends with it.
[[nodiscard]] Result<void> SendShutdown(Fd& conn, std::chrono::milliseconds timeout);
[[nodiscard]] Result<void> SendReboot(Fd& conn, std::chrono::milliseconds timeout);
// Applies identity fields in the guest; returns what was applied.
[[nodiscard]] Result<IdentityOk> SendIdentity(Fd& conn, const SetIdentity& request, std::chrono::milliseconds timeout);

}  // namespace clonevm::agent

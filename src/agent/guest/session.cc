// A session: handshake, then the role's loop (see agent.h).
#include <fcntl.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "agent/guest/agent.h"

namespace clonevm::agent {

namespace {

constexpr auto kHandshakeTimeout = std::chrono::seconds(10);
constexpr auto kReplyTimeout = std::chrono::seconds(10);

Result<Identity> LoadIdentity(const AgentConfig& config) {
  Fd fd = CLONE_TRY(OpenFile(config.identity_path, O_RDONLY));
  IdentityPageBytes page{};
  ssize_t n = ::pread(fd.get(), page.data(), page.size(), static_cast<off_t>(config.identity_offset));
  if (n < 0) return FailErrno("read identity page", config.identity_path);
  if (static_cast<size_t>(n) != page.size()) return Fail("{}: short identity page ({} bytes)", config.identity_path, n);
  return DecodeIdentityPage(page);
}

// Sends an Error frame, best effort: the connection may already be gone.
void SendError(int conn, std::string_view message) {
  (void)WriteMessage(conn, ErrorMessage{std::string(message)}, DeadlineAfter(kReplyTimeout));
}

Result<HelloOk> Authenticate(const Hello& hello, const AgentConfig& config) {
  auto identity = LoadIdentity(config);
  if (!identity) return Fail("identity page unavailable: {}", identity.error().message());
  if (!identity->has_token()) return Fail("authentication failed: the VMM has not set a token");
  std::vector<uint8_t> token = CLONE_TRY(ParseHex(hello.token));
  if (!TokensEqual(token, identity->token)) return Fail("authentication failed: wrong token");
  HelloOk ok;
  ok.agent_version = kAgentVersion;
  utsname uts{};
  if (::uname(&uts) == 0) {
    ok.kernel = uts.release;
    ok.hostname = uts.nodename;
  }
  ok.generation = identity->generation;
  return ok;
}

Result<void> ServeRole(int conn, const Hello& hello, const AgentConfig& config) {
  if (hello.role == "control") return RunControlSession(conn, config);
  Frame frame = CLONE_TRY(ReadFrame(conn, DeadlineAfter(kHandshakeTimeout)));
  if (hello.role == "exec") {
    ExecRequest request = CLONE_TRY(FrameAs<ExecRequest>(frame));
    return RunExecSession(conn, request, config);
  }
  Monitor request = CLONE_TRY(FrameAs<Monitor>(frame));
  return RunMonitorSession(conn, request, config);
}

}  // namespace

Result<void> ServeConnection(Fd conn, const AgentConfig& config) {
  auto frame = ReadFrame(conn.get(), DeadlineAfter(kHandshakeTimeout));
  if (!frame) return Fail("handshake: {}", frame.error().message());
  auto hello = FrameAs<Hello>(*frame);
  if (!hello) {
    SendError(conn.get(), hello.error().message());
    return Fail("handshake: {}", hello.error().message());
  }
  auto ok = Authenticate(*hello, config);
  if (!ok) {
    SendError(conn.get(), ok.error().message());
    return Fail("handshake: {}", ok.error().message());
  }
  CLONE_TRY_VOID(WriteMessage(conn.get(), *ok, DeadlineAfter(kReplyTimeout)));
  auto served = ServeRole(conn.get(), *hello, config);
  if (!served) SendError(conn.get(), served.error().message());
  return served;
}

Result<void> RunControlSession(int conn, const AgentConfig& config) {
  for (;;) {
    auto frame = ReadFrame(conn, std::nullopt);
    if (!frame) return {};  // the host closed the connection
    switch (frame->type) {
      case MessageType::kShutdown:
      case MessageType::kReboot: {
        // The reply goes first: after reboot(2) there is nobody left to send it. A dry run records
        // first, so that the host sees the record once PowerOk arrives.
        auto action = frame->type == MessageType::kShutdown ? PowerAction::kPowerOff : PowerAction::kReboot;
        bool dry = !config.dry_run_log.empty();
        if (dry) CLONE_TRY_VOID(Power(action, config));
        CLONE_TRY_VOID(WriteFrame(conn, MessageType::kPowerOk, "{}", DeadlineAfter(kReplyTimeout)));
        if (!dry) CLONE_TRY_VOID(Power(action, config));
        break;
      }
      case MessageType::kSetIdentity: {
        SetIdentity request = CLONE_TRY(FrameAs<SetIdentity>(*frame));
        IdentityOk ok = CLONE_TRY(ApplyIdentity(request, config));
        CLONE_TRY_VOID(WriteMessage(conn, ok, DeadlineAfter(kReplyTimeout)));
        break;
      }
      default:
        return Fail("unexpected {} on a control connection", TypeName(frame->type));
    }
  }
}

Result<void> RecordDryRun(const AgentConfig& config, std::string_view line) {
  Fd fd = CLONE_TRY(OpenFile(config.dry_run_log, O_WRONLY | O_APPEND | O_CREAT, 0644));
  std::string text = std::string(line) + "\n";
  return WriteAll(fd.get(), text.data(), text.size());
}

}  // namespace clonevm::agent

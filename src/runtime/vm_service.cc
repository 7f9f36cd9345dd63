#include "runtime/vm_service.h"

#include <fcntl.h>
#include <fmt/ranges.h>
#include <pthread.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <limits>

#include "agent/identity_page.h"
#include "arch/x86/layout.h"
#include "base/clock.h"
#include "base/json.h"
#include "base/log.h"
#include "control/router.h"
#include "runtime/balloon_api.h"
#include "snapshot/take.h"

namespace clonevm {
namespace {

using std::chrono::milliseconds;

static_assert(agent::kIdentityPageGpa == x86::kIdentityPageAddr, "agent and VMM disagree on the identity page");
static_assert(agent::kVmGenIdGpa == x86::kVmGenIdAddr, "agent and VMM disagree on the VM Generation ID");

constexpr milliseconds kAgentConnectTimeout{1000};
// A guest that gets little CPU (many VMs starting at once, e.g. `clone fork --count 100`) may need
// longer than a second to answer a vsock connection; a fixed short timeout would then give up on
// every attempt, and the retries themselves add load. Each failed attempt doubles the timeout up to
// this, and a successful session resets it. A VM from a snapshot starts at the longer timeout: its
// vsock driver is already up, so no answer means a busy guest, not one still booting.
constexpr milliseconds kAgentConnectTimeoutMax{16000};
constexpr milliseconds kAgentConnectTimeoutRestored{8000};
// Once a connection is established the guest is alive and its agent answers when it gets CPU. An
// abandoned connection is not free for the guest: its agent has already forked a session for it
// and then fails on the closed socket. With a 1 s handshake limit, 100 forks on one busy lab CPU
// spent their time on session after abandoned session and no agent connected in 10 minutes. So
// the handshake, the identity and the gap between two reports may each take this long; a guest
// that reboots or loses its agent closes the connection, which ends the wait at once.
constexpr milliseconds kAgentSessionTimeout{60000};
constexpr milliseconds kAgentRetry{250};
constexpr milliseconds kReportInterval{2000};
// --balloon auto: how long CPU use counts as the balloon driver's own work after a new size.
constexpr std::chrono::seconds kBalloonSettleTime{30};
constexpr std::chrono::seconds kBalloonSettledGrace{5};  // > 2 report intervals
constexpr milliseconds kIdentityWaitMax{30000};
constexpr milliseconds kExecSessionTimeout{5000};
// While the agent link is up the agent is there, just slow to answer (a busy guest or host): a
// connection is worth waiting longer for than when the guest may have no agent at all.
constexpr milliseconds kExecConnectTimeoutAgentUp{30000};
constexpr milliseconds kShutdownTimeout{5000};

// A /proc/self/status field in KiB ("VmRSS"), 0 if absent.
uint64_t ProcStatusKib(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with(field + ":")) return std::strtoull(line.c_str() + field.size() + 1, nullptr, 10);
  }
  return 0;
}

nlohmann::json ReportJson(const agent::Report& r) {
  nlohmann::json j = nlohmann::json::parse(agent::EncodePayload(r), nullptr, false);
  return j.is_discarded() ? nlohmann::json::object() : j;
}

// Reads an ExecRequest from a POST /vm/exec or /vm/exec/session body.
Result<agent::ExecRequest> ExecRequestFrom(const nlohmann::json& body, bool allow_tty) {
  JsonReader r(body);
  agent::ExecRequest request;
  request.argv = CLONE_TRY(r.StringList("argv", 4096, /*required=*/true));
  if (request.argv.empty()) return Fail("argv: a non-empty array of strings is required");
  request.env = CLONE_TRY(r.StringList("env", 4096, /*required=*/false));
  for (size_t i = 0; i < request.env.size(); ++i) {
    if (request.env[i].find('=') == std::string::npos) return Fail("env[{}]: expected a \"NAME=value\" string", i);
  }
  CLONE_TRY_VOID(r.Get("cwd", &request.cwd));
  if (allow_tty) CLONE_TRY_VOID(r.Get("tty", &request.tty));
  return request;
}

}  // namespace

Result<std::unique_ptr<VmService>> VmService::Create(ServiceOptions options) {
  if (options.id.empty()) options.id = NewVmId();
  agent::Identity identity;
  identity.generation = 1;
  identity.vm_id = options.id;
  identity.hostname = options.id;
  identity.token = CLONE_TRY(agent::GenerateToken());
  if (options.page_network) {
    identity.mac = options.page_network->mac;
    identity.ipv4_address = options.page_network->ipv4;
    identity.ipv4_prefix = options.page_network->prefix;
    identity.ipv4_gateway = options.page_network->gateway;
  }
  if (::getrandom(identity.entropy_seed.data(), identity.entropy_seed.size(), 0) !=
      static_cast<ssize_t>(identity.entropy_seed.size())) {
    return FailErrno("getrandom");
  }
  // A new VM Generation ID for every VM process: a restored or forked guest must reseed its RNG.
  if (::getrandom(identity.vmgenid.data(), identity.vmgenid.size(), 0) !=
      static_cast<ssize_t>(identity.vmgenid.size())) {
    return FailErrno("getrandom");
  }
  VmDir dir = CLONE_TRY(VmDir::Create(options.id));
  Fd log;
  if (options.detached) log = CLONE_TRY(OpenFile(dir.console_log(), O_WRONLY | O_CREAT | O_APPEND, 0600));
  auto hub = std::make_unique<ConsoleHub>(options.detached ? -1 : STDOUT_FILENO, std::move(log));
  return std::unique_ptr<VmService>(
      new VmService(std::move(options), std::move(dir), std::move(hub), std::move(identity)));
}

VmService::~VmService() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    for (int fd : busy_fds_) ::shutdown(fd, SHUT_RDWR);
  }
  cv_.notify_all();
  if (agent_thread_.joinable()) agent_thread_.join();
  {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return active_workers_ == 0; });
  }
  server_.reset();  // before the loop (owned by the Vm) goes away
}

void VmService::ConnectConsole(VmConfig& config) {
  config.console_sink = [hub = hub_.get()](std::span<const uint8_t> bytes) { hub->Output(bytes); };
  if (options_.detached) config.console_in = -1;
}

Result<void> VmService::Serve(Vm& vm) {
  vm_ = &vm;
  // Recorded in snapshots of this VM (their config's info), so its forks run confined too.
  if (vm.seccomp() != nullptr) options_.info["seccomp"] = true;
  if (options_.from_snapshot) {
    // The guest is the template's: follow its identity generation (the agent reports it back).
    agent::IdentityPageBytes old{};
    if (vm.memory().ReadBytes(x86::kIdentityPageAddr, old)) {
      if (auto previous = agent::DecodeIdentityPage(old)) identity_.generation = previous->generation + 1;
    }
  }
  identity_.vsock_cid = static_cast<uint32_t>(vm.vsock_cid());
  identity_.written_at_unix_ns = RealtimeNs();
  auto page = CLONE_TRY(agent::EncodeIdentityPage(identity_));
  CLONE_TRY_VOID(vm.memory().WriteBytes(x86::kIdentityPageAddr, page));
  // The page holds a new VM Generation ID: a guest restored or forked from a snapshot learns of it
  // through the GED on its first instruction. A booting guest reads the id when its vmgenid driver
  // binds, so it gets no interrupt at all.
  if (options_.from_snapshot) vm.NotifyVmGenerationChanged();

  CLONE_TRY_VOID(hub_->Listen(vm.loop(), dir_.console_socket(),
                              [&vm](std::span<const uint8_t> bytes) { vm.EnqueueConsoleInput(bytes); }));
  server_ = CLONE_TRY(control::Server::Create(vm.loop(), dir_.control_socket(), Routes()));
  nlohmann::json info = options_.info.is_object() ? options_.info : nlohmann::json::object();
  info["id"] = dir_.id();
  info["pid"] = ::getpid();
  info["vcpus"] = vm.vcpu_count();
  info["cid"] = identity_.vsock_cid;
  info["created_unix"] = static_cast<int64_t>(::time(nullptr));
  info["detached"] = options_.detached;
  info["seccomp"] = vm.seccomp() != nullptr;
  CLONE_TRY_VOID(dir_.WriteInfo(info));
  if (identity_.vsock_cid != 0) {
    // Signals for the VM (SIGINT/SIGTERM, SIGUSR1 kicks) must never land on this thread: start it
    // with them blocked (threads inherit the mask; Vm::Run blocks them only in its own threads).
    sigset_t block, saved;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &block, &saved);
    agent_thread_ = std::thread([this] {
      ConfineThisThread();
      AgentLoop();
    });
    pthread_sigmask(SIG_SETMASK, &saved, nullptr);
  }
  return {};
}

void VmService::ConfineThisThread() const {
  const sandbox::SeccompFilters* filters = vm_ == nullptr ? nullptr : vm_->seccomp();
  if (filters == nullptr) return;
  if (auto confined = filters->InstallForThisThread(sandbox::ThreadRole::kWorker); !confined) {
    // The same program is already installed on other threads: failing here is a bug, not a state.
    Log(LogLevel::kError, "{}", confined.error().message());
    std::abort();
  }
}

void VmService::ApplyBalloonPolicy(const agent::Report& report) {
  if (!options_.balloon_policy || !vm_->has_balloon()) return;
  if (!balloon_policy_) balloon_policy_.emplace(*options_.balloon_policy);
  // Settling: the driver is still moving toward the size sent last, or reached it less than
  // kBalloonSettledGrace ago (the report that follows covers the interval it worked in); for at most
  // kBalloonSettleTime, so a target the guest cannot reach does not hide its CPU activity for ever.
  auto now = std::chrono::steady_clock::now();
  std::optional<virtio::BalloonStatus> balloon = vm_->balloon_status();
  bool reached = !balloon || balloon->actual_pages == balloon->target_pages;
  if (!reached) {
    balloon_reached_at_.reset();
  } else if (!balloon_reached_at_) {
    balloon_reached_at_ = now;
  }
  bool settling =
      now - balloon_applied_at_ < kBalloonSettleTime && (!reached || now - *balloon_reached_at_ < kBalloonSettledGrace);
  GuestActivity activity{report.active, report.exec_sessions > 0, settling, report.psi_some_avg10,
                         report.mem_available_kb * 1024};
  uint64_t bytes = balloon_policy_->Update(activity, now);
  if (bytes == balloon_applied_) return;
  if (auto set = vm_->SetBalloonTarget(bytes); !set) {
    Log(LogLevel::kWarn, "balloon policy: {}", set.error().message());
    return;
  }
  balloon_applied_ = bytes;
  balloon_applied_at_ = now;
}

agent::AgentEndpoint VmService::Endpoint() const { return agent::AgentEndpoint{identity_.vsock_cid}; }

void VmService::AgentLoop() {
  bool identity_sent = false;
  const milliseconds first_timeout = options_.from_snapshot ? kAgentConnectTimeoutRestored : kAgentConnectTimeout;
  milliseconds connect_timeout = first_timeout;
  while (true) {
    {
      std::lock_guard lock(mu_);
      if (stopping_) return;
    }
    auto fd = agent::ConnectVsock(identity_.vsock_cid, agent::kAgentPort, connect_timeout);
    if (fd) {
      int raw = fd->get();
      {
        std::lock_guard lock(mu_);
        if (stopping_) return;
        busy_fds_.insert(raw);
      }
      auto monitor = agent::AgentMonitor::Start(std::move(*fd), identity_.token, kReportInterval, kAgentSessionTimeout);
      if (monitor) {
        connect_timeout = first_timeout;
        {
          std::lock_guard lock(mu_);
          agent_connected_ = true;
          agent_hello_ = monitor->hello();
          if (!agent_ready_at_) agent_ready_at_ = std::chrono::steady_clock::now();
        }
        if (!identity_sent) {
          Result<agent::IdentityOk> applied = SendFirstIdentity();
          if (applied) {
            identity_sent = true;
          } else {
            Log(LogLevel::kWarn, "agent: cannot apply the VM's identity: {}", applied.error().message());
          }
          // A booted VM's exec need not wait for a retry; a VM from a snapshot must get its own
          // identity, so a failure ends this session and the next one tries again.
          {
            std::lock_guard lock(mu_);
            identity_settled_ = identity_sent || !options_.from_snapshot;
          }
          cv_.notify_all();
        }
        for (;;) {
          if (!identity_sent && options_.from_snapshot) break;
          auto report = monitor->Next(kAgentSessionTimeout);
          if (!report) break;
          ApplyBalloonPolicy(*report);
          std::lock_guard lock(mu_);
          last_report_ = *report;
          last_report_at_ = std::chrono::steady_clock::now();
        }
      }
      std::lock_guard lock(mu_);
      busy_fds_.erase(raw);
      agent_connected_ = false;
      if (!monitor) connect_timeout = std::min(connect_timeout * 2, kAgentConnectTimeoutMax);
    } else {
      connect_timeout = std::min(connect_timeout * 2, kAgentConnectTimeoutMax);
    }
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, kAgentRetry, [this] { return stopping_; });
  }
}

Result<agent::IdentityOk> VmService::SendFirstIdentity() {
  agent::SetIdentity request = CLONE_TRY(FirstIdentity());
  // The agent has just answered: connecting is quick. The handshake and the identity may wait
  // long on a busy guest; the fd is tracked so that a stopping VM cuts the wait short.
  Fd fd = CLONE_TRY(agent::ConnectVsock(identity_.vsock_cid, agent::kAgentPort, kAgentConnectTimeoutRestored));
  TrackFd(fd.get());
  auto hello = agent::Handshake(fd, identity_.token, agent::Role::kControl, kAgentSessionTimeout);
  Result<agent::IdentityOk> applied =
      hello ? agent::SendIdentity(fd, request, kAgentSessionTimeout) : Result<agent::IdentityOk>(Fail(hello.error()));
  UntrackFd(fd.get());
  return applied;
}

Result<agent::SetIdentity> VmService::FirstIdentity() const {
  agent::SetIdentity request = options_.network.value_or(agent::SetIdentity{});
  if (options_.set_hostname) request.hostname = dir_.id();
  // A booted guest's clock comes from the RTC (whole seconds): the host's time makes it exact. A
  // restored or forked guest's kvmclock was already advanced to now (Vm::Restore); a timestamp
  // sent here can reach the guest seconds late on a busy host and would set its clock back.
  if (!options_.from_snapshot) request.unix_time_ns = RealtimeNs();
  uint8_t seed[64];
  if (::getrandom(seed, sizeof(seed), 0) != static_cast<ssize_t>(sizeof(seed))) return FailErrno("getrandom");
  request.entropy_seed = fmt::format("{:02x}", fmt::join(seed, ""));
  if (options_.fresh_machine_id) {
    uint8_t id[16];
    if (::getrandom(id, sizeof(id), 0) != static_cast<ssize_t>(sizeof(id))) return FailErrno("getrandom");
    request.machine_id = fmt::format("{:02x}", fmt::join(id, ""));
  }
  request.generation = identity_.generation;
  return request;
}

bool VmService::WaitForIdentity(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  auto settled = [this] { return identity_settled_ || stopping_; };
  // A VM from a snapshot runs the template's identity until the agent applies its own: exec must
  // not start before that, however long a busy host takes.
  if (options_.from_snapshot) return cv_.wait_for(lock, kIdentityWaitMax, settled);
  if (cv_.wait_for(lock, timeout, settled)) return true;
  // The agent answers but the identity is still being applied (a busy host): worth waiting for.
  // Without an agent, give up now.
  if (agent_connected_) return cv_.wait_for(lock, kIdentityWaitMax, settled);
  return true;
}

milliseconds VmService::ExecConnectTimeout() const {
  std::lock_guard lock(mu_);
  return agent_connected_ ? kExecConnectTimeoutAgentUp : kExecSessionTimeout;
}

void VmService::TrackFd(int fd) {
  std::lock_guard lock(mu_);
  busy_fds_.insert(fd);
  if (stopping_) ::shutdown(fd, SHUT_RDWR);
}

void VmService::UntrackFd(int fd) {
  std::lock_guard lock(mu_);
  busy_fds_.erase(fd);
}

nlohmann::json VmService::StateJson() const {
  nlohmann::json state = options_.info.is_object() ? options_.info : nlohmann::json::object();
  state["id"] = dir_.id();
  state["pid"] = ::getpid();
  state["state"] = vm_->paused() ? "paused" : "running";
  state["vcpus"] = vm_->vcpu_count();
  state["cid"] = identity_.vsock_cid;
  state["seccomp"] = vm_->seccomp() != nullptr;
  state["rss_kib"] = ProcStatusKib("VmRSS");
  state["uptime_s"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  state["console_socket"] = dir_.console_socket();
  state["control_socket"] = dir_.control_socket();
  nlohmann::json agent_state = {{"connected", false}};
  std::lock_guard lock(mu_);
  agent_state["connected"] = agent_connected_;
  if (agent_hello_) {
    agent_state["version"] = agent_hello_->agent_version;
    agent_state["kernel"] = agent_hello_->kernel;
    agent_state["hostname"] = agent_hello_->hostname;
  }
  if (last_report_) {
    agent_state["report"] = ReportJson(*last_report_);
    agent_state["report_age_s"] =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - last_report_at_).count();
  }
  state["agent"] = agent_state;
  auto ms_since_launch = [this](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double, std::milli>(t - options_.launched).count();
  };
  nlohmann::json timing = nlohmann::json::object();
  if (auto first = vm_->first_run()) timing["first_instruction_ms"] = ms_since_launch(*first);
  if (agent_ready_at_) timing["agent_ms"] = ms_since_launch(*agent_ready_at_);
  state["timing"] = timing;
  state["balloon"] = BalloonJson(*vm_);
  return state;
}

control::Router VmService::Routes() {
  control::Router router;
  router.Add("GET", "/vm", [this](control::Request, control::Responder r) { r.RespondJson(200, StateJson()); });
  router.Add("PUT", "/vm/pause", [this](control::Request, control::Responder r) {
    if (auto paused = vm_->Pause(); !paused) return r.RespondError(500, paused.error().message());
    r.RespondJson(200, {{"state", "paused"}});
  });
  router.Add("PUT", "/vm/resume", [this](control::Request, control::Responder r) {
    vm_->Resume();
    r.RespondJson(200, {{"state", "running"}});
  });
  router.Add("PUT", "/vm/shutdown", [this](control::Request request, control::Responder r) {
    HandleShutdown(std::move(request), std::move(r));
  });
  router.Add("POST", "/vm/exec",
             [this](control::Request request, control::Responder r) { HandleExec(std::move(request), std::move(r)); });
  router.Add("POST", "/vm/exec/session", [this](control::Request request, control::Responder r) {
    HandleExecSession(std::move(request), std::move(r));
  });
  router.Add("PUT", "/vm/balloon", BalloonRoute(*vm_));
  router.Add("PUT", "/vm/snapshot", snapshot::SnapshotRoute(*vm_, dir_.id(), options_.info));
  return router;
}

void VmService::HandleShutdown(control::Request request, control::Responder responder) {
  auto body = control::ParseJsonBody(request, {"mode"});
  if (!body) return responder.Respond(body.error().ToResponse());
  std::string mode = body->value("mode", nlohmann::json("agent")).is_string() ? body->value("mode", "agent") : "";
  if (mode == "force") {
    // Answer first: the loop runs posted work in order, so the reply is written before it stops.
    responder.RespondJson(202, {{"state", "stopping"}});
    vm_->loop().Post([vm = vm_] {
      vm->RequestExit({VmExitReason::kPowerOff, "stopped through the control API (force)", 0});
    });
    return;
  }
  if (mode != "agent") return responder.RespondError(400, "mode: expected \"agent\" or \"force\"");
  if (identity_.vsock_cid == 0)
    return responder.RespondError(409, "this VM has no vsock device, so no agent: use {\"mode\": \"force\"}");
  RunWorker([this, r = std::move(responder)]() mutable {
    auto conn = agent::Connect(Endpoint(), identity_.token, agent::Role::kControl, kShutdownTimeout);
    if (!conn) return r.RespondError(504, fmt::format("guest agent not reachable: {}", conn.error().message()));
    // Answer before asking: once the agent has the request the guest may power off (and this
    // process stop serving) before a reply sent afterwards would be written.
    r.RespondJson(202, {{"state", "stopping"}});
    TrackFd(conn->fd.get());
    auto sent = agent::SendShutdown(conn->fd, kShutdownTimeout);
    UntrackFd(conn->fd.get());
    if (!sent) Log(LogLevel::kWarn, "shutdown through the guest agent failed: {}", sent.error().message());
  });
}

void VmService::HandleExec(control::Request request, control::Responder responder) {
  auto body = control::ParseJsonBody(request, {"argv", "env", "cwd", "stdin", "timeout_ms"});
  if (!body) return responder.Respond(body.error().ToResponse());
  auto exec = ExecRequestFrom(*body, /*allow_tty=*/false);
  if (!exec) return responder.RespondError(400, exec.error().message());
  agent::ExecCaptureOptions options;
  JsonReader fields(*body);
  // stdin is bounded by the request body's size limit, not by a field limit.
  auto stdin_data = fields.OptString("stdin", std::numeric_limits<size_t>::max());
  if (!stdin_data) return responder.RespondError(400, stdin_data.error().message());
  if (*stdin_data) {
    options.stdin_data = std::move(**stdin_data);
    exec->forward_stdin = true;
  }
  auto timeout_ms = fields.OptUint("timeout_ms", 0, 24ull * 3600 * 1000);  // up to one day
  if (!timeout_ms) return responder.RespondError(400, timeout_ms.error().message());
  if (*timeout_ms) options.timeout = milliseconds(**timeout_ms);
  if (identity_.vsock_cid == 0) return responder.RespondError(409, "this VM has no vsock device, so no agent");
  RunWorker([this, r = std::move(responder), request = std::move(*exec), options]() mutable {
    if (!WaitForIdentity(kExecSessionTimeout)) {
      return r.RespondError(504, "the guest agent has not taken this VM's identity yet; retry");
    }
    auto conn = agent::Connect(Endpoint(), identity_.token, agent::Role::kExec, ExecConnectTimeout());
    if (!conn) return r.RespondError(504, fmt::format("guest agent not reachable: {}", conn.error().message()));
    TrackFd(conn->fd.get());
    auto result = agent::ExecCapture(conn->fd, request, options);
    UntrackFd(conn->fd.get());
    if (!result) return r.RespondError(504, fmt::format("exec: {}", result.error().message()));
    r.RespondJson(200, {{"exit_code", result->status},
                        {"stdout", result->stdout_data},
                        {"stderr", result->stderr_data},
                        {"stdout_truncated", result->stdout_truncated},
                        {"stderr_truncated", result->stderr_truncated}});
  });
}

// Hands the client an authenticated exec connection to the agent (SCM_RIGHTS); the client then
// speaks the agent protocol itself (agent::RunExec), so streaming costs the VMM nothing.
void VmService::HandleExecSession(control::Request request, control::Responder responder) {
  auto body = control::ParseJsonBody(request, {});
  if (!body) return responder.Respond(body.error().ToResponse());
  if (identity_.vsock_cid == 0) return responder.RespondError(409, "this VM has no vsock device, so no agent");
  RunWorker([this, r = std::move(responder)]() mutable {
    if (!WaitForIdentity(kExecSessionTimeout)) {
      return r.RespondError(504, "the guest agent has not taken this VM's identity yet; retry");
    }
    auto conn = agent::Connect(Endpoint(), identity_.token, agent::Role::kExec, ExecConnectTimeout());
    if (!conn) return r.RespondError(504, fmt::format("guest agent not reachable: {}", conn.error().message()));
    control::Response response = control::Response::Json(200, {{"agent_version", conn->hello.agent_version},
                                                               {"kernel", conn->hello.kernel},
                                                               {"hostname", conn->hello.hostname}});
    response.fds.push_back(std::move(conn->fd));
    r.Respond(std::move(response));
  });
}

}  // namespace clonevm

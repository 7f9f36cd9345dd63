// VmService: everything a VM process serves around its Vm — the runtime directory (VmDir), the
// console socket (ConsoleHub), the control API (control/server.h, routes below, documented in
// docs/api/openapi.yaml), the guest's identity page and the link to the guest agent.
//
// Order of use (the console sink must exist before the Vm does):
//   auto service = VmService::Create(options);      // claims <runtime>/vms/<id>, makes the token
//   service->ConnectConsole(config);               // guest serial output -> hub
//   auto vm = Vm::Create(std::move(config), ...);
//   service->Serve(*vm);                           // identity page, sockets, info.json, agent link
//   vm->Run();                                     // serves until the VM ends
//   service.reset(); vm.reset();                   // workers joined, sockets and directory removed
//
// Identity and agent authentication: the service writes the identity page (agent/identity_page.h)
// into guest RAM at 0x6000 before the first instruction, with a fresh random token. Only holders
// of the token (this process) can talk to the agent: any host process may connect to a guest's
// vsock port, so the token, not the transport, is the access control.
//
// Identity applied by the agent: on its first connection the agent gets the VM's hostname (its
// id; only when set_hostname), the host's wall-clock time, 64 fresh bytes of entropy (credited with RNDADDENTROPY), the
// network address when --net, and a new machine-id for VMs made from a snapshot — so a restored
// or forked guest is a distinct machine with the right clock.
//
// Agent link: a thread keeps a monitor session to the agent (reconnecting every 250 ms while the
// guest boots or after the agent restarts) and keeps the latest Report for GET /vm. Requests that
// need the agent (exec, shutdown) run on short-lived worker threads with timeouts, so the event
// loop never waits for the guest; their Responders complete from the worker (control/responder.h).
//
// Threads: Create/ConnectConsole/Serve on the main thread before Run(); route handlers on the VM's
// event loop; the agent thread and workers as said. The destructor stops them all. When the VM
// runs with --seccomp (vm.seccomp()), the agent thread and every worker confine themselves to the
// worker role first thing (sandbox/seccomp.h); GET /vm and info.json report "seccomp".
#pragma once

#include <array>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "agent/client.h"
#include "agent/identity_page.h"
#include "base/result.h"
#include "control/server.h"
#include "runtime/balloon_policy.h"
#include "runtime/console_hub.h"
#include "runtime/vm_dir.h"
#include "vmm/vm.h"

namespace clonevm {

struct ServiceOptions {
  std::string id;         // empty: a fresh random id
  bool detached = false;  // console to <dir>/console.log instead of this terminal
  nlohmann::json info;    // extra static facts for info.json (kernel, mem_mib, ...)
  // Network identity for the guest (the agent applies it), when the VM has a network.
  std::optional<agent::SetIdentity> network;
  // The same network facts for the identity page (MAC, IPv4 address/prefix, gateway).
  struct PageNetwork {
    std::array<uint8_t, 6> mac{};
    std::array<uint8_t, 4> ipv4{};  // network byte order
    uint8_t prefix = 0;
    std::array<uint8_t, 4> gateway{};
  };
  std::optional<PageNetwork> page_network;
  // A VM made from a snapshot (restore, fork): the guest also gets a fresh /etc/machine-id.
  bool fresh_machine_id = false;
  // The agent sets the guest's hostname to the VM id (when the user named the VM, and for VMs
  // made from snapshots); otherwise the image keeps its own hostname.
  bool set_hostname = false;
  // The VM continues a snapshot's guest (restore, fork): its identity page already holds the
  // template's identity, whose generation the new one follows.
  bool from_snapshot = false;
  // When the user's command started (for forks: the `clone fork` call, before it forked the VM
  // process): GET /vm reports the time to the first guest instruction and to the agent from here.
  std::chrono::steady_clock::time_point launched = std::chrono::steady_clock::now();
  // --balloon auto: the agent's reports drive the VM's balloon through this policy.
  std::optional<BalloonPolicyConfig> balloon_policy;
};

class VmService {
 public:
  [[nodiscard]] static Result<std::unique_ptr<VmService>> Create(ServiceOptions options);
  ~VmService();
  VmService(const VmService&) = delete;
  VmService& operator=(const VmService&) = delete;

  const VmDir& dir() const { return dir_; }
  void ConnectConsole(VmConfig& config);
  [[nodiscard]] Result<void> Serve(Vm& vm);

 private:
  VmService(ServiceOptions options, VmDir dir, std::unique_ptr<ConsoleHub> hub, agent::Identity identity)
      : options_(std::move(options)), dir_(std::move(dir)), hub_(std::move(hub)), identity_(std::move(identity)) {}

  control::Router Routes();
  nlohmann::json StateJson() const;
  agent::AgentEndpoint Endpoint() const;
  // What the agent applies on its first connection: hostname = VM id, wall-clock time, fresh
  // entropy, the network (if any) and, for restored/forked VMs, a new machine-id.
  Result<agent::SetIdentity> FirstIdentity() const;
  // FirstIdentity() sent over a control connection of its own (agent thread).
  Result<agent::IdentityOk> SendFirstIdentity();
  void AgentLoop();
  // --balloon auto: one report through the policy, its size to the balloon (agent thread).
  void ApplyBalloonPolicy(const agent::Report& report);
  // Runs fn (move-only is fine) on a detached worker thread; the destructor waits for all.
  template <typename F>
  void RunWorker(F&& fn) {
    {
      std::lock_guard lock(mu_);
      ++active_workers_;
    }
    std::thread([this, f = std::forward<F>(fn)]() mutable {
      ConfineThisThread();
      f();
      std::lock_guard lock(mu_);
      --active_workers_;
      cv_.notify_all();
    }).detach();
  }
  // With --seccomp: the worker role on the calling thread (the agent thread, a worker).
  void ConfineThisThread() const;
  // Agent connections in use by workers, shut down when the service stops.
  void TrackFd(int fd);
  void UntrackFd(int fd);

  // Exec waits (up to `timeout`) until the agent has applied the VM's identity, so that no command
  // of a fork runs with the template's hostname, machine-id, clock or entropy.
  // Returns false when a VM from a snapshot still has the template's identity after waiting.
  bool WaitForIdentity(std::chrono::milliseconds timeout);
  // How long an exec waits for the agent's vsock connection.
  std::chrono::milliseconds ExecConnectTimeout() const;

  void HandleExec(control::Request request, control::Responder responder);
  void HandleExecSession(control::Request request, control::Responder responder);
  void HandleShutdown(control::Request request, control::Responder responder);

  ServiceOptions options_;
  VmDir dir_;
  std::unique_ptr<ConsoleHub> hub_;
  agent::Identity identity_;
  Vm* vm_ = nullptr;
  std::unique_ptr<control::Server> server_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  bool agent_connected_ = false;
  bool identity_settled_ = false;  // applied, or its first attempt failed (then exec is not held)
  std::optional<std::chrono::steady_clock::time_point> agent_ready_at_;  // first agent hello
  std::optional<agent::HelloOk> agent_hello_;
  std::optional<agent::Report> last_report_;
  std::optional<BalloonPolicy> balloon_policy_;                 // agent thread only
  uint64_t balloon_applied_ = 0;                                // the policy's last size sent to the device
  std::chrono::steady_clock::time_point balloon_applied_at_{};  // when it was sent
  std::optional<std::chrono::steady_clock::time_point> balloon_reached_at_;  // when the driver got there
  std::chrono::steady_clock::time_point last_report_at_;
  std::set<int> busy_fds_;
  std::thread agent_thread_;
  int active_workers_ = 0;
};

}  // namespace clonevm

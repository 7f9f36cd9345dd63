// clone-agent internals: the guest side of the agent protocol (agent/proto.h, docs/agent.md).
//
// Process model: main() accepts connections (vsock port kAgentPort, or a Unix socket for tests)
// and forks one session process per connection, so a session that crashes or hangs affects only
// its own connection. A session is single-threaded: it reads Hello, checks the token against the
// identity page (re-read on every connection), answers HelloOk and then serves its role:
//   exec     RunExecSession: one program, its stdio streamed both ways, Exited at the end;
//   monitor  RunMonitorSession: a Report every interval_ms until the host closes;
//   control  RunControlSession: Shutdown / Reboot / SetIdentity requests, one reply each.
//
// Host input is untrusted (it could come from any process that can reach the socket): every
// frame is validated by agent/proto; bad input ends the session with an Error frame, never the
// agent. System changes (hostname, clock, network, entropy, power) are skipped and only recorded
// in a log file when AgentConfig::dry_run_log is set, so tests can exercise them on a host.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "agent/identity_page.h"
#include "agent/proto.h"
#include "base/fd.h"
#include "base/result.h"

namespace clonevm::agent {

struct AgentConfig {
  // The identity page: /dev/mem at kIdentityPageGpa by default; a file holding the page at
  // offset 0 with --identity-file.
  std::string identity_path = "/dev/mem";
  uint64_t identity_offset = kIdentityPageGpa;
  // When non-empty: do not change the system; append one line per action to this file.
  std::string dry_run_log;
  // Shared between all session processes (MAP_SHARED): exec sessions running now.
  std::atomic<uint32_t>* exec_sessions = nullptr;
};

// Serves one connection until it ends. Never throws; errors are reported to the peer when the
// connection still works and returned for the agent's log.
Result<void> ServeConnection(Fd conn, const AgentConfig& config);

Result<void> RunExecSession(int conn, const ExecRequest& request, const AgentConfig& config);
Result<void> RunMonitorSession(int conn, const Monitor& request, const AgentConfig& config);
Result<void> RunControlSession(int conn, const AgentConfig& config);

// Samples /proc for a Report. `state` carries the previous CPU sample between calls.
struct CpuSample {
  uint64_t busy_ticks = 0;
  Clock::time_point when{};
};
Report CollectReport(CpuSample* previous, uint32_t exec_sessions);

// SetIdentity: applies each present field in order (hostname, machine_id, mac/ipv4/gateway,
// time, entropy) and returns the names of the applied fields; fails at the first failing step.
Result<IdentityOk> ApplyIdentity(const SetIdentity& request, const AgentConfig& config);

enum class PowerAction { kPowerOff, kReboot };
// sync(2) then reboot(2). Returns only on failure (or after logging in dry-run mode).
Result<void> Power(PowerAction action, const AgentConfig& config);

// Appends "line\n" to config.dry_run_log.
Result<void> RecordDryRun(const AgentConfig& config, std::string_view line);

}  // namespace clonevm::agent

// Supervisor: the daemon's VMs as processes — started, watched, reaped, cleaned up, restarted,
// and found again after the daemon itself restarts.
//
// Each VM is a `clone` VM process of its own (the daemon never runs a guest): spawned from
// `vm_command` + the VM's record (cli "daemon-vm", which builds the VM through runtime/launch.h),
// in a new session and process group, stdin/stdout /dev/null, stderr appended to the VM's vmm.log,
// and fd 3 the write end of a "ready" pipe on which it says "ok <id>" once the VM runs. The daemon
// watches each VM process through a pidfd on its loop, so no request ever waits for a boot.
//
// When a VM process ends (reaped with waitpid when the daemon is its parent; else its exit.json
// says how, or "status unknown"), the supervisor removes what it may have left: its runtime
// directory (sockets, overlays of forks) unless a live process holds its lock, stale lease files
// that name it, and the "auto" rootfs overlay; its TAPs die with its fds. Then the restart policy:
// "always", or "on-failure" with a non-zero status, starts it again after `restart_delay` (doubled
// for each restart it had, up to 60 times) unless it was stopped or destroyed.
//
// Recover(), at daemon start: every vm.json is read; a VM whose recorded process is alive (same
// PID and start time) and holds its runtime directory's lock is adopted (watched by pidfd); one
// that died while the daemon was down is cleaned up as above and reported exited; restart
// policies then apply as for any exit.
//
// Ownership: a VM belongs to the uid that created it; the API layer (api.h) checks callers.
// Threads: everything runs on the loop thread. Callbacks (StartDone, ...) are called on it too.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "base/fd.h"
#include "base/result.h"
#include "daemon/record.h"

namespace clonevm::daemon {

enum class VmState { kStopped, kStarting, kRunning, kStopping, kExited };
std::string VmStateName(VmState state);

struct SupervisorOptions {
  std::string state_dir;
  // The VM process's argv before the record's arguments: the daemon's own binary and "daemon-vm".
  std::vector<std::string> vm_command;
  // The runtime directory VM processes publish themselves in (runtime/vm_dir.h RuntimeDir()).
  std::string runtime_dir;
  std::chrono::milliseconds restart_delay{1000};
  std::chrono::milliseconds kill_grace{5000};  // SIGTERM → SIGKILL
};

// How a failed start is answered: 400 when the VM process refused its spec (exit status 2), else 500.
struct StartError {
  int http_status = 500;
  std::string message;
};

class Supervisor {
 public:
  using EventSink = std::function<void(const std::string& type, const VmRecord& record, nlohmann::json extra)>;
  using StartDone = std::function<void(tl::expected<void, StartError>)>;
  using Done = std::function<void()>;

  Supervisor(EventLoop& loop, SupervisorOptions options, EventSink events);
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  [[nodiscard]] Result<void> Recover();

  // Records a new VM (stopped). Fails if the id is taken (by a record or a running VM).
  [[nodiscard]] Result<void> Create(VmRecord record);
  // Starts a stopped or exited VM; `done` once it runs or failed to.
  void Start(const std::string& id, StartDone done);
  // Ends the VM process: after `grace` (time for a guest shutdown asked for meanwhile; 0: now)
  // SIGTERM (the VM process tears down cleanly), SIGKILL to its process group kill_grace later;
  // `done` once it has exited. A second Stop with a shorter grace hurries the first. Stopped VMs
  // stay recorded.
  void Stop(const std::string& id, std::chrono::milliseconds grace, Done done);
  // Stops (if running), cleans up and forgets the VM; `done` once gone.
  void Destroy(const std::string& id, Done done);
  // The guest agent of `id`'s run `pid` answers: publishes "agent-ready" once per run.
  void MarkAgentReady(const std::string& id, pid_t pid);

  const VmRecord* Find(const std::string& id) const;
  std::vector<std::string> Ids() const;
  // GET /vms/{id}: the record's facts with state, pid and last exit.
  nlohmann::json Describe(const std::string& id) const;
  VmState state(const std::string& id) const;
  std::string ControlSocket(const std::string& id) const {
    return options_.runtime_dir + "/vms/" + id + "/control.sock";
  }
  const RecordStore& store() const { return store_; }

 private:
  struct Vm;
  Vm* Get(const std::string& id);
  const Vm* Get(const std::string& id) const;
  void Spawn(Vm& vm);
  void OnReady(const std::string& id);
  void OnProcessEnd(const std::string& id);
  void Finish(Vm& vm, ExitInfo exit);
  void Watch(Vm& vm);
  void Unwatch(Vm& vm);
  void CleanRemains(const VmRecord& record);
  void ScheduleRestart(const std::string& id);
  void Save(const Vm& vm);
  void ExpectStop(Vm& vm);
  void Terminate(const std::string& id);

  EventLoop& loop_;
  SupervisorOptions options_;
  RecordStore store_;
  EventSink events_;
  std::map<std::string, std::unique_ptr<Vm>> vms_;
};

}  // namespace clonevm::daemon

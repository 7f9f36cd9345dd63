// The daemon's route table (docs/daemon.md, docs/api/openapi.yaml): one Router over the
// Supervisor, with typed request bodies (requests.h).
//
//   POST   /vms                      a VmSpec (+ "start", "restart"); 201 once running (or created stopped)
//   GET    /vms                      the caller's VMs (root: all)
//   GET    /vms/{id}                 one VM: state, pid, memory, last exit
//   POST   /vms/{id}/start           start a stopped/exited VM; 200 once running
//   POST   /vms/{id}/stop            {"mode": "agent"|"force", "timeout_ms"}; 200 once stopped
//   DELETE /vms/{id}                 stop, clean up, forget
//   POST   /vms/{id}/exec            proxied to the VM's own POST /vm/exec
//   PUT    /vms/{id}/snapshot        {"template": NAME}: the running VM saved as a template
//   POST   /templates/{name}/fork    fork overrides + "count", "restart"; 201 with the forks
//   GET    /templates                the templates
//   DELETE /templates/{name}         a template no VM record forks from
//   GET    /events                   JSON lines (events.h); ?since=N replays kept events after N
//   GET    /host                     counts and facts of the host
//
// Access: every request carries its peer's uid (SO_PEERCRED); root sees and controls every VM, any
// other uid only the VMs it created (another's VM is a 403; listings leave them out). Errors are
// {"error": "..."} with a 4xx naming the bad field, 404 for an unknown VM or template, 409 for a
// state conflict, 5xx for a failure of the host or the VM process.
//
// Threads: handlers run on the loop thread; proxied calls to VM control sockets and the agent
// watch run on short-lived threads that complete their Responder themselves and post anything
// else back to the loop.
#pragma once

#include <memory>
#include <string>

#include "base/event_loop.h"
#include "control/router.h"
#include "daemon/events.h"
#include "daemon/supervisor.h"

namespace clonevm::daemon {

class Api {
 public:
  Api(EventLoop& loop, Supervisor& supervisor, EventBus& events);
  ~Api();
  Api(const Api&) = delete;
  Api& operator=(const Api&) = delete;

  control::Router Routes();
  // Watches a started VM until its agent answers, then publishes "agent-ready" (started here for
  // every start the API makes and for adopted VMs).
  void WatchAgent(const std::string& id);

  // Shared with worker threads so that posts after ~Api are dropped. Internal.
  struct Link;

 private:
  using Request = control::Request;
  using Responder = control::Responder;
  // The VM `id` if the caller may use it; otherwise answers 404/403 and returns nullptr.
  const VmRecord* Owned(const Request& request, Responder& responder);
  void CreateVm(Request request, Responder responder);
  void ListVms(Request request, Responder responder);
  void StartVm(Request request, Responder responder);
  void StopVm(Request request, Responder responder);
  void DestroyVm(Request request, Responder responder);
  void Proxy(Request request, Responder responder, const char* method, const char* vm_path);
  void SnapshotVm(Request request, Responder responder);
  void ForkTemplate(Request request, Responder responder);
  void ListTemplates(Request request, Responder responder);
  void DeleteTemplate(Request request, Responder responder);
  void Events(Request request, Responder responder);
  void Host(Request request, Responder responder);
  // Starts `id` (created before) and answers with `status` and its description, or with the start's
  // error after forgetting the VM (a create that fails leaves nothing behind).
  void StartAndAnswer(const std::string& id, int status, Responder responder, bool forget_on_failure);

  EventLoop& loop_;
  Supervisor& supervisor_;
  EventBus& events_;
  std::shared_ptr<Link> link_;
};

}  // namespace clonevm::daemon

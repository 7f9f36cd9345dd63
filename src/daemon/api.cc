#include "daemon/api.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <thread>

#include "base/json.h"
#include "base/log.h"
#include "control/client.h"
#include "daemon/access.h"
#include "host/check.h"
#include "runtime/vm_dir.h"

namespace clonevm::daemon {
namespace fs = std::filesystem;
using control::Response;
namespace {

constexpr std::chrono::milliseconds kControlTimeout{10'000};
constexpr std::chrono::milliseconds kAgentPoll{500};
constexpr std::chrono::minutes kAgentWatchMax{10};
constexpr uint64_t kMaxExecTimeoutMs = 24ull * 3600 * 1000;

// The body of a request for handlers that read it themselves (typed requests.h readers): only the
// media type and the JSON object shape are checked here; unknown fields are the reader's to refuse.
tl::expected<nlohmann::json, control::BodyError> JsonBody(const control::Request& request) {
  if (auto type = request.Header("Content-Type")) {
    std::string_view t = *type;
    if (!t.starts_with("application/json")) {
      return tl::unexpected(control::BodyError{415, "Content-Type must be application/json"});
    }
  }
  if (request.body.empty()) return nlohmann::json::object();
  auto j = ParseJsonObject(request.body, "body");
  if (!j) return tl::unexpected(control::BodyError{400, j.error().message()});
  return *j;
}

bool Visible(const VmRecord& record, uid_t uid) { return uid == 0 || record.owner == uid; }

// Sends `body` to a VM's own control socket on a thread of its own (no request waits for another
// VM) and answers with the VM's response as it is.
void ForwardToVm(std::string socket, std::string method, std::string path, nlohmann::json body,
                 std::chrono::milliseconds timeout, control::Responder responder) {
  std::thread([socket = std::move(socket), method = std::move(method), path = std::move(path), body = std::move(body),
               timeout, r = std::move(responder)]() mutable {
    auto response = control::Call(socket, method, path, body, timeout);
    if (!response) return r.RespondError(502, fmt::format("the VM's control socket: {}", response.error().message()));
    Response forwarded;
    forwarded.status = response->status;
    forwarded.body = std::move(response->body);
    forwarded.headers.emplace_back("Content-Type", "application/json");
    r.Respond(std::move(forwarded));
  }).detach();
}

// ?since=N from a query string; nullopt when absent.
Result<std::optional<uint64_t>> SinceParam(const std::string& query) {
  for (size_t pos = 0; pos < query.size();) {
    size_t end = query.find('&', pos);
    if (end == std::string::npos) end = query.size();
    std::string_view item(query.data() + pos, end - pos);
    if (item.starts_with("since=")) {
      std::string value(item.substr(6));
      if (value.empty() || value.find_first_not_of("0123456789") != std::string::npos || value.size() > 19) {
        return Fail("since '{}': expected a sequence number", value);
      }
      return std::optional<uint64_t>(std::stoull(value));
    }
    pos = end + 1;
  }
  return std::optional<uint64_t>();
}

}  // namespace

struct Api::Link : std::enable_shared_from_this<Api::Link> {
  std::mutex mu;
  EventLoop* loop = nullptr;
  Supervisor* supervisor = nullptr;
  // Runs fn(supervisor) on the loop, unless the Api is gone.
  void Post(std::function<void(Supervisor&)> fn) {
    std::lock_guard lock(mu);
    if (loop == nullptr) return;
    loop->Post([self = shared_from_this(), fn = std::move(fn)] {
      // On the loop thread, where ~Api clears `supervisor`: no lock needed to read it here.
      if (self->supervisor != nullptr) fn(*self->supervisor);
    });
  }
};

Api::Api(EventLoop& loop, Supervisor& supervisor, EventBus& events)
    : loop_(loop), supervisor_(supervisor), events_(events), link_(std::make_shared<Link>()) {
  link_->loop = &loop;
  link_->supervisor = &supervisor;
}

Api::~Api() {
  std::lock_guard lock(link_->mu);
  link_->loop = nullptr;
  link_->supervisor = nullptr;
}

control::Router Api::Routes() {
  control::Router router;
  auto bind = [this](void (Api::*handler)(Request, Responder)) {
    return [this, handler](Request request, Responder responder) {
      (this->*handler)(std::move(request), std::move(responder));
    };
  };
  router.Add("POST", "/vms", bind(&Api::CreateVm));
  router.Add("GET", "/vms", bind(&Api::ListVms));
  router.Add("GET", "/vms/{id}", [this](Request request, Responder r) {
    if (Owned(request, r) == nullptr) return;
    r.RespondJson(200, supervisor_.Describe(request.path_params["id"]));
  });
  router.Add("DELETE", "/vms/{id}", bind(&Api::DestroyVm));
  router.Add("POST", "/vms/{id}/start", bind(&Api::StartVm));
  router.Add("POST", "/vms/{id}/stop", bind(&Api::StopVm));
  router.Add("POST", "/vms/{id}/exec",
             [this](Request request, Responder r) { Proxy(std::move(request), std::move(r), "POST", "/vm/exec"); });
  router.Add("PUT", "/vms/{id}/snapshot", bind(&Api::SnapshotVm));
  router.Add("POST", "/templates/{name}/fork", bind(&Api::ForkTemplate));
  router.Add("GET", "/templates", bind(&Api::ListTemplates));
  router.Add("DELETE", "/templates/{name}", bind(&Api::DeleteTemplate));
  router.Add("GET", "/events", bind(&Api::Events));
  router.Add("GET", "/host", bind(&Api::Host));
  return router;
}

const VmRecord* Api::Owned(const Request& request, Responder& responder) {
  auto it = request.path_params.find("id");
  const std::string& id = it->second;
  const VmRecord* record = supervisor_.Find(id);
  if (record == nullptr) {
    responder.RespondError(404, fmt::format("no VM named '{}'", id));
    return nullptr;
  }
  if (!Visible(*record, request.peer_uid)) {
    responder.RespondError(
        403, fmt::format("VM '{}' belongs to uid {}, not to uid {}", id, record->owner, request.peer_uid));
    return nullptr;
  }
  return record;
}

void Api::StartAndAnswer(const std::string& id, int status, Responder responder, bool forget_on_failure) {
  auto shared = std::make_shared<Responder>(std::move(responder));
  supervisor_.Start(id, [this, id, status, shared, forget_on_failure](tl::expected<void, StartError> started) {
    if (started) {
      WatchAgent(id);
      return shared->RespondJson(status, supervisor_.Describe(id));
    }
    StartError error = started.error();
    if (!forget_on_failure) return shared->RespondError(error.http_status, error.message);
    // Posted: Destroy must not run inside the supervisor's own completion loop.
    loop_.Post([this, id, shared, error] {
      supervisor_.Destroy(id, [shared, error] {
        shared->RespondError(error.http_status, fmt::format("VM not started: {}", error.message));
      });
    });
  });
}

void Api::CreateVm(Request request, Responder responder) {
  auto body = JsonBody(request);
  if (!body) return responder.Respond(body.error().ToResponse());
  auto create = ParseCreateRequest(*body);
  if (!create) return responder.RespondError(400, create.error().message());
  if (auto ok = CheckCallerAccess(PathsOf(create->spec), request.peer_uid, request.peer_gid); !ok) {
    return responder.RespondError(403, ok.error().message());
  }
  VmRecord record;
  record.id = create->spec.name.empty() ? NewVmId() : create->spec.name;
  record.spec = std::move(create->spec);
  record.spec.name = record.id;
  record.owner = request.peer_uid;
  record.restart = create->restart;
  if (auto made = supervisor_.Create(record); !made) return responder.RespondError(409, made.error().message());
  if (!create->start) return responder.RespondJson(201, supervisor_.Describe(record.id));
  StartAndAnswer(record.id, 201, std::move(responder), /*forget_on_failure=*/true);
}

void Api::ListVms(Request request, Responder responder) {
  nlohmann::json vms = nlohmann::json::array();
  for (const auto& id : supervisor_.Ids()) {
    if (Visible(*supervisor_.Find(id), request.peer_uid)) vms.push_back(supervisor_.Describe(id));
  }
  responder.RespondJson(200, vms);
}

void Api::StartVm(Request request, Responder responder) {
  const VmRecord* record = Owned(request, responder);
  if (record == nullptr) return;
  auto body = JsonBody(request);
  if (!body) return responder.Respond(body.error().ToResponse());
  if (auto ok = JsonReader(*body).Expect({}); !ok) return responder.RespondError(400, ok.error().message());
  StartAndAnswer(record->id, 200, std::move(responder), /*forget_on_failure=*/false);
}

void Api::StopVm(Request request, Responder responder) {
  const VmRecord* record = Owned(request, responder);
  if (record == nullptr) return;
  auto body = JsonBody(request);
  if (!body) return responder.Respond(body.error().ToResponse());
  auto stop = ParseStopRequest(*body);
  if (!stop) return responder.RespondError(400, stop.error().message());
  std::string id = record->id;
  auto shared = std::make_shared<Responder>(std::move(responder));
  auto answer = [this, id, shared] { shared->RespondJson(200, supervisor_.Describe(id)); };
  VmState state = supervisor_.state(id);
  if (stop->mode == StopMode::kForce || state != VmState::kRunning) {
    return supervisor_.Stop(id, std::chrono::milliseconds(0), answer);
  }
  // Ask the guest to power off; if its agent cannot be asked, or it has not gone within the
  // timeout, the VM process is ended.
  supervisor_.Stop(id, std::chrono::milliseconds(stop->timeout_ms), answer);
  std::thread([link = link_, id, socket = supervisor_.ControlSocket(id)] {
    auto response = control::Call(socket, "PUT", "/vm/shutdown", nlohmann::json{{"mode", "agent"}}, kControlTimeout);
    bool asked = response && response->status / 100 == 2;
    if (!asked) {
      link->Post([id](Supervisor& s) { s.Stop(id, std::chrono::milliseconds(0), [] {}); });
    }
  }).detach();
}

void Api::DestroyVm(Request request, Responder responder) {
  const VmRecord* record = Owned(request, responder);
  if (record == nullptr) return;
  std::string id = record->id;
  auto shared = std::make_shared<Responder>(std::move(responder));
  supervisor_.Destroy(id, [shared, id] { shared->RespondJson(200, {{"id", id}, {"state", "destroyed"}}); });
}

void Api::Proxy(Request request, Responder responder, const char* method, const char* vm_path) {
  const VmRecord* record = Owned(request, responder);
  if (record == nullptr) return;
  if (supervisor_.state(record->id) != VmState::kRunning) {
    return responder.RespondError(409,
                                  fmt::format("VM '{}' is {}", record->id, VmStateName(supervisor_.state(record->id))));
  }
  auto body = JsonBody(request);
  if (!body) return responder.Respond(body.error().ToResponse());
  // The VM checks the body; the daemon only bounds how long it waits for the answer.
  uint64_t timeout_ms = 3600ull * 1000;
  if (auto t = body->find("timeout_ms"); t != body->end() && t->is_number_unsigned()) {
    timeout_ms = std::min<uint64_t>(t->get<uint64_t>(), kMaxExecTimeoutMs) + 60'000;
  }
  ForwardToVm(supervisor_.ControlSocket(record->id), method, vm_path, std::move(*body),
              std::chrono::milliseconds(timeout_ms), std::move(responder));
}

void Api::SnapshotVm(Request request, Responder responder) {
  const VmRecord* record = Owned(request, responder);
  if (record == nullptr) return;
  auto body = JsonBody(request);
  if (!body) return responder.Respond(body.error().ToResponse());
  auto snapshot = ParseSnapshotRequest(*body);
  if (!snapshot) return responder.RespondError(400, snapshot.error().message());
  if (supervisor_.state(record->id) != VmState::kRunning) {
    return responder.RespondError(409, fmt::format("VM '{}' is not running", record->id));
  }
  nlohmann::json vm_body = {{"name", snapshot->template_name}, {"dir", supervisor_.store().TemplatesDir()}};
  ForwardToVm(supervisor_.ControlSocket(record->id), "PUT", "/vm/snapshot", std::move(vm_body),
              std::chrono::minutes(10), std::move(responder));
}

void Api::ForkTemplate(Request request, Responder responder) {
  const std::string& name = request.path_params["name"];
  if (auto valid = CheckTemplateName(name); !valid) return responder.RespondError(400, valid.error().message());
  std::string dir = supervisor_.store().TemplatesDir() + "/" + name;
  std::error_code ec;
  if (!fs::exists(dir + "/state", ec)) return responder.RespondError(404, fmt::format("no template named '{}'", name));
  auto body = JsonBody(request);
  if (!body) return responder.Respond(body.error().ToResponse());
  auto fork = ParseForkRequest(*body);
  if (!fork) return responder.RespondError(400, fork.error().message());
  if (auto ok = CheckCallerAccess(PathsOf(fork->overrides), request.peer_uid, request.peer_gid); !ok) {
    return responder.RespondError(403, ok.error().message());
  }
  std::vector<std::string> ids;
  for (uint32_t i = 1; i <= fork->count; ++i) {
    const std::string& base = fork->overrides.name;
    ids.push_back(base.empty() ? NewVmId() : fork->count == 1 ? base : fmt::format("{}-{}", base, i));
    if (supervisor_.Find(ids.back()) != nullptr) {
      return responder.RespondError(409, fmt::format("a VM named '{}' exists", ids.back()));
    }
  }
  struct Pending {
    Responder responder;
    size_t left = 0;
    nlohmann::json vms = nlohmann::json::array();
    nlohmann::json failed = nlohmann::json::array();
    int first_error = 0;
  };
  auto pending = std::make_shared<Pending>(Pending{std::move(responder), ids.size()});
  auto finish_one = [pending] {
    if (--pending->left > 0) return;
    if (pending->vms.empty()) {
      std::string why = pending->failed.empty() ? "no fork started" : pending->failed[0].value("error", "");
      return pending->responder.RespondError(pending->first_error, why);
    }
    nlohmann::json reply = {{"vms", pending->vms}};
    if (!pending->failed.empty()) reply["failed"] = pending->failed;
    pending->responder.RespondJson(201, reply);
  };
  for (const auto& id : ids) {
    VmRecord record;
    record.id = id;
    record.owner = request.peer_uid;
    record.template_name = name;
    record.overrides = fork->overrides;
    record.overrides.name = id;
    record.restart = fork->restart;
    if (auto made = supervisor_.Create(record); !made) {
      pending->failed.push_back({{"id", id}, {"error", made.error().message()}});
      if (pending->first_error == 0) pending->first_error = 409;
      finish_one();
      continue;
    }
    supervisor_.Start(id, [this, id, pending, finish_one](tl::expected<void, StartError> started) {
      if (started) {
        WatchAgent(id);
        pending->vms.push_back(supervisor_.Describe(id));
        return finish_one();
      }
      pending->failed.push_back({{"id", id}, {"error", started.error().message}});
      if (pending->first_error == 0) pending->first_error = started.error().http_status;
      loop_.Post([this, id, finish_one] { supervisor_.Destroy(id, finish_one); });
    });
  }
}

void Api::ListTemplates(Request, Responder responder) {
  nlohmann::json templates = nlohmann::json::array();
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(supervisor_.store().TemplatesDir(), ec)) {
    std::string path = entry.path().string();
    if (!fs::exists(path + "/state", ec)) continue;
    nlohmann::json t = {{"name", entry.path().filename().string()}, {"path", path}};
    struct stat st {};
    if (::stat((path + "/state").c_str(), &st) == 0) t["created_unix"] = static_cast<int64_t>(st.st_mtime);
    nlohmann::json forks = nlohmann::json::array();
    for (const auto& id : supervisor_.Ids()) {
      if (supervisor_.Find(id)->template_name == t["name"]) forks.push_back(id);
    }
    t["vms"] = forks;
    templates.push_back(std::move(t));
  }
  std::sort(templates.begin(), templates.end(),
            [](const nlohmann::json& a, const nlohmann::json& b) { return a["name"] < b["name"]; });
  responder.RespondJson(200, templates);
}

void Api::DeleteTemplate(Request request, Responder responder) {
  const std::string& name = request.path_params["name"];
  if (auto valid = CheckTemplateName(name); !valid) return responder.RespondError(400, valid.error().message());
  std::string dir = supervisor_.store().TemplatesDir() + "/" + name;
  std::error_code ec;
  if (!fs::exists(dir + "/state", ec)) return responder.RespondError(404, fmt::format("no template named '{}'", name));
  if (request.peer_uid != 0) return responder.RespondError(403, "only root deletes templates");
  for (const auto& id : supervisor_.Ids()) {
    if (supervisor_.Find(id)->template_name == name) {
      return responder.RespondError(409, fmt::format("VM '{}' is a fork of template '{}': destroy it first", id, name));
    }
  }
  fs::remove_all(dir, ec);
  if (ec) return responder.RespondError(500, fmt::format("cannot remove {}: {}", dir, ec.message()));
  responder.RespondJson(200, {{"name", name}, {"state", "deleted"}});
}

void Api::Events(Request request, Responder responder) {
  auto since = SinceParam(request.query);
  if (!since) return responder.RespondError(400, since.error().message());
  Response head;
  head.status = 200;
  head.close_delimited = true;
  head.headers.emplace_back("Content-Type", "application/x-ndjson");
  responder.Hijack(std::move(head),
                   [this, uid = request.peer_uid, since = *since](Result<control::HijackedConnection> taken) {
                     if (taken) events_.Subscribe(std::move(taken->socket), uid, since);
                   });
}

void Api::Host(Request request, Responder responder) {
  size_t total = 0, running = 0;
  for (const auto& id : supervisor_.Ids()) {
    if (!Visible(*supervisor_.Find(id), request.peer_uid)) continue;
    ++total;
    if (supervisor_.state(id) == VmState::kRunning) ++running;
  }
  // `clone check`'s verdict on this host's KVM (cheap: a few small files).
  host::KvmVerdict verdict = host::ClassifyKvm(host::System());
  nlohmann::json kvm = {{"kind", host::KvmKindName(verdict.kind)}, {"stock_guests", verdict.stock_guests}};
  if (!verdict.stock_guests) kvm["why"] = verdict.why;
  responder.RespondJson(200, {{"vms", total},
                              {"running", running},
                              {"kvm", kvm},
                              {"state_dir", supervisor_.store().state_dir()},
                              {"event_subscribers", events_.subscriber_count()}});
}

void Api::WatchAgent(const std::string& id) {
  const VmRecord* record = supervisor_.Find(id);
  if (record == nullptr || record->pid == 0) return;
  std::thread([link = link_, id, pid = record->pid, socket = supervisor_.ControlSocket(id)] {
    auto deadline = std::chrono::steady_clock::now() + kAgentWatchMax;
    while (std::chrono::steady_clock::now() < deadline) {
      auto response = control::Call(socket, "GET", "/vm", std::nullopt, kControlTimeout);
      if (!response) {
        if (::kill(pid, 0) != 0) return;  // the VM process is gone
      } else if (auto state = control::ResponseJson(*response); state && state->is_object()) {
        auto agent = state->value("agent", nlohmann::json::object());
        if (agent.is_object() && agent.value("connected", false)) {
          return link->Post([id, pid](Supervisor& s) { s.MarkAgentReady(id, pid); });
        }
      }
      std::this_thread::sleep_for(kAgentPoll);
    }
  }).detach();
}

}  // namespace clonevm::daemon

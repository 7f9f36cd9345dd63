#include "daemon/supervisor.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>

#include "base/log.h"
#include "net/address.h"
#include "net/alloc.h"

extern char** environ;

namespace clonevm::daemon {
namespace fs = std::filesystem;
namespace {

constexpr int kExitUsage = 2;  // the VM process refused its spec (cli/exit_codes.h)

int64_t NowUnix() { return static_cast<int64_t>(std::time(nullptr)); }

Result<Fd> PidFd(pid_t pid) {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return FailErrno(fmt::format("pidfd_open({})", pid));
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  return Fd(fd);
}

// A one-shot timer on the loop: `fn` runs once after `delay` unless the OneShot is destroyed first.
class OneShot {
 public:
  static std::unique_ptr<OneShot> Arm(EventLoop& loop, std::chrono::milliseconds delay, std::function<void()> fn) {
    auto timer = std::unique_ptr<OneShot>(new OneShot(loop));
    timer->fd_ = Fd(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!timer->fd_) return nullptr;
    itimerspec spec{};
    auto ms = std::max<int64_t>(delay.count(), 1);
    spec.it_value.tv_sec = ms / 1000;
    spec.it_value.tv_nsec = (ms % 1000) * 1'000'000;
    ::timerfd_settime(timer->fd_.get(), 0, &spec, nullptr);
    auto added = loop.Add(timer->fd_.get(), EPOLLIN, [raw = timer.get(), fn = std::move(fn)](uint32_t) {
      uint64_t ticks = 0;
      [[maybe_unused]] ssize_t n = ::read(raw->fd_.get(), &ticks, sizeof(ticks));
      raw->loop_.Remove(raw->fd_.get());
      fn();  // may destroy the OneShot: nothing after this
    });
    if (!added) return nullptr;
    return timer;
  }
  ~OneShot() {
    if (fd_) loop_.Remove(fd_.get());
  }
  OneShot(const OneShot&) = delete;
  OneShot& operator=(const OneShot&) = delete;

 private:
  explicit OneShot(EventLoop& loop) : loop_(loop) {}
  EventLoop& loop_;
  Fd fd_;
};

// How a wait status reads, as `clone`'s exit statuses say it (cli/exit_codes.h).
ExitInfo FromWaitStatus(int status) {
  ExitInfo exit;
  if (WIFSIGNALED(status)) {
    exit.status = 128 + WTERMSIG(status);
    exit.how = fmt::format("killed by signal {} ({})", WTERMSIG(status), ::strsignal(WTERMSIG(status)));
    return exit;
  }
  int code = WEXITSTATUS(status);
  exit.status = code;
  switch (code) {
    case 0:
      exit.how = "powered off";
      break;
    case 1:
      exit.how = "VMM error";
      break;
    case kExitUsage:
      exit.how = "refused its spec";
      break;
    case 3:
      exit.how = "guest rebooted";
      break;
    case 4:
      exit.how = "guest crashed";
      break;
    default:
      exit.how = code > 128 ? fmt::format("stopped by signal {}", code - 128) : fmt::format("exit status {}", code);
  }
  return exit;
}

// The last non-empty line of a log (how a failed VM process said why), without "clone: error: ".
std::string LastLogLine(const std::string& path) {
  std::ifstream in(path);
  std::string line, last;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty()) last = line;
  }
  for (const char* prefix : {"clone: error: ", "clone: "}) {
    if (last.starts_with(prefix)) return last.substr(std::strlen(prefix));
  }
  return last;
}

// Whether a live process holds <dir>/lock (runtime/vm_dir.h): true means the directory is in use.
bool LockHeld(const std::string& dir) {
  Fd fd(::open((dir + "/lock").c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) return false;
  return ::flock(fd.get(), LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
}

uint64_t RssKib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("VmRSS:")) return std::strtoull(line.c_str() + 6, nullptr, 10);
  }
  return 0;
}

}  // namespace

std::string VmStateName(VmState state) {
  switch (state) {
    case VmState::kStopped:
      return "stopped";
    case VmState::kStarting:
      return "starting";
    case VmState::kRunning:
      return "running";
    case VmState::kStopping:
      return "stopping";
    case VmState::kExited:
      return "exited";
  }
  return "exited";
}

struct Supervisor::Vm {
  VmRecord record;
  VmState state = VmState::kStopped;
  bool child = false;  // our child (waitpid gives its status) rather than adopted
  Fd pidfd;
  Fd ready;
  std::string ready_text;
  bool expect_stop = false;  // stop or destroy asked: its end is no failure and not restarted
  bool agent_ready = false;  // this run's agent answered
  std::vector<StartDone> on_started;
  std::vector<Done> on_exit;
  std::unique_ptr<OneShot> term_timer;
  std::unique_ptr<OneShot> kill_timer;
  std::unique_ptr<OneShot> restart_timer;
};

Supervisor::Supervisor(EventLoop& loop, SupervisorOptions options, EventSink events)
    : loop_(loop), options_(std::move(options)), store_(options_.state_dir), events_(std::move(events)) {}

Supervisor::~Supervisor() {
  for (auto& [id, vm] : vms_) Unwatch(*vm);
}

Supervisor::Vm* Supervisor::Get(const std::string& id) {
  auto it = vms_.find(id);
  return it == vms_.end() ? nullptr : it->second.get();
}

const Supervisor::Vm* Supervisor::Get(const std::string& id) const {
  auto it = vms_.find(id);
  return it == vms_.end() ? nullptr : it->second.get();
}

const VmRecord* Supervisor::Find(const std::string& id) const {
  const Vm* vm = Get(id);
  return vm ? &vm->record : nullptr;
}

std::vector<std::string> Supervisor::Ids() const {
  std::vector<std::string> ids;
  for (const auto& [id, vm] : vms_) ids.push_back(id);
  return ids;
}

VmState Supervisor::state(const std::string& id) const {
  const Vm* vm = Get(id);
  return vm ? vm->state : VmState::kStopped;
}

void Supervisor::Save(const Vm& vm) {
  if (auto saved = store_.Save(vm.record); !saved) {
    Log(LogLevel::kError, "VM {}: {}", vm.record.id, saved.error().message());
  }
}

Result<void> Supervisor::Create(VmRecord record) {
  if (Get(record.id) != nullptr) return Fail("a VM named '{}' exists", record.id);
  if (LockHeld(options_.runtime_dir + "/vms/" + record.id)) {
    return Fail("a VM named '{}' is already running outside the daemon", record.id);
  }
  record.created_unix = NowUnix();
  auto vm = std::make_unique<Vm>();
  vm->record = std::move(record);
  CLONE_TRY_VOID(store_.Save(vm->record));
  std::string id = vm->record.id;
  vms_.emplace(id, std::move(vm));
  events_("created", vms_[id]->record, nlohmann::json::object());
  return {};
}

void Supervisor::Start(const std::string& id, StartDone done) {
  Vm* vm = Get(id);
  if (vm == nullptr) return done(tl::unexpected(StartError{404, fmt::format("no VM named '{}'", id)}));
  if (vm->state == VmState::kRunning) return done({});
  if (vm->state == VmState::kStarting) {
    vm->on_started.push_back(std::move(done));
    return;
  }
  if (vm->state == VmState::kStopping) {
    return done(tl::unexpected(StartError{409, fmt::format("VM '{}' is stopping", id)}));
  }
  vm->restart_timer.reset();
  vm->expect_stop = false;
  vm->record.want_running = true;
  vm->on_started.push_back(std::move(done));
  Spawn(*vm);
}

void Supervisor::Spawn(Vm& vm) {
  const std::string& id = vm.record.id;
  auto fail = [&](const std::string& why) {
    Log(LogLevel::kError, "VM {}: cannot start its VM process: {}", id, why);
    vm.state = VmState::kExited;
    vm.record.last_exit = ExitInfo{std::nullopt, "not started: " + why, NowUnix()};
    Save(vm);
    auto waiting = std::move(vm.on_started);
    for (auto& done : waiting) done(tl::unexpected(StartError{500, why}));
  };
  ::unlink(store_.AutoOverlay(id).c_str());  // "auto": a fresh temporary overlay every run
  ::unlink(store_.ExitFile(id).c_str());
  if (auto saved = store_.Save(vm.record); !saved) return fail(saved.error().message());
  auto pipe = Pipe(O_CLOEXEC);
  if (!pipe) return fail(pipe.error().message());
  // fd 3 in the child: dup2 clears close-on-exec only when the numbers differ, so keep it off 3.
  Fd ready_w(::fcntl(pipe->write.get(), F_DUPFD_CLOEXEC, 10));
  Fd log(::open(store_.VmmLog(id).c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  Fd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
  if (!ready_w || !log || !null) return fail(fmt::format("cannot prepare its fds: {}", std::strerror(errno)));
  std::vector<std::string> args = options_.vm_command;
  for (const std::string& a : {std::string("--state-dir"), options_.state_dir, std::string("--id"), id}) {
    args.push_back(a);
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&actions);
  posix_spawnattr_init(&attr);
  posix_spawn_file_actions_adddup2(&actions, null.get(), STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, null.get(), STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, log.get(), STDERR_FILENO);
  posix_spawn_file_actions_adddup2(&actions, ready_w.get(), 3);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  // A session of its own: its own process group, no controlling terminal; a signal to the daemon's
  // group (Ctrl-C on its terminal) does not reach the VMs.
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = 0;
  int rc = ::posix_spawn(&pid, argv[0], &actions, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return fail(fmt::format("posix_spawn {}: {}", argv[0], std::strerror(rc)));
  vm.child = true;
  vm.agent_ready = false;
  vm.record.pid = pid;
  vm.record.pid_start = ProcessStartTime(pid).value_or(0);
  vm.state = VmState::kStarting;
  vm.ready = std::move(pipe->read);
  vm.ready_text.clear();
  ::fcntl(vm.ready.get(), F_SETFL, O_NONBLOCK);
  auto pidfd = PidFd(pid);
  if (!pidfd) {  // cannot happen for a child we have not reaped; stop it rather than lose it
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    vm.ready.reset();
    return fail(pidfd.error().message());
  }
  vm.pidfd = std::move(*pidfd);
  Save(vm);
  Watch(vm);
}

void Supervisor::Watch(Vm& vm) {
  std::string id = vm.record.id;
  if (vm.pidfd) {
    if (auto added = loop_.Add(vm.pidfd.get(), EPOLLIN, [this, id](uint32_t) { OnProcessEnd(id); }); !added) {
      Log(LogLevel::kError, "VM {}: {}", id, added.error().message());
    }
  }
  if (vm.ready) {
    if (auto added = loop_.Add(vm.ready.get(), EPOLLIN, [this, id](uint32_t) { OnReady(id); }); !added) {
      Log(LogLevel::kError, "VM {}: {}", id, added.error().message());
    }
  }
}

void Supervisor::Unwatch(Vm& vm) {
  if (vm.pidfd) loop_.Remove(vm.pidfd.get());
  if (vm.ready) loop_.Remove(vm.ready.get());
}

void Supervisor::OnReady(const std::string& id) {
  Vm* vm = Get(id);
  if (vm == nullptr || !vm->ready) return;
  char buf[256];
  for (;;) {
    ssize_t n = ::read(vm->ready.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0) break;  // EOF: the VM process let go of the pipe (ready or failing)
    vm->ready_text.append(buf, static_cast<size_t>(n));
    if (vm->ready_text.find('\n') != std::string::npos) break;
  }
  loop_.Remove(vm->ready.get());
  vm->ready.reset();
  if (!vm->ready_text.starts_with("ok ") || vm->state != VmState::kStarting) return;  // its end tells why
  vm->state = VmState::kRunning;
  events_("started", vm->record, {{"pid", vm->record.pid}});
  auto waiting = std::move(vm->on_started);
  for (auto& done : waiting) done({});
}

void Supervisor::OnProcessEnd(const std::string& id) {
  Vm* vm = Get(id);
  if (vm == nullptr) return;
  // A VM process that said "ok" and ended at once: its word counts (it ran) whichever fd the loop
  // saw first.
  if (vm->ready) OnReady(id);
  ExitInfo exit;
  if (vm->child) {
    int status = 0;
    pid_t got = 0;
    do {
      got = ::waitpid(vm->record.pid, &status, WNOHANG);
    } while (got < 0 && errno == EINTR);
    if (got == 0) return;  // not yet (a spurious wake-up)
    exit = FromWaitStatus(status);
  } else {
    exit.how = "ended (the daemon adopted it, so its status is unknown)";
  }
  // The VM process's own words when it wrote them (how the guest ended, not just the code).
  if (auto own = store_.TakeExitFile(id)) {
    exit.how = own->how;
    if (!exit.status) exit.status = own->status;
  }
  exit.at_unix = NowUnix();
  Finish(*vm, std::move(exit));
}

void Supervisor::Finish(Vm& vm, ExitInfo exit) {
  Unwatch(vm);
  vm.pidfd.reset();
  vm.ready.reset();
  vm.term_timer.reset();
  vm.kill_timer.reset();
  CleanRemains(vm.record);
  VmState was = vm.state;
  bool asked = vm.expect_stop;
  vm.record.pid = 0;
  vm.record.pid_start = 0;
  vm.record.last_exit = exit;
  vm.child = false;
  if (asked) vm.record.want_running = false;
  vm.state = asked ? VmState::kStopped : VmState::kExited;
  nlohmann::json extra = {{"how", exit.how}};
  extra["status"] = exit.status ? nlohmann::json(*exit.status) : nlohmann::json(nullptr);
  events_("exited", vm.record, extra);
  bool failed = !exit.status || *exit.status != 0;
  bool restart =
      !asked && was == VmState::kRunning && vm.record.want_running &&
      (vm.record.restart == RestartPolicy::kAlways || (vm.record.restart == RestartPolicy::kOnFailure && failed));
  if (!restart && !asked) vm.record.want_running = false;
  Save(vm);
  std::string id = vm.record.id;
  if (restart) ScheduleRestart(id);
  auto starting = std::move(vm.on_started);
  auto exited = std::move(vm.on_exit);
  if (!starting.empty()) {
    std::string why = LastLogLine(store_.VmmLog(id));
    if (why.empty()) why = "the VM process " + exit.how;
    int http = exit.status && *exit.status == kExitUsage ? 400 : 500;
    if (asked) http = 409, why = "stopped while starting";
    for (auto& done : starting) done(tl::unexpected(StartError{http, why}));
  }
  for (auto& done : exited) done();  // may destroy the Vm: nothing after this
}

void Supervisor::ScheduleRestart(const std::string& id) {
  Vm* vm = Get(id);
  if (vm == nullptr) return;
  // Back off a VM that keeps ending: restart_delay, doubled per restart so far, at most 60 times it.
  uint32_t factor = std::min<uint32_t>(1u << std::min<uint32_t>(vm->record.restarts, 6), 60);
  vm->restart_timer = OneShot::Arm(loop_, options_.restart_delay * factor, [this, id] {
    Vm* again = Get(id);
    if (again == nullptr || again->state != VmState::kExited || !again->record.want_running) return;
    auto timer = std::move(again->restart_timer);  // destroyed when this callback returns
    again->record.restarts++;
    Log(LogLevel::kInfo, "VM {}: restarting (policy {}, restart {})", id, RestartPolicyName(again->record.restart),
        again->record.restarts);
    events_("restarting", again->record, {{"restarts", again->record.restarts}});
    Spawn(*again);
  });
}

void Supervisor::ExpectStop(Vm& vm) {
  vm.expect_stop = true;
  vm.record.want_running = false;
  vm.restart_timer.reset();
  Save(vm);
}

void Supervisor::MarkAgentReady(const std::string& id, pid_t pid) {
  Vm* vm = Get(id);
  if (vm == nullptr || vm->record.pid != pid || vm->agent_ready || vm->state != VmState::kRunning) return;
  vm->agent_ready = true;
  events_("agent-ready", vm->record, {{"pid", pid}});
}

void Supervisor::Stop(const std::string& id, std::chrono::milliseconds grace, Done done) {
  Vm* vm = Get(id);
  if (vm == nullptr) return done();
  ExpectStop(*vm);
  if (vm->state != VmState::kStarting && vm->state != VmState::kRunning && vm->state != VmState::kStopping) {
    if (vm->state == VmState::kExited) vm->state = VmState::kStopped;
    Save(*vm);
    return done();
  }
  vm->on_exit.push_back(std::move(done));
  vm->state = VmState::kStopping;
  if (vm->kill_timer) return;  // SIGTERM sent already
  if (grace.count() > 0) {
    if (!vm->term_timer) vm->term_timer = OneShot::Arm(loop_, grace, [this, id] { Terminate(id); });
    return;
  }
  Terminate(id);
}

void Supervisor::Terminate(const std::string& id) {
  Vm* vm = Get(id);
  if (vm == nullptr || vm->kill_timer) return;
  auto term = std::move(vm->term_timer);  // may be the caller: destroyed when this returns
  pid_t pid = vm->record.pid;
  if (ProcessAlive(vm->record)) ::kill(pid, SIGTERM);  // the VM process tears down and exits
  vm->kill_timer = OneShot::Arm(loop_, options_.kill_grace, [this, id, pid] {
    Vm* late = Get(id);
    if (late == nullptr || late->record.pid != pid || !ProcessAlive(late->record)) return;
    Log(LogLevel::kWarn, "VM {}: still running {} ms after SIGTERM; killing its process group", id,
        options_.kill_grace.count());
    ::kill(-pid, SIGKILL);
  });
}

void Supervisor::Destroy(const std::string& id, Done done) {
  Stop(id, std::chrono::milliseconds(0), [this, id, done = std::move(done)] {
    Vm* vm = Get(id);
    if (vm != nullptr) {
      CleanRemains(vm->record);
      events_("destroyed", vm->record, nlohmann::json::object());
      store_.Remove(id);
      vms_.erase(id);
    }
    done();
  });
}

void Supervisor::CleanRemains(const VmRecord& record) {
  const std::string& id = record.id;
  std::string runtime = options_.runtime_dir + "/vms/" + id;
  std::error_code ec;
  if (fs::exists(runtime, ec) && !LockHeld(runtime)) fs::remove_all(runtime, ec);
  ::unlink(store_.AutoOverlay(id).c_str());
  // Lease files naming the VM that no process holds (the VM process died before releasing them).
  for (const auto& bridge : fs::directory_iterator(options_.runtime_dir + "/net", ec)) {
    std::string dir = bridge.path().string();
    auto leases = net::ListLeases(dir);
    if (!leases) continue;
    for (const auto& lease : *leases) {
      if (lease.held || lease.owner != id) continue;
      auto lock = net::FileLock::Exclusive(dir + "/.lock");
      if (!lock) continue;
      std::string path = dir + "/" + net::FormatIpv4(lease.ip);
      Fd file(::open(path.c_str(), O_RDWR | O_CLOEXEC));
      if (file && ::flock(file.get(), LOCK_EX | LOCK_NB) == 0) ::unlink(path.c_str());
    }
  }
}

Result<void> Supervisor::Recover() {
  CLONE_TRY_VOID(store_.Init());
  std::vector<std::string> errors;
  auto records = store_.LoadAll(&errors);
  for (const auto& error : errors) Log(LogLevel::kWarn, "skipping a VM record: {}", error);
  for (auto& record : records) {
    auto vm = std::make_unique<Vm>();
    vm->record = std::move(record);
    Vm& ref = *vm;
    std::string id = ref.record.id;
    vms_.emplace(id, std::move(vm));
    if (ref.record.pid != 0 && ProcessAlive(ref.record)) {
      auto pidfd = PidFd(ref.record.pid);
      if (pidfd) {
        ref.pidfd = std::move(*pidfd);
        ref.state = VmState::kRunning;
        Watch(ref);
        Log(LogLevel::kInfo, "VM {}: adopted its running VM process {}", id, ref.record.pid);
        events_("adopted", ref.record, {{"pid", ref.record.pid}});
        continue;
      }
    }
    if (ref.record.pid != 0) {  // it was running and died while the daemon was down
      ExitInfo exit;
      exit.how = "died while the daemon was down";
      if (auto own = store_.TakeExitFile(id)) exit = *own;
      exit.at_unix = NowUnix();
      Log(LogLevel::kInfo, "VM {}: its VM process {} {}", id, ref.record.pid, exit.how);
      ref.state = VmState::kRunning;  // so that Finish applies its restart policy
      Finish(ref, std::move(exit));
      continue;
    }
    ref.state = ref.record.last_exit ? VmState::kExited : VmState::kStopped;
    if (ref.record.want_running && ref.record.restart != RestartPolicy::kNo) ScheduleRestart(id);
  }
  return {};
}

nlohmann::json Supervisor::Describe(const std::string& id) const {
  const Vm* vm = Get(id);
  if (vm == nullptr) return nullptr;
  const VmRecord& r = vm->record;
  nlohmann::json j = {{"id", r.id},
                      {"state", VmStateName(vm->state)},
                      {"owner", r.owner},
                      {"restart", RestartPolicyName(r.restart)},
                      {"restarts", r.restarts},
                      {"created_unix", r.created_unix}};
  if (r.template_name.empty()) {
    j["spec"] = spec::SpecToJson(r.spec);
    j["mem_mib"] = r.spec.mem_mib;
    j["vcpus"] = r.spec.vcpus;
  } else {
    j["template"] = r.template_name;
    j["overrides"] = spec::OverridesToJson(r.overrides);
  }
  if (r.pid != 0) {
    j["pid"] = r.pid;
    j["rss_kib"] = RssKib(r.pid);
    std::ifstream in(options_.runtime_dir + "/vms/" + id + "/info.json");
    nlohmann::json info = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (info.is_object()) {
      for (const char* key : {"cid", "ip", "mac", "tap", "vcpus", "mem_mib"}) {
        if (info.contains(key)) j[key] = info[key];
      }
    }
    j["control_socket"] = ControlSocket(id);
  }
  if (r.last_exit) j["last_exit"] = ExitToJson(*r.last_exit);
  j["agent_ready"] = vm->agent_ready;
  return j;
}

}  // namespace clonevm::daemon

#include "daemon/daemon.h"

#include <grp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "base/event_loop.h"
#include "base/log.h"
#include "control/server.h"
#include "daemon/api.h"
#include "daemon/events.h"
#include "daemon/supervisor.h"
#include "runtime/vm_dir.h"

namespace clonevm::daemon {
namespace fs = std::filesystem;
namespace {

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

Result<std::string> SelfExe() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return Fail("cannot read /proc/self/exe: {}", ec.message());
  return exe.string();
}

// The socket's directory (created 0700 if missing) and, with a group, its access for that group.
Result<void> PrepareSocket(const std::string& socket, const std::string& group, gid_t* gid) {
  fs::path dir = fs::path(socket).parent_path();
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    fs::create_directories(dir, ec);
    if (ec) return Fail("cannot create {}: {}", dir.string(), ec.message());
    if (::chmod(dir.c_str(), 0700) != 0) return FailErrno("chmod", dir.string());
  }
  if (group.empty()) return {};
  struct group* g = ::getgrnam(group.c_str());
  if (g == nullptr) return Fail("--group {}: no such group", group);
  *gid = g->gr_gid;
  // Searchable by the group (not listable), so its members can reach the socket.
  if (::chown(dir.c_str(), static_cast<uid_t>(-1), *gid) != 0) return FailErrno("chown", dir.string());
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return FailErrno("stat", dir.string());
  if (::chmod(dir.c_str(), (st.st_mode & 07777) | S_IXGRP) != 0) return FailErrno("chmod", dir.string());
  return {};
}

Result<Fd> LockStateDir(const std::string& state_dir) {
  std::error_code ec;
  fs::create_directories(state_dir, ec);
  if (ec) return Fail("cannot create {}: {}", state_dir, ec.message());
  std::string path = state_dir + "/daemon.lock";
  Fd lock(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock) return FailErrno("cannot open", path);
  if (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) return Fail("another clone daemon uses {}", state_dir);
    return FailErrno("flock", path);
  }
  return lock;
}

}  // namespace

std::string DefaultSocketPath() {
  if (std::string env = Env("CLONE_DAEMON_SOCKET"); !env.empty()) return env;
  if (::geteuid() == 0) return "/run/clone/daemon.sock";
  if (std::string xdg = Env("XDG_RUNTIME_DIR"); !xdg.empty()) return xdg + "/clone/daemon.sock";
  return fmt::format("/tmp/clone-{}/daemon.sock", ::geteuid());
}

std::string DefaultStateDir() {
  if (::geteuid() == 0) return "/var/lib/clone";
  if (std::string data = Env("XDG_DATA_HOME"); !data.empty()) return data + "/clone";
  std::string home = Env("HOME");
  return (home.empty() ? std::string("/tmp") : home) + "/.local/share/clone";
}

Result<void> RunDaemon(const DaemonOptions& o) {
  // A daemon's log is its operator's record of adoptions, deaths and restarts: info unless told.
  if (Env("CLONE_LOG").empty()) SetLogLevel(LogLevel::kInfo);
  std::string socket = o.socket.empty() ? DefaultSocketPath() : o.socket;
  std::string state_dir = fs::absolute(o.state_dir.empty() ? DefaultStateDir() : o.state_dir).string();
  Fd state_lock = CLONE_TRY(LockStateDir(state_dir));
  gid_t gid = 0;
  CLONE_TRY_VOID(PrepareSocket(socket, o.group, &gid));

  SupervisorOptions supervisor_options;
  supervisor_options.state_dir = state_dir;
  supervisor_options.runtime_dir = RuntimeDir();
  supervisor_options.vm_command = o.vm_command;
  if (supervisor_options.vm_command.empty()) supervisor_options.vm_command = {CLONE_TRY(SelfExe()), "daemon-vm"};

  // SIGTERM/SIGINT end the loop (VM processes get an empty mask and default dispositions).
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  if (::sigprocmask(SIG_BLOCK, &stop_signals, nullptr) != 0) return FailErrno("sigprocmask");
  Fd signals(::signalfd(-1, &stop_signals, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!signals) return FailErrno("signalfd");

  auto loop = CLONE_TRY(EventLoop::Create());
  EventBus events(*loop);
  Supervisor supervisor(*loop, supervisor_options,
                        [&events](const std::string& type, const VmRecord& record, nlohmann::json extra) {
                          extra["type"] = type;
                          extra["id"] = record.id;
                          events.Publish(std::move(extra), record.owner);
                        });
  Api api(*loop, supervisor, events);
  CLONE_TRY_VOID(supervisor.Recover());
  for (const auto& id : supervisor.Ids()) {
    if (supervisor.state(id) == VmState::kRunning) api.WatchAgent(id);
  }
  control::Limits limits;
  limits.peers = control::PeerPolicy::kAnyPeer;
  limits.max_connections = 512;
  limits.idle_timeout = std::chrono::hours(24);  // `clone events` streams are hijacked; this is for idle keep-alives
  auto server = CLONE_TRY(control::Server::Create(*loop, socket, api.Routes(), limits));
  if (!o.group.empty()) {
    if (::chown(socket.c_str(), static_cast<uid_t>(-1), gid) != 0) return FailErrno("chown", socket);
    if (::chmod(socket.c_str(), 0660) != 0) return FailErrno("chmod", socket);
  }
  CLONE_TRY_VOID(loop->Add(signals.get(), EPOLLIN, [&](uint32_t) {
    signalfd_siginfo info{};
    [[maybe_unused]] ssize_t n = ::read(signals.get(), &info, sizeof(info));
    Log(LogLevel::kInfo, "daemon stopping on signal {}; its VMs keep running", info.ssi_signo);
    loop->Stop();
  }));
  Log(LogLevel::kInfo, "clone daemon serving {} (state {}, {} VM(s) recorded)", socket, state_dir,
      supervisor.Ids().size());
  auto ran = loop->Run();
  loop->Remove(signals.get());
  server.reset();
  return ran;
}

}  // namespace clonevm::daemon

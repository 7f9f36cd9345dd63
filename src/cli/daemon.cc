#include "cli/daemon.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "base/json.h"
#include "base/log.h"
#include "cli/exit_codes.h"
#include "cli/fork.h"
#include "control/client.h"
#include "daemon/daemon.h"
#include "daemon/record.h"
#include "runtime/launch.h"
#include "snapshot/format.h"

namespace clonevm::cli {
namespace fs = std::filesystem;
namespace {

constexpr std::chrono::minutes kBootTimeout{15};  // a boot under TCG in the lab takes minutes

void Print(const std::string& text) { [[maybe_unused]] auto r = WriteAll(STDOUT_FILENO, text.data(), text.size()); }

std::string SocketOf(const DaemonCliOptions& o) { return o.socket.empty() ? daemon::DefaultSocketPath() : o.socket; }

// One call to the daemon; prints the response (JSON with --json, else `text(body)`), returns the
// exit status: 0 for a 2xx, 2 for a 4xx (the request was wrong), 1 otherwise.
int CallDaemon(const DaemonCliOptions& o, std::string_view method, const std::string& path,
               const std::optional<nlohmann::json>& body, const std::function<std::string(const nlohmann::json&)>& text,
               std::chrono::milliseconds timeout = kBootTimeout) {
  auto response = control::Call(SocketOf(o), method, path, body, timeout);
  if (!response) {
    Log(LogLevel::kError, "clone daemon: {} (is 'clone daemon' running?)", response.error().message());
    return kExitError;
  }
  auto json = control::ResponseJson(*response);
  if (!json) {
    Log(LogLevel::kError, "{}", json.error().message());
    return response->status / 100 == 4 ? kExitUsage : kExitError;
  }
  Print(o.json ? json->dump(2) + "\n" : text(*json));
  return kExitOk;
}

std::string IdLine(const nlohmann::json& vm) { return vm.value("id", "") + "\n"; }

std::string Absolute(const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  std::error_code ec;
  auto absolute = fs::absolute(path, ec);
  return ec ? path : absolute.lexically_normal().string();
}

// The daemon's VM processes run elsewhere: every path of the spec made absolute here.
void AbsolutePaths(spec::VmSpec* s) {
  s->kernel = Absolute(s->kernel);
  s->initrd = Absolute(s->initrd);
  s->rootfs.image = Absolute(s->rootfs.image);
  s->rootfs.modules = Absolute(s->rootfs.modules);
  if (s->rootfs.overlay != "tmpfs" && s->rootfs.overlay != "auto") s->rootfs.overlay = Absolute(s->rootfs.overlay);
  for (auto& disk : s->disks) disk.path = Absolute(disk.path);
  for (auto& share : s->shares) share.host_path = Absolute(share.host_path);
}

int CreateCommand(const DaemonCliOptions& o) {
  auto s = SpecFromRunOptions(o.run);
  if (!s) {
    Log(LogLevel::kError, "{}", s.error().message());
    return kExitUsage;
  }
  AbsolutePaths(&*s);
  nlohmann::json body = spec::SpecToJson(*s);
  body["start"] = !o.no_start;
  body["restart"] = o.restart;
  return CallDaemon(o, "POST", "/vms", body, IdLine);
}

// The event stream: the response head, then JSON lines copied to stdout until the daemon closes.
int EventsCommand(const DaemonCliOptions& o) {
  std::string path = SocketOf(o);
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (!fd || path.size() >= sizeof(addr.sun_path)) {
    Log(LogLevel::kError, "clone daemon: cannot use socket {}", path);
    return kExitError;
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    Log(LogLevel::kError, "clone daemon: connect {}: {} (is 'clone daemon' running?)", path, std::strerror(errno));
    return kExitError;
  }
  std::string target = o.since_given ? fmt::format("/events?since={}", o.since) : "/events";
  std::string request = fmt::format("GET {} HTTP/1.1\r\nHost: localhost\r\n\r\n", target);
  if (auto sent = WriteAll(fd.get(), request.data(), request.size()); !sent) {
    Log(LogLevel::kError, "clone daemon: {}", sent.error().message());
    return kExitError;
  }
  std::string head;
  char buf[4096];
  bool streaming = false;
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (streaming) {
      Print(std::string(buf, static_cast<size_t>(n)));
      continue;
    }
    head.append(buf, static_cast<size_t>(n));
    size_t end = head.find("\r\n\r\n");
    if (end == std::string::npos) continue;
    if (!head.starts_with("HTTP/1.1 200")) {
      Log(LogLevel::kError, "clone daemon: {}", head.substr(end + 4));
      return kExitError;
    }
    streaming = true;
    Print(head.substr(end + 4));
  }
  return kExitOk;
}

// `clone daemon-vm`: the VM process the daemon spawned for record `id` (daemon/supervisor.h): fd
// 3 is the ready pipe; how the VM ended goes to exit.json for a daemon that adopts it later.
int DaemonVmCommand(const DaemonCliOptions& o, BootTimer& timer) {
  daemon::RecordStore store(o.state_dir);
  auto text = ReadFile(store.VmDir(o.id) + "/vm.json");
  auto json = text ? ParseJsonObject(*text, "vm.json") : Result<nlohmann::json>(tl::unexpected(text.error()));
  auto record = json ? daemon::RecordFromJson(*json) : Result<daemon::VmRecord>(tl::unexpected(json.error()));
  if (!record) {
    Log(LogLevel::kError, "VM record {}: {}", o.id, record.error().message());
    return kExitError;
  }
  Fd ready;
  if (::fcntl(3, F_GETFD) >= 0) {
    ready = Fd(::fcntl(3, F_DUPFD_CLOEXEC, 10));
    ::close(3);
  }
  int status = kExitError;
  std::string how;
  if (record->template_name.empty()) {
    Launch launch;
    launch.kind = LaunchKind::kBoot;
    launch.spec = record->spec;
    launch.spec.name = record->id;
    if (launch.spec.rootfs.overlay == "auto") launch.spec.rootfs.overlay = store.AutoOverlay(record->id);
    launch.detached = true;
    launch.set_hostname = true;
    launch.vmm_log = store.VmmLog(record->id);
    auto result = RunVmProcess(launch, std::move(ready), timer);
    status = ExitStatusOf(result);
    how = result ? result->detail : result.error().message();
  } else {
    auto loaded = snapshot::Read(store.TemplatesDir(), record->template_name);
    if (!loaded) {
      how = fmt::format("template {}: {}", record->template_name, loaded.error().message());
      Log(LogLevel::kError, "{}", how);
    } else {
      spec::ForkOverrides overrides = record->overrides;
      overrides.name = record->id;
      status = RunFromSnapshot(*loaded, overrides, spec::SnapshotUse::kFork, true, true,
                               std::chrono::steady_clock::now(), std::move(ready), timer, store.VmmLog(record->id));
      how = status == kExitOk ? "powered off" : fmt::format("exit status {}", status);
    }
  }
  nlohmann::json exit = {{"status", status}, {"how", how}};
  std::string out = exit.dump() + "\n";
  std::string path = store.ExitFile(record->id);
  Fd file(::open((path + ".tmp").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (file && WriteAll(file.get(), out.data(), out.size())) ::rename((path + ".tmp").c_str(), path.c_str());
  return status;
}

void AddClientFlags(CLI::App* command, DaemonCliOptions& o) {
  command->add_option("--socket", o.socket,
                      "The daemon's socket (default: $CLONE_DAEMON_SOCKET, /run/clone/daemon.sock "
                      "for root, $XDG_RUNTIME_DIR/clone/daemon.sock)");
  command->add_flag("--json", o.json, "Print the API's JSON answer");
}

}  // namespace

void AddDaemonCommands(CLI::App& app, DaemonCliOptions& o) {
  auto* d = app.add_subcommand("daemon", "Serve the REST API that creates, forks and supervises many VMs");
  d->footer(
      "Examples:\n"
      "  clone daemon &                                   # as a user: $XDG_RUNTIME_DIR/clone/daemon.sock\n"
      "  sudo clone daemon --group clone                  # /run/clone/daemon.sock, 0660 for group clone\n"
      "  curl --unix-socket $XDG_RUNTIME_DIR/clone/daemon.sock http://localhost/vms\n"
      "Each VM is a VM process of its own; they keep running when the daemon stops and are adopted\n"
      "when it starts again. See docs/daemon.md.");
  d->add_option("--socket", o.socket,
                "The API socket (default /run/clone/daemon.sock for root, else "
                "$XDG_RUNTIME_DIR/clone/daemon.sock)");
  d->add_option("--state-dir", o.state_dir,
                "VM records and templates (default /var/lib/clone for root, else "
                "~/.local/share/clone)");
  d->add_option("--group", o.group, "Make the socket 0660 for this group (default 0600: the daemon's user only)");

  auto* vm = app.add_subcommand("daemon-vm", "");  // internal: a daemon's VM process (hidden)
  vm->group("");
  vm->add_option("--state-dir", o.state_dir)->required();
  vm->add_option("--id", o.id)->required();

  auto* create =
      app.add_subcommand("create", "Create (and start) a VM through the daemon; takes every clone run option");
  create->footer(
      "Example:\n"
      "  clone create --name dev --kernel /boot/vmlinuz --rootfs dev.img --net --restart on-failure\n"
      "Prints the VM id once it runs (or is created, with --no-start).");
  AddSpecFlags(create, o.run);
  create->add_option("--restart", o.restart, "When the daemon starts the VM again: no | on-failure | always")
      ->capture_default_str();
  create->add_flag("--no-start", o.no_start, "Create the VM stopped ('clone start' starts it)");
  AddClientFlags(create, o);

  for (const char* name : {"start", "stop", "destroy"}) {
    const char* what = std::string_view(name) == "start"  ? "Start a stopped VM of the daemon"
                       : std::string_view(name) == "stop" ? "Stop a VM of the daemon (guest power-off, then SIGTERM)"
                                                          : "Stop a VM of the daemon and remove everything of it";
    auto* c = app.add_subcommand(name, what);
    c->add_option("--vm-id", o.vm_id, "The VM's id")->required();
    if (std::string_view(name) == "stop") c->add_flag("--force", o.force, "End the VM process now (SIGTERM)");
    AddClientFlags(c, o);
  }
  auto* events = app.add_subcommand("events", "Follow the daemon's events (JSON lines) until interrupted");
  events->add_option("--since", o.since, "Replay the kept events after this sequence number first (0: all kept)")
      ->each([&o](const std::string&) { o.since_given = true; });
  AddClientFlags(events, o);
}

std::optional<int> RunDaemonCommands(const CLI::App& app, const DaemonCliOptions& o, BootTimer& timer) {
  if (app.got_subcommand("daemon")) {
    daemon::DaemonOptions options{o.socket, o.state_dir, o.group, {}};
    if (auto ran = daemon::RunDaemon(options); !ran) {
      Log(LogLevel::kError, "{}", ran.error().message());
      return kExitError;
    }
    return kExitOk;
  }
  if (app.got_subcommand("daemon-vm")) return DaemonVmCommand(o, timer);
  if (app.got_subcommand("create")) return CreateCommand(o);
  if (app.got_subcommand("start")) return CallDaemon(o, "POST", "/vms/" + o.vm_id + "/start", std::nullopt, IdLine);
  if (app.got_subcommand("stop")) {
    nlohmann::json body = {{"mode", o.force ? "force" : "agent"}};
    return CallDaemon(o, "POST", "/vms/" + o.vm_id + "/stop", body, IdLine);
  }
  if (app.got_subcommand("destroy")) return CallDaemon(o, "DELETE", "/vms/" + o.vm_id, std::nullopt, IdLine);
  if (app.got_subcommand("events")) return EventsCommand(o);
  return std::nullopt;
}

std::optional<int> ForkThroughDaemon(const std::string& template_name, uint32_t count, const std::string& name,
                                     const spec::ForkOverrides& overrides) {
  std::string socket = daemon::DefaultSocketPath();
  if (::access(socket.c_str(), F_OK) != 0) return std::nullopt;
  auto listed = control::Call(socket, "GET", "/templates", std::nullopt, std::chrono::seconds(10));
  auto templates = listed ? control::ResponseJson(*listed) : Result<nlohmann::json>(tl::unexpected(listed.error()));
  if (!templates || !templates->is_array()) return std::nullopt;
  bool known = std::any_of(templates->begin(), templates->end(),
                           [&](const nlohmann::json& t) { return t.value("name", "") == template_name; });
  if (!known) return std::nullopt;
  nlohmann::json body = spec::OverridesToJson(overrides);
  body.erase("version");
  body["count"] = count;
  if (!name.empty()) body["name"] = name;
  DaemonCliOptions o;
  o.socket = socket;
  return CallDaemon(o, "POST", "/templates/" + template_name + "/fork", body, [](const nlohmann::json& reply) {
    std::string out;
    for (const auto& vm : reply.value("vms", nlohmann::json::array())) out += vm.value("id", "") + "\n";
    for (const auto& failed : reply.value("failed", nlohmann::json::array())) {
      Log(LogLevel::kError, "fork {}: {}", failed.value("id", ""), failed.value("error", ""));
    }
    return out;
  });
}

std::optional<nlohmann::json> ListThroughDaemon() {
  std::string socket = daemon::DefaultSocketPath();
  if (::access(socket.c_str(), F_OK) != 0) return std::nullopt;
  auto response = control::Call(socket, "GET", "/vms", std::nullopt, std::chrono::seconds(10));
  if (!response) return std::nullopt;
  auto vms = control::ResponseJson(*response);
  if (!vms || !vms->is_array()) return std::nullopt;
  for (auto& vm : *vms) vm["agent"] = vm.value("agent_ready", false);
  return *vms;
}

}  // namespace clonevm::cli

#include "cli/fork.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include "base/log.h"
#include "cli/exit_codes.h"
#include "cli/run.h"
#include "cli/snapshot.h"
#include "control/client.h"
#include "devices/virtio/virtio_spec.h"
#include "runtime/vm_dir.h"
#include "runtime/vm_service.h"
#include "snapshot/take.h"

namespace clonevm::cli {
namespace {

constexpr uint32_t kMaxForkCount = 4096;

size_t NetDeviceCount(const snapshot::SnapshotConfig& config) {
  size_t n = 0;
  for (uint32_t type : config.virtio_types) n += type == virtio::kDeviceTypeNet ? 1 : 0;
  return n;
}

// The id of fork `index` (0-based) of `count`.
std::string ForkId(const std::string& name, uint32_t index, uint32_t count) {
  if (name.empty()) return "";
  return count == 1 ? name : fmt::format("{}-{}", name, index + 1);
}

Result<void> Validate(const ForkOptions& o) {
  if (o.template_name.empty() && o.vm_id.empty()) return Fail("clone fork: --template NAME or --vm-id ID is required");
  if (o.count == 0 || o.count > kMaxForkCount) return Fail("--count: 1 to {}", kMaxForkCount);
  if (!o.template_name.empty()) CLONE_TRY_VOID(snapshot::ValidateName(o.template_name));
  if (!o.name.empty()) {
    std::string longest = ForkId(o.name, o.count - 1, o.count);
    if (!IsValidVmId(longest)) {
      return Fail("--name '{}': the VM id '{}' is not 1 to 32 characters a-z, 0-9 and '-' (not starting with '-')",
                  o.name, longest);
    }
  }
  if (o.count > 1 && !o.taps.empty()) {
    return Fail("--tap gives every fork the same TAP: with --count, use --net (a TAP per fork)");
  }
  if (o.count > 1 && o.cid != 0) return Fail("--cid: with --count, every fork gets the first free CID");
  for (const auto& tap : o.taps) CLONE_TRY(ParseTapSpec(tap));
  return {};
}

// --vm-id: snapshots the running VM (which resumes) as `name` in `dir`.
Result<void> SnapshotRunningVm(const std::string& vm_id, const std::string& dir, const std::string& name) {
  auto vm = CLONE_TRY(FindVm(vm_id));
  nlohmann::json body = {{"name", name}, {"dir", dir}, {"resume", true}};
  auto response = CLONE_TRY(control::Call(vm.control_socket(), "PUT", "/vm/snapshot", body, kSnapshotCallTimeout));
  auto result = control::ResponseJson(response);
  if (!result) return Fail(result.error().Wrap(fmt::format("snapshot of {}", vm.id)));
  return {};
}

}  // namespace

int RunSnapshotVm(const SnapshotVmSpec& spec, Fd ready, BootTimer& timer) {
  snapshot::Loaded& loaded = *spec.loaded;
  // Disks: --block rewrites and every base the disks need checked before anything is created.
  auto rewrites = snapshot::ParsePathRewrites(spec.blocks);
  if (!rewrites) {
    Log(LogLevel::kError, "{}", rewrites.error().message());
    return kExitUsage;
  }
  if (auto disks = snapshot::CheckDisks(loaded.config, loaded.path, *rewrites); !disks) {
    Log(LogLevel::kError, "{}: {}", loaded.path, disks.error().message());
    return kExitError;
  }
  // Shared directories: the recorded ones, or --shared-dir's new directory for a recorded tag.
  auto shared_dirs = ResolveSharedDirs(snapshot::RecordedSharedDirs(loaded.config), spec.shared_dirs);
  if (!shared_dirs) {
    Log(LogLevel::kError, "{}: {}", loaded.path, shared_dirs.error().message());
    return kExitUsage;
  }
  std::string id = spec.id.empty() ? NewVmId() : spec.id;
  nlohmann::json info = loaded.config.info;
  info["snapshot"] = loaded.path;
  info["mem_mib"] = loaded.config.mem_bytes >> 20;
  if (spec.fork) info["forked_from"] = loaded.path;
  ServiceOptions service_options{id, spec.detach, info, std::nullopt};
  service_options.fresh_machine_id = spec.fork;
  service_options.set_hostname = spec.set_hostname;
  service_options.from_snapshot = true;
  service_options.launched = spec.launched;

  // Network first (its address goes into the service's identity), then the VM directory; every
  // step undoes itself on failure (VmNetwork: lease + TAP; VmService: the directory).
  size_t wanted_nets = NetDeviceCount(loaded.config);
  std::vector<NetConfig> nets;
  std::optional<net::VmNetwork> network;
  if (spec.net) {
    auto made = AttachAutoNetwork(id, &nets, &service_options);
    if (!made) {
      Log(LogLevel::kError, "--net: {}", made.error().message());
      return kExitError;
    }
    network.emplace(std::move(*made));
  }
  if (auto taps = AddTaps(spec.taps, &nets); !taps) {
    Log(LogLevel::kError, "{}", taps.error().message());
    return kExitError;
  }
  if (nets.size() != wanted_nets) {
    Log(LogLevel::kError,
        "{}: the snapshot has {} network device(s) and {} were given: use --net or one --tap per device", loaded.path,
        wanted_nets, nets.size());
    return kExitUsage;
  }
  auto service = VmService::Create(std::move(service_options));
  if (!service) {
    Log(LogLevel::kError, "{}", service.error().message());
    return kExitError;
  }
  // Writable disks get qcow2 overlays in the VM's runtime directory (removed with the VM).
  auto config = snapshot::RestoreVmConfig(loaded.config, loaded.path,
                                          snapshot::DiskPlan{(*service)->dir().path(), std::move(*rewrites)});
  if (!config) {
    Log(LogLevel::kError, "{}", config.error().message());
    return kExitError;
  }
  if (spec.cid && config->vsock) config->vsock->cid = *spec.cid;
  config->shared_dirs = std::move(*shared_dirs);
  config->nets = std::move(nets);
  config->console_in = STDIN_FILENO;
  config->console_out = STDOUT_FILENO;
  auto recorded = loaded.config.info.find("seccomp");  // the snapshot's VM ran with --seccomp
  bool seccomp = spec.seccomp || (recorded != loaded.config.info.end() && *recorded == true);
  config->seccomp = seccomp ? sandbox::SeccompMode::kOn : sandbox::SeccompMode::kOff;
  (*service)->ConnectConsole(*config);
  auto vm = Vm::Restore(std::move(*config), loaded.state, loaded.memory, &timer);
  if (!vm) {
    Log(LogLevel::kError, "{} from {}: {}", spec.fork ? "forking" : "restoring", loaded.path, vm.error().message());
    return kExitError;
  }
  loaded.memory.reset();  // the mappings keep the file
  return ServeAndRun(std::move(*service), std::move(*vm), ready);
}

void AddForkCommand(CLI::App& app, ForkOptions& o) {
  auto* fork = app.add_subcommand("fork", "Start new VMs from a template, each with its own identity");
  fork->footer(
      "Examples:\n"
      "  clone fork --template warm -d                # one fork in the background; prints its id\n"
      "  clone fork --template warm --count 20 --net  # 20 forks, each with a TAP and address\n"
      "  clone fork --vm-id vm-1a2b3c -d              # fork a running VM; it keeps running\n"
      "Forks share the template's memory copy-on-write. Each gets a new VM id (its hostname), vsock\n"
      "CID, machine-id, entropy, MAC/IP when networked, and the current time. Templates come from\n"
      "'clone snapshot'; they live in $CLONE_TEMPLATES_DIR or ~/.clone/templates.");
  fork->add_option("--template", o.template_name,
                   "The template (snapshot) to fork; with --vm-id: save it under this name");
  fork->add_option("--vm-id", o.vm_id, "Fork this running VM (snapshotted first; it resumes)");
  fork->add_option("--count", o.count, "How many forks (implies --detach when above 1)")->capture_default_str();
  fork->add_option("--name", o.name, "The fork's VM id (with --count K: NAME-1 .. NAME-K; default random)");
  fork->add_flag("-d,--detach", o.detach, "Run in the background: print the VM id(s) once running and return");
  fork->add_flag("--net", o.net,
                 "Automatic networking for each fork (a TAP on clonebr0 and an address; see clone run --net)");
  fork->add_option("--tap", o.taps, "A TAP for each of the template's network devices, in order (--count 1 only)");
  fork->add_option("--cid", o.cid, "The fork's vsock CID (default: the first free one)");
  fork->add_option("--shared-dir", o.shared_dirs,
                   "HOST:TAG[:ro]: serve the template's shared directory TAG from HOST instead of the recorded "
                   "directory (repeatable; e.g. --shared-dir /tmp/shared:myfs)");
  fork->add_option("--block", o.blocks, "FROM=TO: open the template's disk FROM (or disks under directory FROM) at TO");
  fork->add_option("--dir", o.dir, "Templates directory (default $CLONE_TEMPLATES_DIR or ~/.clone/templates)");
  fork->add_flag("--seccomp", o.seccomp,
                 "Confine each fork's VM process with seccomp (see clone run --seccomp); implied when the template's "
                 "VM ran with it");
}

int ForkCommand(const ForkOptions& o, BootTimer& timer) {
  auto launched = std::chrono::steady_clock::now();
  if (auto valid = Validate(o); !valid) {
    Log(LogLevel::kError, "{}", valid.error().message());
    return kExitUsage;
  }
  std::string dir = TemplatesDir(o.dir);
  std::string template_name = o.template_name;
  bool temporary = false;
  if (!o.vm_id.empty()) {
    if (template_name.empty()) {
      template_name = fmt::format("fork-of-{}-{}", o.vm_id, ::getpid());
      temporary = true;
    }
    if (auto taken = SnapshotRunningVm(o.vm_id, dir, template_name); !taken) {
      Log(LogLevel::kError, "{}", taken.error().message());
      return kExitError;
    }
    timer.Mark("source snapshotted");
  }
  struct RemoveTemporary {
    std::string dir, name;
    bool active;
    ~RemoveTemporary() {
      if (!active) return;
      if (auto removed = snapshot::Remove(dir, name); !removed) {
        Log(LogLevel::kWarn, "removing the temporary template: {}", removed.error().message());
      }
    }
  } remove_temporary{dir, template_name, temporary};

  auto loaded = snapshot::Read(dir, template_name);
  if (!loaded) {
    Log(LogLevel::kError, "{}", loaded.error().message());
    return kExitError;
  }
  timer.Mark("template read");
  size_t nets = (o.net ? 1 : 0) + o.taps.size();
  if (nets != NetDeviceCount(loaded->config)) {
    Log(LogLevel::kError, "template '{}' has {} network device(s) and {} were given: use --net or one --tap per device",
        template_name, NetDeviceCount(loaded->config), nets);
    return kExitUsage;
  }
  SnapshotVmSpec spec;
  spec.loaded = &*loaded;
  spec.fork = true;
  spec.set_hostname = true;
  spec.cid = o.cid;  // 0: the first free CID, never the template's
  spec.net = o.net;
  spec.taps = o.taps;
  spec.blocks = o.blocks;
  spec.seccomp = o.seccomp;
  spec.shared_dirs = o.shared_dirs;
  spec.launched = launched;
  bool detach = o.detach || o.count > 1;
  spec.detach = detach;
  if (!detach) {
    // This process becomes the fork; a temporary template goes when it ends.
    spec.id = o.name;
    return RunSnapshotVm(spec, Fd(), timer);
  }

  // Start every fork, then collect them: the forks restore in parallel.
  std::vector<Fd> pipes;
  std::vector<pid_t> pids;
  for (uint32_t i = 0; i < o.count; ++i) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) {
      Log(LogLevel::kError, "pipe: {}", std::strerror(errno));
      break;
    }
    pid_t pid = ::fork();
    if (pid < 0) {
      Log(LogLevel::kError, "fork: {}", std::strerror(errno));
      ::close(p[0]);
      ::close(p[1]);
      break;
    }
    if (pid == 0) {
      ::close(p[0]);
      pipes.clear();  // the other forks' ready pipes are the parent's business
      remove_temporary.active = false;
      ::setsid();
      spec.id = ForkId(o.name, i, o.count);
      return RunSnapshotVm(spec, Fd(p[1]), timer);
    }
    ::close(p[1]);
    pipes.emplace_back(p[0]);
    pids.push_back(pid);
  }
  uint32_t started = 0;
  std::string ids;
  for (size_t i = 0; i < pipes.size(); ++i) {
    if (auto id = AwaitReady(pipes[i])) {
      ids += *id;
      ++started;
    } else {
      int status = 0;
      while (::waitpid(pids[i], &status, 0) < 0 && errno == EINTR) {
      }
    }
  }
  [[maybe_unused]] auto w = WriteAll(STDOUT_FILENO, ids.data(), ids.size());
  if (started != o.count) {
    Log(LogLevel::kError, "{} of {} forks started", started, o.count);
    return kExitError;
  }
  return kExitOk;
}

}  // namespace clonevm::cli

#include "cli/fork.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include "base/log.h"
#include "cli/daemon.h"
#include "cli/exit_codes.h"
#include "cli/run.h"
#include "cli/snapshot.h"
#include "control/client.h"
#include "runtime/launch.h"
#include "runtime/vm_dir.h"
#include "runtime/vm_service.h"
#include "snapshot/take.h"

namespace clonevm::cli {
namespace {

constexpr uint32_t kMaxForkCount = 4096;

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

Result<spec::ForkOverrides> ParseOverrideFlags(const OverrideFlags& f) {
  spec::ForkOverrides o;
  o.net = f.net;
  for (const auto& value : f.taps) o.taps.push_back(CLONE_TRY(spec::ParseTapSpec(value)));
  for (const auto& value : f.shared_dirs) o.shares.push_back(CLONE_TRY(spec::ParseShareSpec(value)));
  for (const auto& value : f.blocks) CLONE_TRY_VOID(spec::AddDiskOverride(value, &o));
  if (f.cid != 0) o.cid = f.cid;
  o.seccomp = f.seccomp;
  return o;
}

int RunFromSnapshot(snapshot::Loaded& loaded, const spec::ForkOverrides& overrides, spec::SnapshotUse use,
                    bool detached, bool set_hostname, std::chrono::steady_clock::time_point launched, Fd ready,
                    BootTimer& timer, const std::string& vmm_log) {
  auto recorded = spec::RecordedSpec(loaded.config);
  if (!recorded) {
    Log(LogLevel::kError, "{}: {}", loaded.path, recorded.error().message());
    return kExitError;
  }
  auto vm_spec = spec::ApplyOverrides(*recorded, overrides, use);
  if (!vm_spec) {
    Log(LogLevel::kError, "{}: {}", loaded.path, vm_spec.error().message());
    return kExitUsage;
  }
  if (auto nets = CheckNetworks(loaded.config, *vm_spec); !nets) {
    Log(LogLevel::kError, "{}: {}", loaded.path, nets.error().message());
    return kExitUsage;
  }
  Launch launch;
  launch.kind = use == spec::SnapshotUse::kFork ? LaunchKind::kFork : LaunchKind::kRestore;
  launch.spec = std::move(*vm_spec);
  launch.loaded = &loaded;
  launch.disk_rewrites = overrides.disk_rewrites;
  launch.detached = detached;
  launch.set_hostname = set_hostname;
  launch.launched = launched;
  launch.vmm_log = vmm_log;
  return ExitStatusOf(RunVmProcess(launch, std::move(ready), timer));
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
  fork->add_option("--vm-id", o.vm_id, "Fork this running VM, by id or PID (snapshotted first; it resumes)");
  fork->add_option("--count", o.count, "How many forks (implies --detach when above 1)")->capture_default_str();
  fork->add_option("--name", o.name, "The fork's VM id (with --count K: NAME-1 .. NAME-K; default random)");
  fork->add_flag("-d,--detach", o.detach, "Run in the background: print the VM id(s) once running and return");
  fork->add_flag("--net", o.net,
                 "Automatic networking for each fork (a TAP on clonebr0 and an address; see clone run --net)");
  fork->add_option("--tap", o.taps, "A TAP for each of the template's network devices, in order (--count 1 only)");
  fork->add_option("--cid", o.cid, "The fork's vsock CID (default: the first free one)");
  fork->add_option(
      "--shared-dir", o.shared_dirs,
      "HOST:TAG[:ro][:squash-root]: serve the template's shared directory TAG from HOST instead of the recorded "
      "directory (repeatable; e.g. --shared-dir /tmp/shared:myfs). Required for every writable share "
      "of the template: a fork never writes its template's directory (HOST:TAG:ro serves it read-only)");
  fork->add_option("--block", o.blocks,
                   "FROM=TO: open the template's disk FROM (or disks under directory FROM) at TO (a fork cannot get "
                   "a disk its template did not have)");
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
  auto overrides = ParseOverrideFlags({o.net, o.taps, o.shared_dirs, o.blocks, o.cid, o.seccomp});
  if (!overrides) {
    Log(LogLevel::kError, "{}", overrides.error().message());
    return kExitUsage;
  }
  // A template of the daemon's, forked in the background: the daemon starts and supervises the forks.
  if (o.vm_id.empty() && o.dir.empty() && (o.detach || o.count > 1)) {
    if (auto status = ForkThroughDaemon(o.template_name, o.count, o.name, *overrides)) return *status;
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
  // Every fork's spec follows the same rules: check them once, before any fork starts.
  auto recorded = spec::RecordedSpec(loaded->config);
  if (!recorded) {
    Log(LogLevel::kError, "template '{}': {}", template_name, recorded.error().message());
    return kExitError;
  }
  spec::ForkOverrides first = *overrides;
  first.name = ForkId(o.name, 0, o.count);
  auto fork_spec = spec::ApplyOverrides(*recorded, first, spec::SnapshotUse::kFork);
  if (!fork_spec) {
    Log(LogLevel::kError, "template '{}': {}", template_name, fork_spec.error().message());
    return kExitUsage;
  }
  if (auto nets = CheckNetworks(loaded->config, *fork_spec); !nets) {
    Log(LogLevel::kError, "template '{}': {}", template_name, nets.error().message());
    return kExitUsage;
  }
  bool detach = o.detach || o.count > 1;
  if (!detach) {
    // This process becomes the fork; a temporary template goes when it ends.
    return RunFromSnapshot(*loaded, first, spec::SnapshotUse::kFork, false, true, launched, Fd(), timer);
  }

  // Start every fork, then collect them: the forks restore in parallel.
  std::vector<Fd> pipes;
  std::vector<pid_t> pids;
  for (uint32_t i = 0; i < o.count; ++i) {
    auto pipe = Pipe();
    if (!pipe) {
      Log(LogLevel::kError, "{}", pipe.error().message());
      break;
    }
    pid_t pid = ::fork();
    if (pid < 0) {
      Log(LogLevel::kError, "fork: {}", std::strerror(errno));
      break;
    }
    if (pid == 0) {
      pipe->read.reset();
      pipes.clear();  // the other forks' ready pipes are the parent's business
      remove_temporary.active = false;
      ::setsid();
      spec::ForkOverrides mine = *overrides;
      mine.name = ForkId(o.name, i, o.count);
      return RunFromSnapshot(*loaded, mine, spec::SnapshotUse::kFork, true, true, launched, std::move(pipe->write),
                             timer);
    }
    pipe->write.reset();
    pipes.push_back(std::move(pipe->read));
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

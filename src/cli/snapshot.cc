#include "cli/snapshot.h"

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <optional>

#include "base/fd.h"
#include "base/log.h"
#include "base/terminal.h"
#include "cli/exit_codes.h"
#include "cli/fork.h"
#include "cli/run.h"
#include "control/client.h"
#include "runtime/vm_dir.h"
#include "runtime/vm_service.h"
#include "snapshot/format.h"
#include "snapshot/take.h"

namespace clonevm::cli {

std::string TemplatesDir(const std::string& dir) {
  std::string d = dir.empty() ? snapshot::DefaultTemplatesDir() : dir;
  std::error_code ec;
  auto absolute = std::filesystem::absolute(d, ec);
  return ec ? d : absolute.lexically_normal().string();
}

namespace {

std::string Mib(uint64_t bytes) { return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1 << 20)); }

int Take(const SnapshotOptions& o) {
  if (o.name.empty()) {
    Log(LogLevel::kError, "clone snapshot: --name is required (or use 'clone snapshot list' / 'rm')");
    return kExitUsage;
  }
  if (auto valid = snapshot::ValidateName(o.name); !valid) {
    Log(LogLevel::kError, "{}", valid.error().message());
    return kExitUsage;
  }
  auto vm = FindVm(o.vm_id);
  if (!vm) {
    Log(LogLevel::kError, "{}", vm.error().message());
    return kExitError;
  }
  nlohmann::json body = {{"name", o.name}, {"dir", TemplatesDir(o.dir)}, {"resume", !o.no_resume}};
  if (!o.parent.empty()) body["parent"] = o.parent;
  auto response = control::Call(vm->control_socket(), "PUT", "/vm/snapshot", body, kSnapshotCallTimeout);
  auto result = response ? control::ResponseJson(*response) : Result<nlohmann::json>(Fail(response.error()));
  if (!result) {
    Log(LogLevel::kError, "{}: {}", vm->id, result.error().message());
    return kExitError;
  }
  std::string line =
      fmt::format("{} ({} of RAM, {} written{}, vCPUs paused {:.0f} ms)\n", result->value("path", ""),
                  Mib(result->value("memory_bytes", uint64_t{0})), Mib(result->value("data_bytes", uint64_t{0})),
                  o.parent.empty() ? "" : ", incremental over " + o.parent, result->value("paused_ms", 0.0));
  [[maybe_unused]] auto w = WriteAll(STDOUT_FILENO, line.data(), line.size());
  return kExitOk;
}

int List(const SnapshotOptions& o) {
  std::string dir = TemplatesDir(o.dir);
  std::string out =
      fmt::format("{:<24} {:>9} {:>6} {:>12} {:<12} {}\n", "NAME", "MEMORY", "VCPUS", "ON DISK", "SOURCE", "CREATED");
  for (const auto& e : snapshot::List(dir)) {
    if (!e.config) {
      out += fmt::format("{:<24} (unreadable config)\n", e.name);
      continue;
    }
    char created[32] = "?";
    time_t t = static_cast<time_t>(e.config->created_unix);
    tm tm_utc{};
    if (::gmtime_r(&t, &tm_utc) != nullptr) ::strftime(created, sizeof(created), "%Y-%m-%d %H:%M:%SZ", &tm_utc);
    std::string parent = e.config->parent ? "  (incremental over " + e.config->parent->name + ")" : "";
    out += fmt::format("{:<24} {:>9} {:>6} {:>12} {:<12} {}{}\n", e.name, Mib(e.config->mem_bytes), e.config->vcpus,
                       Mib(e.disk_bytes), e.config->source_vm, created, parent);
  }
  [[maybe_unused]] auto w = WriteAll(STDOUT_FILENO, out.data(), out.size());
  return kExitOk;
}

int Merge(const SnapshotOptions& o) {
  auto start = std::chrono::steady_clock::now();
  auto merged = snapshot::Merge(TemplatesDir(o.dir), o.merge_name);
  if (!merged) {
    Log(LogLevel::kError, "{}", merged.error().message());
    return kExitError;
  }
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::string line = fmt::format("{} (now a full snapshot: {} of RAM, {} written, {:.0f} ms)\n", merged->path,
                                 Mib(merged->memory_bytes), Mib(merged->data_bytes), ms);
  [[maybe_unused]] auto w = WriteAll(STDOUT_FILENO, line.data(), line.size());
  return kExitOk;
}

int Remove(const SnapshotOptions& o) {
  if (auto removed = snapshot::Remove(TemplatesDir(o.dir), o.rm_name); !removed) {
    Log(LogLevel::kError, "{}", removed.error().message());
    return kExitError;
  }
  return kExitOk;
}

}  // namespace

void AddSnapshotCommands(CLI::App& app, SnapshotOptions& s, RestoreOptions& r) {
  auto* snap = app.add_subcommand("snapshot", "Save a running VM (memory, CPU and device state) as a template");
  snap->footer(
      "Examples:\n"
      "  clone snapshot --name warm-shell             # the only running VM, resumed afterwards\n"
      "  clone snapshot --name t1 --vm-id vm-1a2b3c --no-resume\n"
      "  clone snapshot --name t2 --parent t1           # incremental: only what changed since t1\n"
      "  clone snapshot merge t2                        # t2 becomes a full snapshot\n"
      "  clone snapshot list\n"
      "  clone snapshot rm t1\n"
      "Snapshots live in $CLONE_TEMPLATES_DIR or ~/.clone/templates; start one with 'clone restore'.");
  snap->add_option("--name", s.name, "The snapshot's name (A-Z a-z 0-9 . _ -)");
  snap->add_option("--vm-id", s.vm_id, "The VM to snapshot (default: the only running VM)");
  snap->add_option("--dir", s.dir, "Templates directory (default $CLONE_TEMPLATES_DIR or ~/.clone/templates)");
  snap->add_flag("--no-resume", s.no_resume, "Leave the VM paused afterwards");
  snap->add_option("--parent", s.parent,
                   "Incremental: write only the pages changed since snapshot P, the VM's last snapshot");
  s.list = snap->add_subcommand("list", "List snapshots");
  s.list->add_option("--dir", s.dir, "Templates directory");
  s.rm = snap->add_subcommand("rm", "Remove a snapshot");
  s.rm->add_option("name", s.rm_name, "The snapshot to remove")->required();
  s.rm->add_option("--dir", s.dir, "Templates directory");
  s.merge = snap->add_subcommand("merge", "Rewrite an incremental snapshot as a full one (atomically)");
  s.merge->add_option("name", s.merge_name, "The incremental snapshot")->required();
  s.merge->add_option("--dir", s.dir, "Templates directory");

  auto* restore = app.add_subcommand("restore", "Start a new VM from a snapshot; the guest continues where it was");
  restore->footer(
      "Examples:\n"
      "  clone restore --snapshot warm-shell -d      # in the background; prints the VM id\n"
      "  clone restore --snapshot t1 --name t1-copy\n"
      "The snapshot's VM must not be running with the same vsock CID. A damaged snapshot is refused\n"
      "before any VM starts.");
  restore->add_option("--snapshot", r.snapshot, "The snapshot's name")->required();
  restore->add_option("--name", r.name, "The new VM's id (default: a random vm-xxxxxx)");
  restore->add_option("--dir", r.dir, "Templates directory (default $CLONE_TEMPLATES_DIR or ~/.clone/templates)");
  restore->add_flag("-d,--detach", r.detach, "Run in the background: print the VM id once it runs and return");
  restore->add_option("--cid", r.cid, "The guest's vsock CID (default: the snapshot's)");
  restore->add_flag("--net", r.net, "Give the snapshot's network device a TAP on Clone's bridge (see clone run --net)");
  restore->add_option("--tap", r.taps,
                      "A TAP for each of the snapshot's network devices, in order (see clone run --tap)");
  restore->add_option(
      "--shared-dir", r.shared_dirs,
      "HOST:TAG[:ro][:squash-root]: serve the snapshot's shared directory TAG from HOST instead of the recorded "
      "directory (repeatable)");
  restore->add_option("--block", r.blocks,
                      "FROM=TO: open the snapshot's disk FROM (or disks under directory FROM) at TO");
  restore->add_flag(
      "--seccomp", r.seccomp,
      "Confine the VM process with seccomp (see clone run --seccomp); implied when the snapshot's VM ran with it");
}

int SnapshotCommand(const SnapshotOptions& options) {
  if (options.list->parsed()) return List(options);
  if (options.rm->parsed()) return Remove(options);
  if (options.merge->parsed()) return Merge(options);
  return Take(options);
}

int RestoreCommand(const RestoreOptions& o, BootTimer& timer) {
  auto launched = std::chrono::steady_clock::now();
  if (!o.name.empty() && !IsValidVmId(o.name)) {
    Log(LogLevel::kError, "--name '{}': use up to 32 characters a-z, 0-9 and '-', not starting with '-'", o.name);
    return kExitUsage;
  }
  auto loaded = snapshot::Read(TemplatesDir(o.dir), o.snapshot);
  if (!loaded) {
    Log(LogLevel::kError, "{}", loaded.error().message());
    return kExitError;
  }
  timer.Mark("snapshot read");
  // A restore continues the same guest: it keeps its machine-id and vsock CID (unless --cid) and
  // takes the VM id as hostname only when the user chose one, like `clone run --name`.
  auto overrides = ParseOverrideFlags({o.net, o.taps, o.shared_dirs, o.blocks, o.cid, o.seccomp});
  if (!overrides) {
    Log(LogLevel::kError, "{}", overrides.error().message());
    return kExitUsage;
  }
  overrides->name = o.name;
  Fd ready;
  if (o.detach) {
    if (auto parent_status = ForkDetached(&ready)) return *parent_status;
  }
  return RunFromSnapshot(*loaded, *overrides, spec::SnapshotUse::kRestore, o.detach, !o.name.empty(), launched,
                         std::move(ready), timer);
}

}  // namespace clonevm::cli

#include "snapshot/take.h"

#include <sys/random.h>

#include <chrono>
#include <climits>
#include <ctime>
#include <filesystem>

#include "base/json.h"
#include "base/log.h"
#include "block/image.h"
#include "devices/virtio/virtio_spec.h"
#include "snapshot/disks.h"

namespace clonevm::snapshot {
namespace {

// The devices Take() can record, or an error naming the first it cannot.
Result<void> CheckSnapshottable(const Vm& vm) {
  for (uint32_t type : vm.virtio_device_types()) {
    // virtio-net: the device state is saved; a TAP cannot be reopened from a snapshot, so whoever
    // restores gives every net device a TAP of its own (fork/restore --net or --tap).
    if (type == virtio::kDeviceTypeNet) continue;
    // Disks: read-only ones referenced, writable ones frozen into the snapshot (disks.h).
    if (type == virtio::kDeviceTypeBlock) continue;
    // Shared directories: recorded by host path; the server's inode/handle tables are device state.
    if (type == virtio::kDeviceTypeFs) continue;
    // The balloon: its options in the config, its inflated pages in its device state.
    if (type == virtio::kDeviceTypeBalloon) continue;
    if (type != virtio::kDeviceTypeEntropy && type != virtio::kDeviceTypeVsock && type != virtio::kDeviceTypeNet) {
      return Fail("virtio device type {} cannot be snapshotted", type);
    }
  }
  return {};
}

SnapshotConfig ConfigOf(const Vm& vm, const TakeOptions& options) {
  SnapshotConfig config;
  config.mem_bytes = vm.memory().ram_bytes();
  config.vcpus = vm.vcpu_count();
  config.virtio_types = vm.virtio_device_types();
  for (uint32_t type : config.virtio_types) {
    if (type == virtio::kDeviceTypeEntropy) config.rng = true;
    if (type == virtio::kDeviceTypeVsock) config.vsock_cid = vm.vsock_cid();
  }
  if (auto balloon = vm.balloon_options()) {
    config.balloon = SnapshotBalloon{balloon->free_page_reporting, balloon->deflate_on_oom, balloon->stats_interval_s};
  }
  for (const auto& dir : vm.shared_dirs())
    config.shared_dirs.push_back({dir.tag, dir.host_path, dir.read_only, dir.squash_root});
  config.source_vm = options.source_vm;
  config.created_unix = static_cast<int64_t>(::time(nullptr));
  config.info = options.info.is_object() ? options.info : nlohmann::json::object();
  if (auto cmdline = config.info.find("cmdline"); cmdline != config.info.end() && cmdline->is_string()) {
    config.cmdline = cmdline->get<std::string>();
  }
  return config;
}

// 128 random bits in hex: a snapshot's identity, so an incremental snapshot can tell its parent
// from another snapshot later taken under the same name.
Result<std::string> RandomId() {
  uint8_t bytes[16];
  if (::getrandom(bytes, sizeof(bytes), 0) != static_cast<ssize_t>(sizeof(bytes))) return FailErrno("getrandom");
  std::string id;
  for (uint8_t b : bytes) id += fmt::format("{:02x}", b);
  return id;
}

std::string NormalDir(const std::string& dir) { return std::filesystem::path(dir).lexically_normal().string(); }

// After a successful write, with everything still paused: the VM tracks dirty pages from here, and
// this snapshot is its new base. Tracking that cannot start only costs incremental snapshots.
void RebaseTracking(Vm& vm, const TakeOptions& options, const SnapshotConfig& config) {
  if (!vm.dirty_tracking()) {
    if (auto started = vm.StartDirtyTracking(); !started) {
      Log(LogLevel::kWarn, "incremental snapshots of this VM are unavailable: {}", started.error().message());
      vm.set_snapshot_base(std::nullopt);
      return;
    }
  }
  vm.set_snapshot_base(Vm::SnapshotBase{options.name, NormalDir(options.dir), config.id});
}

// With the vCPUs paused: pauses the devices, saves and writes, resumes the devices. The disks are
// described and frozen here, while paused devices have drained and flushed their backends. The
// dirty pages since the VM's base are collected with everything paused: an incremental snapshot
// writes them; a full one drops them once written (both hand them back on failure).
Result<WriteResult> WritePaused(Vm& vm, const TakeOptions& options, SnapshotConfig config) {
  CLONE_TRY_VOID(vm.PauseDevices());
  auto dirty = vm.dirty_tracking() ? vm.CollectDirtyPages() : Result<PageBitmap>(PageBitmap());
  auto written = [&]() -> Result<WriteResult> {
    if (!dirty) return Fail(dirty.error());
    if (config.parent && !vm.dirty_tracking()) return Fail("the VM does not track dirty pages");
    VmState state = CLONE_TRY(vm.SaveState());
    config.disks = CLONE_TRY(DescribeDisks(vm.disk_images(), config.created_unix * 1'000'000'000));
    auto freeze = [&](const std::string& tmp) -> Result<void> {
      uint64_t copied = CLONE_TRY(FreezeDisks(vm.disk_images(), config.disks, tmp));
      if (copied > 0) Log(LogLevel::kInfo, "snapshot '{}': {} MiB of disk data frozen", options.name, copied >> 20);
      return {};
    };
    return Write(options.dir, options.name, vm.memory(), state, config, freeze, config.parent ? &*dirty : nullptr);
  }();
  if (written) {
    RebaseTracking(vm, options, config);
  } else if (dirty && vm.dirty_tracking()) {
    vm.ReturnDirtyPages(*dirty);
  }
  vm.ResumeDevices();  // vhost devices start (or keep) logging into the dirty log here
  return written;
}

}  // namespace

Result<TakeResult> Take(Vm& vm, const TakeOptions& options) {
  CLONE_TRY_VOID(ValidateName(options.name));
  CLONE_TRY_VOID(CheckSnapshottable(vm));
  std::error_code ec;
  if (std::filesystem::exists(options.dir + "/" + options.name, ec)) {
    return Fail("snapshot '{}' already exists in {} (remove it with: clone snapshot rm {})", options.name, options.dir,
                options.name);
  }
  SnapshotConfig config = ConfigOf(vm, options);
  config.id = CLONE_TRY(RandomId());
  if (!options.parent.empty()) config.parent = CLONE_TRY(CheckParent(vm, options.dir, options.parent));
  bool was_paused = vm.paused();
  auto start = std::chrono::steady_clock::now();
  CLONE_TRY_VOID(vm.Pause());
  auto written = WritePaused(vm, options, config);
  TakeResult result;
  result.paused_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  if (options.resume || (!written && !was_paused)) vm.Resume();
  if (!written) return Fail(written.error());
  result.written = std::move(*written);
  return result;
}

Result<SnapshotParent> CheckParent(const Vm& vm, const std::string& dir, const std::string& parent) {
  CLONE_TRY_VOID(ValidateName(parent));
  const auto& base = vm.snapshot_base();
  if (!base || base->name != parent || base->dir != NormalDir(dir)) {
    // Tracking restarts at every snapshot: only the latest one can be a parent.
    std::string last = base ? fmt::format(", or is not its latest snapshot ('{}' in {}, the only possible parent)",
                                          base->name, base->dir)
                            : "";
    return Fail("'{}' was not taken from this VM since it started{}; take a full snapshot", parent, last);
  }
  // The directory under the name must still be that snapshot (not removed and re-taken, not merged
  // into something else), or the pages it lacks would come from the wrong place.
  auto loaded = Read(dir, parent);
  if (!loaded) return Fail(loaded.error().Wrap(fmt::format("parent '{}'", parent)));
  if (loaded->config.id != base->id) {
    return Fail("'{}' has been replaced since this VM took it; take a full snapshot", parent);
  }
  return SnapshotParent{parent, base->id};
}

std::vector<SharedDirConfig> RecordedSharedDirs(const SnapshotConfig& config) {
  std::vector<SharedDirConfig> dirs;
  for (const auto& dir : config.shared_dirs) dirs.push_back({dir.host_path, dir.tag, dir.read_only, dir.squash_root});
  return dirs;
}

Result<VmConfig> RestoreVmConfig(const SnapshotConfig& config, const std::string& snapshot_path,
                                 const DiskPlan& disks) {
  VmConfig vm;
  vm.mem_bytes = config.mem_bytes;
  vm.vcpus = config.vcpus;
  vm.cmdline = config.cmdline;
  vm.rng = config.rng;
  if (config.vsock_cid) vm.vsock = VsockConfig{*config.vsock_cid};
  if (config.balloon) {
    vm.balloon = virtio::BalloonOptions{.free_page_reporting = config.balloon->free_page_reporting,
                                        .deflate_on_oom = config.balloon->deflate_on_oom,
                                        .stats_interval_s = config.balloon->stats_interval_s};
  }
  if (!config.disks.empty()) {
    auto opened = OpenDisks(config, snapshot_path, disks);
    if (!opened) return Fail(opened.error().Wrap(fmt::format("snapshot {}", snapshot_path)));
    vm.disks = std::move(*opened);
  }
  vm.shared_dirs = RecordedSharedDirs(config);
  // virtio-net devices (config.virtio_types) get their TAPs from the caller: VmConfig::nets.
  return vm;
}

control::Router::Handler SnapshotRoute(Vm& vm, std::string source_vm, nlohmann::json info) {
  return [&vm, source_vm = std::move(source_vm), info = std::move(info)](control::Request request,
                                                                         control::Responder responder) {
    auto body = control::ParseJsonBody(request, {"name", "dir", "resume", "parent"});
    if (!body) return responder.Respond(body.error().ToResponse());
    TakeOptions options;
    options.source_vm = source_vm;
    options.info = info;
    JsonReader fields(*body);
    auto name = fields.String("name");
    if (!name) return responder.RespondError(400, name.error().message());
    options.name = std::move(*name);
    if (auto valid = ValidateName(options.name); !valid) return responder.RespondError(400, valid.error().message());
    auto dir = fields.OptString("dir", PATH_MAX);
    if (!dir) return responder.RespondError(400, dir.error().message());
    if (*dir && ((*dir)->empty() || (**dir)[0] != '/'))
      return responder.RespondError(400, "dir: an absolute directory path");
    options.dir = dir->value_or(DefaultTemplatesDir());
    auto resume = fields.BoolOr("resume", options.resume);
    if (!resume) return responder.RespondError(400, resume.error().message());
    options.resume = *resume;
    auto parent = fields.OptString("parent");
    if (!parent) return responder.RespondError(400, parent.error().message());
    if (*parent) {
      options.parent = std::move(**parent);
      if (auto valid = ValidateName(options.parent); !valid)
        return responder.RespondError(400, valid.error().message());
      if (auto ok = CheckParent(vm, options.dir, options.parent); !ok)
        return responder.RespondError(409, ok.error().message());
    }
    std::error_code ec;
    if (std::filesystem::exists(options.dir + "/" + options.name, ec)) {
      return responder.RespondError(409, fmt::format("snapshot '{}' already exists in {}", options.name, options.dir));
    }
    if (auto ok = CheckSnapshottable(vm); !ok) return responder.RespondError(409, ok.error().message());
    auto taken = Take(vm, options);
    if (!taken) return responder.RespondError(500, taken.error().message());
    Log(LogLevel::kInfo, "snapshot '{}' written to {} ({} MiB of data, vCPUs paused {:.0f} ms)", options.name,
        taken->written.path, taken->written.data_bytes >> 20, taken->paused_ms);
    nlohmann::json reply = {{"name", options.name},
                            {"path", taken->written.path},
                            {"memory_bytes", taken->written.memory_bytes},
                            {"data_bytes", taken->written.data_bytes},
                            {"paused_ms", taken->paused_ms}};
    if (!options.parent.empty()) reply["parent"] = options.parent;
    responder.RespondJson(201, reply);
  };
}

}  // namespace clonevm::snapshot

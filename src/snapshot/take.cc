#include "snapshot/take.h"

#include <chrono>
#include <ctime>
#include <filesystem>

#include "base/log.h"
#include "block/image.h"
#include "devices/virtio/virtio_spec.h"
#include "snapshot/disks.h"

namespace clonevm::snapshot {
namespace {

// The devices Take() can record, or an error naming the first it cannot.
Result<void> CheckSnapshottable(const Vm& vm) {
  for (uint32_t type : vm.virtio_device_types()) {
    if (type == virtio::kDeviceTypeNet) return Fail("VMs with virtio-net (--tap/--net) cannot be snapshotted yet");
    // Disks: read-only ones referenced, writable ones frozen into the snapshot (disks.h).
    if (type == virtio::kDeviceTypeBlock) continue;
    if (type != virtio::kDeviceTypeEntropy && type != virtio::kDeviceTypeVsock) {
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
  config.source_vm = options.source_vm;
  config.created_unix = static_cast<int64_t>(::time(nullptr));
  config.info = options.info.is_object() ? options.info : nlohmann::json::object();
  if (auto cmdline = config.info.find("cmdline"); cmdline != config.info.end() && cmdline->is_string()) {
    config.cmdline = cmdline->get<std::string>();
  }
  return config;
}

// With the vCPUs paused: pauses the devices, saves and writes, resumes the devices. The disks are
// described and frozen here, while paused devices have drained and flushed their backends.
Result<WriteResult> WritePaused(Vm& vm, const TakeOptions& options, SnapshotConfig config) {
  CLONE_TRY_VOID(vm.PauseDevices());
  auto written = [&]() -> Result<WriteResult> {
    VmState state = CLONE_TRY(vm.SaveState());
    config.disks = CLONE_TRY(DescribeDisks(vm.disk_images(), config.created_unix * 1'000'000'000));
    auto freeze = [&](const std::string& tmp) -> Result<void> {
      uint64_t copied = CLONE_TRY(FreezeDisks(vm.disk_images(), config.disks, tmp));
      if (copied > 0) Log(LogLevel::kInfo, "snapshot '{}': {} MiB of disk data frozen", options.name, copied >> 20);
      return {};
    };
    return Write(options.dir, options.name, vm.memory(), state, config, freeze);
  }();
  vm.ResumeDevices();
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

Result<VmConfig> RestoreVmConfig(const SnapshotConfig& config, const std::string& snapshot_path, const DiskPlan& disks) {
  VmConfig vm;
  vm.mem_bytes = config.mem_bytes;
  vm.vcpus = config.vcpus;
  vm.cmdline = config.cmdline;
  vm.rng = config.rng;
  if (config.vsock_cid) vm.vsock = VsockConfig{*config.vsock_cid};
  if (!config.disks.empty()) {
    auto opened = OpenDisks(config, snapshot_path, disks);
    if (!opened) return Fail(opened.error().Wrap(fmt::format("snapshot {}", snapshot_path)));
    vm.disks = std::move(*opened);
  }
  for (uint32_t type : config.virtio_types) {
    if (type == virtio::kDeviceTypeNet) return Fail("the snapshot has a virtio-net device, which restore does not support yet");
  }
  return vm;
}

control::Router::Handler SnapshotRoute(Vm& vm, std::string source_vm, nlohmann::json info) {
  return [&vm, source_vm = std::move(source_vm), info = std::move(info)](control::Request request,
                                                                         control::Responder responder) {
    auto body = control::ParseJsonBody(request, {"name", "dir", "resume"});
    if (!body) return responder.Respond(body.error().ToResponse());
    TakeOptions options;
    options.source_vm = source_vm;
    options.info = info;
    auto name = body->find("name");
    if (name == body->end() || !name->is_string()) return responder.RespondError(400, "name: a snapshot name is required");
    options.name = name->get<std::string>();
    if (auto valid = ValidateName(options.name); !valid) return responder.RespondError(400, valid.error().message());
    options.dir = DefaultTemplatesDir();
    if (auto dir = body->find("dir"); dir != body->end()) {
      if (!dir->is_string() || dir->get<std::string>().empty() || dir->get<std::string>()[0] != '/') {
        return responder.RespondError(400, "dir: an absolute directory path");
      }
      options.dir = dir->get<std::string>();
    }
    if (auto resume = body->find("resume"); resume != body->end()) {
      if (!resume->is_boolean()) return responder.RespondError(400, "resume: must be a boolean");
      options.resume = resume->get<bool>();
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
    responder.RespondJson(201, {{"name", options.name},
                                {"path", taken->written.path},
                                {"memory_bytes", taken->written.memory_bytes},
                                {"data_bytes", taken->written.data_bytes},
                                {"paused_ms", taken->paused_ms}});
  };
}

}  // namespace clonevm::snapshot

#include "devices/virtio/mmio_transport.h"

#include <sys/eventfd.h>

#include <cstring>

#include "base/check.h"
#include "base/log.h"
#include "devices/virtio/virtio_spec.h"

namespace clonevm::virtio {
namespace {

// Register offsets (4.2.2, table "MMIO Device Register Layout").
constexpr uint64_t kRegMagic = 0x000;
constexpr uint64_t kRegVersion = 0x004;
constexpr uint64_t kRegDeviceId = 0x008;
constexpr uint64_t kRegVendorId = 0x00c;
constexpr uint64_t kRegDeviceFeatures = 0x010;
constexpr uint64_t kRegDeviceFeaturesSel = 0x014;
constexpr uint64_t kRegDriverFeatures = 0x020;
constexpr uint64_t kRegDriverFeaturesSel = 0x024;
constexpr uint64_t kRegQueueSel = 0x030;
constexpr uint64_t kRegQueueNumMax = 0x034;
constexpr uint64_t kRegQueueNum = 0x038;
constexpr uint64_t kRegQueueReady = 0x044;
constexpr uint64_t kRegQueueNotify = 0x050;
constexpr uint64_t kRegInterruptStatus = 0x060;
constexpr uint64_t kRegInterruptAck = 0x064;
constexpr uint64_t kRegStatus = 0x070;
constexpr uint64_t kRegQueueDescLow = 0x080;
constexpr uint64_t kRegQueueDescHigh = 0x084;
constexpr uint64_t kRegQueueDriverLow = 0x090;
constexpr uint64_t kRegQueueDriverHigh = 0x094;
constexpr uint64_t kRegQueueDeviceLow = 0x0a0;
constexpr uint64_t kRegQueueDeviceHigh = 0x0a4;
constexpr uint64_t kRegShmSel = 0x0ac;
constexpr uint64_t kRegShmLenLow = 0x0b0;
constexpr uint64_t kRegShmBaseHigh = 0x0bc;
constexpr uint64_t kRegConfigGeneration = 0x0fc;

// Transport features Queue implements for every device.
constexpr uint64_t kTransportFeatures = kFeatureVersion1 | kFeatureEventIdx | kFeatureIndirectDesc;

void SetHalf(uint64_t& value, uint32_t half, uint32_t bits) {
  int shift = half == 0 ? 0 : 32;
  value = (value & ~(0xffffffffull << shift)) | (uint64_t{bits} << shift);
}

}  // namespace

Result<std::shared_ptr<MmioTransport>> MmioTransport::Create(const GuestMemory& memory,
                                                             std::unique_ptr<VirtioDevice> device) {
  CLONE_CHECK(device != nullptr && kConfigOffset + device->config_size() <= kMmioSize);
  EventFd irq = CLONE_TRY(EventFd::Create(EFD_NONBLOCK));
  std::vector<EventFd> notify;
  for (size_t i = 0; i < device->queue_max_sizes().size(); ++i) {
    notify.push_back(CLONE_TRY(EventFd::Create(EFD_NONBLOCK)));
  }
  return std::shared_ptr<MmioTransport>(
      new MmioTransport(memory, std::move(device), std::move(irq), std::move(notify)));
}

MmioTransport::MmioTransport(const GuestMemory& memory, std::unique_ptr<VirtioDevice> device, EventFd irq,
                             std::vector<EventFd> queue_eventfds)
    : memory_(memory),
      device_(std::move(device)),
      offered_features_(device_->device_features() | kTransportFeatures),
      irq_eventfd_(std::move(irq)),
      queue_eventfds_(std::move(queue_eventfds)),
      interrupt_(irq_eventfd_) {
  queues_.reserve(device_->queue_max_sizes().size());
  for (uint16_t max : device_->queue_max_sizes()) queues_.emplace_back(max);
}

void MmioTransport::Read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mu_);
  std::fill(data.begin(), data.end(), 0);
  if (offset >= kConfigOffset) {
    uint64_t config_offset = offset - kConfigOffset;
    if (data.size() <= 8 && std::has_single_bit(data.size()) && config_offset <= device_->config_size() &&
        data.size() <= device_->config_size() - config_offset) {
      device_->ReadConfig(config_offset, data);
      return;
    }
  } else if (data.size() == 4 && offset % 4 == 0) {
    uint32_t value = ReadRegister(offset);
    std::memcpy(data.data(), &value, 4);
    return;
  }
  CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-mmio: ignored {}-byte read at {:#x}", data.size(), offset);
}

void MmioTransport::Write(uint64_t offset, std::span<const uint8_t> data) {
  std::lock_guard lock(mu_);
  if (offset >= kConfigOffset) {
    uint64_t config_offset = offset - kConfigOffset;
    if (data.size() <= 8 && std::has_single_bit(data.size()) && config_offset <= device_->config_size() &&
        data.size() <= device_->config_size() - config_offset) {
      device_->WriteConfig(config_offset, data);
      return;
    }
  } else if (data.size() == 4 && offset % 4 == 0) {
    uint32_t value;
    std::memcpy(&value, data.data(), 4);
    WriteRegister(offset, value);
    return;
  }
  CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-mmio: ignored {}-byte write at {:#x}", data.size(), offset);
}

uint32_t MmioTransport::ReadRegister(uint64_t offset) const {
  const Queue* queue = regs_.queue_sel < queues_.size() ? &queues_[regs_.queue_sel] : nullptr;
  switch (offset) {
    case kRegMagic:
      return kMagic;
    case kRegVersion:
      return kVersion;
    case kRegDeviceId:
      return device_->device_type();
    case kRegVendorId:
      return kVendorId;
    case kRegDeviceFeatures:
      if (regs_.device_features_sel > 1) return 0;
      return static_cast<uint32_t>(offered_features_ >> (32 * regs_.device_features_sel));
    case kRegQueueNumMax:
      return queue ? queue->max_size() : 0;  // 0: "queue not available"
    case kRegQueueReady:
      return queue && queue->config().ready ? 1 : 0;
    case kRegInterruptStatus:
      return interrupt_.status();
    case kRegStatus:
      return regs_.status;
    case kRegConfigGeneration:
      return interrupt_.config_generation();
    default:
      // No shared memory regions: their length reads as -1 (4.2.2).
      if (offset >= kRegShmLenLow && offset <= kRegShmBaseHigh) return 0xffffffff;
      return 0;  // write-only or reserved
  }
}

void MmioTransport::WriteRegister(uint64_t offset, uint32_t value) {
  switch (offset) {
    case kRegDeviceFeaturesSel:
      regs_.device_features_sel = value;
      return;
    case kRegDriverFeatures:
      WriteDriverFeatures(value);
      return;
    case kRegDriverFeaturesSel:
      regs_.driver_features_sel = value;
      return;
    case kRegQueueSel:
      regs_.queue_sel = value;
      return;
    case kRegQueueNum:
    case kRegQueueDescLow:
    case kRegQueueDescHigh:
    case kRegQueueDriverLow:
    case kRegQueueDriverHigh:
    case kRegQueueDeviceLow:
    case kRegQueueDeviceHigh:
      WriteQueueRegister(offset, value);
      return;
    case kRegQueueReady:
      WriteQueueReady(value);
      return;
    case kRegQueueNotify:
      if (value < queues_.size()) {
        ProcessQueueLocked(value);
      } else {
        CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-mmio: notify for queue {} that does not exist", value);
      }
      return;
    case kRegInterruptAck:
      interrupt_.Acknowledge(value);
      return;
    case kRegStatus:
      WriteStatus(value);
      return;
    case kRegShmSel:
      return;  // no shared memory regions; any selection reads as absent
    default:
      CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-mmio: write {:#x} to read-only or reserved register {:#x}", value,
                            offset);
  }
}

void MmioTransport::WriteDriverFeatures(uint32_t value) {
  // Features may change only between DRIVER and FEATURES_OK (3.1.1).
  if (!(regs_.status & kStatusDriver) || (regs_.status & kStatusFeaturesOk) || regs_.driver_features_sel > 1) {
    CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-mmio: DriverFeatures write ignored (status {:#x}, sel {})",
                          regs_.status, regs_.driver_features_sel);
    return;
  }
  SetHalf(regs_.driver_features, regs_.driver_features_sel, value);
}

Queue* MmioTransport::SelectedQueue() { return regs_.queue_sel < queues_.size() ? &queues_[regs_.queue_sel] : nullptr; }

void MmioTransport::WriteQueueRegister(uint64_t offset, uint32_t value) {
  Queue* queue = SelectedQueue();
  // A queue's configuration is frozen while it is ready (4.2.3.2).
  if (queue == nullptr || queue->config().ready) {
    CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-mmio: queue register {:#x} write ignored (queue {})", offset,
                          regs_.queue_sel);
    return;
  }
  QueueConfig& c = queue->config();
  switch (offset) {
    case kRegQueueNum:
      // Out-of-range sizes are kept as 0 (invalid) rather than truncated into a valid-looking one;
      // Activate() rejects them.
      c.size = value <= kMaxQueueSize ? static_cast<uint16_t>(value) : 0;
      return;
    case kRegQueueDescLow:
    case kRegQueueDescHigh:
      SetHalf(c.desc_addr, offset == kRegQueueDescHigh, value);
      return;
    case kRegQueueDriverLow:
    case kRegQueueDriverHigh:
      SetHalf(c.avail_addr, offset == kRegQueueDriverHigh, value);
      return;
    default:
      SetHalf(c.used_addr, offset == kRegQueueDeviceHigh, value);
      return;
  }
}

void MmioTransport::WriteQueueReady(uint32_t value) {
  Queue* queue = SelectedQueue();
  if (queue == nullptr) return;
  if (value == 0) {
    queue->config().ready = false;
    queue->Deactivate();
    return;
  }
  if (queue->config().ready) return;
  queue->config().ready = true;
  // A queue enabled after DRIVER_OK starts at once.
  if (device_active_) {
    auto activated = queue->Activate(memory_, regs_.driver_features);
    if (!activated) EnterNeedsReset(activated.error());
  }
}

bool MmioTransport::FeaturesAcceptable() const {
  return (regs_.driver_features & ~offered_features_) == 0 && (regs_.driver_features & kFeatureVersion1) != 0;
}

void MmioTransport::WriteStatus(uint32_t value) {
  if (value == 0) {
    ResetLocked();
    return;
  }
  const uint32_t old = regs_.status;
  // DEVICE_NEEDS_RESET belongs to the device; the driver can neither set nor clear it.
  value = (value & ~kStatusNeedsReset) | (old & kStatusNeedsReset);
  if (old & ~value) {
    CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-mmio: driver tried to clear status bits ({:#x} -> {:#x})", old,
                          value);
    return;
  }
  if ((value & kStatusFeaturesOk) && !(old & kStatusFeaturesOk) && !FeaturesAcceptable()) {
    value &= ~kStatusFeaturesOk;  // the driver reads it back and gives up (3.1.1 step 6)
  }
  if ((value & kStatusDriverOk) && !(value & kStatusFeaturesOk)) value &= ~kStatusDriverOk;
  regs_.status = value;
  if ((value & kStatusDriverOk) && !(old & kStatusDriverOk) && !(value & kStatusNeedsReset)) {
    auto activated = ActivateLocked();
    if (!activated) EnterNeedsReset(activated.error());
  }
}

DeviceContext MmioTransport::Context() {
  return DeviceContext{memory_, std::span(queues_), interrupt_, regs_.driver_features, std::span(queue_eventfds_)};
}

Result<void> MmioTransport::ActivateLocked() {
  for (size_t i = 0; i < queues_.size(); ++i) {
    if (!queues_[i].config().ready) continue;
    auto activated = queues_[i].Activate(memory_, regs_.driver_features);
    if (!activated) return Fail("queue {}: {}", i, activated.error().message());
  }
  CLONE_TRY_VOID(device_->Activate(Context()));
  device_active_ = true;
  return {};
}

void MmioTransport::ResetLocked() {
  if (device_active_) device_->Reset();
  device_active_ = false;
  for (Queue& q : queues_) q.Reset();
  regs_ = Registers{};
  interrupt_.SetState(0, interrupt_.config_generation());
}

void MmioTransport::EnterNeedsReset(const Error& error) {
  if (device_active_) device_->Reset();
  device_active_ = false;
  for (Queue& q : queues_) q.Deactivate();
  if (regs_.status & kStatusNeedsReset) return;
  regs_.status |= kStatusNeedsReset;
  ++guest_errors_;
  CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-mmio: device type {} needs reset after a guest error: {}",
                        device_->device_type(), error.message());
  interrupt_.Raise(kInterruptConfigChange);
}

void MmioTransport::ProcessQueueLocked(size_t queue_index) {
  if (!device_active_ || !queues_[queue_index].active()) return;
  auto processed = device_->ProcessQueue(queue_index);
  if (!processed) EnterNeedsReset(processed.error().Wrap(fmt::format("queue {}", queue_index)));
}

void MmioTransport::HandleQueueNotify(size_t queue_index) {
  CLONE_CHECK(queue_index < queues_.size());
  queue_eventfds_[queue_index].Drain();
  std::lock_guard lock(mu_);
  ProcessQueueLocked(queue_index);
}

void MmioTransport::RunDeviceTask(const std::function<Result<void>(VirtioDevice&)>& task) {
  std::lock_guard lock(mu_);
  if (!device_active_) return;
  auto done = task(*device_);
  if (!done) EnterNeedsReset(done.error());
}

void MmioTransport::HandleDeviceFd(size_t index, uint32_t events) {
  std::lock_guard lock(mu_);
  auto done = device_->HandleFdEvent(index, events);
  if (!done && device_active_) EnterNeedsReset(done.error());
}

Result<void> MmioTransport::WithDevice(const std::function<Result<void>(VirtioDevice&)>& fn) {
  std::lock_guard lock(mu_);
  return fn(*device_);
}

Result<void> MmioTransport::PauseDevice() {
  std::lock_guard lock(mu_);
  if (!device_active_) return {};
  return device_->Pause();
}

Result<void> MmioTransport::ResumeDevice() {
  std::lock_guard lock(mu_);
  if (!device_active_) return {};
  // A chain taken on resume can be a guest error like any other: it breaks this device only.
  if (auto resumed = device_->Resume(); !resumed) EnterNeedsReset(resumed.error());
  return {};
}

uint64_t MmioTransport::guest_error_count() const {
  std::lock_guard lock(mu_);
  return guest_errors_;
}

uint32_t MmioTransport::device_status() const {
  std::lock_guard lock(mu_);
  return regs_.status;
}

}  // namespace clonevm::virtio

// MmioTransport snapshot state: registers, queue configurations and positions, interrupt status and
// the device's own state, as versioned JSON (see json_state.h for the compatibility rules).
//
// Version 1:
//   {"version": 1, "status", "device_features_sel", "driver_features_sel", "driver_features",
//    "queue_sel", "interrupt_status", "config_generation", "guest_errors",
//    "queues": [{"size", "ready", "desc_addr", "avail_addr", "used_addr", "next_avail", "next_used"}...],
//    "device": {...}}
#include <nlohmann/json.hpp>

#include "devices/virtio/json_state.h"
#include "devices/virtio/mmio_transport.h"
#include "devices/virtio/virtio_spec.h"

namespace clonevm::virtio {
namespace {

constexpr int kStateVersion = 1;

nlohmann::json QueueToJson(const QueueConfig& c) {
  return {{"size", c.size},           {"ready", c.ready},
          {"desc_addr", c.desc_addr}, {"avail_addr", c.avail_addr},
          {"used_addr", c.used_addr}, {"next_avail", c.next_avail},
          {"next_used", c.next_used}};
}

Result<QueueConfig> QueueFromJson(const nlohmann::json& j) {
  QueueConfig c;
  c.size = CLONE_TRY(JsonUint<uint16_t>(j, "size"));
  c.ready = CLONE_TRY(JsonBool(j, "ready"));
  c.desc_addr = CLONE_TRY(JsonUint<uint64_t>(j, "desc_addr"));
  c.avail_addr = CLONE_TRY(JsonUint<uint64_t>(j, "avail_addr"));
  c.used_addr = CLONE_TRY(JsonUint<uint64_t>(j, "used_addr"));
  c.next_avail = CLONE_TRY(JsonUint<uint16_t>(j, "next_avail"));
  c.next_used = CLONE_TRY(JsonUint<uint16_t>(j, "next_used"));
  return c;
}

}  // namespace

nlohmann::json MmioTransport::SaveState() const {
  std::lock_guard lock(mu_);
  nlohmann::json queues = nlohmann::json::array();
  for (const Queue& q : queues_) queues.push_back(QueueToJson(q.config()));
  return {{"version", kStateVersion},
          {"status", regs_.status},
          {"device_features_sel", regs_.device_features_sel},
          {"driver_features_sel", regs_.driver_features_sel},
          {"driver_features", regs_.driver_features},
          {"queue_sel", regs_.queue_sel},
          {"interrupt_status", interrupt_.status()},
          {"config_generation", interrupt_.config_generation()},
          {"guest_errors", guest_errors_},
          {"queues", std::move(queues)},
          {"device", device_->SaveState()}};
}

Result<void> MmioTransport::RestoreState(const nlohmann::json& state) {
  std::lock_guard lock(mu_);
  ResetLocked();
  auto restored = [&]() -> Result<void> {
    CLONE_TRY(StateVersion(state, kStateVersion, "virtio-mmio transport"));
    Registers regs;
    regs.status = CLONE_TRY(JsonUint<uint32_t>(state, "status"));
    regs.device_features_sel = CLONE_TRY(JsonUint<uint32_t>(state, "device_features_sel"));
    regs.driver_features_sel = CLONE_TRY(JsonUint<uint32_t>(state, "driver_features_sel"));
    regs.driver_features = CLONE_TRY(JsonUint<uint64_t>(state, "driver_features"));
    regs.queue_sel = CLONE_TRY(JsonUint<uint32_t>(state, "queue_sel"));
    uint32_t interrupt_status = CLONE_TRY(JsonUint<uint32_t>(state, "interrupt_status"));
    uint32_t generation = CLONE_TRY(JsonUint<uint32_t>(state, "config_generation"));
    uint64_t guest_errors = CLONE_TRY(JsonUint<uint64_t>(state, "guest_errors"));
    auto queues = state.find("queues");
    if (queues == state.end() || !queues->is_array() || queues->size() != queues_.size()) {
      return Fail("expected {} queues", queues_.size());
    }
    std::vector<QueueConfig> configs;
    for (const auto& q : *queues) configs.push_back(CLONE_TRY(QueueFromJson(q)));
    auto device = state.find("device");
    if (device == state.end()) return Fail("no \"device\" state");
    CLONE_TRY_VOID(device_->RestoreState(*device));

    regs_ = regs;
    guest_errors_ = guest_errors;
    for (size_t i = 0; i < queues_.size(); ++i) queues_[i].config() = configs[i];
    interrupt_.SetState(interrupt_status, generation);
    // A pending interrupt is re-signalled: a spurious edge is harmless, a lost one hangs the driver.
    if (interrupt_status != 0) irq_eventfd_.Signal();
    if ((regs_.status & kStatusDriverOk) && !(regs_.status & kStatusNeedsReset)) CLONE_TRY_VOID(ActivateLocked());
    return {};
  }();
  if (!restored) {
    ResetLocked();
    return Fail("restoring virtio-mmio device type {}: {}", device_->device_type(), restored.error().message());
  }
  return {};
}

}  // namespace clonevm::virtio

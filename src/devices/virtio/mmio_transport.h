// MmioTransport: virtio over MMIO, register layout version 2 (virtio 1.2, 4.2.2), for one device.
//
// The VMM inserts it on the MMIO bus at a 4 KiB slot and describes it to the guest (DSDT node
// "LNRO0005" with the slot and a GSI), then wires two kinds of eventfds with KVM:
//   * irq_eventfd(): KVM_IRQFD on the device's GSI (edge-triggered). The transport and the device
//     signal it through Interrupt; nothing else needs to run for an interrupt to reach the guest.
//   * queue_eventfd(i) for each queue i < num_queues(): KVM_IOEVENTFD at slot base +
//     *QueueNotifyOffset(), 4 bytes, datamatch = i. The event loop watches each one and calls
//     HandleQueueNotify(i) when it fires (HandleQueueNotify drains the eventfd itself).
//   * for each device->watched_fds()[k]: the event loop watches it and calls HandleDeviceFd(k).
// Queues whose kicks go to a backend (device->kicks_go_to_backend(i), e.g. vhost) keep their
// KVM_IOEVENTFD but are not watched by the loop: the backend reads the eventfd itself.
// A QueueNotify write that reaches Write() (no ioeventfd registered, or a value matching no queue)
// processes the named queue on the calling vCPU thread, so the ioeventfds are an optimisation.
//
// Registers are 32-bit and only 32-bit accesses are honoured; the device config space (0x100 on)
// takes 1, 2, 4 and 8-byte accesses inside config_size(). Everything else is ignored (reads as 0)
// with a rate-limited log line.
//
// Status (2.1): writing 0 resets the device and every queue; FEATURES_OK sticks only when the driver
// accepted a subset of the offered features that includes VIRTIO_F_VERSION_1; DRIVER_OK (after
// FEATURES_OK) validates the ready queues and activates the device. Any guest error (a bad queue
// layout, or an error from the device) sets DEVICE_NEEDS_RESET, raises a config interrupt, counts
// in guest_error_count() and logs one rate-limited line; the device is stopped until the driver
// resets it.
//
// Thread-safety: one mutex serialises registers, queues and every call into the device; vCPU
// threads (Read/Write) and the event loop (HandleQueueNotify, RunDeviceTask) may call concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "devices/bus.h"
#include "devices/virtio/interrupt.h"
#include "devices/virtio/queue.h"
#include "devices/virtio/virtio_device.h"
#include "memory/guest_memory.h"

namespace clonevm::virtio {

class MmioTransport : public BusDevice {
 public:
  static constexpr uint32_t kMagic = 0x74726976;  // "virt"
  static constexpr uint32_t kVersion = 2;
  static constexpr uint32_t kVendorId = 0x454E4C43;  // "CLNE" read as little-endian bytes
  static constexpr uint64_t kConfigOffset = 0x100;
  static constexpr uint64_t kMmioSize = 0x1000;  // one slot; config space ends with it

  // `memory` must outlive the transport. Fails only if an eventfd cannot be created.
  [[nodiscard]] static Result<std::shared_ptr<MmioTransport>> Create(const GuestMemory& memory,
                                                                     std::unique_ptr<VirtioDevice> device);

  // BusDevice: register access from vCPU threads; `offset` is relative to the slot base.
  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

  // The offset of QueueNotify, for KVM_IOEVENTFD (4 bytes, datamatch = queue index).
  std::optional<uint64_t> QueueNotifyOffset() const { return 0x50; }
  size_t num_queues() const { return queues_.size(); }
  const EventFd& queue_eventfd(size_t index) const { return queue_eventfds_.at(index); }
  const EventFd& irq_eventfd() const { return irq_eventfd_; }

  // The event loop's handler for queue_eventfd(index): drains it and processes the queue.
  void HandleQueueNotify(size_t queue_index);
  // The event loop's handler for device->watched_fds()[index]: runs the device's HandleFdEvent
  // under the lock (an error while active puts the device in NEEDS_RESET).
  void HandleDeviceFd(size_t index, uint32_t events);
  // Runs fn(device) under the lock whatever the device's state and returns its result; errors are
  // the caller's (host operations such as changing a vsock CID), not guest errors.
  [[nodiscard]] Result<void> WithDevice(const std::function<Result<void>(VirtioDevice&)>& fn);
  // Snapshot support (VM paused): stops / restarts the device's out-of-VMM data path (vhost) if the
  // device is active; see VirtioDevice::Pause(). A no-op for other devices.
  [[nodiscard]] Result<void> PauseDevice();
  [[nodiscard]] Result<void> ResumeDevice();
  const VirtioDevice& device() const { return *device_; }

  // Runs task(device) under the lock if the device is active (for work the device does on its own
  // events, e.g. a backend becoming readable). An error puts the device in NEEDS_RESET.
  void RunDeviceTask(const std::function<Result<void>(VirtioDevice&)>& task);

  // Guest errors that put the device in NEEDS_RESET since creation.
  uint64_t guest_error_count() const;
  uint32_t device_status() const;

  // Snapshot of registers, queues and the device. The VM must be paused (no concurrent accesses).
  [[nodiscard]] nlohmann::json SaveState() const;
  // Restores into a freshly created (or reset) transport; re-activates the device if the saved
  // status had DRIVER_OK. Fails on a malformed or incompatible state, leaving the transport reset.
  [[nodiscard]] Result<void> RestoreState(const nlohmann::json& state);

 private:
  // Plain register state (everything but queues, the interrupt and the device).
  struct Registers {
    uint32_t status = 0;
    uint32_t device_features_sel = 0;  // guest-controlled, any value
    uint32_t driver_features_sel = 0;  // guest-controlled, any value
    uint64_t driver_features = 0;      // guest-controlled: checked when FEATURES_OK is set
    uint32_t queue_sel = 0;            // guest-controlled: may name no queue
  };

  MmioTransport(const GuestMemory& memory, std::unique_ptr<VirtioDevice> device, EventFd irq,
                std::vector<EventFd> queue_eventfds);

  uint32_t ReadRegister(uint64_t offset) const;
  void WriteRegister(uint64_t offset, uint32_t value);
  void WriteDriverFeatures(uint32_t value);
  void WriteQueueRegister(uint64_t offset, uint32_t value);
  void WriteQueueReady(uint32_t value);
  void WriteStatus(uint32_t value);
  bool FeaturesAcceptable() const;
  Queue* SelectedQueue();
  [[nodiscard]] Result<void> ActivateLocked();
  void ResetLocked();
  void ProcessQueueLocked(size_t queue_index);
  void EnterNeedsReset(const Error& error);
  DeviceContext Context();

  const GuestMemory& memory_;
  const std::unique_ptr<VirtioDevice> device_;
  const uint64_t offered_features_;
  const EventFd irq_eventfd_;
  const std::vector<EventFd> queue_eventfds_;

  mutable std::mutex mu_;
  Registers regs_;
  std::vector<Queue> queues_;  // never resized after construction (chains point at their queue)
  Interrupt interrupt_;
  bool device_active_ = false;
  uint64_t guest_errors_ = 0;
};

}  // namespace clonevm::virtio

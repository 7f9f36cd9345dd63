// VirtioDevice: what a virtio device implements for a transport (virtio-mmio today) to drive it.
//
// The transport owns the device, its queues and its interrupt. It negotiates features (it offers
// device_features() plus VIRTIO_F_VERSION_1, VIRTIO_F_EVENT_IDX and VIRTIO_F_INDIRECT_DESC, which
// Queue implements for every device), then on DRIVER_OK validates the ready queues and calls
// Activate(). After that, ProcessQueue(i) runs whenever the driver notifies queue i.
//
// Threads and locking: every method is called with the transport's lock held, from a vCPU thread
// (register accesses, a QueueNotify that bypassed the ioeventfd) or from the VMM event loop
// (ioeventfd notifications, MmioTransport::RunDeviceTask). Methods must not block for long and must
// not call back into the transport. Interrupt methods may be called from anywhere.
//
// Guest errors: ProcessQueue() and Activate() return an Error when the guest did something invalid
// (a bad chain, a malformed request header); the transport then stops the device (Reset()), sets
// DEVICE_NEEDS_RESET and raises a config interrupt. Host I/O failures that the device protocol can
// report (e.g. virtio-blk VIRTIO_BLK_S_IOERR) are answered in-band, not returned as errors.
//
// State: SaveState() returns a versioned JSON object (see json_state.h); RestoreState() is called on
// a fresh, never-activated device, before the transport re-activates it if the saved driver status
// had DRIVER_OK. Fds and threads are rebuilt, never serialized.
//
// Devices with their own fds or an out-of-process data path (vhost, a TAP):
//   * watched_fds(): fds the VMM watches on its event loop for the device, fixed at creation
//     (EventLoop::Add must happen before the loop runs, Activate() runs on a vCPU thread). When
//     one is ready the transport calls HandleFdEvent(index, events) under its lock, whether the
//     device is active or not (an inactive device drains or ignores the event). An Error from it
//     while the device is active is a guest error (NEEDS_RESET).
//   * kicks_go_to_backend(i): queue i's ioeventfd is consumed by a backend (vhost's
//     VHOST_SET_VRING_KICK gets DeviceContext::queue_eventfds[i]); the VMM then must not watch it,
//     and ProcessQueue(i) runs only for a QueueNotify that reached the registers.
//   * Pause()/Resume(): stop and restart a data path that runs outside the VMM, for snapshots.
//     After Pause() the rings and guest memory no longer change and the queues' next_avail /
//     next_used are current, so the transport's SaveState() is consistent.
#pragma once

#include <algorithm>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <span>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "devices/virtio/interrupt.h"
#include "devices/virtio/queue.h"
#include "memory/guest_memory.h"

namespace clonevm::virtio {

// What an active device works with; everything outlives the activation (until Reset()).
struct DeviceContext {
  const GuestMemory& memory;
  std::span<Queue> queues;  // one per queue_max_sizes() entry; queues the driver left unready are inactive
  Interrupt& interrupt;
  uint64_t features;                             // the negotiated feature bits
  std::span<const EventFd> queue_eventfds = {};  // the per-queue ioeventfds (for a backend's kicks)
};

// An fd the VMM watches for a device (see watched_fds()).
struct WatchedFd {
  int fd = -1;
  uint32_t events = 0;  // EPOLLIN, EPOLLIN | EPOLLET, ...
};

class VirtioDevice {
 public:
  virtual ~VirtioDevice() = default;

  // The virtio device ID (5), e.g. kDeviceTypeEntropy.
  virtual uint32_t device_type() const = 0;
  // QueueNumMax of each queue (powers of two); the size of this span is the number of queues.
  virtual std::span<const uint16_t> queue_max_sizes() const = 0;
  // Device-type-specific feature bits offered to the driver (bits 0..23 and 50..63, see 6).
  virtual uint64_t device_features() const = 0;

  // Size in bytes of the device-specific config space (at most 0xf00 for virtio-mmio).
  virtual uint32_t config_size() const { return 0; }
  // Config accesses with offset + data.size() <= config_size() (the transport checks the range).
  virtual void ReadConfig(uint64_t /*offset*/, std::span<uint8_t> data) { std::fill(data.begin(), data.end(), 0); }
  virtual void WriteConfig(uint64_t /*offset*/, std::span<const uint8_t> /*data*/) {}

  // Starts the device. An error leaves it inactive and the transport in NEEDS_RESET.
  [[nodiscard]] virtual Result<void> Activate(const DeviceContext& context) = 0;
  // Stops the device: it drops (Abandon()s) outstanding chains and forgets the DeviceContext.
  virtual void Reset() = 0;
  // The driver notified queue `index` (an active queue). An error means a guest error (see above).
  [[nodiscard]] virtual Result<void> ProcessQueue(size_t index) = 0;

  // See "Devices with their own fds" above. The defaults suit devices served only by the VMM.
  virtual std::vector<WatchedFd> watched_fds() const { return {}; }
  [[nodiscard]] virtual Result<void> HandleFdEvent(size_t /*index*/, uint32_t /*events*/) { return {}; }
  virtual bool kicks_go_to_backend(size_t /*queue_index*/) const { return false; }
  // Called under the transport lock while the device is active.
  [[nodiscard]] virtual Result<void> Pause() { return {}; }
  [[nodiscard]] virtual Result<void> Resume() { return {}; }

  [[nodiscard]] virtual nlohmann::json SaveState() const = 0;
  [[nodiscard]] virtual Result<void> RestoreState(const nlohmann::json& state) = 0;
};

}  // namespace clonevm::virtio

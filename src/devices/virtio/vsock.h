// Vsock: virtio-vsock (virtio 1.2, 5.10) with its data path in the kernel's vhost-vsock.
//
//   auto vsock = CLONE_TRY(virtio::Vsock::Create(/*cid=*/0));   // 0: the first free CID from 3 up
//   uint64_t cid = vsock->guest_cid();
//   auto transport = CLONE_TRY(virtio::MmioTransport::Create(memory, std::move(vsock)));
//
// Queues: rx (0) and tx (1) are served by /dev/vhost-vsock (kicks_go_to_backend; the VMM watches
// the two vhost call eventfds, watched_fds() 0 and 1, and raises the used-buffer interrupt). The
// event queue (2) is the VMM's: the driver fills it with buffers that the device keeps until it has
// an event to report. The only event is VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, sent when the CID
// changes (SetGuestCid, or a restore into a device whose CID differs from the saved one): the
// driver then drops its connections and re-reads guest_cid from the config space.
//
// Config space: struct virtio_vsock_config { le64 guest_cid; }, read-only. Features: only
// VIRTIO_VSOCK_F_SEQPACKET, when the kernel's vhost-vsock supports it.
//
// CIDs are host-wide: Create() fails with "vsock CID N is already used by another VM" when the kernel
// answers VHOST_VSOCK_SET_GUEST_CID with EADDRINUSE, and with a message naming vhost_vsock when
// /dev/vhost-vsock is missing. Valid CIDs are 3 .. 2^32 - 2.
//
// Guest input: an event buffer with fewer than 4 writable bytes is a guest error (NEEDS_RESET); a
// driver that posts no event buffers just gets the reset later, when it posts one. vhost-vsock
// validates the rx/tx rings itself.
//
// State (SaveState/RestoreState, version 1): {"version", "guest_cid", "reset_pending"}. Call
// MmioTransport::PauseDevice() before saving: it stops vhost (VHOST_VSOCK_SET_RUNNING 0) and reads
// the ring positions (VHOST_GET_VRING_BASE) into the transport's queue state; ResumeDevice()
// restarts it. Activation after a restore programs vhost from those positions (VHOST_SET_VRING_BASE).
//
// Thread-safety: every method but guest_cid() runs under the transport lock (MmioTransport::WithDevice
// for SetGuestCid from outside); guest_cid() may be read from any thread.
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <optional>

#include "devices/virtio/mmio_transport.h"
#include "devices/virtio/vhost.h"
#include "devices/virtio/virtio_device.h"
#include "devices/virtio/virtio_spec.h"

namespace clonevm::virtio {

class Vsock : public VirtioDevice {
 public:
  static constexpr uint16_t kQueueSize = 128;
  static constexpr size_t kRxQueue = 0, kTxQueue = 1, kEventQueue = 2;
  static constexpr uint64_t kFirstGuestCid = 3;
  static constexpr uint64_t kMaxGuestCid = 0xfffffffe;  // 0xffffffff is VMADDR_CID_ANY
  static constexpr uint32_t kEventTransportReset = 0;   // VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
  static constexpr uint64_t kFeatureSeqpacket = 1ull << 1;
  static constexpr const char* kDefaultDevice = "/dev/vhost-vsock";

  // Opens the vhost device and claims `cid` (0: the first free one from kFirstGuestCid up).
  [[nodiscard]] static Result<std::unique_ptr<Vsock>> Create(uint64_t cid,
                                                             const std::string& vhost_path = kDefaultDevice);

  uint32_t device_type() const override { return kDeviceTypeVsock; }
  std::span<const uint16_t> queue_max_sizes() const override { return kQueueSizes; }
  uint64_t device_features() const override { return vhost_.features() & kFeatureSeqpacket; }
  uint32_t config_size() const override { return sizeof(uint64_t); }
  void ReadConfig(uint64_t offset, std::span<uint8_t> data) override;

  Result<void> Activate(const DeviceContext& context) override;
  void Reset() override;
  Result<void> ProcessQueue(size_t index) override;
  std::vector<WatchedFd> watched_fds() const override;
  Result<void> HandleFdEvent(size_t index, uint32_t events) override;
  bool kicks_go_to_backend(size_t queue_index) const override { return queue_index != kEventQueue; }
  Result<void> Pause() override;
  Result<void> Resume() override;

  nlohmann::json SaveState() const override;
  Result<void> RestoreState(const nlohmann::json& state) override;

  // Moves the guest to `cid` (VHOST_VSOCK_SET_GUEST_CID, then the config space) and sends
  // TRANSPORT_RESET on the event queue (now, or when the driver next posts an event buffer) so the
  // driver re-reads it. A taken CID is an error and changes nothing. Under the transport lock.
  [[nodiscard]] Result<void> SetGuestCid(uint64_t cid);
  uint64_t guest_cid() const { return cid_.load(std::memory_order_relaxed); }
  // Whether a TRANSPORT_RESET is waiting for an event buffer (for tests and snapshots).
  bool reset_pending() const { return reset_pending_; }

 private:
  static constexpr std::array<uint16_t, 3> kQueueSizes = {kQueueSize, kQueueSize, kQueueSize};

  explicit Vsock(VhostBackend vhost) : vhost_(std::move(vhost)) {}
  [[nodiscard]] Result<void> ClaimCid(uint64_t cid);
  [[nodiscard]] Result<void> SetRunning(bool running);
  // Sends a pending TRANSPORT_RESET if the event queue has a buffer. An Error is a guest error.
  [[nodiscard]] Result<void> DeliverEvents();

  VhostBackend vhost_;
  std::atomic<uint64_t> cid_{0};
  bool reset_pending_ = false;
  bool running_ = false;
  std::optional<DeviceContext> context_;  // set while active
};

// Runs Vsock::SetGuestCid on the device behind `transport` under its lock (for snapshot/fork code).
[[nodiscard]] Result<void> SetVsockGuestCid(MmioTransport& transport, uint64_t cid);

}  // namespace clonevm::virtio

// Net: virtio-net (virtio 1.2, 5.1) over a TAP interface, with the data path in the kernel's
// vhost-net or, without it, in the VMM.
//
//   Fd tap = CLONE_TRY(virtio::OpenTap("tap0"));               // or a TAP from net/ (automatic mode)
//   auto net = CLONE_TRY(virtio::Net::Create(std::move(tap), mac, virtio::VhostMode::kAuto));
//   auto transport = CLONE_TRY(virtio::MmioTransport::Create(memory, std::move(net)));
//
// One rx (0) / tx (1) queue pair, no control queue. Config space: struct virtio_net_config with the
// MAC and status = VIRTIO_NET_S_LINK_UP. Features offered: MAC, STATUS, MRG_RXBUF, and when the TAP
// takes offloads CSUM, GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN, HOST_TSO4/6, HOST_ECN. UFO is never
// offered: Linux TAPs accept TUN_F_UFO but have ignored it since 4.14. At activation the TAP is told
// (TUNSETOFFLOAD) which offloads the guest accepted for its receive side; the transmit side needs no
// set-up, the TAP takes any offload in the vnet header. Frames carry the 12-byte virtio_net_hdr_v1
// on both sides, so headers pass between the guest and the TAP unchanged.
//
// Data path, chosen at creation (VhostMode):
//   * vhost-net: both queues are served by /dev/vhost-net (VHOST_NET_SET_BACKEND = the TAP);
//     watched_fds() are the two vhost call eventfds, answered with the used-buffer interrupt.
//   * userspace (no /dev/vhost-net with kAuto, or kOff): TX on a tx kick — each chain's readable
//     part (header + frame) is written to the TAP with one writev; RX — watched_fds() is the TAP fd,
//     edge-triggered: frames are read until EAGAIN or until the guest has no rx buffers left; then
//     the device waits for the guest's next rx kick (it never spins on a readable TAP), holding at
//     most one frame. With MRG_RXBUF a frame is spread over as many rx chains as it needs and
//     num_buffers says how many. One turn handles at most 128 tx chains / 256 rx frames, then
//     re-signals itself (the tx queue's eventfd, an internal rx eventfd) and yields to the loop.
//
// Guest input: TX chains shorter than header + Ethernet header or longer than kMaxFrameBytes are
// dropped (returned with 0 bytes, rate-limited log); so are frames the TAP refuses (a bad vnet
// header is the TAP's to reject). An rx chain without writable space, or (MRG_RXBUF) one smaller
// than the header, is a guest error (NEEDS_RESET). A frame larger than the driver's buffers (all of
// them, with MRG_RXBUF) is dropped.
//
// State (version 1): {"version", "mac", "vhost"}. The TAP is reopened by the VMM. Pause() stops
// vhost and reads the ring positions (or, userspace, gives back rx chains held for a frame by
// rewinding next_avail), so the transport saves consistent queues; Resume() restarts.
//
// Thread-safety: under the transport lock (device entry points run on the event loop or a vCPU).
#pragma once

#include <array>
#include <memory>
#include <optional>
#include <vector>

#include "base/fd.h"
#include "devices/virtio/tap.h"
#include "devices/virtio/vhost.h"
#include "devices/virtio/virtio_device.h"
#include "devices/virtio/virtio_spec.h"

namespace clonevm::virtio {

// virtio-net feature bits (5.1.3) and config space (5.1.4); <linux/virtio_net.h> is not valid C++.
inline constexpr uint64_t kNetFeatureCsum = 1ull << 0;
inline constexpr uint64_t kNetFeatureGuestCsum = 1ull << 1;
inline constexpr uint64_t kNetFeatureMac = 1ull << 5;
inline constexpr uint64_t kNetFeatureGuestTso4 = 1ull << 7;
inline constexpr uint64_t kNetFeatureGuestTso6 = 1ull << 8;
inline constexpr uint64_t kNetFeatureGuestEcn = 1ull << 9;
inline constexpr uint64_t kNetFeatureHostTso4 = 1ull << 11;
inline constexpr uint64_t kNetFeatureHostTso6 = 1ull << 12;
inline constexpr uint64_t kNetFeatureHostEcn = 1ull << 13;
inline constexpr uint64_t kNetFeatureMrgRxbuf = 1ull << 15;
inline constexpr uint64_t kNetFeatureStatus = 1ull << 16;
inline constexpr uint16_t kNetStatusLinkUp = 1;

struct VirtioNetConfig {  // the fields up to mtu of struct virtio_net_config, little-endian
  uint8_t mac[6];
  uint16_t status;
  uint16_t max_virtqueue_pairs;
  uint16_t mtu;
};
static_assert(sizeof(VirtioNetConfig) == 12);

// How virtio-net moves frames: kAuto uses vhost-net when /dev/vhost-net opens, else the VMM.
enum class VhostMode { kAuto, kOn, kOff };

using MacAddress = std::array<uint8_t, 6>;

class Net : public VirtioDevice {
 public:
  static constexpr uint16_t kQueueSize = 256;
  static constexpr size_t kRxQueue = 0, kTxQueue = 1;
  static constexpr size_t kEthHeaderBytes = 14;
  // The largest frame (without the vnet header) either way: a 64 KiB GSO frame plus link headers.
  static constexpr size_t kMaxFrameBytes = 65536 + kEthHeaderBytes + 4;
  static constexpr const char* kDefaultVhostDevice = "/dev/vhost-net";

  // `tap` must be a TAP opened with IFF_VNET_HDR (OpenTap does that); it is prepared here.
  [[nodiscard]] static Result<std::unique_ptr<Net>> Create(Fd tap, MacAddress mac, VhostMode mode,
                                                           const std::string& vhost_path = kDefaultVhostDevice);

  uint32_t device_type() const override { return kDeviceTypeNet; }
  std::span<const uint16_t> queue_max_sizes() const override { return kQueueSizes; }
  uint64_t device_features() const override { return features_; }
  uint32_t config_size() const override { return sizeof(config_); }
  void ReadConfig(uint64_t offset, std::span<uint8_t> data) override;

  Result<void> Activate(const DeviceContext& context) override;
  void Reset() override;
  Result<void> ProcessQueue(size_t index) override;
  std::vector<WatchedFd> watched_fds() const override;
  Result<void> HandleFdEvent(size_t index, uint32_t events) override;
  bool kicks_go_to_backend(size_t /*queue_index*/) const override { return vhost_.has_value(); }
  Result<void> Pause() override;
  Result<void> Resume() override;

  nlohmann::json SaveState() const override;
  Result<void> RestoreState(const nlohmann::json& state) override;

  bool uses_vhost() const { return vhost_.has_value(); }
  const MacAddress& mac() const { return mac_; }
  // The TUN_F_* offloads set on the TAP at the last activation (for tests).
  unsigned tap_offloads() const { return tap_offloads_; }

 private:
  static constexpr std::array<uint16_t, 2> kQueueSizes = {kQueueSize, kQueueSize};

  Net(Fd tap, MacAddress mac, std::optional<VhostBackend> vhost, unsigned tap_offloads);
  [[nodiscard]] Result<void> SetVhostBackend(int fd);
  [[nodiscard]] Result<void> ProcessTx();
  void SendFrame(const DescriptorChain& chain);
  [[nodiscard]] Result<void> ProcessRx();
  // Reads the next frame from the TAP into rx_frame_; false when none is waiting.
  bool ReadFrame();
  // Gives the held frame to the guest; false when the guest has too few rx buffers for it now.
  [[nodiscard]] Result<bool> DeliverFrame();
  void ReleaseRxChains();

  Fd tap_;
  MacAddress mac_;
  std::optional<VhostBackend> vhost_;
  unsigned tap_offload_support_ = 0;  // TUN_F_* the TAP accepts
  unsigned tap_offloads_ = 0;         // TUN_F_* in force
  uint64_t features_ = 0;
  VirtioNetConfig config_{};
  bool backend_running_ = false;  // vhost: SET_BACKEND done; userspace: not paused
  bool mrg_rxbuf_ = false;
  std::optional<DeviceContext> context_;  // set while active

  // Userspace RX: one frame read from the TAP and not yet delivered, and the rx chains popped for it.
  std::vector<uint8_t> rx_frame_;
  size_t rx_frame_len_ = 0;  // 0: no frame held
  std::vector<DescriptorChain> rx_chains_;
  std::optional<EventFd> rx_resume_;  // userspace: signalled when RX stopped on its budget, not on EAGAIN
};

// Parses "52:54:00:12:34:56" (case-insensitive hex); a multicast address is refused.
[[nodiscard]] Result<MacAddress> ParseMac(const std::string& text);
std::string FormatMac(const MacAddress& mac);
// A random locally administered unicast MAC (02:xx:xx:xx:xx:xx with the low bits random).
MacAddress RandomMac();

}  // namespace clonevm::virtio

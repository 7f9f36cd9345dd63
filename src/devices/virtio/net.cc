#include "devices/virtio/net.h"

#include <linux/if_tun.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/uio.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "base/log.h"
#include "devices/virtio/json_state.h"
#include "devices/virtio/rng.h"
#include "kvm/uapi.h"  // <linux/vhost.h>

namespace clonevm::virtio {
namespace {

constexpr int kStateVersion = 1;

constexpr uint64_t kGuestOffloads = kNetFeatureGuestCsum | kNetFeatureGuestTso4 | kNetFeatureGuestTso6;
constexpr uint64_t kHostOffloads = kNetFeatureCsum | kNetFeatureHostTso4 | kNetFeatureHostTso6;
constexpr uint64_t kEcnOffloads = kNetFeatureGuestEcn | kNetFeatureHostEcn;
constexpr unsigned kTunOffloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;

// Frames handled per RX / TX call before the device yields to the event loop (fairness under a flood).
constexpr int kRxBudget = 256;
constexpr int kTxBudget = 128;
// Where num_buffers sits in struct virtio_net_hdr_v1.
constexpr size_t kNumBuffersOffset = 10;

// The TUN_F_* offloads the TAP may use towards a guest that negotiated `features`. The TAP does
// segmentation offloads only together with checksum offload (tun's TUNSETOFFLOAD rule).
unsigned TunOffloadsFor(uint64_t features) {
  if (!(features & kNetFeatureGuestCsum)) return 0;
  unsigned tun = TUN_F_CSUM;
  if (features & kNetFeatureGuestTso4) tun |= TUN_F_TSO4;
  if (features & kNetFeatureGuestTso6) tun |= TUN_F_TSO6;
  if ((tun & (TUN_F_TSO4 | TUN_F_TSO6)) && (features & kNetFeatureGuestEcn)) tun |= TUN_F_TSO_ECN;
  return tun;
}

}  // namespace

Result<std::unique_ptr<Net>> Net::Create(Fd tap, MacAddress mac, VhostMode mode, const std::string& vhost_path) {
  if (!tap.valid()) return Fail("virtio-net: no TAP");
  unsigned support = CLONE_TRY(PrepareTap(tap));
  std::optional<VhostBackend> vhost;
  if (mode != VhostMode::kOff) {
    auto opened = VhostBackend::Open(vhost_path, 2);
    if (opened) {
      vhost.emplace(std::move(*opened));
    } else if (mode == VhostMode::kOn) {
      return Fail(opened.error().Wrap("vhost=on"));
    } else {
      Log(LogLevel::kInfo, "virtio-net: {}; using the userspace data path", opened.error().message());
    }
  }
  std::unique_ptr<Net> net(new Net(std::move(tap), mac, std::move(vhost), support));
  if (!net->vhost_) net->rx_resume_.emplace(CLONE_TRY(EventFd::Create(EFD_NONBLOCK)));
  return net;
}

Net::Net(Fd tap, MacAddress mac, std::optional<VhostBackend> vhost, unsigned tap_offloads)
    : tap_(std::move(tap)), mac_(mac), vhost_(std::move(vhost)), tap_offload_support_(tap_offloads) {
  features_ = kNetFeatureMac | kNetFeatureStatus;
  if (!vhost_ || (vhost_->features() & kNetFeatureMrgRxbuf)) features_ |= kNetFeatureMrgRxbuf;
  if ((tap_offload_support_ & kTunOffloads) == kTunOffloads) {
    features_ |= kGuestOffloads | kHostOffloads;
    if (tap_offload_support_ & TUN_F_TSO_ECN) features_ |= kEcnOffloads;
  }
  std::copy(mac_.begin(), mac_.end(), config_.mac);
  config_.status = kNetStatusLinkUp;  // le16
  config_.max_virtqueue_pairs = 1;
  rx_frame_.resize(kVnetHdrSize + kMaxFrameBytes);
}

void Net::ReadConfig(uint64_t offset, std::span<uint8_t> data) {
  // SAFETY: the transport keeps offset + data.size() inside config_size() == sizeof(config_).
  std::memcpy(data.data(), reinterpret_cast<const uint8_t*>(&config_) + offset, data.size());
}

Result<void> Net::SetVhostBackend(int fd) {
  for (unsigned i = 0; i < 2; ++i) {
    CLONE_TRY_VOID(vhost_->Ioctl(VHOST_NET_SET_BACKEND, vhost_vring_file{i, fd}, "VHOST_NET_SET_BACKEND"));
  }
  backend_running_ = fd >= 0;
  return {};
}

Result<void> Net::Activate(const DeviceContext& context) {
  mrg_rxbuf_ = (context.features & kNetFeatureMrgRxbuf) != 0;
  unsigned offloads = TunOffloadsFor(context.features) & tap_offload_support_;
  CLONE_TRY_VOID(SetTapOffload(tap_, offloads));
  tap_offloads_ = offloads;
  context_.emplace(context);
  if (vhost_) {
    auto started = vhost_->Start(context);
    if (started) started = SetVhostBackend(tap_.get());
    if (!started) context_.reset();
    return started;
  }
  backend_running_ = true;
  return ProcessRx();  // frames that arrived before the driver was ready
}

void Net::Reset() {
  if (vhost_ && backend_running_) {
    if (auto stopped = SetVhostBackend(-1); !stopped)
      Log(LogLevel::kError, "virtio-net: {}", stopped.error().message());
  }
  backend_running_ = false;
  ReleaseRxChains();
  rx_frame_len_ = 0;
  context_.reset();
  if (SetTapOffload(tap_, 0)) tap_offloads_ = 0;
}

void Net::ReleaseRxChains() {
  for (DescriptorChain& chain : rx_chains_) chain.Abandon();
  rx_chains_.clear();
}

Result<void> Net::ProcessQueue(size_t index) {
  if (!context_) return {};
  if (vhost_) {
    // A QueueNotify that reached the registers instead of the ioeventfd: pass the kick on to vhost.
    context_->queue_eventfds[index].Signal();
    return {};
  }
  if (!backend_running_) return {};  // paused: Resume() looks at both queues
  return index == kTxQueue ? ProcessTx() : ProcessRx();
}

std::vector<WatchedFd> Net::watched_fds() const {
  if (vhost_) return {{vhost_->call_eventfd(kRxQueue).fd(), EPOLLIN}, {vhost_->call_eventfd(kTxQueue).fd(), EPOLLIN}};
  // Edge-triggered: a readable TAP with no rx buffers must not wake the loop again and again.
  return {{tap_.get(), EPOLLIN | EPOLLET}, {rx_resume_->fd(), EPOLLIN}};
}

Result<void> Net::HandleFdEvent(size_t index, uint32_t /*events*/) {
  if (vhost_) {
    if (index < vhost_->num_vrings() && vhost_->DrainCall(index) && context_) context_->interrupt.SignalUsed();
    return {};
  }
  if (index == 1) rx_resume_->Drain();
  if (!context_ || !backend_running_) return {};  // Activate()/Resume() read what is waiting
  return ProcessRx();
}

Result<void> Net::ProcessTx() {
  Queue& queue = context_->queues[kTxQueue];
  bool used = false;
  for (int budget = kTxBudget;; --budget) {
    if (budget == 0) {
      // A guest that keeps the ring full must not hold the loop: come back after other work.
      context_->queue_eventfds[kTxQueue].Signal();
      break;
    }
    std::optional<DescriptorChain> chain = CLONE_TRY(queue.Pop());
    if (!chain) break;
    SendFrame(*chain);
    queue.AddUsed(std::move(*chain), 0);
    used = true;
  }
  if (used && queue.NeedsNotification()) context_->interrupt.SignalUsed();
  return {};
}

void Net::SendFrame(const DescriptorChain& chain) {
  uint64_t len = chain.readable_bytes();  // guest-controlled
  if (len < kVnetHdrSize + kEthHeaderBytes || len > kVnetHdrSize + kMaxFrameBytes) {
    CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-net: dropped a {}-byte tx chain (header + frame must be {}..{})",
                          len, kVnetHdrSize + kEthHeaderBytes, kVnetHdrSize + kMaxFrameBytes);
    return;
  }
  std::vector<iovec> iov;
  iov.reserve(chain.readable().size());  // <= kMaxChainLength == IOV_MAX
  for (const GuestBuffer& b : chain.readable()) iov.push_back({b.host.data(), b.host.size()});
  for (;;) {
    ssize_t n = ::writev(tap_.get(), iov.data(), static_cast<int>(iov.size()));
    if (n >= 0) return;
    if (errno == EINTR) continue;
    // EIO: the TAP is down; EINVAL: the TAP refused the guest's vnet header.
    CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-net: TAP write dropped a frame: {}", std::strerror(errno));
    return;
  }
}

bool Net::ReadFrame() {
  for (;;) {
    ssize_t n = ::read(tap_.get(), rx_frame_.data(), rx_frame_.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-net: TAP read: {}", std::strerror(errno));
      return false;
    }
    if (n == 0) return false;
    if (static_cast<size_t>(n) < kVnetHdrSize + kEthHeaderBytes) continue;  // a runt: dropped
    rx_frame_len_ = std::min(static_cast<size_t>(n), rx_frame_.size());
    return true;
  }
}

Result<void> Net::ProcessRx() {
  Queue& queue = context_->queues[kRxQueue];
  uint16_t used_before = queue.config().next_used;
  for (int budget = kRxBudget;; --budget) {
    if (budget == 0) {
      rx_resume_->Signal();  // more may be waiting: continue from the loop after other work
      break;
    }
    if (rx_frame_len_ == 0 && !ReadFrame()) break;
    bool delivered = CLONE_TRY(DeliverFrame());
    if (!delivered) break;  // out of rx buffers: the driver's next rx kick resumes
  }
  if (queue.config().next_used != used_before && queue.NeedsNotification()) context_->interrupt.SignalUsed();
  return {};
}

Result<bool> Net::DeliverFrame() {
  Queue& queue = context_->queues[kRxQueue];
  const size_t len = rx_frame_len_;
  // Chains already held cover a prefix; pop more until the frame fits (one chain without MRG_RXBUF).
  size_t needed = 0;
  uint64_t room = 0;
  for (; needed < rx_chains_.size() && room < len; ++needed) room += rx_chains_[needed].writable_bytes();
  while (room < len && (mrg_rxbuf_ || rx_chains_.empty())) {
    if (rx_chains_.size() >= queue.config().size) break;
    std::optional<DescriptorChain> chain = CLONE_TRY(queue.Pop());
    if (!chain) return false;
    uint64_t writable = chain->writable_bytes();  // guest-controlled layout
    if (writable < (mrg_rxbuf_ ? kVnetHdrSize : 1)) {
      chain->Abandon();
      return Fail("rx chain with {} writable bytes", writable);
    }
    rx_chains_.push_back(std::move(*chain));
    room += writable;
    ++needed;
  }
  if (room < len) {
    // Larger than every buffer the driver can give: dropped; the chains serve the next frame
    // (without MRG_RXBUF the one chain goes back empty, which the driver counts as an error).
    CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-net: dropped a {}-byte frame: rx buffers hold {}", len, room);
    rx_frame_len_ = 0;
    if (!mrg_rxbuf_) {
      queue.AddUsed(std::move(rx_chains_.front()), 0);
      rx_chains_.clear();
    }
    return true;
  }
  uint16_t count = static_cast<uint16_t>(needed);
  std::memcpy(rx_frame_.data() + kNumBuffersOffset, &count, sizeof(count));  // le16 num_buffers
  size_t offset = 0;
  for (size_t i = 0; i < needed; ++i) {
    size_t n = std::min<uint64_t>(rx_chains_[i].writable_bytes(), len - offset);
    rx_chains_[i].CopyToWritable(0, std::span(rx_frame_).subspan(offset, n));
    offset += n;
    queue.AddUsed(std::move(rx_chains_[i]), static_cast<uint32_t>(n));
  }
  rx_chains_.erase(rx_chains_.begin(), rx_chains_.begin() + static_cast<ptrdiff_t>(needed));
  rx_frame_len_ = 0;
  return true;
}

Result<void> Net::Pause() {
  if (!context_ || !backend_running_) return {};
  if (vhost_) {
    CLONE_TRY_VOID(SetVhostBackend(-1));
    return vhost_->SaveRingPositions(*context_);
  }
  // Chains held for a frame go back to the avail ring: they are its most recent entries.
  context_->queues[kRxQueue].config().next_avail -= static_cast<uint16_t>(rx_chains_.size());
  ReleaseRxChains();
  backend_running_ = false;
  return {};
}

Result<void> Net::Resume() {
  if (!context_ || backend_running_) return {};
  if (vhost_) {
    // As in Vsock::Resume: dirty logging may have been switched on while paused.
    if (auto synced = vhost_->SyncDirtyLog(*context_); !synced)
      Log(LogLevel::kWarn, "virtio-net: {}", synced.error().message());
    return SetVhostBackend(tap_.get());
  }
  backend_running_ = true;
  CLONE_TRY_VOID(ProcessTx());
  return ProcessRx();
}

nlohmann::json Net::SaveState() const {
  return {{"version", kStateVersion}, {"mac", FormatMac(mac_)}, {"vhost", vhost_.has_value()}};
}

Result<void> Net::RestoreState(const nlohmann::json& state) {
  CLONE_TRY(StateVersion(state, kStateVersion, "virtio-net"));
  auto mac = state.find("mac");
  if (mac == state.end() || !mac->is_string()) return Fail("missing \"mac\"");
  CLONE_TRY(ParseMac(mac->get<std::string>()));
  // The MAC and data path are this device's (a fork may get a new MAC; the agent tells the guest).
  return {};
}

Result<MacAddress> ParseMac(const std::string& text) {
  MacAddress mac{};
  if (text.size() != 17) return Fail("MAC address '{}' is not of the form 52:54:00:12:34:56", text);
  for (size_t i = 0; i < 6; ++i) {
    if (i > 0 && text[3 * i - 1] != ':') return Fail("MAC address '{}' is not of the form 52:54:00:12:34:56", text);
    unsigned value = 0;
    for (size_t j = 0; j < 2; ++j) {
      char c = static_cast<char>(std::tolower(static_cast<unsigned char>(text[3 * i + j])));
      int digit = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
      if (digit < 0) return Fail("MAC address '{}' is not of the form 52:54:00:12:34:56", text);
      value = value * 16 + static_cast<unsigned>(digit);
    }
    mac[i] = static_cast<uint8_t>(value);
  }
  if (mac[0] & 1) return Fail("MAC address '{}' is a multicast address", text);
  if (mac == MacAddress{}) return Fail("MAC address '{}' is all zeros", text);
  return mac;
}

std::string FormatMac(const MacAddress& mac) {
  return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
}

MacAddress RandomMac() {
  MacAddress mac{};
  FillRandom(mac);
  mac[0] = static_cast<uint8_t>((mac[0] & 0xfc) | 0x02);  // unicast, locally administered
  return mac;
}

}  // namespace clonevm::virtio

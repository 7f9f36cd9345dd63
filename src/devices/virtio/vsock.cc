#include "devices/virtio/vsock.h"

#include <sys/epoll.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "base/log.h"
#include "devices/virtio/json_state.h"
#include "kvm/uapi.h"  // <linux/vhost.h>

namespace clonevm::virtio {
namespace {

constexpr int kStateVersion = 1;
// How many CIDs an automatic choice tries before giving up.
constexpr uint64_t kAutoCidAttempts = 65536;

}  // namespace

Result<std::unique_ptr<Vsock>> Vsock::Create(uint64_t cid, const std::string& vhost_path) {
  if (cid != 0 && (cid < kFirstGuestCid || cid > kMaxGuestCid)) {
    return Fail("vsock CID {} is invalid (use {}..{})", cid, kFirstGuestCid, kMaxGuestCid);
  }
  auto vhost = CLONE_TRY(VhostBackend::Open(vhost_path, 2));
  std::unique_ptr<Vsock> vsock(new Vsock(std::move(vhost)));
  if (cid != 0) {
    CLONE_TRY_VOID(vsock->ClaimCid(cid));
    return vsock;
  }
  for (uint64_t candidate = kFirstGuestCid; candidate < kFirstGuestCid + kAutoCidAttempts; ++candidate) {
    auto claimed = vsock->ClaimCid(candidate);
    if (claimed) return vsock;
    if (claimed.error().error_number() != EADDRINUSE) return Fail(claimed.error());
  }
  return Fail("no free vsock CID among {}..{}", kFirstGuestCid, kFirstGuestCid + kAutoCidAttempts - 1);
}

Result<void> Vsock::ClaimCid(uint64_t cid) {
  if (cid < kFirstGuestCid || cid > kMaxGuestCid) {
    return Fail("vsock CID {} is invalid (use {}..{})", cid, kFirstGuestCid, kMaxGuestCid);
  }
  auto set = vhost_.Ioctl(VHOST_VSOCK_SET_GUEST_CID, cid, "VHOST_VSOCK_SET_GUEST_CID");
  if (!set) {
    if (set.error().error_number() == EADDRINUSE) {
      return tl::unexpected(Error(fmt::format("vsock CID {} is already used by another VM", cid), EADDRINUSE));
    }
    return Fail(set.error());
  }
  cid_.store(cid, std::memory_order_relaxed);
  return {};
}

void Vsock::ReadConfig(uint64_t offset, std::span<uint8_t> data) {
  uint64_t cid = guest_cid();  // le64; the transport keeps offset + size inside config_size()
  // SAFETY: offset + data.size() <= sizeof(cid), checked by the transport.
  std::memcpy(data.data(), reinterpret_cast<const uint8_t*>(&cid) + offset, data.size());
}

Result<void> Vsock::SetRunning(bool running) {
  int value = running ? 1 : 0;
  CLONE_TRY_VOID(vhost_.Ioctl(VHOST_VSOCK_SET_RUNNING, value, "VHOST_VSOCK_SET_RUNNING"));
  running_ = running;
  return {};
}

Result<void> Vsock::Activate(const DeviceContext& context) {
  CLONE_TRY_VOID(vhost_.Start(context));
  context_.emplace(context);
  auto started = SetRunning(true);
  if (!started) {
    context_.reset();
    return started;
  }
  return DeliverEvents();
}

void Vsock::Reset() {
  if (running_) {
    if (auto stopped = SetRunning(false); !stopped)
      Log(LogLevel::kError, "virtio-vsock: {}", stopped.error().message());
  }
  context_.reset();
  reset_pending_ = false;  // a reset driver reads the CID afresh when it probes again
}

Result<void> Vsock::ProcessQueue(size_t index) {
  if (!context_) return {};
  if (index == kEventQueue) return DeliverEvents();
  // A QueueNotify that reached the registers instead of the ioeventfd: pass the kick on to vhost.
  context_->queue_eventfds[index].Signal();
  return {};
}

Result<void> Vsock::DeliverEvents() {
  if (!context_ || !reset_pending_) return {};
  Queue& queue = context_->queues[kEventQueue];
  std::optional<DescriptorChain> chain = CLONE_TRY(queue.Pop());
  if (!chain) return {};  // sent when the driver posts an event buffer
  if (chain->writable_bytes() < sizeof(uint32_t)) {
    chain->Abandon();
    return Fail("vsock event buffer has {} writable bytes (need 4)", chain->writable_bytes());
  }
  uint32_t event = kEventTransportReset;  // struct virtio_vsock_event { le32 id; }
  chain->CopyToWritable(0, std::span(reinterpret_cast<const uint8_t*>(&event), sizeof(event)));
  queue.AddUsed(std::move(*chain), sizeof(event));
  reset_pending_ = false;
  if (queue.NeedsNotification()) context_->interrupt.SignalUsed();
  return {};
}

std::vector<WatchedFd> Vsock::watched_fds() const {
  return {{vhost_.call_eventfd(kRxQueue).fd(), EPOLLIN}, {vhost_.call_eventfd(kTxQueue).fd(), EPOLLIN}};
}

Result<void> Vsock::HandleFdEvent(size_t index, uint32_t /*events*/) {
  if (index >= vhost_.num_vrings()) return {};
  if (vhost_.DrainCall(index) && context_) context_->interrupt.SignalUsed();
  return {};
}

Result<void> Vsock::Pause() {
  if (!context_ || !running_) return {};
  CLONE_TRY_VOID(SetRunning(false));
  return vhost_.SaveRingPositions(*context_);
}

Result<void> Vsock::Resume() {
  if (!context_ || running_) return {};
  // Dirty logging may have been switched on while paused (a snapshot started tracking). A failure
  // is recorded in the dirty log itself (snapshots then take every page); the device runs on.
  if (auto synced = vhost_.SyncDirtyLog(*context_); !synced)
    Log(LogLevel::kWarn, "virtio-vsock: {}", synced.error().message());
  return SetRunning(true);
}

Result<void> Vsock::SetGuestCid(uint64_t cid) {
  if (cid == guest_cid()) return {};
  CLONE_TRY_VOID(ClaimCid(cid));
  reset_pending_ = true;
  if (!context_) return {};
  context_->interrupt.SignalConfigChange();
  auto delivered = DeliverEvents();
  if (!delivered) {
    // The event buffer was malformed (a guest error), but the CID did change: the bad buffer is
    // dropped and the reset waits for the driver's next event buffer.
    CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-vsock: {}", delivered.error().message());
  }
  return {};
}

nlohmann::json Vsock::SaveState() const {
  return {{"version", kStateVersion}, {"guest_cid", guest_cid()}, {"reset_pending", reset_pending_}};
}

Result<void> Vsock::RestoreState(const nlohmann::json& state) {
  CLONE_TRY(StateVersion(state, kStateVersion, "virtio-vsock"));
  uint64_t saved_cid = CLONE_TRY(JsonUint<uint64_t>(state, "guest_cid"));
  bool pending = CLONE_TRY(JsonBool(state, "reset_pending"));
  // The CID belongs to this VM (claimed at Create); a guest that knew another one must re-read it.
  reset_pending_ = pending || saved_cid != guest_cid();
  return {};
}

Result<void> SetVsockGuestCid(MmioTransport& transport, uint64_t cid) {
  return transport.WithDevice([cid](VirtioDevice& device) -> Result<void> {
    auto* vsock = dynamic_cast<Vsock*>(&device);
    if (vsock == nullptr) return Fail("device type {} is not virtio-vsock", device.device_type());
    return vsock->SetGuestCid(cid);
  });
}

}  // namespace clonevm::virtio

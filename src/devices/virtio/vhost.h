// VhostBackend: a kernel vhost device (/dev/vhost-net, /dev/vhost-vsock) that serves the first
// num_vrings() queues of a virtio device in the kernel, outside the VMM.
//
//   auto vhost = CLONE_TRY(VhostBackend::Open("/dev/vhost-vsock", 2));   // at device creation
//   ...Activate(context): CLONE_TRY_VOID(vhost.Start(context)); + the device's own "run" ioctl
//   ...Reset():          the device's "stop" ioctl (then the vrings may be reprogrammed)
//   ...Pause():          the device's "stop" ioctl, then SaveRingPositions(context)
//
// Wiring (see VirtioDevice "Devices with their own fds"):
//   * kick: vring i reads the transport's ioeventfd for queue i (DeviceContext::queue_eventfds[i],
//     VHOST_SET_VRING_KICK); the device reports kicks_go_to_backend(i) so the VMM leaves it alone.
//   * call: vring i signals call_eventfd(i) when the driver wants an interrupt (vhost applies
//     EVENT_IDX / NO_INTERRUPT itself). virtio-mmio has no per-queue vectors and Linux's vm_interrupt()
//     ignores the IRQ unless InterruptStatus bit 0 is set, so the call eventfd cannot be KVM's irqfd:
//     the device lists the call eventfds in watched_fds() and answers each event with
//     DrainCall(i) + Interrupt::SignalUsed().
//
// Memory: Start() gives vhost every GuestMemory region (guest physical address, size, host virtual
// address) and the rings' host virtual addresses. Ring addresses are guest-controlled; Queue::Activate
// already checked them against RAM, and Start() checks them again with the sizes vhost will use, so
// vhost never sees an address outside guest RAM. Inside guest RAM, vhost itself validates every
// descriptor (copy_from_user on the VMM's mappings: a bad one fails the ring, not the host).
//
// Features: Start() acks to vhost the negotiated features that vhost offers (features()); other bits
// (e.g. virtio-net offloads, which concern the TAP) are not vhost's business.
//
// Dirty logging (incremental snapshots): when the guest memory's DirtyLog is enabled, Start() and
// SyncDirtyLog() hand vhost that log (VHOST_SET_LOG_BASE, the same words the VMM marks), ack
// VHOST_F_LOG_ALL and set VHOST_VRING_F_LOG with log_guest_addr = the used ring's guest address on
// every vring, so the kernel logs its used-ring writes and (for devices that log, such as vhost-net)
// the buffers it fills; when the log is disabled they take it back. If vhost cannot log (it lacks
// VHOST_F_LOG_ALL or refuses), the DirtyLog is told it is incomplete (DirtyLog::SetIncomplete) so the
// next incremental snapshot conservatively holds every page instead of silently missing vhost's
// writes. Linux's vhost-vsock does not log the receive buffers it fills (only its used ring): see
// docs/snapshots.md for what that means.
//
// Thread-safety: none; called under the transport lock. The fds may be used from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "devices/virtio/virtio_device.h"
#include "kvm/uapi.h"  // <linux/vhost.h>

namespace clonevm::virtio {

class VhostBackend {
 public:
  // Opens `path` (O_RDWR), becomes its owner (VHOST_SET_OWNER), reads its features and creates one
  // call eventfd per vring. ENOENT/EACCES errors name the path and the module to load.
  [[nodiscard]] static Result<VhostBackend> Open(const std::string& path, size_t num_vrings);

  const Fd& fd() const { return fd_; }
  const std::string& path() const { return path_; }
  // VHOST_GET_FEATURES: what this vhost device implements.
  uint64_t features() const { return features_; }
  size_t num_vrings() const { return call_eventfds_.size(); }
  const EventFd& call_eventfd(size_t vring) const { return call_eventfds_.at(vring); }
  // Reads call_eventfd(vring); whether it had been signalled.
  bool DrainCall(size_t vring) const { return call_eventfds_.at(vring).Drain() != 0; }

  // Programs vhost for an activated device: features (negotiated & features()), the memory table, and
  // for each vring i < num_vrings(): size, base = queues[i].config().next_avail, ring addresses,
  // call_eventfd(i), kick = context.queue_eventfds[i]. Every vring's queue must be active (a guest
  // that leaves one disabled gets an Error, i.e. NEEDS_RESET). The backend must be stopped.
  [[nodiscard]] Result<void> Start(const DeviceContext& context);

  // Brings vhost's dirty logging in line with context.memory.dirty_log().enabled() (see above). For
  // a started device, called by the device while its backend is stopped (Pause/Resume). Errors are
  // also recorded in the DirtyLog (incomplete), so a caller may log them and carry on.
  [[nodiscard]] Result<void> SyncDirtyLog(const DeviceContext& context);

  // After the device stopped its backend: reads each vring's next avail index (VHOST_GET_VRING_BASE)
  // and the used index from the used ring into queues[i].config(), so the transport saves them.
  [[nodiscard]] Result<void> SaveRingPositions(const DeviceContext& context);

  // A typed vhost ioctl on fd(); the error names `what`.
  template <typename T>
  [[nodiscard]] Result<void> Ioctl(unsigned long request, const T& arg, const char* what) const {
    return IoctlPtr(request, &arg, what);
  }

 private:
  VhostBackend(Fd fd, std::string path, uint64_t features, std::vector<EventFd> calls)
      : fd_(std::move(fd)), path_(std::move(path)), features_(features), call_eventfds_(std::move(calls)) {}
  [[nodiscard]] Result<void> IoctlPtr(unsigned long request, const void* arg, const char* what) const;
  [[nodiscard]] Result<void> SetMemTable(const GuestMemory& memory) const;
  [[nodiscard]] Result<void> SetUpVring(size_t index, const DeviceContext& context) const;
  [[nodiscard]] Result<vhost_vring_addr> VringAddr(size_t index, const DeviceContext& context) const;
  // Programs logging on (log base, LOG_ALL, per-vring F_LOG) or off.
  [[nodiscard]] Result<void> SetLogging(const DeviceContext& context, bool on);

  Fd fd_;
  std::string path_;
  uint64_t features_ = 0;
  uint64_t acked_features_ = 0;  // what Start() acked, without VHOST_F_LOG_ALL
  bool logging_ = false;         // vhost is logging into the guest memory's DirtyLog
  std::vector<EventFd> call_eventfds_;
};

}  // namespace clonevm::virtio

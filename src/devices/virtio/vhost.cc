#include "devices/virtio/vhost.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "kvm/uapi.h"

namespace clonevm::virtio {
namespace {

// Split ring sizes (2.7), including the event-index fields at the ends of both rings.
uint64_t DescBytes(uint64_t size) { return 16 * size; }
uint64_t AvailBytes(uint64_t size) { return 6 + 2 * size; }
uint64_t UsedBytes(uint64_t size) { return 6 + 8 * size; }

// The kernel module that provides `path`, for error messages.
const char* ModuleFor(const std::string& path) {
  if (path.ends_with("vhost-net")) return "vhost_net";
  if (path.ends_with("vhost-vsock")) return "vhost_vsock";
  return "vhost";
}

// Host virtual address of a ring that must lie inside guest RAM (addresses are guest-controlled).
Result<uint64_t> RingHva(const GuestMemory& memory, uint64_t gpa, uint64_t len, const char* ring) {
  std::span<uint8_t> host = memory.Span(gpa, len);
  if (host.empty()) return Fail("{} ring {:#x}+{:#x} outside guest RAM", ring, gpa, len);
  return reinterpret_cast<uint64_t>(host.data());
}

}  // namespace

Result<VhostBackend> VhostBackend::Open(const std::string& path, size_t num_vrings) {
  int raw = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (raw < 0) {
    int err = errno;
    if (err == ENOENT || err == ENODEV) {
      return Fail("{} is not available: {} (load the {} module)", path, std::strerror(err), ModuleFor(path));
    }
    return tl::unexpected(Error::FromErrno("open", err, path));
  }
  Fd fd(raw);
  if (::ioctl(fd.get(), VHOST_SET_OWNER) != 0) return FailErrno("VHOST_SET_OWNER", path);
  uint64_t features = 0;
  if (::ioctl(fd.get(), VHOST_GET_FEATURES, &features) != 0) return FailErrno("VHOST_GET_FEATURES", path);
  std::vector<EventFd> calls;
  for (size_t i = 0; i < num_vrings; ++i) calls.push_back(CLONE_TRY(EventFd::Create(EFD_NONBLOCK)));
  return VhostBackend(std::move(fd), path, features, std::move(calls));
}

Result<void> VhostBackend::IoctlPtr(unsigned long request, const void* arg, const char* what) const {
  // SAFETY: vhost ioctls take a pointer to the typed argument the caller passed.
  if (::ioctl(fd_.get(), request, const_cast<void*>(arg)) != 0) return FailErrno(what, path_);
  return {};
}

Result<void> VhostBackend::SetMemTable(const GuestMemory& memory) const {
  const auto& regions = memory.regions();
  std::vector<uint8_t> buf(kvm::uapi::kVhostMemoryRegionsOffset + regions.size() * sizeof(vhost_memory_region));
  kvm::uapi::VhostMemoryHeader header{static_cast<uint32_t>(regions.size()), 0};
  std::memcpy(buf.data(), &header, sizeof(header));
  for (size_t i = 0; i < regions.size(); ++i) {
    vhost_memory_region r{};
    r.guest_phys_addr = regions[i].gpa;
    r.memory_size = regions[i].size;
    r.userspace_addr = reinterpret_cast<uint64_t>(regions[i].host());
    std::memcpy(buf.data() + kvm::uapi::kVhostMemoryRegionsOffset + i * sizeof(r), &r, sizeof(r));
  }
  if (::ioctl(fd_.get(), kvm::uapi::kVhostSetMemTable, buf.data()) != 0) return FailErrno("VHOST_SET_MEM_TABLE", path_);
  return {};
}

Result<vhost_vring_addr> VhostBackend::VringAddr(size_t index, const DeviceContext& context) const {
  const Queue& queue = context.queues[index];
  if (!queue.active()) return Fail("queue {} (served by {}) was not enabled by the driver", index, path_);
  const QueueConfig& c = queue.config();
  const GuestMemory& memory = context.memory;
  vhost_vring_addr addr{};
  addr.index = static_cast<unsigned int>(index);
  addr.desc_user_addr = CLONE_TRY(RingHva(memory, c.desc_addr, DescBytes(c.size), "descriptor"));
  addr.avail_user_addr = CLONE_TRY(RingHva(memory, c.avail_addr, AvailBytes(c.size), "avail"));
  addr.used_user_addr = CLONE_TRY(RingHva(memory, c.used_addr, UsedBytes(c.size), "used"));
  if (logging_) {
    addr.flags = 1u << VHOST_VRING_F_LOG;
    addr.log_guest_addr = c.used_addr;  // vhost logs used-ring writes by guest address
  }
  return addr;
}

Result<void> VhostBackend::SetUpVring(size_t index, const DeviceContext& context) const {
  vhost_vring_addr addr = CLONE_TRY(VringAddr(index, context));
  const QueueConfig& c = context.queues[index].config();
  auto vring = static_cast<unsigned int>(index);
  CLONE_TRY_VOID(Ioctl(VHOST_SET_VRING_NUM, vhost_vring_state{vring, c.size}, "VHOST_SET_VRING_NUM"));
  CLONE_TRY_VOID(Ioctl(VHOST_SET_VRING_BASE, vhost_vring_state{vring, c.next_avail}, "VHOST_SET_VRING_BASE"));
  CLONE_TRY_VOID(Ioctl(VHOST_SET_VRING_ADDR, addr, "VHOST_SET_VRING_ADDR"));
  CLONE_TRY_VOID(
      Ioctl(VHOST_SET_VRING_CALL, vhost_vring_file{vring, call_eventfds_[index].fd()}, "VHOST_SET_VRING_CALL"));
  if (index >= context.queue_eventfds.size()) return Fail("no kick eventfd for queue {}", index);
  CLONE_TRY_VOID(
      Ioctl(VHOST_SET_VRING_KICK, vhost_vring_file{vring, context.queue_eventfds[index].fd()}, "VHOST_SET_VRING_KICK"));
  return {};
}

Result<void> VhostBackend::Start(const DeviceContext& context) {
  if (context.queues.size() < num_vrings()) return Fail("{}: device has fewer queues than vrings", path_);
  acked_features_ = context.features & features_ & ~(uint64_t{1} << VHOST_F_LOG_ALL);
  logging_ = false;
  CLONE_TRY_VOID(Ioctl(VHOST_SET_FEATURES, acked_features_, "VHOST_SET_FEATURES"));
  CLONE_TRY_VOID(SetMemTable(context.memory));
  for (size_t i = 0; i < num_vrings(); ++i) CLONE_TRY_VOID(SetUpVring(i, context));
  return SyncDirtyLog(context);
}

Result<void> VhostBackend::SyncDirtyLog(const DeviceContext& context) {
  DirtyLog& log = context.memory.dirty_log();
  bool want = log.enabled();
  if (want == logging_) return {};
  auto set = SetLogging(context, want);
  if (!set && want) {
    log.SetIncomplete();  // vhost's writes are now unknown: the next snapshot takes every page
    logging_ = false;
  }
  return set;
}

Result<void> VhostBackend::SetLogging(const DeviceContext& context, bool on) {
  if (on && (features_ & (uint64_t{1} << VHOST_F_LOG_ALL)) == 0)
    return Fail("{} cannot log dirty pages (no VHOST_F_LOG_ALL)", path_);
  if (on) {
    uint64_t base = reinterpret_cast<uint64_t>(context.memory.dirty_log().base());
    CLONE_TRY_VOID(Ioctl(VHOST_SET_LOG_BASE, base, "VHOST_SET_LOG_BASE"));
  }
  uint64_t features = acked_features_ | (on ? uint64_t{1} << VHOST_F_LOG_ALL : 0);
  CLONE_TRY_VOID(Ioctl(VHOST_SET_FEATURES, features, "VHOST_SET_FEATURES"));
  logging_ = on;
  for (size_t i = 0; i < num_vrings() && i < context.queues.size(); ++i) {
    if (!context.queues[i].active()) continue;
    vhost_vring_addr addr = CLONE_TRY(VringAddr(i, context));
    CLONE_TRY_VOID(Ioctl(VHOST_SET_VRING_ADDR, addr, "VHOST_SET_VRING_ADDR"));
  }
  return {};
}

Result<void> VhostBackend::SaveRingPositions(const DeviceContext& context) {
  for (size_t i = 0; i < num_vrings() && i < context.queues.size(); ++i) {
    Queue& queue = context.queues[i];
    if (!queue.active()) continue;
    vhost_vring_state state{static_cast<unsigned int>(i), 0};
    if (::ioctl(fd_.get(), VHOST_GET_VRING_BASE, &state) != 0) return FailErrno("VHOST_GET_VRING_BASE", path_);
    QueueConfig& c = queue.config();
    c.next_avail = static_cast<uint16_t>(state.num);
    std::span<uint8_t> used_idx = context.memory.Span(c.used_addr + 2, 2);
    if (used_idx.empty()) return Fail("used ring {:#x} outside guest RAM", c.used_addr);
    // SAFETY: Queue::Activate checked the used ring is 4-byte aligned and inside RAM.
    c.next_used = std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(used_idx.data())).load();
  }
  return {};
}

}  // namespace clonevm::virtio

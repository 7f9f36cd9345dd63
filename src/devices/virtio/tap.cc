#include "devices/virtio/tap.h"

#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>

namespace clonevm::virtio {
namespace {

constexpr const char* kTunPath = "/dev/net/tun";
constexpr unsigned kWantedOffloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;

Result<Fd> OpenTunControl() {
  int fd = ::open(kTunPath, O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd >= 0) return Fd(fd);
  int err = errno;
  if (err == ENOENT || err == ENODEV || err == ENXIO) {
    return Fail("{} is not available: {} (load the tun module)", kTunPath, std::strerror(err));
  }
  if (err == EACCES || err == EPERM) {
    return Fail("no permission to open {} ({}): run as root or give the user access", kTunPath, std::strerror(err));
  }
  return tl::unexpected(Error::FromErrno("open", err, kTunPath));
}

// TUNSETIFF on an existing interface; returns errno (0 on success).
int AttachTap(const Fd& tun, const std::string& name, short extra_flags) {
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, name.data(), name.size());
  ifr.ifr_flags = static_cast<short>(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | extra_flags);
  return ::ioctl(tun.get(), TUNSETIFF, &ifr) == 0 ? 0 : errno;
}

Result<void> ExplainAttachError(const std::string& name, int err) {
  switch (err) {
    case EPERM:
      return Fail(
          "no permission to use TAP device '{}': it belongs to another user or group "
          "(ip tuntap add dev {} mode tap user $USER), or run with CAP_NET_ADMIN",
          name, name);
    case EBUSY:
      return Fail("TAP device '{}' is already in use by another process", name);
    case EINVAL:
      return Fail("'{}' is not a TAP device (a TUN device, or another kind of interface)", name);
    default:
      return tl::unexpected(Error::FromErrno("TUNSETIFF", err, name));
  }
}

}  // namespace

Result<Fd> OpenTap(const std::string& name) {
  if (name.empty() || name.size() >= IFNAMSIZ) {
    return Fail("TAP device name '{}' is invalid (1 to {} characters)", name, IFNAMSIZ - 1);
  }
  if (::if_nametoindex(name.c_str()) == 0) {
    return Fail("TAP device '{}' does not exist (create it first: ip tuntap add dev {} mode tap)", name, name);
  }
  Fd tun = CLONE_TRY(OpenTunControl());
  int err = AttachTap(tun, name, 0);
  // A TAP created with multi_queue accepts only IFF_MULTI_QUEUE attachments.
  if (err == EINVAL && AttachTap(tun, name, IFF_MULTI_QUEUE) == 0) err = 0;
  if (err != 0) CLONE_TRY_VOID(ExplainAttachError(name, err));
  CLONE_TRY(PrepareTap(tun));
  return tun;
}

Result<unsigned> PrepareTap(const Fd& tap) {
  ifreq ifr{};
  if (::ioctl(tap.get(), TUNGETIFF, &ifr) != 0) return FailErrno("TUNGETIFF", "is the fd a TAP?");
  if ((ifr.ifr_flags & IFF_TAP) == 0) return Fail("'{}' is a TUN device, not a TAP", ifr.ifr_name);
  if ((ifr.ifr_flags & IFF_VNET_HDR) == 0) return Fail("TAP '{}' was opened without IFF_VNET_HDR", ifr.ifr_name);
  int flags = ::fcntl(tap.get(), F_GETFL);
  if (flags < 0 || ::fcntl(tap.get(), F_SETFL, flags | O_NONBLOCK) != 0)
    return FailErrno("fcntl O_NONBLOCK", ifr.ifr_name);
  int hdr = kVnetHdrSize;
  if (::ioctl(tap.get(), TUNSETVNETHDRSZ, &hdr) != 0) return FailErrno("TUNSETVNETHDRSZ", ifr.ifr_name);
  unsigned offloads = kWantedOffloads;
  if (::ioctl(tap.get(), TUNSETOFFLOAD, offloads) != 0) offloads = 0;
  // Nothing may reach the guest with offloads before it negotiates them.
  CLONE_TRY_VOID(SetTapOffload(tap, 0));
  return offloads;
}

Result<void> SetTapOffload(const Fd& tap, unsigned tun_flags) {
  if (::ioctl(tap.get(), TUNSETOFFLOAD, tun_flags) != 0)
    return FailErrno("TUNSETOFFLOAD", fmt::format("{:#x}", tun_flags));
  return {};
}

Result<std::string> TapName(const Fd& tap) {
  ifreq ifr{};
  if (::ioctl(tap.get(), TUNGETIFF, &ifr) != 0) return FailErrno("TUNGETIFF");
  return std::string(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ));
}

}  // namespace clonevm::virtio

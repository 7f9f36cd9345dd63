#include "devices/virtio/tap.h"

#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>

#include "net/tap.h"

namespace clonevm::virtio {
namespace {

constexpr unsigned kWantedOffloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;

}  // namespace

Result<Fd> OpenTap(const std::string& name) {
  net::Tap tap = CLONE_TRY(net::OpenTap(name, {.creation = net::TapCreation::kMustExist}));
  CLONE_TRY(PrepareTap(tap.fd));
  return std::move(tap.fd);
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

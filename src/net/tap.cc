#include "net/tap.h"

#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>

namespace clonevm::net {
namespace {

constexpr const char* kTunPath = "/dev/net/tun";

Error TunSetIffError(std::string_view name, int err) {
  switch (err) {
    case EPERM:
    case EACCES:
      return Error(fmt::format("no permission to use TAP {}: run as root, or create it for your user with "
                               "`ip tuntap add {} mode tap user $USER`",
                               name, name),
                   err);
    case EBUSY:
      return Error(
          fmt::format("TAP {} is already in use by another process (or its multi_queue setting differs)", name), err);
    case EINVAL:
      return Error(fmt::format("{} exists but is not a TAP interface (or its vnet_hdr setting differs)", name), err);
    default:
      return Error::FromErrno("TUNSETIFF", err, std::string(name));
  }
}

}  // namespace

Result<void> ValidateInterfaceName(std::string_view name) {
  if (name.empty() || name.size() >= IFNAMSIZ) {
    return Fail("invalid network interface name \"{}\": 1 to {} characters", name, IFNAMSIZ - 1);
  }
  for (char c : name) {
    if (c == '/' || c == ':' || c <= ' ' || c == 0x7f) {
      return Fail("invalid network interface name \"{}\": no '/', ':' or whitespace", name);
    }
  }
  if (name == "." || name == "..") return Fail("invalid network interface name \"{}\"", name);
  return {};
}

Result<Tap> OpenTap(std::string_view name, const TapOptions& options) {
  CLONE_TRY_VOID(ValidateInterfaceName(name));
  const std::string name_str(name);
  if (options.creation == TapCreation::kMustExist) {
    if (name.find('%') != std::string_view::npos) return Fail("TAP name \"{}\" must not be a pattern", name);
    if (::if_nametoindex(name_str.c_str()) == 0) {
      return Fail(
          Error(fmt::format("TAP {} does not exist: create it with `ip tuntap add {} mode tap user $USER`", name, name),
                ENODEV));
    }
  }
  int raw = ::open(kTunPath, O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (raw < 0) {
    const int err = errno;
    if (err == ENOENT) return Fail(Error("/dev/net/tun is missing: load the tun module (modprobe tun)", err));
    if (err == EACCES || err == EPERM) {
      return Fail(Error(fmt::format("no permission to open {} (TAP {}): run as root", kTunPath, name), err));
    }
    return FailErrno("open", kTunPath);
  }
  Fd fd(raw);

  unsigned int features = 0;
  if (::ioctl(fd.get(), TUNGETFEATURES, &features) != 0) return FailErrno("TUNGETFEATURES");
  if (options.vnet_hdr && (features & IFF_VNET_HDR) == 0) return Fail("the kernel's TAP driver lacks IFF_VNET_HDR");
  if (options.multi_queue && (features & IFF_MULTI_QUEUE) == 0) {
    return Fail("the kernel's TAP driver lacks IFF_MULTI_QUEUE");
  }

  ifreq ifr{};
  std::memcpy(ifr.ifr_name, name.data(), name.size());
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  if (options.vnet_hdr) ifr.ifr_flags |= IFF_VNET_HDR;
  if (options.multi_queue) ifr.ifr_flags |= IFF_MULTI_QUEUE;
  if (::ioctl(fd.get(), TUNSETIFF, &ifr) != 0) {
    int err = errno;
    // An existing TAP created with multi_queue accepts only IFF_MULTI_QUEUE attachments.
    bool retried = false;
    if (err == EINVAL && !options.multi_queue && options.creation == TapCreation::kMustExist &&
        (features & IFF_MULTI_QUEUE) != 0) {
      ifr.ifr_flags |= IFF_MULTI_QUEUE;
      retried = ::ioctl(fd.get(), TUNSETIFF, &ifr) == 0;
    }
    if (!retried) return Fail(TunSetIffError(name, err));
  }

  Tap tap;
  tap.name.assign(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ));
  if (options.vnet_hdr) {
    int size = kVirtioNetHdrSize;
    if (::ioctl(fd.get(), TUNSETVNETHDRSZ, &size) != 0) return FailErrno("TUNSETVNETHDRSZ", tap.name);
  }
  tap.fd = std::move(fd);
  return tap;
}

}  // namespace clonevm::net

// OpenTap: opens (and, when allowed, creates) a TAP interface through /dev/net/tun for a
// virtio-net backend (the VM's userspace path or vhost-net).
//
// The fd is opened O_RDWR | O_NONBLOCK | O_CLOEXEC with IFF_TAP | IFF_NO_PI, plus IFF_VNET_HDR
// and TUNSETVNETHDRSZ = 12 (sizeof(virtio_net_hdr_v1), the header a VERSION_1 virtio-net device
// uses) when TapOptions::vnet_hdr is set, and IFF_MULTI_QUEUE when multi_queue is set.
//
// Lifetime — the cleanup guarantee of per-VM TAPs: a TAP created here is NOT persistent
// (TUNSETPERSIST is never called), so the kernel deletes the interface when the last fd that is
// attached to it is closed — including when the VM process exits or is killed. vhost-net keeps its
// own reference to the file, so the TAP lives exactly as long as the VM's devices. A persistent
// TAP that already exists (e.g. made with `ip tuntap add NAME mode tap user $USER`) is attached
// to and left in place.
//
// Names: `name` may be a literal name (at most 15 characters, IFNAMSIZ - 1) or a pattern with one
// "%d" (e.g. "clone%d"): the kernel then picks the lowest free number atomically, so concurrent
// VM starts never race for a name. Tap::name is the name the kernel chose.
//
// Errors are phrased for users: a missing TAP (TapCreation::kMustExist), no permission, a TAP in
// use by another process, an interface of the wrong type, a missing /dev/net/tun.
// Threads: any. No guest input is involved.
#pragma once

#include <string>
#include <string_view>

#include "base/fd.h"
#include "base/result.h"

namespace clonevm::net {

// Whether OpenTap may create a TAP that does not exist yet.
enum class TapCreation { kCreateIfMissing, kMustExist };

struct TapOptions {
  bool vnet_hdr = true;      // IFF_VNET_HDR + TUNSETVNETHDRSZ 12
  bool multi_queue = false;  // IFF_MULTI_QUEUE (one fd per queue pair; open more with the same name)
  TapCreation creation = TapCreation::kCreateIfMissing;
};

struct Tap {
  Fd fd;
  std::string name;
};

inline constexpr int kVirtioNetHdrSize = 12;  // sizeof(virtio_net_hdr_v1)

[[nodiscard]] Result<Tap> OpenTap(std::string_view name, const TapOptions& options = {});

// Validates an interface name or a "%d" pattern: 1..15 characters, no '/', ':' or whitespace.
[[nodiscard]] Result<void> ValidateInterfaceName(std::string_view name);

}  // namespace clonevm::net

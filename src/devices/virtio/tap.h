// TAP helpers for virtio-net: open an existing TAP interface by name (`clone run --tap NAME`) and
// prepare a TAP fd (from here or from the automatic networking in net/) for the device.
//
// The TAP is opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR: every frame read or written starts
// with a struct virtio_net_hdr_v1 (12 bytes, kVnetHdrSize — the header virtio 1.x drivers use), so
// checksum and segmentation offloads pass between the guest and the host stack untouched.
//
// Errors are meant for the person at the terminal: a TAP that does not exist, one owned by another
// user (EPERM), one already attached by another process (EBUSY), an interface that is not a TAP,
// or a missing /dev/net/tun each get a message saying what to do.
//
// Thread-safety: plain functions; the fd may be used from any thread.
#pragma once

#include <cstdint>
#include <string>

#include "base/fd.h"
#include "base/result.h"

namespace clonevm::virtio {

inline constexpr int kVnetHdrSize = 12;  // sizeof(struct virtio_net_hdr_v1)

// Attaches to the existing TAP interface `name` (net::OpenTap with TapCreation::kMustExist: it never
// creates one); the fd is non-blocking and close-on-exec, already prepared (PrepareTap).
[[nodiscard]] Result<Fd> OpenTap(const std::string& name);

// Makes an open TAP fd ready for virtio-net: checks it is a TAP with IFF_VNET_HDR, sets O_NONBLOCK,
// the vnet header size (kVnetHdrSize) and no offloads yet. Returns the TUN_F_* offload bits the TAP
// accepts (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN, or 0 if it refuses them).
[[nodiscard]] Result<unsigned> PrepareTap(const Fd& tap);

// TUNSETOFFLOAD: which offloads the TAP may use in frames it hands us (i.e. to the guest).
[[nodiscard]] Result<void> SetTapOffload(const Fd& tap, unsigned tun_flags);

// The TAP's interface name (TUNGETIFF), for messages.
[[nodiscard]] Result<std::string> TapName(const Fd& tap);

}  // namespace clonevm::virtio

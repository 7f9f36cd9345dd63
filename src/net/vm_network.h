// SetUpAutoNetwork: everything `clone run --net` (and every networked `clone fork`) needs on the
// host, in order, with rollback:
//   1. lease an IPv4 address (and so a MAC) on the bridge's subnet          (alloc.h)
//   2. under the lease directory's lock (so concurrent starts and rollbacks never see a half-made
//      bridge): find the bridge or create it (kind bridge, MAC pinned to 06:00 + gateway IP),
//      add the gateway address (network + 1), set it up                  (netlink.h)
//   3. IPv4 forwarding + nftables masquerade for the subnet                  (nat.h)
//   4. a new non-persistent TAP "clone%d" (or AutoNetOptions::tap_name), attached to the bridge
//      and set up                                                          (tap.h, netlink.h)
// On failure everything this call made is undone before the error is returned: the TAP closes
// (the kernel deletes it), the lease is released, and a bridge created by THIS call is deleted
// together with its NAT chains. Pre-existing bridges, NAT rules and ip_forward are left alone.
//
// VmNetwork owns the result. Its lease is released when it is destroyed (VM exit). The TAP fd
// is meant to be moved into the virtio-net device (TakeTapFd); the TAP interface then disappears
// when the device closes it or the process exits. The bridge and NAT are shared by all VMs and
// stay after a VM exits; RemoveAutoNetwork tears them down when no lease is held (`clone net down`).
//
// GuestNetConfig is plain data for the guest agent (static addressing, no DHCP): address, prefix,
// gateway, MAC, DNS servers.
//
// Needs CAP_NET_ADMIN (root) and acts on the caller's network namespace. Threads: any, but one
// VmNetwork must not be used by two threads at once. No guest input is involved: the guest only
// ever sees the results.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "net/address.h"
#include "net/alloc.h"
#include "net/tap.h"

namespace clonevm::net {

inline constexpr const char* kDefaultBridge = "clonebr0";
inline constexpr const char* kDefaultSubnet = "172.30.0.0/24";
inline constexpr const char* kDefaultTapPattern = "clone%d";

enum class NatMode { kMasquerade, kNone };

struct AutoNetOptions {
  std::string bridge = kDefaultBridge;
  Ipv4Subnet subnet{0xAC1E0000, 24};          // 172.30.0.0/24
  std::string runtime_dir;                    // empty: DefaultRuntimeDir()
  std::string owner;                          // recorded in the lease, e.g. the VM id
  std::string tap_name = kDefaultTapPattern;  // a name or a "%d" pattern
  TapOptions tap;
  NatMode nat = NatMode::kMasquerade;
  uint32_t mtu = 0;  // TAP MTU; 0 keeps the kernel's default (1500)
};

// What the guest must be told (through the agent).
struct GuestNetConfig {
  MacAddress mac{};
  uint32_t ip = 0;  // host byte order
  int prefix_len = 0;
  uint32_t gateway = 0;       // the bridge's address
  std::vector<uint32_t> dns;  // the host's IPv4 nameservers that a guest can reach (not 127.x)
};

class VmNetwork {
 public:
  VmNetwork(VmNetwork&&) noexcept = default;
  VmNetwork& operator=(VmNetwork&&) noexcept = default;
  ~VmNetwork() = default;

  const GuestNetConfig& guest() const { return guest_; }
  const std::string& tap_name() const { return tap_name_; }
  const std::string& bridge() const { return bridge_; }
  const Fd& tap_fd() const { return tap_fd_; }
  // Hands the TAP fd to the device; VmNetwork keeps only the lease afterwards.
  [[nodiscard]] Fd TakeTapFd() { return std::move(tap_fd_); }
  // See IpLease::CloseInChild.
  void CloseInChild() {
    lease_.CloseInChild();
    tap_fd_.reset();
  }

 private:
  friend Result<VmNetwork> SetUpAutoNetwork(const AutoNetOptions&);
  VmNetwork() = default;

  IpLease lease_;
  Fd tap_fd_;
  std::string tap_name_;
  std::string bridge_;
  GuestNetConfig guest_;
};

[[nodiscard]] Result<VmNetwork> SetUpAutoNetwork(const AutoNetOptions& options);

// Deletes the bridge and its NAT chains unless a lease on it is still held (then fails, naming
// the holders). A missing bridge is not an error.
[[nodiscard]] Result<void> RemoveAutoNetwork(const AutoNetOptions& options);

// IPv4 nameservers from resolv.conf text that a guest can use (loopback ones such as
// systemd-resolved's 127.0.0.53 are skipped: they are only reachable on the host).
std::vector<uint32_t> ParseResolvConf(std::string_view text);

}  // namespace clonevm::net

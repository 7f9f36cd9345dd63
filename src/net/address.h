// IPv4 addresses, subnets and MAC addresses as plain values, with parsing and formatting.
//
// IPv4 addresses are uint32_t in host byte order (172.30.0.1 is 0xAC1E0001); conversion to
// network order happens only where bytes reach the kernel. Parsing is strict (dotted quad, no
// leading zeros beyond "0", prefix 0..32) and fails with a message quoting the input, because the
// text comes from users (command line, environment).
//
// MAC addresses of `--net` guests are derived from their IPv4 address: 06:00:a:b:c:d for a.b.c.d.
// 0x06 has the locally-administered bit (0x02) set and the multicast bit (0x01) clear, so the
// address is a valid unicast MAC that no vendor OUI uses (QEMU's 52:54:00 is avoided on purpose;
// the same 06:00 + IP convention is used by Firecracker's docs). An IP is held by one VM at a
// time (see alloc.h), so MACs on the bridge are unique, and a reused IP comes back with the same
// MAC, which keeps neighbours' ARP caches right.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "base/result.h"

namespace clonevm::net {

using MacAddress = std::array<uint8_t, 6>;

struct Ipv4Subnet {
  uint32_t network = 0;  // host byte order, no host bits set
  int prefix_len = 0;

  uint32_t mask() const { return prefix_len == 0 ? 0 : 0xffffffffu << (32 - prefix_len); }
  uint32_t broadcast() const { return network | ~mask(); }
  bool Contains(uint32_t ip) const { return (ip & mask()) == network; }
  // The first host address (network + 1): the gateway on the bridge.
  uint32_t gateway() const { return network + 1; }
  std::string ToString() const;
  bool operator==(const Ipv4Subnet&) const = default;
};

// "172.30.0.1" -> 0xAC1E0001.
[[nodiscard]] Result<uint32_t> ParseIpv4(std::string_view text);
std::string FormatIpv4(uint32_t ip);

// "172.30.0.0/24". Host bits must be zero ("172.30.0.5/24" is an error naming the network).
[[nodiscard]] Result<Ipv4Subnet> ParseIpv4Subnet(std::string_view text);

// "06:00:ac:1e:00:02" for 172.30.0.2.
MacAddress MacForIpv4(uint32_t ip);
std::string FormatMac(const MacAddress& mac);
[[nodiscard]] Result<MacAddress> ParseMac(std::string_view text);

}  // namespace clonevm::net

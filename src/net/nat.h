// Host NAT for the `--net` bridge: IPv4 forwarding plus an nftables masquerade, so guests on the
// bridge's subnet reach whatever the host reaches, under the host's address.
//
// EnsureNat(bridge, subnet):
//  0. returns at once when NatIsInPlace (one netlink dump, ~0.1 ms instead of ~60 ms for nft);
//  1. writes 1 to /proc/sys/net/ipv4/ip_forward (when it is not already 1). This is host-wide and
//     is never turned back off: other software may rely on it by then.
//  2. applies, in ONE `nft -f -` transaction (atomic: all or nothing), to table `ip clone`:
//       chain postrouting-<bridge>  type nat hook postrouting priority srcnat
//         ip saddr <subnet> oifname != "<bridge>" masquerade
//       chain forward-<bridge>      type filter hook forward priority filter
//         iifname "<bridge>" ip saddr <subnet> accept                        (guests -> out)
//         oifname "<bridge>" ip daddr <subnet> ct state established,related accept
//         oifname "<bridge>" ip daddr <subnet> drop                          (no unsolicited in)
//     Every rule carries the comment "clone-nat v1 <bridge> <subnet>".
//     Each chain is added (no-op if present), flushed and refilled in the same transaction, so
//     re-running never duplicates rules, other bridges' chains in the table are untouched and
//     rules edited by hand are put back. Guest-to-guest traffic on the bridge is switched, not
//     routed, and does not pass these chains (unless br_netfilter is loaded; see
//     docs/networking.md).
//  `nft` is spawned without a shell (RunTool); its error output is quoted in the Error. A host
//  whose kernel lacks nf_tables NAT fails here with that output and a hint naming the modules.
// RemoveNat(bridge) deletes the bridge's two chains; missing chains are not an error. The table
// itself stays (empty it is inert): deleting it could race with another bridge's EnsureNat.
//
// Both need CAP_NET_ADMIN in the current network namespace. Threads: any; concurrent calls are
// safe (each is one kernel transaction). No guest input is involved.
#pragma once

#include <string>
#include <string_view>

#include "base/result.h"
#include "net/address.h"

namespace clonevm::net {

inline constexpr const char* kNatTable = "clone";

// The nft script EnsureNat applies (exposed for tests and for `--dry-run`-style printing).
std::string NatRuleset(std::string_view bridge, const Ipv4Subnet& subnet);

// A bridge name usable in nft chain names: a letter, then letters, digits, '_' or '-'.
[[nodiscard]] Result<void> ValidateNatBridgeName(std::string_view bridge);

[[nodiscard]] Result<void> EnableIpForwarding();
// True when ip_forward is 1 and both chains hold exactly EnsureNat's rules for this bridge and
// subnet (recognised by their comment), read with one nftables netlink dump (no nft process).
[[nodiscard]] Result<bool> NatIsInPlace(std::string_view bridge, const Ipv4Subnet& subnet);
[[nodiscard]] Result<void> EnsureNat(std::string_view bridge, const Ipv4Subnet& subnet);
[[nodiscard]] Result<void> RemoveNat(std::string_view bridge);

}  // namespace clonevm::net

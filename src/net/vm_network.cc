#include "net/vm_network.h"

#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <system_error>

#include "base/log.h"
#include "net/nat.h"
#include "net/netlink.h"

namespace clonevm::net {
namespace {

constexpr const char* kSetupLockName = ".setup";

// The shared half of the network: the bridge with its gateway address, and NAT.
struct SharedNetwork {
  int bridge_index = 0;
  bool created_bridge = false;
};

// Fails when another link already has an address inside `subnet`: routing to the guests would
// then be ambiguous (e.g. the host's LAN uses the same range).
Result<void> CheckSubnetIsFree(NetlinkSocket& netlink, const Ipv4Subnet& subnet, int bridge_index) {
  for (const AddressInfo& address : CLONE_TRY(netlink.Ipv4Addresses())) {
    if (address.index == bridge_index) continue;
    Ipv4Subnet other{address.ip & (address.prefix_len == 0 ? 0 : 0xffffffffu << (32 - address.prefix_len)),
                     address.prefix_len};
    if (subnet.Contains(address.ip) || other.Contains(subnet.network)) {
      const LinkInfo link = CLONE_TRY(netlink.GetLink(address.index));
      return Fail("the VM subnet {} overlaps {}/{} on {}: choose another subnet", subnet.ToString(),
                  FormatIpv4(address.ip), address.prefix_len, link.name);
    }
  }
  return {};
}

Result<SharedNetwork> EnsureBridge(NetlinkSocket& netlink, const AutoNetOptions& options) {
  SharedNetwork shared;
  std::optional<LinkInfo> link = CLONE_TRY(netlink.FindLink(options.bridge));
  if (link) {
    if (link->kind != "bridge") {
      return Fail("network interface {} exists but is not a bridge (kind \"{}\"): choose another bridge name",
                  options.bridge, link->kind);
    }
    shared.bridge_index = link->index;
  } else {
    CLONE_TRY_VOID(CheckSubnetIsFree(netlink, options.subnet, 0));
    shared.bridge_index = CLONE_TRY(netlink.CreateBridge(options.bridge, MacForIpv4(options.subnet.gateway())));
    shared.created_bridge = true;
  }
  auto configured = [&]() -> Result<void> {
    CLONE_TRY_VOID(netlink.AddAddress(shared.bridge_index, options.subnet.gateway(), options.subnet.prefix_len));
    CLONE_TRY_VOID(netlink.SetLinkUp(shared.bridge_index));
    if (options.nat == NatMode::kMasquerade) CLONE_TRY_VOID(EnsureNat(options.bridge, options.subnet));
    return {};
  }();
  if (!configured) {
    if (shared.created_bridge) (void)netlink.DeleteLink(shared.bridge_index);
    return Fail(configured.error());
  }
  return shared;
}

// A new TAP attached to the bridge and up.
Result<Tap> AttachTap(NetlinkSocket& netlink, const AutoNetOptions& options, int bridge_index) {
  Tap tap = CLONE_TRY(OpenTap(options.tap_name, options.tap));
  const int index = CLONE_TRY(netlink.LinkIndex(tap.name));
  if (options.mtu != 0) CLONE_TRY_VOID(netlink.SetMtu(index, options.mtu));
  CLONE_TRY_VOID(netlink.SetMaster(index, bridge_index));
  CLONE_TRY_VOID(netlink.SetLinkUp(index));
  return tap;
}

// CAP_NET_ADMIN in the effective set (bit 12 of CapEff in /proc/self/status).
bool HasNetAdmin() {
  auto status = ReadFile("/proc/self/status");
  if (!status) return ::geteuid() == 0;
  const size_t pos = status->find("\nCapEff:");
  if (pos == std::string::npos) return ::geteuid() == 0;
  const uint64_t caps = std::strtoull(status->c_str() + pos + 8, nullptr, 16);
  return (caps & (1ull << 12)) != 0;
}

Result<void> ValidateOptions(const AutoNetOptions& options) {
  CLONE_TRY_VOID(ValidateNatBridgeName(options.bridge));
  CLONE_TRY_VOID(ValidateLeaseSubnet(options.subnet));
  CLONE_TRY_VOID(ValidateInterfaceName(options.tap_name));
  if (options.tap.creation == TapCreation::kMustExist) {
    return Fail("--net creates its own TAP; an existing TAP is used with --tap NAME instead");
  }
  if (options.mtu != 0 && (options.mtu < 68 || options.mtu > 65535)) return Fail("invalid MTU {}", options.mtu);
  return {};
}

Result<std::string> LeaseDir(const AutoNetOptions& options) {
  std::string runtime = options.runtime_dir;
  if (runtime.empty()) runtime = CLONE_TRY(DefaultRuntimeDir());
  return LeaseDirectory(runtime, options.bridge);
}

}  // namespace

std::vector<uint32_t> ParseResolvConf(std::string_view text) {
  std::vector<uint32_t> servers;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    constexpr std::string_view kKey = "nameserver";
    if (!line.starts_with(kKey)) continue;
    line.remove_prefix(kKey.size());
    if (line.empty() || (line[0] != ' ' && line[0] != '\t')) continue;
    while (!line.empty() && (line[0] == ' ' || line[0] == '\t')) line.remove_prefix(1);
    const size_t space = line.find_first_of(" \t\r#");
    auto ip = ParseIpv4(line.substr(0, space));
    if (!ip || (*ip >> 24) == 127 || *ip == 0) continue;
    servers.push_back(*ip);
  }
  return servers;
}

Result<VmNetwork> SetUpAutoNetwork(const AutoNetOptions& options) {
  CLONE_TRY_VOID(ValidateOptions(options));
  if (!HasNetAdmin()) {
    return Fail(Error(
        "--net needs root (CAP_NET_ADMIN) to create the bridge, TAP and NAT; without it, use --tap NAME with a TAP "
        "made for your user (ip tuntap add NAME mode tap user $USER)",
        EPERM));
  }
  const std::string lease_dir = CLONE_TRY(LeaseDir(options));
  auto wrap = [&](const Error& e) { return Fail(e.Wrap(fmt::format("--net (bridge {})", options.bridge))); };

  VmNetwork network;
  auto lease = AcquireLease(lease_dir, options.subnet, options.owner);
  if (!lease) return wrap(lease.error());
  network.lease_ = std::move(*lease);

  auto netlink = NetlinkSocket::Open();
  if (!netlink) return wrap(netlink.error());
  // Held until the TAP is on the bridge: a concurrent start or rollback never sees a half-made
  // bridge, and a bridge is only deleted (rollback) before anyone else could attach to it.
  auto setup_lock = FileLock::Exclusive(lease_dir + "/" + kSetupLockName);
  if (!setup_lock) return wrap(setup_lock.error());
  auto shared = EnsureBridge(*netlink, options);
  if (!shared) return wrap(shared.error());
  auto tap = AttachTap(*netlink, options, shared->bridge_index);
  if (!tap) {
    if (shared->created_bridge) {
      (void)netlink->DeleteLink(shared->bridge_index);
      if (options.nat == NatMode::kMasquerade) (void)RemoveNat(options.bridge);
    }
    return wrap(tap.error());  // the lease is released by ~VmNetwork
  }

  network.tap_fd_ = std::move(tap->fd);
  network.tap_name_ = std::move(tap->name);
  network.bridge_ = options.bridge;
  network.guest_.ip = network.lease_.ip();
  network.guest_.mac = network.lease_.mac();
  network.guest_.prefix_len = options.subnet.prefix_len;
  network.guest_.gateway = options.subnet.gateway();
  if (auto resolv = ReadFile("/etc/resolv.conf")) network.guest_.dns = ParseResolvConf(*resolv);
  Log(LogLevel::kInfo, "--net: {} on {} ({}), guest {}/{} mac {}", network.tap_name_, options.bridge,
      options.subnet.ToString(), FormatIpv4(network.guest_.ip), network.guest_.prefix_len,
      FormatMac(network.guest_.mac));
  return network;
}

Result<void> RemoveAutoNetwork(const AutoNetOptions& options) {
  CLONE_TRY_VOID(ValidateNatBridgeName(options.bridge));
  const std::string lease_dir = CLONE_TRY(LeaseDir(options));
  std::error_code ec;
  std::filesystem::create_directories(lease_dir, ec);
  if (ec) return Fail("creating {}: {}", lease_dir, ec.message());
  FileLock setup_lock = CLONE_TRY(FileLock::Exclusive(lease_dir + "/" + kSetupLockName));
  std::string holders;
  for (const LeaseEntry& lease : CLONE_TRY(ListLeases(lease_dir))) {
    if (lease.held) holders += fmt::format(" {} (pid {}, {})", FormatIpv4(lease.ip), lease.pid, lease.owner);
  }
  if (!holders.empty()) return Fail("bridge {} is still used by running VMs:{}", options.bridge, holders);
  NetlinkSocket netlink = CLONE_TRY(NetlinkSocket::Open());
  std::optional<LinkInfo> link = CLONE_TRY(netlink.FindLink(options.bridge));
  if (link) {
    if (link->kind != "bridge") return Fail("{} is not a bridge; not deleting it", options.bridge);
    CLONE_TRY_VOID(netlink.DeleteLink(link->index));
  }
  if (options.nat == NatMode::kMasquerade) CLONE_TRY_VOID(RemoveNat(options.bridge));
  return {};
}

}  // namespace clonevm::net

#include "net/nat.h"

#include <fcntl.h>

#include "base/fd.h"
#include "net/run_tool.h"

namespace clonevm::net {
namespace {

constexpr const char* kIpForward = "/proc/sys/net/ipv4/ip_forward";

// The last non-empty line of a tool's output, for one-line errors.
std::string LastLine(std::string_view output) {
  while (!output.empty() && (output.back() == '\n' || output.back() == ' ')) output.remove_suffix(1);
  const size_t nl = output.rfind('\n');
  return std::string(nl == std::string_view::npos ? output : output.substr(nl + 1));
}

Result<ToolResult> RunNft(const std::vector<std::string>& args, std::string_view script) {
  std::vector<std::string> argv{"nft"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto result = RunTool(argv, script);
  if (!result) return Fail(result.error().Wrap("nftables (apt-get install nftables)"));
  return result;
}

std::string ChainSpecs(std::string_view bridge) {
  return fmt::format(
      "add chain ip {0} postrouting-{1} {{ type nat hook postrouting priority srcnat; policy accept; }}\n"
      "add chain ip {0} forward-{1} {{ type filter hook forward priority filter; policy accept; }}\n",
      kNatTable, bridge);
}

}  // namespace

Result<void> ValidateNatBridgeName(std::string_view bridge) {
  if (bridge.empty() || bridge.size() > 15) return Fail("invalid bridge name \"{}\": 1 to 15 characters", bridge);
  auto letter = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  if (!letter(bridge[0])) return Fail("invalid bridge name \"{}\": must start with a letter", bridge);
  for (char c : bridge) {
    if (!letter(c) && !digit(c) && c != '_' && c != '-') {
      return Fail("invalid bridge name \"{}\": only letters, digits, '_' and '-'", bridge);
    }
  }
  return {};
}

std::string NatRuleset(std::string_view bridge, const Ipv4Subnet& subnet) {
  const std::string net = subnet.ToString();
  std::string s = fmt::format("add table ip {}\n", kNatTable);
  s += ChainSpecs(bridge);
  s += fmt::format("flush chain ip {} postrouting-{}\n", kNatTable, bridge);
  s += fmt::format("flush chain ip {} forward-{}\n", kNatTable, bridge);
  s += fmt::format("add rule ip {0} postrouting-{1} ip saddr {2} oifname != \"{1}\" masquerade\n", kNatTable, bridge,
                   net);
  s += fmt::format("add rule ip {0} forward-{1} iifname \"{1}\" ip saddr {2} accept\n", kNatTable, bridge, net);
  s += fmt::format("add rule ip {0} forward-{1} oifname \"{1}\" ip daddr {2} ct state established,related accept\n",
                   kNatTable, bridge, net);
  s += fmt::format("add rule ip {0} forward-{1} oifname \"{1}\" ip daddr {2} drop\n", kNatTable, bridge, net);
  return s;
}

Result<void> EnableIpForwarding() {
  auto current = ReadFile(kIpForward);
  if (current && !current->empty() && (*current)[0] == '1') return {};
  auto fd = OpenFile(kIpForward, O_WRONLY);
  if (!fd) return Fail(fd.error().Wrap("enabling IPv4 forwarding (needs root)"));
  auto written = WriteAll(fd->get(), "1\n", 2);
  if (!written) return Fail(written.error().Wrap(fmt::format("enabling IPv4 forwarding ({})", kIpForward)));
  return {};
}

Result<void> EnsureNat(std::string_view bridge, const Ipv4Subnet& subnet) {
  CLONE_TRY_VOID(ValidateNatBridgeName(bridge));
  if (subnet.prefix_len < 1) return Fail("refusing to masquerade {}: not a private subnet", subnet.ToString());
  CLONE_TRY_VOID(EnableIpForwarding());
  const ToolResult result = CLONE_TRY(RunNft({"-f", "-"}, NatRuleset(bridge, subnet)));
  if (result.exit_code != 0) {
    return Fail(
        "setting up NAT for bridge {} ({}) with nft failed: {} (the kernel needs nf_tables, nft_chain_nat, nft_masq "
        "and nft_ct)",
        bridge, subnet.ToString(), LastLine(result.output));
  }
  return {};
}

Result<void> RemoveNat(std::string_view bridge) {
  CLONE_TRY_VOID(ValidateNatBridgeName(bridge));
  // Adding the chains first makes the deletes valid whether or not they existed; flush before
  // delete because a chain with rules cannot be deleted.
  std::string script = fmt::format("add table ip {}\n", kNatTable) + ChainSpecs(bridge);
  for (const char* chain : {"postrouting", "forward"}) {
    script += fmt::format("flush chain ip {} {}-{}\n", kNatTable, chain, bridge);
    script += fmt::format("delete chain ip {} {}-{}\n", kNatTable, chain, bridge);
  }
  const ToolResult removed = CLONE_TRY(RunNft({"-f", "-"}, script));
  if (removed.exit_code != 0) {
    return Fail("removing NAT for bridge {} with nft failed: {}", bridge, LastLine(removed.output));
  }
  return {};
}

}  // namespace clonevm::net

#include "net/nat.h"

#include <fcntl.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>

#include <cstring>

#include "base/fd.h"
#include "base/subprocess.h"
#include "net/netlink.h"

namespace clonevm::net {
namespace {

constexpr const char* kIpForward = "/proc/sys/net/ipv4/ip_forward";

Result<ToolResult> RunNft(const std::vector<std::string>& args, std::string_view script) {
  std::vector<std::string> argv{"nft"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto result = RunTool(argv, {.input = script});
  if (!result) return Fail(result.error().Wrap("nftables (apt-get install nftables)"));
  return result;
}

std::string ChainSpecs(std::string_view bridge) {
  return fmt::format(
      "add chain ip {0} postrouting-{1} {{ type nat hook postrouting priority srcnat; policy accept; }}\n"
      "add chain ip {0} forward-{1} {{ type filter hook forward priority filter; policy accept; }}\n",
      kNatTable, bridge);
}

// Rules of table `clone` per chain, counting those whose comment carries `tag`.
struct RuleCount {
  std::string tag;
  std::string chains[2];
  int total[2] = {0, 0};
  int tagged[2] = {0, 0};
};

struct RuleAttrs {
  std::string chain;
  std::string table;
  std::string userdata;
};

int ParseRuleAttr(const nlattr* attr, void* data) {
  auto* rule = static_cast<RuleAttrs*>(data);
  const char* payload = static_cast<const char*>(mnl_attr_get_payload(attr));
  const size_t len = mnl_attr_get_payload_len(attr);
  switch (mnl_attr_get_type(attr)) {
    case NFTA_RULE_TABLE:
      rule->table.assign(payload, strnlen(payload, len));
      break;
    case NFTA_RULE_CHAIN:
      rule->chain.assign(payload, strnlen(payload, len));
      break;
    case NFTA_RULE_USERDATA:
      rule->userdata.assign(payload, len);
      break;
    default:
      break;
  }
  return MNL_CB_OK;
}

int CountRule(const nlmsghdr* message, void* data) {
  if ((message->nlmsg_type & 0xff) != NFT_MSG_NEWRULE || message->nlmsg_len < mnl_nlmsg_size(sizeof(nfgenmsg))) {
    return MNL_CB_OK;
  }
  RuleAttrs rule;
  mnl_attr_parse(message, sizeof(nfgenmsg), ParseRuleAttr, &rule);
  auto* count = static_cast<RuleCount*>(data);
  if (rule.table != kNatTable) return MNL_CB_OK;
  for (int i = 0; i < 2; ++i) {
    if (rule.chain != count->chains[i]) continue;
    ++count->total[i];
    if (rule.userdata.find(count->tag) != std::string::npos) ++count->tagged[i];
  }
  return MNL_CB_OK;
}

// The comment EnsureNat puts on each of its rules; it names what the rule set was made for, so a
// rule set for another subnet (or an older Clone) does not pass NatIsInPlace.
std::string RuleTag(std::string_view bridge, const Ipv4Subnet& subnet) {
  return fmt::format("clone-nat v1 {} {}", bridge, subnet.ToString());
}

}  // namespace

Result<bool> NatIsInPlace(std::string_view bridge, const Ipv4Subnet& subnet) {
  auto forwarding = ReadFile(kIpForward);
  if (!forwarding || forwarding->empty() || (*forwarding)[0] != '1') return false;
  NetlinkSocket socket = CLONE_TRY(NetlinkSocket::Open(NETLINK_NETFILTER));
  char buf[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* request = mnl_nlmsg_put_header(buf);
  request->nlmsg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE;
  request->nlmsg_flags = NLM_F_DUMP;
  auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(request, sizeof(nfgenmsg)));
  nfg->nfgen_family = NFPROTO_IPV4;
  nfg->version = NFNETLINK_V0;
  RuleCount count;
  count.tag = RuleTag(bridge, subnet);
  count.chains[0] = fmt::format("postrouting-{}", bridge);
  count.chains[1] = fmt::format("forward-{}", bridge);
  CLONE_TRY_VOID(socket.Transact(request, "list nftables rules", CountRule, &count));
  return count.total[0] == 1 && count.tagged[0] == 1 && count.total[1] == 3 && count.tagged[1] == 3;
}

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
  const std::string tag = RuleTag(bridge, subnet);
  std::string s = fmt::format("add table ip {}\n", kNatTable);
  s += ChainSpecs(bridge);
  s += fmt::format("flush chain ip {} postrouting-{}\n", kNatTable, bridge);
  s += fmt::format("flush chain ip {} forward-{}\n", kNatTable, bridge);
  s += fmt::format("add rule ip {0} postrouting-{1} ip saddr {2} oifname != \"{1}\" masquerade comment \"{3}\"\n",
                   kNatTable, bridge, net, tag);
  s += fmt::format("add rule ip {0} forward-{1} iifname \"{1}\" ip saddr {2} accept comment \"{3}\"\n", kNatTable,
                   bridge, net, tag);
  s += fmt::format(
      "add rule ip {0} forward-{1} oifname \"{1}\" ip daddr {2} ct state established,related accept "
      "comment \"{3}\"\n",
      kNatTable, bridge, net, tag);
  s += fmt::format("add rule ip {0} forward-{1} oifname \"{1}\" ip daddr {2} drop comment \"{3}\"\n", kNatTable, bridge,
                   net, tag);
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
  // The common case — another VM already set it up — costs one netlink dump instead of an nft
  // run (~60 ms). Any doubt (error, missing or extra rules) falls through to the full apply.
  auto in_place = NatIsInPlace(bridge, subnet);
  if (in_place && *in_place) return {};
  CLONE_TRY_VOID(EnableIpForwarding());
  const ToolResult result = CLONE_TRY(RunNft({"-f", "-"}, NatRuleset(bridge, subnet)));
  if (result.exit_code != 0) {
    return Fail(
        "setting up NAT for bridge {} ({}) with nft failed: {} (the kernel needs nf_tables, nft_chain_nat, nft_masq "
        "and nft_ct)",
        bridge, subnet.ToString(), result.LastLine());
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
    return Fail("removing NAT for bridge {} with nft failed: {}", bridge, removed.LastLine());
  }
  return {};
}

}  // namespace clonevm::net

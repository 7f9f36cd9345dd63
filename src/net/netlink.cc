#include "net/netlink.h"

#include <arpa/inet.h>
#include <libmnl/libmnl.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "net/address.h"

namespace clonevm::net {
namespace {

// Receive buffer: large enough for any single reply we ask for (one link, one ACK) and for
// several messages of an address dump.
constexpr size_t kBufferSize = 32768;

std::string PermissionHint(int err) {
  return err == EPERM ? " — creating and configuring network links needs CAP_NET_ADMIN (run as root)" : "";
}

struct ErrorAttrs {
  std::string message;
};

int ParseErrorAttr(const nlattr* attr, void* data) {
  if (mnl_attr_get_type(attr) == NLMSGERR_ATTR_MSG && mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) >= 0) {
    static_cast<ErrorAttrs*>(data)->message = mnl_attr_get_str(attr);
  }
  return MNL_CB_OK;
}

// The errno of an NLMSG_ERROR message (0 for an ACK) and the kernel's extended-ACK text.
int ParseError(const nlmsghdr* message, std::string* text) {
  if (message->nlmsg_len < mnl_nlmsg_size(sizeof(nlmsgerr))) return EBADMSG;
  // SAFETY: the length check above covers the nlmsgerr payload.
  const auto* err = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(message));
  if (err->error != 0 && (message->nlmsg_flags & NLM_F_ACK_TLVS) != 0) {
    unsigned int offset = sizeof(nlmsgerr);
    if ((message->nlmsg_flags & NLM_F_CAPPED) == 0) offset += err->msg.nlmsg_len - sizeof(nlmsghdr);
    ErrorAttrs attrs;
    if (mnl_nlmsg_size(offset) <= message->nlmsg_len) mnl_attr_parse(message, offset, ParseErrorAttr, &attrs);
    *text = attrs.message;
  }
  return -err->error;
}

nlmsghdr* PutLinkRequest(char* buf, uint16_t type, uint16_t flags, int index) {
  nlmsghdr* request = mnl_nlmsg_put_header(buf);
  request->nlmsg_type = type;
  request->nlmsg_flags = flags;
  auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(request, sizeof(ifinfomsg)));
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = index;
  return request;
}

struct LinkParse {
  LinkInfo* info;
};

int ParseLinkInfoNested(const nlattr* attr, void* data) {
  if (mnl_attr_get_type(attr) == IFLA_INFO_KIND && mnl_attr_validate(attr, MNL_TYPE_STRING) >= 0) {
    // IFLA_INFO_KIND is NUL-terminated in practice; copy up to the first NUL.
    const char* kind = mnl_attr_get_str(attr);
    static_cast<LinkInfo*>(data)->kind.assign(kind, strnlen(kind, mnl_attr_get_payload_len(attr)));
  }
  return MNL_CB_OK;
}

int ParseLinkAttr(const nlattr* attr, void* data) {
  auto* info = static_cast<LinkInfo*>(data);
  switch (mnl_attr_get_type(attr)) {
    case IFLA_IFNAME:
      if (mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) >= 0) info->name = mnl_attr_get_str(attr);
      break;
    case IFLA_MASTER:
      if (mnl_attr_validate(attr, MNL_TYPE_U32) >= 0) info->master_index = static_cast<int>(mnl_attr_get_u32(attr));
      break;
    case IFLA_MTU:
      if (mnl_attr_validate(attr, MNL_TYPE_U32) >= 0) info->mtu = mnl_attr_get_u32(attr);
      break;
    case IFLA_ADDRESS:
      if (mnl_attr_get_payload_len(attr) == 6) {
        MacAddress mac{};
        std::memcpy(mac.data(), mnl_attr_get_payload(attr), mac.size());
        info->address = mac;
      }
      break;
    case IFLA_LINKINFO:
      if (mnl_attr_validate(attr, MNL_TYPE_NESTED) >= 0) mnl_attr_parse_nested(attr, ParseLinkInfoNested, info);
      break;
    default:
      break;
  }
  return MNL_CB_OK;
}

int ParseLink(const nlmsghdr* message, void* data) {
  if (message->nlmsg_type != RTM_NEWLINK || message->nlmsg_len < mnl_nlmsg_size(sizeof(ifinfomsg))) {
    return MNL_CB_OK;
  }
  auto* info = static_cast<LinkInfo*>(data);
  // SAFETY: the length check above covers the ifinfomsg header.
  const auto* ifi = static_cast<const ifinfomsg*>(mnl_nlmsg_get_payload(message));
  info->index = ifi->ifi_index;
  info->up = (ifi->ifi_flags & IFF_UP) != 0;
  mnl_attr_parse(message, sizeof(ifinfomsg), ParseLinkAttr, info);
  return MNL_CB_OK;
}

struct AddressDump {
  int index;
  std::vector<AddressInfo> addresses;
};

int ParseAddressAttr(const nlattr* attr, void* data) {
  if (mnl_attr_get_type(attr) == IFA_LOCAL && mnl_attr_get_payload_len(attr) == 4) {
    uint32_t be = 0;
    std::memcpy(&be, mnl_attr_get_payload(attr), 4);
    *static_cast<std::optional<uint32_t>*>(data) = ntohl(be);
  }
  return MNL_CB_OK;
}

int ParseAddress(const nlmsghdr* message, void* data) {
  if (message->nlmsg_type != RTM_NEWADDR || message->nlmsg_len < mnl_nlmsg_size(sizeof(ifaddrmsg))) {
    return MNL_CB_OK;
  }
  auto* dump = static_cast<AddressDump*>(data);
  // SAFETY: the length check above covers the ifaddrmsg header.
  const auto* ifa = static_cast<const ifaddrmsg*>(mnl_nlmsg_get_payload(message));
  if (ifa->ifa_family != AF_INET || (dump->index != 0 && static_cast<int>(ifa->ifa_index) != dump->index))
    return MNL_CB_OK;
  std::optional<uint32_t> local;
  mnl_attr_parse(message, sizeof(ifaddrmsg), ParseAddressAttr, &local);
  if (local) dump->addresses.push_back({static_cast<int>(ifa->ifa_index), *local, ifa->ifa_prefixlen});
  return MNL_CB_OK;
}

}  // namespace

void NetlinkSocket::Closer::operator()(mnl_socket* socket) const { mnl_socket_close(socket); }

NetlinkSocket::NetlinkSocket(mnl_socket* socket) : socket_(socket), port_id_(mnl_socket_get_portid(socket)) {}
NetlinkSocket::NetlinkSocket(NetlinkSocket&&) noexcept = default;
NetlinkSocket& NetlinkSocket::operator=(NetlinkSocket&&) noexcept = default;
NetlinkSocket::~NetlinkSocket() = default;

Result<NetlinkSocket> NetlinkSocket::Open(int protocol) {
  if (protocol == 0) protocol = NETLINK_ROUTE;
  mnl_socket* socket = mnl_socket_open2(protocol, SOCK_CLOEXEC);
  if (socket == nullptr) return FailErrno("netlink socket", fmt::format("protocol {}", protocol));
  NetlinkSocket result(socket);
  if (mnl_socket_bind(socket, 0, MNL_SOCKET_AUTOPID) < 0) return FailErrno("netlink bind");
  result.port_id_ = mnl_socket_get_portid(socket);
  int on = 1;
  // Extended ACKs only improve error messages; kernels without them still work.
  (void)mnl_socket_setsockopt(socket, NETLINK_EXT_ACK, &on, sizeof(on));
  return result;
}

Result<void> NetlinkSocket::Transact(nlmsghdr* request, std::string_view what, Callback callback, void* data) {
  request->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
  request->nlmsg_seq = ++sequence_;
  const uint32_t seq = request->nlmsg_seq;
  if (mnl_socket_sendto(socket_.get(), request, request->nlmsg_len) < 0) return FailErrno("netlink send", what);

  std::vector<char> buf(kBufferSize);
  for (;;) {
    ssize_t n = mnl_socket_recvfrom(socket_.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return FailErrno("netlink receive", what);
    }
    int len = static_cast<int>(n);
    for (auto* message = reinterpret_cast<const nlmsghdr*>(buf.data()); mnl_nlmsg_ok(message, len);
         message = mnl_nlmsg_next(message, &len)) {
      // SAFETY: mnl_nlmsg_ok checked the header and length against what was received.
      if (message->nlmsg_seq != seq || message->nlmsg_pid != port_id_) continue;
      if (message->nlmsg_type == NLMSG_DONE) return {};
      if (message->nlmsg_type == NLMSG_ERROR) {
        std::string kernel_text;
        const int err = ParseError(message, &kernel_text);
        if (err == 0) return {};
        std::string context(what);
        if (!kernel_text.empty()) context += ", kernel: " + kernel_text;
        Error error = Error::FromErrno("netlink", err, context);
        return Fail(Error(error.message() + PermissionHint(err), err));
      }
      if (callback != nullptr) callback(message, data);
    }
  }
}

Result<void> NetlinkSocket::GetLinkInto(nlmsghdr* request, std::string_view what, LinkInfo* info) {
  mnl_attr_put_u32(request, IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
  return Transact(request, what, ParseLink, info);
}

Result<std::optional<LinkInfo>> NetlinkSocket::FindLink(std::string_view name) {
  if (name.empty() || name.size() >= IFNAMSIZ) return Fail("invalid network interface name \"{}\"", name);
  char buf[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* request = PutLinkRequest(buf, RTM_GETLINK, 0, 0);
  mnl_attr_put_strz(request, IFLA_IFNAME, std::string(name).c_str());
  LinkInfo info;
  auto result = GetLinkInto(request, fmt::format("get link {}", name), &info);
  if (!result) {
    if (result.error().error_number() == ENODEV) return std::optional<LinkInfo>();
    return Fail(result.error());
  }
  return std::optional<LinkInfo>(std::move(info));
}

Result<LinkInfo> NetlinkSocket::GetLink(int index) {
  char buf[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* request = PutLinkRequest(buf, RTM_GETLINK, 0, index);
  LinkInfo info;
  CLONE_TRY_VOID(GetLinkInto(request, fmt::format("get link #{}", index), &info));
  return info;
}

Result<int> NetlinkSocket::LinkIndex(std::string_view name) {
  std::optional<LinkInfo> info = CLONE_TRY(FindLink(name));
  if (!info) return Fail(Error(fmt::format("network interface {} does not exist", name), ENODEV));
  return info->index;
}

Result<int> NetlinkSocket::CreateBridge(std::string_view name, const std::optional<MacAddress>& address) {
  if (name.empty() || name.size() >= IFNAMSIZ) return Fail("invalid bridge name \"{}\" (1 to 15 characters)", name);
  char buf[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* request = PutLinkRequest(buf, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, 0);
  mnl_attr_put_strz(request, IFLA_IFNAME, std::string(name).c_str());
  if (address) mnl_attr_put(request, IFLA_ADDRESS, address->size(), address->data());
  nlattr* linkinfo = mnl_attr_nest_start(request, IFLA_LINKINFO);
  mnl_attr_put_strz(request, IFLA_INFO_KIND, "bridge");
  mnl_attr_nest_end(request, linkinfo);
  CLONE_TRY_VOID(Transact(request, fmt::format("create bridge {}", name)));
  return LinkIndex(name);
}

Result<void> NetlinkSocket::SetLinkUp(int index) {
  char buf[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* request = PutLinkRequest(buf, RTM_NEWLINK, 0, index);
  auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_get_payload(request));
  ifi->ifi_flags = IFF_UP;
  ifi->ifi_change = IFF_UP;
  return Transact(request, fmt::format("set link #{} up", index));
}

Result<void> NetlinkSocket::SetMaster(int index, int master_index) {
  char buf[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* request = PutLinkRequest(buf, RTM_NEWLINK, 0, index);
  mnl_attr_put_u32(request, IFLA_MASTER, static_cast<uint32_t>(master_index));
  return Transact(request, fmt::format("attach link #{} to bridge #{}", index, master_index));
}

Result<void> NetlinkSocket::SetMtu(int index, uint32_t mtu) {
  char buf[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* request = PutLinkRequest(buf, RTM_NEWLINK, 0, index);
  mnl_attr_put_u32(request, IFLA_MTU, mtu);
  return Transact(request, fmt::format("set MTU {} on link #{}", mtu, index));
}

Result<void> NetlinkSocket::AddAddress(int index, uint32_t ipv4, int prefix_len) {
  if (prefix_len < 0 || prefix_len > 32) return Fail("invalid IPv4 prefix length {}", prefix_len);
  char buf[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* request = mnl_nlmsg_put_header(buf);
  request->nlmsg_type = RTM_NEWADDR;
  request->nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
  auto* ifa = static_cast<ifaddrmsg*>(mnl_nlmsg_put_extra_header(request, sizeof(ifaddrmsg)));
  ifa->ifa_family = AF_INET;
  ifa->ifa_prefixlen = static_cast<uint8_t>(prefix_len);
  ifa->ifa_scope = RT_SCOPE_UNIVERSE;
  ifa->ifa_index = static_cast<uint32_t>(index);
  const uint32_t be = htonl(ipv4);
  mnl_attr_put_u32(request, IFA_LOCAL, be);
  mnl_attr_put_u32(request, IFA_ADDRESS, be);
  if (prefix_len < 31) mnl_attr_put_u32(request, IFA_BROADCAST, htonl(ipv4 | (0xffffffffu >> prefix_len)));
  auto result = Transact(request, fmt::format("add address {}/{} to link #{}", FormatIpv4(ipv4), prefix_len, index));
  if (!result && result.error().error_number() == EEXIST) return {};
  return result;
}

Result<std::vector<AddressInfo>> NetlinkSocket::Ipv4Addresses(int index) {
  char buf[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* request = mnl_nlmsg_put_header(buf);
  request->nlmsg_type = RTM_GETADDR;
  request->nlmsg_flags = NLM_F_DUMP;
  auto* ifa = static_cast<ifaddrmsg*>(mnl_nlmsg_put_extra_header(request, sizeof(ifaddrmsg)));
  ifa->ifa_family = AF_INET;
  AddressDump dump{index, {}};
  CLONE_TRY_VOID(Transact(request, fmt::format("list addresses of link #{}", index), ParseAddress, &dump));
  return dump.addresses;
}

Result<void> NetlinkSocket::DeleteLink(int index) {
  char buf[MNL_SOCKET_BUFFER_SIZE];
  nlmsghdr* request = PutLinkRequest(buf, RTM_DELLINK, 0, index);
  return Transact(request, fmt::format("delete link #{}", index));
}

}  // namespace clonevm::net

// NetlinkSocket: a small rtnetlink (NETLINK_ROUTE) client over libmnl for the few link and
// address operations `--net` needs: look up a link, create a bridge, bring a link up, enslave a
// port to a bridge, add an IPv4 address, set the MTU, delete a link.
//
// Contract: every request is sent with NLM_F_ACK and the call returns only after the kernel's
// answer, so a successful return means the change is in place. Errors name the operation, the
// link and the errno text; when the kernel supplies an extended-ACK message (NETLINK_EXT_ACK) it
// is appended ("... (kernel: <message>)"). EPERM becomes a hint that CAP_NET_ADMIN is needed.
// Error::error_number() keeps the errno, so callers can test for ENODEV or EEXIST.
//
// Threads: a socket is used by one thread at a time (requests and replies share one sequence
// counter and receive buffer). It acts on the network namespace of the thread that opened it.
// No guest input reaches this code; names and addresses come from the host's configuration.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "net/address.h"

struct mnl_socket;
struct nlmsghdr;

namespace clonevm::net {

// What rtnetlink reports about one link (RTM_GETLINK).
struct LinkInfo {
  int index = 0;
  std::string name;
  std::string kind;      // IFLA_INFO_KIND: "bridge", "tun", "veth", ... ("" for physical devices)
  int master_index = 0;  // IFLA_MASTER: the bridge this link is a port of, 0 if none
  uint32_t mtu = 0;
  bool up = false;                    // IFF_UP (administrative state)
  std::optional<MacAddress> address;  // IFLA_ADDRESS when it is an Ethernet address
};

struct AddressInfo {
  int index = 0;    // the link
  uint32_t ip = 0;  // host byte order
  int prefix_len = 0;
};

class NetlinkSocket {
 public:
  // Opens and binds a netlink socket (close-on-exec; NETLINK_ROUTE unless told otherwise, e.g.
  // NETLINK_NETFILTER for nat.cc's rule check) and enables extended ACKs.
  [[nodiscard]] static Result<NetlinkSocket> Open(int protocol = 0);

  NetlinkSocket(NetlinkSocket&&) noexcept;
  NetlinkSocket& operator=(NetlinkSocket&&) noexcept;
  ~NetlinkSocket();

  // The link's index; fails with errno ENODEV ("no such network interface") when it is absent.
  [[nodiscard]] Result<int> LinkIndex(std::string_view name);
  // The link's attributes, or std::nullopt when no link has that name.
  [[nodiscard]] Result<std::optional<LinkInfo>> FindLink(std::string_view name);
  [[nodiscard]] Result<LinkInfo> GetLink(int index);

  // Creates a bridge (RTM_NEWLINK, kind "bridge", NLM_F_EXCL) and returns its index. With
  // `address`, the bridge's MAC is set explicitly, which pins it: a bridge otherwise takes the
  // lowest MAC of its ports and changes it when ports come and go, breaking its neighbours' ARP
  // caches. Fails with EEXIST if any link already has the name.
  [[nodiscard]] Result<int> CreateBridge(std::string_view name,
                                         const std::optional<MacAddress>& address = std::nullopt);
  [[nodiscard]] Result<void> SetLinkUp(int index);
  // Makes `index` a port of the bridge `master_index` (IFLA_MASTER).
  [[nodiscard]] Result<void> SetMaster(int index, int master_index);
  [[nodiscard]] Result<void> SetMtu(int index, uint32_t mtu);
  // Adds `ipv4` (host byte order) with `prefix_len` to the link; an address that is already
  // there is success.
  [[nodiscard]] Result<void> AddAddress(int index, uint32_t ipv4, int prefix_len);
  // The IPv4 addresses of link `index`, or of every link when `index` is 0.
  [[nodiscard]] Result<std::vector<AddressInfo>> Ipv4Addresses(int index = 0);
  [[nodiscard]] Result<void> DeleteLink(int index);

  using Callback = int (*)(const nlmsghdr* message, void* data);
  // Sends `request` (NLM_F_REQUEST | NLM_F_ACK added) and reads replies until the ACK, an error
  // or NLMSG_DONE; data messages go to `callback`. `what` names the operation in errors.
  [[nodiscard]] Result<void> Transact(nlmsghdr* request, std::string_view what, Callback callback = nullptr,
                                      void* data = nullptr);

 private:
  explicit NetlinkSocket(mnl_socket* socket);
  [[nodiscard]] Result<void> GetLinkInto(nlmsghdr* request, std::string_view what, LinkInfo* info);

  struct Closer {
    void operator()(mnl_socket* socket) const;
  };
  std::unique_ptr<mnl_socket, Closer> socket_;
  uint32_t port_id_ = 0;
  uint32_t sequence_ = 0;
};

}  // namespace clonevm::net

// System changes requested by the host: identity after boot or fork, and power.
//
// Network configuration uses the classic ioctls (SIOCSIFHWADDR/SIOCSIFADDR/SIOCSIFNETMASK/
// SIOCSIFFLAGS/SIOCADDRT) on an AF_INET datagram socket: enough for one static address and a
// default route, with no netlink code to carry in a static binary.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <fmt/ranges.h>
#include <linux/random.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "agent/guest/agent.h"

namespace clonevm::agent {

namespace {

// The first non-loopback Ethernet interface, by name.
Result<std::string> DefaultInterface() {
  DIR* dir = ::opendir("/sys/class/net");
  if (!dir) return FailErrno("opendir", "/sys/class/net");
  std::vector<std::string> names;
  while (dirent* entry = ::readdir(dir)) {
    std::string name = entry->d_name;
    if (name == "." || name == ".." || name == "lo") continue;
    auto type = ReadFile("/sys/class/net/" + name + "/type");
    if (type && std::atoi(type->c_str()) == ARPHRD_ETHER) names.push_back(name);
  }
  ::closedir(dir);
  if (names.empty()) return Fail("no Ethernet interface found");
  std::sort(names.begin(), names.end());
  return names.front();
}

sockaddr_in Inet(const std::array<uint8_t, 4>& address) {
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  std::memcpy(&sin.sin_addr, address.data(), 4);
  return sin;
}

class InterfaceConfig {
 public:
  static Result<InterfaceConfig> Open(const std::string& name) {
    int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return FailErrno("socket(AF_INET)");
    return InterfaceConfig(Fd(fd), name);
  }

  Result<void> SetUp(bool up) {
    ifreq ifr = Request();
    if (::ioctl(sock_.get(), SIOCGIFFLAGS, &ifr) != 0) return FailErrno("SIOCGIFFLAGS", name_);
    if (up) {
      ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP | IFF_RUNNING);
    } else {
      ifr.ifr_flags = static_cast<short>(ifr.ifr_flags & ~IFF_UP);
    }
    if (::ioctl(sock_.get(), SIOCSIFFLAGS, &ifr) != 0) return FailErrno("SIOCSIFFLAGS", name_);
    return {};
  }

  Result<void> SetMac(const std::array<uint8_t, 6>& mac) {
    CLONE_TRY_VOID(SetUp(false));  // most drivers refuse a new address while up
    ifreq ifr = Request();
    ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
    std::memcpy(ifr.ifr_hwaddr.sa_data, mac.data(), 6);
    if (::ioctl(sock_.get(), SIOCSIFHWADDR, &ifr) != 0) return FailErrno("SIOCSIFHWADDR", name_);
    return {};
  }

  Result<void> SetAddress(const std::array<uint8_t, 4>& address, uint8_t prefix) {
    ifreq ifr = Request();
    sockaddr_in sin = Inet(address);
    std::memcpy(&ifr.ifr_addr, &sin, sizeof(sin));
    if (::ioctl(sock_.get(), SIOCSIFADDR, &ifr) != 0) return FailErrno("SIOCSIFADDR", name_);
    uint32_t mask = prefix == 0 ? 0 : htonl(~uint32_t{0} << (32 - prefix));
    std::array<uint8_t, 4> mask_bytes;
    std::memcpy(mask_bytes.data(), &mask, 4);
    sin = Inet(mask_bytes);
    std::memcpy(&ifr.ifr_netmask, &sin, sizeof(sin));
    if (::ioctl(sock_.get(), SIOCSIFNETMASK, &ifr) != 0) return FailErrno("SIOCSIFNETMASK", name_);
    return {};
  }

  // Replaces any default route with one through `gateway` on this interface.
  Result<void> SetDefaultRoute(const std::array<uint8_t, 4>& gateway) {
    rtentry route{};
    sockaddr_in any = Inet({0, 0, 0, 0});
    sockaddr_in gw = Inet(gateway);
    std::memcpy(&route.rt_dst, &any, sizeof(any));
    std::memcpy(&route.rt_genmask, &any, sizeof(any));
    std::memcpy(&route.rt_gateway, &gw, sizeof(gw));
    route.rt_flags = RTF_UP | RTF_GATEWAY;
    route.rt_dev = name_.data();
    while (::ioctl(sock_.get(), SIOCADDRT, &route) != 0) {
      if (errno != EEXIST) return FailErrno("SIOCADDRT", name_);
      rtentry old{};
      std::memcpy(&old.rt_dst, &any, sizeof(any));
      std::memcpy(&old.rt_genmask, &any, sizeof(any));
      if (::ioctl(sock_.get(), SIOCDELRT, &old) != 0) return FailErrno("SIOCDELRT (old default route)", name_);
    }
    return {};
  }

 private:
  InterfaceConfig(Fd sock, std::string name) : sock_(std::move(sock)), name_(std::move(name)) {}
  ifreq Request() const {
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, name_.c_str(), IFNAMSIZ - 1);
    return ifr;
  }

  Fd sock_;
  std::string name_;
};

Result<void> ApplyNetwork(const SetIdentity& request, const AgentConfig& config, std::vector<std::string>* applied) {
  std::string name = request.interface ? *request.interface : "";
  if (!config.dry_run_log.empty()) {
    if (name.empty()) name = "<default>";
  } else if (name.empty()) {
    name = CLONE_TRY(DefaultInterface());
  }
  std::optional<InterfaceConfig> iface;
  if (config.dry_run_log.empty()) {
    iface = CLONE_TRY(InterfaceConfig::Open(name));
    auto lo = InterfaceConfig::Open("lo");
    if (lo) (void)lo->SetUp(true);
  }
  if (request.mac) {
    auto mac = CLONE_TRY(ParseMac(*request.mac));
    if (iface)
      CLONE_TRY_VOID(iface->SetMac(mac));
    else
      CLONE_TRY_VOID(RecordDryRun(config, "mac " + name + " " + *request.mac));
    applied->push_back("mac");
  }
  if (request.ipv4) {
    auto [address, prefix] = CLONE_TRY(ParseIpv4Cidr(*request.ipv4));
    if (iface)
      CLONE_TRY_VOID(iface->SetAddress(address, prefix));
    else
      CLONE_TRY_VOID(RecordDryRun(config, "ipv4 " + name + " " + *request.ipv4));
    applied->push_back("ipv4");
  }
  if (iface) CLONE_TRY_VOID(iface->SetUp(true));
  if (request.gateway) {
    auto gateway = CLONE_TRY(ParseIpv4(*request.gateway));
    if (iface)
      CLONE_TRY_VOID(iface->SetDefaultRoute(gateway));
    else
      CLONE_TRY_VOID(RecordDryRun(config, "gateway " + name + " " + *request.gateway));
    applied->push_back("gateway");
  }
  return {};
}

Result<void> ApplyHostname(const std::string& hostname) {
  if (::sethostname(hostname.data(), hostname.size()) != 0) return FailErrno("sethostname", hostname);
  // /etc/hostname is best effort: the root file system may be read-only.
  auto file = OpenFile("/etc/hostname", O_WRONLY | O_TRUNC | O_CREAT, 0644);
  if (file) (void)WriteAll(file->get(), (hostname + "\n").data(), hostname.size() + 1);
  return {};
}

Result<void> ApplyMachineId(const std::string& machine_id) {
  Fd file = CLONE_TRY(OpenFile("/etc/machine-id", O_WRONLY | O_TRUNC | O_CREAT, 0444));
  std::string text = machine_id + "\n";
  return WriteAll(file.get(), text.data(), text.size());
}

Result<void> ApplyTime(uint64_t unix_time_ns) {
  timespec ts{static_cast<time_t>(unix_time_ns / 1'000'000'000), static_cast<long>(unix_time_ns % 1'000'000'000)};
  if (::clock_settime(CLOCK_REALTIME, &ts) != 0) return FailErrno("clock_settime");
  return {};
}

// RNDADDENTROPY takes struct rand_pool_info, whose buf is a flexible array: build the C ABI by
// hand (two ints, then the bytes).
Result<void> ApplyEntropy(const std::vector<uint8_t>& seed) {
  std::vector<int> info(2 + (seed.size() + sizeof(int) - 1) / sizeof(int));
  info[0] = static_cast<int>(seed.size() * 8);  // entropy_count: credited, in bits
  info[1] = static_cast<int>(seed.size());      // buf_size in bytes
  std::memcpy(info.data() + 2, seed.data(), seed.size());
  Fd random = CLONE_TRY(OpenFile("/dev/urandom", O_WRONLY));
  if (::ioctl(random.get(), RNDADDENTROPY, info.data()) != 0) return FailErrno("RNDADDENTROPY");
  // A fork's kernel holds the template's CRNG state: crediting entropy alone does not make it
  // reseed now (Linux reseeds on its own schedule), so two forks would read the same /dev/urandom
  // bytes until then. Force the reseed from the pool that now holds the new seed. (Kernels with a
  // VMGenID driver reseed on the VMGenID notification as well.)
  if (::ioctl(random.get(), RNDRESEEDCRNG) != 0) return FailErrno("RNDRESEEDCRNG");
  return {};
}

}  // namespace

Result<IdentityOk> ApplyIdentity(const SetIdentity& request, const AgentConfig& config) {
  const bool dry = !config.dry_run_log.empty();
  IdentityOk ok;
  ok.generation = request.generation;
  auto step = [&](const char* name, const Result<void>& result) -> Result<void> {
    if (!result) {
      std::string done = ok.applied.empty() ? "nothing" : fmt::format("{}", fmt::join(ok.applied, ", "));
      return Fail("set identity: {}: {} (applied before: {})", name, result.error().message(), done);
    }
    ok.applied.push_back(name);
    return {};
  };
  if (request.hostname) {
    CLONE_TRY_VOID(step(
        "hostname", dry ? RecordDryRun(config, "hostname " + *request.hostname) : ApplyHostname(*request.hostname)));
  }
  if (request.machine_id) {
    CLONE_TRY_VOID(step("machine_id", dry ? RecordDryRun(config, "machine_id " + *request.machine_id)
                                          : ApplyMachineId(*request.machine_id)));
  }
  if (request.mac || request.ipv4 || request.gateway) {
    auto network = ApplyNetwork(request, config, &ok.applied);
    if (!network) return Fail("set identity: network: {}", network.error().message());
  }
  if (request.unix_time_ns) {
    CLONE_TRY_VOID(step("time", dry ? RecordDryRun(config, fmt::format("time {}", *request.unix_time_ns))
                                    : ApplyTime(*request.unix_time_ns)));
  }
  if (request.entropy_seed) {
    std::vector<uint8_t> seed = CLONE_TRY(ParseHex(*request.entropy_seed));
    CLONE_TRY_VOID(
        step("entropy", dry ? RecordDryRun(config, fmt::format("entropy {} bytes", seed.size())) : ApplyEntropy(seed)));
  }
  return ok;
}

Result<void> Power(PowerAction action, const AgentConfig& config) {
  const char* name = action == PowerAction::kPowerOff ? "poweroff" : "reboot";
  if (!config.dry_run_log.empty()) return RecordDryRun(config, name);
  ::sync();
  if (::reboot(action == PowerAction::kPowerOff ? RB_POWER_OFF : RB_AUTOBOOT) != 0) return FailErrno("reboot", name);
  return {};
}

}  // namespace clonevm::agent

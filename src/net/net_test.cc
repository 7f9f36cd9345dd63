// Tests for src/net. Everything that touches links, TAPs or nftables runs in a fresh network
// namespace per test (unshare(CLONE_NEWNET) in SetUp), so the host is never changed; that needs
// root, which the dev VM and CI have. The results are checked with the real tools (`ip`, `nft`).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <set>
#include <thread>

#include "base/testing/host_tools.h"
#include "net/address.h"
#include "net/alloc.h"
#include "net/nat.h"
#include "net/netlink.h"
#include "net/tap.h"
#include "net/vm_network.h"

namespace clonevm::net {
namespace {

using host_tools::RunCommand;
using host_tools::TempDir;

uint32_t Ip(std::string_view text) { return ParseIpv4(text).value(); }
Ipv4Subnet Subnet(std::string_view text) { return ParseIpv4Subnet(text).value(); }

// ---------------------------------------------------------------------------------------------
// Pure values.

TEST(AddressTest, ParsesAndFormatsIpv4) {
  EXPECT_EQ(Ip("172.30.0.1"), 0xAC1E0001u);
  EXPECT_EQ(FormatIpv4(0xAC1E0001u), "172.30.0.1");
  EXPECT_EQ(Ip("0.0.0.0"), 0u);
  EXPECT_EQ(Ip("255.255.255.255"), 0xffffffffu);
  for (const char* bad :
       {"", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1.2.3.-4", "a.b.c.d", "1..2.3", "1.2.3.4 "}) {
    auto r = ParseIpv4(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.error().message().find("invalid IPv4 address"), std::string::npos);
  }
}

TEST(AddressTest, ParsesSubnetsAndRejectsHostBits) {
  Ipv4Subnet s = Subnet("172.30.0.0/24");
  EXPECT_EQ(s.network, 0xAC1E0000u);
  EXPECT_EQ(s.prefix_len, 24);
  EXPECT_EQ(s.mask(), 0xffffff00u);
  EXPECT_EQ(s.gateway(), Ip("172.30.0.1"));
  EXPECT_EQ(s.broadcast(), Ip("172.30.0.255"));
  EXPECT_TRUE(s.Contains(Ip("172.30.0.77")));
  EXPECT_FALSE(s.Contains(Ip("172.30.1.1")));
  EXPECT_EQ(s.ToString(), "172.30.0.0/24");

  auto host_bits = ParseIpv4Subnet("172.30.0.5/24");
  ASSERT_FALSE(host_bits);
  EXPECT_NE(host_bits.error().message().find("did you mean 172.30.0.0/24"), std::string::npos)
      << host_bits.error().message();
  EXPECT_FALSE(ParseIpv4Subnet("172.30.0.0"));
  EXPECT_FALSE(ParseIpv4Subnet("172.30.0.0/33"));
  EXPECT_FALSE(ParseIpv4Subnet("172.30.0.0/"));
  EXPECT_FALSE(ParseIpv4Subnet("172.30.0/24"));
}

TEST(AddressTest, MacIsLocallyAdministeredUnicastDerivedFromIp) {
  MacAddress mac = MacForIpv4(Ip("172.30.0.2"));
  EXPECT_EQ(FormatMac(mac), "06:00:ac:1e:00:02");
  EXPECT_EQ(mac[0] & 0x02, 0x02) << "locally administered";
  EXPECT_EQ(mac[0] & 0x01, 0x00) << "unicast";
  EXPECT_NE(MacForIpv4(Ip("172.30.0.3")), mac);
  EXPECT_EQ(ParseMac("06:00:AC:1e:00:02").value(), mac);
  EXPECT_FALSE(ParseMac("06:00:ac:1e:00"));
  EXPECT_FALSE(ParseMac("06-00-ac-1e-00-02"));
  EXPECT_FALSE(ParseMac("06:00:ac:1e:00:0g"));
}

TEST(AddressTest, ResolvConfSkipsLoopbackAndJunk) {
  auto servers = ParseResolvConf(
      "# comment\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver  192.168.1.1 # lan\n"
      "nameserver ::1\nnameservers 1.1.1.1\noptions edns0\nnameserver 8.8.8.8");
  EXPECT_EQ(servers, (std::vector<uint32_t>{Ip("10.0.0.2"), Ip("192.168.1.1"), Ip("8.8.8.8")}));
}

TEST(NatTest, RulesetIsOneIdempotentTransaction) {
  const std::string ruleset = NatRuleset("clonebr0", Subnet("172.30.0.0/24"));
  EXPECT_EQ(ruleset,
            "add table ip clone\n"
            "add chain ip clone postrouting-clonebr0 { type nat hook postrouting priority srcnat; policy accept; }\n"
            "add chain ip clone forward-clonebr0 { type filter hook forward priority filter; policy accept; }\n"
            "flush chain ip clone postrouting-clonebr0\n"
            "flush chain ip clone forward-clonebr0\n"
            "add rule ip clone postrouting-clonebr0 ip saddr 172.30.0.0/24 oifname != \"clonebr0\" masquerade "
            "comment \"clone-nat v1 clonebr0 172.30.0.0/24\"\n"
            "add rule ip clone forward-clonebr0 iifname \"clonebr0\" ip saddr 172.30.0.0/24 accept "
            "comment \"clone-nat v1 clonebr0 172.30.0.0/24\"\n"
            "add rule ip clone forward-clonebr0 oifname \"clonebr0\" ip daddr 172.30.0.0/24 ct state "
            "established,related accept comment \"clone-nat v1 clonebr0 172.30.0.0/24\"\n"
            "add rule ip clone forward-clonebr0 oifname \"clonebr0\" ip daddr 172.30.0.0/24 drop "
            "comment \"clone-nat v1 clonebr0 172.30.0.0/24\"\n");
  EXPECT_TRUE(ValidateNatBridgeName("clonebr0"));
  EXPECT_TRUE(ValidateNatBridgeName("br-test_1"));
  for (const char* bad : {"", "0br", "br;flush ruleset", "br\"x", "br x", "abcdefghijklmnop"}) {
    EXPECT_FALSE(ValidateNatBridgeName(bad)) << bad;
  }
}

// ---------------------------------------------------------------------------------------------
// Leases (no namespace needed: files only).

class AllocTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()); }
  std::string LeaseDir() const { return dir_.File("net/clonebr0"); }
  TempDir dir_{"clone-net-test"};
};

TEST_F(AllocTest, HandsOutLowestFreeAddressAndReusesReleasedOnes) {
  const Ipv4Subnet subnet = Subnet("172.30.0.0/24");
  IpLease a = AcquireLease(LeaseDir(), subnet, "vm-a").value();
  IpLease b = AcquireLease(LeaseDir(), subnet, "vm-b").value();
  EXPECT_EQ(FormatIpv4(a.ip()), "172.30.0.2");
  EXPECT_EQ(FormatIpv4(b.ip()), "172.30.0.3");
  EXPECT_EQ(FormatMac(b.mac()), "06:00:ac:1e:00:03");
  EXPECT_EQ(ReadFile(LeaseDir() + "/172.30.0.2").value(), fmt::format("pid={} owner=vm-a\n", ::getpid()));

  auto leases = ListLeases(LeaseDir()).value();
  ASSERT_EQ(leases.size(), 2u);
  EXPECT_TRUE(leases[0].held);
  EXPECT_EQ(leases[0].owner, "vm-a");
  EXPECT_EQ(leases[1].pid, ::getpid());

  a.Release();
  EXPECT_FALSE(a.held());
  EXPECT_NE(::access((LeaseDir() + "/172.30.0.2").c_str(), F_OK), 0) << "released lease file removed";
  IpLease c = AcquireLease(LeaseDir(), subnet, "vm-c").value();
  EXPECT_EQ(FormatIpv4(c.ip()), "172.30.0.2");
  { IpLease moved = std::move(c); }  // released by the destructor of the moved-to object
  EXPECT_EQ(ListLeases(LeaseDir()).value().size(), 1u);
}

TEST_F(AllocTest, FailsClearlyWhenTheSubnetIsFullOrUnsupported) {
  const Ipv4Subnet tiny = Subnet("10.9.0.0/30");  // .1 gateway, .2 the only guest, .3 broadcast
  IpLease only = AcquireLease(LeaseDir(), tiny, "x").value();
  EXPECT_EQ(FormatIpv4(only.ip()), "10.9.0.2");
  auto full = AcquireLease(LeaseDir(), tiny, "y");
  ASSERT_FALSE(full);
  EXPECT_NE(full.error().message().find("no free IP address in 10.9.0.0/30"), std::string::npos)
      << full.error().message();
  for (const char* bad : {"10.0.0.0/8", "10.9.0.0/31", "10.9.0.0/32"}) {
    auto r = AcquireLease(LeaseDir(), Subnet(bad), "z");
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.error().message().find("unsupported size"), std::string::npos) << r.error().message();
  }
}

TEST_F(AllocTest, ConcurrentThreadsNeverShareAnAddress) {
  const Ipv4Subnet subnet = Subnet("172.30.0.0/26");  // 61 guest addresses
  constexpr int kThreads = 8, kEach = 7;
  std::vector<std::vector<IpLease>> held(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        auto lease = AcquireLease(LeaseDir(), subnet, fmt::format("t{}", t));
        if (lease) held[t].push_back(std::move(*lease));
      }
    });
  }
  for (auto& thread : threads) thread.join();
  std::set<uint32_t> ips;
  for (const auto& leases : held) {
    EXPECT_EQ(leases.size(), static_cast<size_t>(kEach));
    for (const auto& lease : leases) EXPECT_TRUE(ips.insert(lease.ip()).second) << FormatIpv4(lease.ip());
  }
  EXPECT_EQ(ips.size(), static_cast<size_t>(kThreads * kEach));
  EXPECT_EQ(*ips.begin(), Ip("172.30.0.2"));
  EXPECT_EQ(*ips.rbegin(), Ip("172.30.0.2") + kThreads * kEach - 1);
}

TEST_F(AllocTest, ConcurrentProcessesNeverShareAnAddress) {
  const Ipv4Subnet subnet = Subnet("172.30.0.0/24");
  constexpr int kChildren = 6, kEach = 5;
  int results[2], release[2];
  ASSERT_EQ(::pipe(results), 0);
  ASSERT_EQ(::pipe(release), 0);
  std::vector<pid_t> children;
  for (int c = 0; c < kChildren; ++c) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(results[0]);
      ::close(release[1]);
      std::vector<IpLease> mine;
      for (int i = 0; i < kEach; ++i) {
        auto lease = AcquireLease(LeaseDir(), subnet, "child");
        uint32_t ip = lease ? lease->ip() : 0;
        if (::write(results[1], &ip, sizeof(ip)) != sizeof(ip)) ::_exit(2);
        if (lease) mine.push_back(std::move(*lease));
      }
      char byte;
      (void)!::read(release[0], &byte, 1);  // hold the leases until the parent has counted
      mine.clear();
      ::_exit(0);
    }
    children.push_back(pid);
  }
  ::close(results[1]);
  ::close(release[0]);
  std::multiset<uint32_t> ips;
  uint32_t ip = 0;
  while (::read(results[0], &ip, sizeof(ip)) == sizeof(ip)) {
    ips.insert(ip);
    if (ips.size() == kChildren * kEach) break;
  }
  ::close(release[1]);
  for (pid_t pid : children) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  ::close(results[0]);
  EXPECT_EQ(ips.size(), static_cast<size_t>(kChildren * kEach));
  EXPECT_EQ(ips.count(0), 0u) << "an acquisition failed";
  EXPECT_EQ(std::set<uint32_t>(ips.begin(), ips.end()).size(), ips.size()) << "an address was handed out twice";
  EXPECT_TRUE(ListLeases(LeaseDir()).value().empty()) << "children released their leases on exit";
}

TEST_F(AllocTest, LeaseOfADeadProcessIsReclaimed) {
  const Ipv4Subnet subnet = Subnet("172.30.0.0/24");
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto lease = AcquireLease(LeaseDir(), subnet, "doomed");
    ::raise(SIGKILL);  // dies holding the lease: no destructor, the file stays
    ::_exit(1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status));
  auto stale = ListLeases(LeaseDir()).value();
  ASSERT_EQ(stale.size(), 1u);
  EXPECT_FALSE(stale[0].held);
  EXPECT_EQ(stale[0].pid, pid);
  EXPECT_EQ(stale[0].owner, "doomed");

  IpLease reclaimed = AcquireLease(LeaseDir(), subnet, "heir").value();
  EXPECT_EQ(FormatIpv4(reclaimed.ip()), "172.30.0.2");
  auto now = ListLeases(LeaseDir()).value();
  ASSERT_EQ(now.size(), 1u);
  EXPECT_TRUE(now[0].held);
  EXPECT_EQ(now[0].pid, ::getpid());
  EXPECT_EQ(now[0].owner, "heir");
}

TEST(RuntimeDirTest, EnvironmentOverridesTheDefault) {
  ::setenv("CLONE_RUNTIME_DIR", "/tmp/clone-rt-test", 1);
  EXPECT_EQ(DefaultRuntimeDir().value(), "/tmp/clone-rt-test");
  ::unsetenv("CLONE_RUNTIME_DIR");
  if (::geteuid() == 0) {
    EXPECT_EQ(DefaultRuntimeDir().value(), "/run/clone");
  }
  EXPECT_EQ(LeaseDirectory("/run/clone", "clonebr0"), "/run/clone/net/clonebr0");
}

// ---------------------------------------------------------------------------------------------
// Links, TAPs, NAT: each test in its own network namespace.

class NetnsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root for a private network namespace";
    ASSERT_EQ(::unshare(CLONE_NEWNET), 0) << std::strerror(errno);
    ASSERT_TRUE(dir_.ok());
  }
  static std::string Sh(const std::string& command) {
    auto r = RunCommand(command);
    EXPECT_EQ(r.exit_code, 0) << command << ": " << r.output;
    return r.output;
  }
  static bool LinkExists(const std::string& name) { return ::if_nametoindex(name.c_str()) != 0; }
  AutoNetOptions Options() const {
    AutoNetOptions options;
    options.runtime_dir = dir_.path().string();
    return options;
  }
  std::string LeaseDir() const { return LeaseDirectory(dir_.path().string(), kDefaultBridge); }
  TempDir dir_{"clone-net-test"};
};

TEST_F(NetnsTest, NetlinkCreatesAndConfiguresABridge) {
  NetlinkSocket nl = NetlinkSocket::Open().value();
  EXPECT_EQ(nl.FindLink("br-test").value(), std::nullopt);
  auto missing = nl.LinkIndex("br-test");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().error_number(), ENODEV);
  EXPECT_EQ(missing.error().message(), "network interface br-test does not exist");

  const MacAddress mac = ParseMac("06:00:0a:01:02:01").value();
  const int index = nl.CreateBridge("br-test", mac).value();
  auto again = nl.CreateBridge("br-test");
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().error_number(), EEXIST);
  EXPECT_NE(again.error().message().find("create bridge br-test"), std::string::npos) << again.error().message();

  ASSERT_TRUE(nl.AddAddress(index, Ip("10.1.2.1"), 24));
  ASSERT_TRUE(nl.AddAddress(index, Ip("10.1.2.1"), 24)) << "an existing address is success";
  ASSERT_TRUE(nl.SetMtu(index, 1400));
  ASSERT_TRUE(nl.SetLinkUp(index));
  LinkInfo info = nl.GetLink(index).value();
  EXPECT_EQ(info.name, "br-test");
  EXPECT_EQ(info.kind, "bridge");
  EXPECT_TRUE(info.up);
  EXPECT_EQ(info.mtu, 1400u);
  ASSERT_TRUE(info.address);
  EXPECT_EQ(FormatMac(*info.address), "06:00:0a:01:02:01");
  auto addresses = nl.Ipv4Addresses(index).value();
  ASSERT_EQ(addresses.size(), 1u);
  EXPECT_EQ(addresses[0].ip, Ip("10.1.2.1"));
  EXPECT_EQ(addresses[0].prefix_len, 24);
  // Independent check with iproute2.
  const std::string shown = Sh("ip -d -4 addr show dev br-test");
  EXPECT_NE(shown.find("inet 10.1.2.1/24 brd 10.1.2.255"), std::string::npos) << shown;
  EXPECT_NE(shown.find("bridge"), std::string::npos) << shown;
  EXPECT_NE(shown.find("mtu 1400"), std::string::npos) << shown;

  ASSERT_TRUE(nl.DeleteLink(index));
  EXPECT_FALSE(LinkExists("br-test"));
  auto gone = nl.DeleteLink(index);
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error().error_number(), ENODEV);
}

TEST_F(NetnsTest, NetlinkReportsKernelErrors) {
  NetlinkSocket nl = NetlinkSocket::Open().value();
  auto bad_master = nl.SetMaster(nl.LinkIndex("lo").value(), 9999);
  ASSERT_FALSE(bad_master);
  EXPECT_NE(bad_master.error().message().find("attach link #1 to bridge #9999"), std::string::npos)
      << bad_master.error().message();
  EXPECT_FALSE(nl.FindLink("this-name-is-too-long"));
  EXPECT_FALSE(nl.AddAddress(1, Ip("10.0.0.1"), 33));
}

TEST_F(NetnsTest, TapIsCreatedWithVnetHeaderAndVanishesWithItsFd) {
  Tap a = OpenTap("clone%d").value();
  Tap b = OpenTap("clone%d").value();
  EXPECT_EQ(a.name, "clone0");
  EXPECT_EQ(b.name, "clone1");
  int size = 0;
  ASSERT_EQ(::ioctl(a.fd.get(), TUNGETVNETHDRSZ, &size), 0);
  EXPECT_EQ(size, kVirtioNetHdrSize);
  ifreq ifr{};
  ASSERT_EQ(::ioctl(a.fd.get(), TUNGETIFF, &ifr), 0);
  EXPECT_EQ(ifr.ifr_flags & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
  EXPECT_EQ(::fcntl(a.fd.get(), F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  EXPECT_NE(::fcntl(a.fd.get(), F_GETFL) & O_NONBLOCK, 0);
  EXPECT_TRUE(LinkExists("clone0"));

  a.fd.reset();
  EXPECT_FALSE(LinkExists("clone0")) << "a non-persistent TAP is deleted with its last fd";
  EXPECT_TRUE(LinkExists("clone1"));
}

TEST_F(NetnsTest, TapErrorsAreClear) {
  auto missing = OpenTap("tap-missing", {.creation = TapCreation::kMustExist});
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message().find("TAP tap-missing does not exist: create it with `ip tuntap add"),
            std::string::npos)
      << missing.error().message();
  EXPECT_FALSE(LinkExists("tap-missing"));

  auto not_tap = OpenTap("lo");
  ASSERT_FALSE(not_tap);
  EXPECT_EQ(not_tap.error().message(), "lo exists but is not a TAP interface (or its vnet_hdr setting differs)");

  Sh("ip tuntap add tap-p mode tap vnet_hdr");
  Tap first = OpenTap("tap-p", {.creation = TapCreation::kMustExist}).value();
  auto busy = OpenTap("tap-p", {.creation = TapCreation::kMustExist});
  ASSERT_FALSE(busy);
  EXPECT_NE(busy.error().message().find("TAP tap-p is already in use"), std::string::npos) << busy.error().message();
  first.fd.reset();
  EXPECT_TRUE(LinkExists("tap-p")) << "an existing persistent TAP is left in place";

  EXPECT_FALSE(OpenTap("a-name-that-is-too-long"));
  EXPECT_FALSE(OpenTap("bad/name"));
  EXPECT_FALSE(OpenTap("pat%d", {.creation = TapCreation::kMustExist}));

  // Without privileges: a child that dropped root gets a message, not a bare errno.
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (::setresuid(65534, 65534, 65534) != 0) ::_exit(3);
    auto denied = OpenTap("tap-p", {.creation = TapCreation::kMustExist});
    ::_exit(!denied && denied.error().message().find("no permission") != std::string::npos ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}

TEST_F(NetnsTest, NatIsIdempotentAndPerBridge) {
  ASSERT_EQ(ReadFile("/proc/sys/net/ipv4/ip_forward").value(), "0\n") << "a fresh namespace starts without forwarding";
  EXPECT_FALSE(NatIsInPlace("clonebr0", Subnet("172.30.0.0/24")).value());
  auto first = EnsureNat("clonebr0", Subnet("172.30.0.0/24"));
  ASSERT_TRUE(first) << first.error().message();
  EXPECT_EQ(ReadFile("/proc/sys/net/ipv4/ip_forward").value(), "1\n");
  EXPECT_TRUE(NatIsInPlace("clonebr0", Subnet("172.30.0.0/24")).value());
  EXPECT_FALSE(NatIsInPlace("clonebr0", Subnet("172.31.0.0/24")).value()) << "made for another subnet";
  EXPECT_FALSE(NatIsInPlace("br-two", Subnet("172.30.0.0/24")).value());
  const std::string once = Sh("nft list table ip clone");
  ASSERT_TRUE(EnsureNat("clonebr0", Subnet("172.30.0.0/24")));
  const std::string twice = Sh("nft list table ip clone");
  EXPECT_EQ(once, twice) << "re-running changes nothing";
  auto count = [](const std::string& text, const std::string& what) {
    size_t n = 0;
    for (size_t pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1)) ++n;
    return n;
  };
  EXPECT_EQ(count(twice, "masquerade"), 1u) << twice;
  EXPECT_NE(twice.find("ip saddr 172.30.0.0/24 oifname != \"clonebr0\" masquerade"), std::string::npos) << twice;
  EXPECT_NE(twice.find("type nat hook postrouting priority srcnat; policy accept;"), std::string::npos) << twice;
  EXPECT_NE(twice.find("oifname \"clonebr0\" ip daddr 172.30.0.0/24 ct state established,related accept"),
            std::string::npos)
      << twice;

  // A rule deleted by hand is restored; a second bridge gets its own chains.
  Sh("nft flush chain ip clone postrouting-clonebr0");
  EXPECT_FALSE(NatIsInPlace("clonebr0", Subnet("172.30.0.0/24")).value());
  ASSERT_TRUE(EnsureNat("clonebr0", Subnet("172.30.0.0/24")));
  ASSERT_TRUE(EnsureNat("br-two", Subnet("10.77.0.0/16")));
  const std::string both = Sh("nft list table ip clone");
  EXPECT_EQ(count(both, "masquerade"), 2u) << both;
  EXPECT_TRUE(NatIsInPlace("clonebr0", Subnet("172.30.0.0/24")).value());
  // An extra rule (someone else's) in our chain is noticed too, and removed by the next apply.
  Sh("nft add rule ip clone forward-clonebr0 counter");
  EXPECT_FALSE(NatIsInPlace("clonebr0", Subnet("172.30.0.0/24")).value());
  ASSERT_TRUE(EnsureNat("clonebr0", Subnet("172.30.0.0/24")));
  EXPECT_TRUE(NatIsInPlace("clonebr0", Subnet("172.30.0.0/24")).value());
  EXPECT_NE(both.find("ip saddr 10.77.0.0/16 oifname != \"br-two\" masquerade"), std::string::npos) << both;

  ASSERT_TRUE(RemoveNat("br-two"));
  ASSERT_TRUE(RemoveNat("br-two")) << "removing twice is fine";
  EXPECT_EQ(Sh("nft list table ip clone"), once);
  // With forwarding turned off behind our back the rules alone are not enough.
  ASSERT_TRUE(WriteAll(OpenFile("/proc/sys/net/ipv4/ip_forward", O_WRONLY).value().get(), "0\n", 2));
  EXPECT_FALSE(NatIsInPlace("clonebr0", Subnet("172.30.0.0/24")).value());
  ASSERT_TRUE(EnsureNat("clonebr0", Subnet("172.30.0.0/24")));
  EXPECT_EQ(ReadFile("/proc/sys/net/ipv4/ip_forward").value(), "1\n");
  EXPECT_FALSE(EnsureNat("bad name", Subnet("172.30.0.0/24")));
}

TEST_F(NetnsTest, AutoNetworkSetsUpBridgeTapNatAndLease) {
  auto first = SetUpAutoNetwork(Options());
  ASSERT_TRUE(first) << first.error().message();
  VmNetwork vm1 = std::move(*first);
  VmNetwork vm2 = SetUpAutoNetwork(Options()).value();

  EXPECT_EQ(vm1.tap_name(), "clone0");
  EXPECT_EQ(vm2.tap_name(), "clone1");
  EXPECT_EQ(FormatIpv4(vm1.guest().ip), "172.30.0.2");
  EXPECT_EQ(FormatIpv4(vm2.guest().ip), "172.30.0.3");
  EXPECT_EQ(FormatMac(vm2.guest().mac), "06:00:ac:1e:00:03");
  EXPECT_EQ(vm1.guest().prefix_len, 24);
  EXPECT_EQ(FormatIpv4(vm1.guest().gateway), "172.30.0.1");
  EXPECT_TRUE(vm1.tap_fd().valid());

  const std::string bridge = Sh("ip -d addr show dev clonebr0");
  EXPECT_NE(bridge.find("inet 172.30.0.1/24"), std::string::npos) << bridge;
  EXPECT_NE(bridge.find("link/ether 06:00:ac:1e:00:01"), std::string::npos) << bridge;
  EXPECT_NE(bridge.find(",UP"), std::string::npos) << bridge;
  const std::string tap = Sh("ip -d link show dev clone0");
  EXPECT_NE(tap.find("master clonebr0"), std::string::npos) << tap;
  EXPECT_NE(tap.find("tun type tap"), std::string::npos) << tap;
  EXPECT_NE(tap.find(",UP"), std::string::npos) << tap;
  EXPECT_NE(Sh("nft list table ip clone").find("masquerade"), std::string::npos);
  EXPECT_EQ(ListLeases(LeaseDir()).value().size(), 2u);

  // The device takes the TAP fd; when it closes it the TAP is gone. The lease goes with VmNetwork.
  Fd device_fd = vm1.TakeTapFd();
  EXPECT_FALSE(vm1.tap_fd().valid());
  device_fd.reset();
  EXPECT_FALSE(LinkExists("clone0"));
  { VmNetwork gone = std::move(vm1); }
  auto leases = ListLeases(LeaseDir()).value();
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_EQ(FormatIpv4(leases[0].ip), "172.30.0.3");
  EXPECT_TRUE(LinkExists("clonebr0")) << "the shared bridge stays for other VMs";

  auto busy = RemoveAutoNetwork(Options());
  ASSERT_FALSE(busy);
  EXPECT_NE(busy.error().message().find("still used by running VMs: 172.30.0.3"), std::string::npos)
      << busy.error().message();
  { VmNetwork gone = std::move(vm2); }
  EXPECT_FALSE(LinkExists("clone1"));
  ASSERT_TRUE(RemoveAutoNetwork(Options()));
  EXPECT_FALSE(LinkExists("clonebr0"));
  EXPECT_EQ(Sh("nft list table ip clone").find("chain"), std::string::npos);
}

TEST_F(NetnsTest, FailedSetUpLeavesNothingBehind) {
  AutoNetOptions options = Options();
  options.tap_name = "lo";  // exists and is not a TAP: fails after the bridge and NAT were made
  auto failed = SetUpAutoNetwork(options);
  ASSERT_FALSE(failed);
  EXPECT_NE(failed.error().message().find("--net (bridge clonebr0): lo exists but is not a TAP"), std::string::npos)
      << failed.error().message();
  EXPECT_FALSE(LinkExists("clonebr0")) << "the bridge this call created is deleted";
  EXPECT_EQ(Sh("nft list table ip clone").find("chain"), std::string::npos) << "its NAT chains too";
  EXPECT_TRUE(ListLeases(LeaseDir()).value().empty()) << "and the lease";

  // With a bridge that was already there, rollback keeps it.
  VmNetwork other = SetUpAutoNetwork(Options()).value();
  ASSERT_FALSE(SetUpAutoNetwork(options));
  EXPECT_TRUE(LinkExists("clonebr0"));
  EXPECT_NE(Sh("nft list table ip clone").find("masquerade"), std::string::npos);
  EXPECT_EQ(ListLeases(LeaseDir()).value().size(), 1u);
}

TEST_F(NetnsTest, RefusesConflictingConfiguration) {
  AutoNetOptions not_bridge = Options();
  not_bridge.bridge = "lo";
  auto r = SetUpAutoNetwork(not_bridge);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("lo exists but is not a bridge"), std::string::npos) << r.error().message();

  Sh("ip addr add 172.30.0.77/16 dev lo");
  auto overlap = SetUpAutoNetwork(Options());
  ASSERT_FALSE(overlap);
  EXPECT_NE(overlap.error().message().find("the VM subnet 172.30.0.0/24 overlaps 172.30.0.77/16 on lo"),
            std::string::npos)
      << overlap.error().message();
  EXPECT_FALSE(LinkExists("clonebr0"));

  AutoNetOptions bad = Options();
  bad.subnet = Subnet("10.0.0.0/8");
  EXPECT_FALSE(SetUpAutoNetwork(bad));
  bad = Options();
  bad.tap_name = "waytoolongtapname0";
  EXPECT_FALSE(SetUpAutoNetwork(bad));
  bad = Options();
  bad.tap.creation = TapCreation::kMustExist;
  EXPECT_FALSE(SetUpAutoNetwork(bad));
}

TEST_F(NetnsTest, WithoutNetAdminTheErrorSaysWhatToDo) {
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (::setresuid(65534, 65534, 65534) != 0) ::_exit(3);
    auto denied = SetUpAutoNetwork(Options());
    const bool ok = !denied && denied.error().message().starts_with("--net needs root (CAP_NET_ADMIN)") &&
                    denied.error().message().find("--tap NAME") != std::string::npos;
    ::_exit(ok ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  EXPECT_FALSE(LinkExists("clonebr0"));
}

TEST_F(NetnsTest, ConcurrentSetUpsGetDistinctAddressesAndTaps) {
  constexpr int kVms = 6;
  std::vector<Result<VmNetwork>> results;
  results.reserve(kVms);
  for (int i = 0; i < kVms; ++i) results.emplace_back(Fail("not run"));
  std::vector<std::thread> threads;
  for (int i = 0; i < kVms; ++i) threads.emplace_back([&, i] { results[i] = SetUpAutoNetwork(Options()); });
  for (auto& t : threads) t.join();
  std::set<uint32_t> ips;
  std::set<std::string> taps;
  for (auto& r : results) {
    ASSERT_TRUE(r) << r.error().message();
    ips.insert(r->guest().ip);
    taps.insert(r->tap_name());
  }
  EXPECT_EQ(ips.size(), static_cast<size_t>(kVms));
  EXPECT_EQ(taps.size(), static_cast<size_t>(kVms));
  const std::string ports = Sh("ip -br link show master clonebr0");
  EXPECT_EQ(static_cast<int>(std::count(ports.begin(), ports.end(), '\n')), kVms) << ports;
}

}  // namespace
}  // namespace clonevm::net

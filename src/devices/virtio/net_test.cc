// virtio-net over a real TAP in a private network namespace (needs root / CAP_NET_ADMIN and
// /dev/net/tun; skipped without them): TAP opening errors, offload negotiation, the userspace data
// path both ways (a packet socket on the TAP is the other end), MRG_RXBUF, hostile chains, the
// no-spin property of the edge-triggered TAP watch, pause/resume; and the same traffic through
// vhost-net where /dev/vhost-net exists (the nested lab).
#include "devices/virtio/net.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "base/event_loop.h"
#include "devices/virtio/mmio_transport.h"
#include "devices/virtio/testing/mmio_driver.h"
#include "devices/virtio/testing/queue_driver.h"

namespace clonevm::virtio {
namespace {

using testing::MmioDriver;
using testing::QueueDriver;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint16_t kTestEtherType = 0x88b5;  // IEEE local experimental
constexpr uint64_t kOffloads = kNetFeatureCsum | kNetFeatureGuestCsum | kNetFeatureGuestTso4 | kNetFeatureGuestTso6 |
                               kNetFeatureHostTso4 | kNetFeatureHostTso6;

// Moves the test process into its own network namespace once, so TAPs never touch the host's.
bool NetworkSandbox() {
  static const bool ok = [] {
    if (::geteuid() != 0 || ::access("/dev/net/tun", R_OK | W_OK) != 0) return false;
    return ::unshare(CLONE_NEWNET) == 0;
  }();
  return ok;
}

#define REQUIRE_TAP() \
  if (!NetworkSandbox()) GTEST_SKIP() << "needs root, /dev/net/tun and unshare(CLONE_NEWNET)"

void WriteProc(const std::string& path, const char* value) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (fd.valid()) [[maybe_unused]]
    auto r = WriteAll(fd.get(), value, std::strlen(value));
}

// A persistent TAP (as `ip tuntap add` makes), up, without IPv6 chatter; deleted at scope end.
class ScopedTap {
 public:
  explicit ScopedTap(const std::string& name, short flags = IFF_TAP) : name_(name) {
    Fd fd(::open("/dev/net/tun", O_RDWR | O_CLOEXEC));
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
    ifr.ifr_flags = static_cast<short>(flags | IFF_NO_PI);
    created_ = ::ioctl(fd.get(), TUNSETIFF, &ifr) == 0 && ::ioctl(fd.get(), TUNSETPERSIST, 1) == 0;
    WriteProc("/proc/sys/net/ipv6/conf/" + name + "/disable_ipv6", "1");
    Fd sock(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (::ioctl(sock.get(), SIOCGIFFLAGS, &ifr) == 0) {
      ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
      ::ioctl(sock.get(), SIOCSIFFLAGS, &ifr);
    }
  }
  ~ScopedTap() {
    Fd fd(::open("/dev/net/tun", O_RDWR | O_CLOEXEC));
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, name_.c_str(), IFNAMSIZ - 1);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    if (::ioctl(fd.get(), TUNSETIFF, &ifr) != 0) {
      ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
      ::ioctl(fd.get(), TUNSETIFF, &ifr);
    }
    ::ioctl(fd.get(), TUNSETPERSIST, 0);
  }
  bool created() const { return created_; }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  bool created_ = false;
};

// The host side of the TAP: a packet socket bound to it.
class PacketSocket {
 public:
  explicit PacketSocket(const std::string& ifname) {
    fd_ = Fd(::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL)));
    sockaddr_ll addr{};
    addr.sll_family = AF_PACKET;
    addr.sll_protocol = htons(ETH_P_ALL);
    addr.sll_ifindex = static_cast<int>(::if_nametoindex(ifname.c_str()));
    ifindex_ = addr.sll_ifindex;
    bound_ = ::bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  bool ok() const { return fd_.valid() && bound_; }
  // Sends a frame out of the interface: the TAP's reader (the device) receives it.
  bool Send(const std::vector<uint8_t>& frame) {
    sockaddr_ll addr{};
    addr.sll_family = AF_PACKET;
    addr.sll_ifindex = ifindex_;
    addr.sll_halen = 6;
    return ::sendto(fd_.get(), frame.data(), frame.size(), 0, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) ==
           static_cast<ssize_t>(frame.size());
  }
  // The next frame of kTestEtherType the interface received (written to the TAP fd), or empty.
  std::vector<uint8_t> ReceiveTestFrame(int timeout_ms) {
    for (;;) {
      pollfd p{fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, timeout_ms) != 1) return {};
      std::vector<uint8_t> buf(70000);
      sockaddr_ll from{};
      socklen_t len = sizeof(from);
      ssize_t n = ::recvfrom(fd_.get(), buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &len);
      if (n < 14) continue;
      buf.resize(static_cast<size_t>(n));
      if (from.sll_pkttype == PACKET_OUTGOING || buf[12] != (kTestEtherType >> 8) ||
          buf[13] != (kTestEtherType & 0xff)) {
        continue;
      }
      return buf;
    }
  }

 private:
  Fd fd_;
  int ifindex_ = 0;
  bool bound_ = false;
};

std::vector<uint8_t> TestFrame(size_t len, uint8_t seed) {
  std::vector<uint8_t> frame(len);
  for (size_t i = 0; i < 6; ++i) frame[i] = 0xff;  // broadcast
  const uint8_t src[6] = {0x02, 0, 0, 0, 0, 0x01};
  std::memcpy(frame.data() + 6, src, 6);
  frame[12] = kTestEtherType >> 8;
  frame[13] = kTestEtherType & 0xff;
  for (size_t i = 14; i < len; ++i) frame[i] = static_cast<uint8_t>(seed + i);
  return frame;
}

std::vector<uint8_t> ReadGuest(const GuestMemory& memory, uint64_t gpa, size_t len) {
  std::vector<uint8_t> out(len);
  EXPECT_TRUE(memory.ReadBytes(gpa, out));
  return out;
}

bool WaitReadable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) == 1;
}

class NetTest : public ::testing::Test {
 protected:
  // A device on a fresh TAP; `vhost_path` chooses the data path.
  void Create(VhostMode mode, const std::string& vhost_path = Net::kDefaultVhostDevice) {
    tap_.emplace(fmt::format("vt{}", counter_++));
    ASSERT_TRUE(tap_->created());
    auto fd = OpenTap(tap_->name());
    ASSERT_TRUE(fd) << fd.error().message();
    auto net = Net::Create(std::move(*fd), kMac, mode, vhost_path);
    ASSERT_TRUE(net) << net.error().message();
    transport_ = MmioTransport::Create(memory_, std::move(*net)).value();
    driver_.emplace(*transport_);
    socket_.emplace(tap_->name());
    ASSERT_TRUE(socket_->ok());
  }

  Net& device() { return const_cast<Net&>(static_cast<const Net&>(transport_->device())); }

  void BringUp(uint64_t features) {
    ASSERT_TRUE(driver_->Negotiate(kFeatureVersion1 | features));
    driver_->SetUpQueue(0, rx_);
    driver_->SetUpQueue(1, tx_);
    driver_->DriverOk();
    ASSERT_EQ(driver_->Status() & (kStatusDriverOk | kStatusNeedsReset), kStatusDriverOk);
  }

  // Posts one tx chain: the 12-byte header and the frame in separate buffers.
  void PostTx(const std::vector<uint8_t>& frame) {
    uint64_t hdr = tx_.Alloc(kVnetHdrSize);
    uint64_t data = tx_.Alloc(static_cast<uint32_t>(frame.size()));
    ASSERT_TRUE(memory_.WriteBytes(data, frame));
    tx_.AddChain({{hdr, kVnetHdrSize, false}, {data, static_cast<uint32_t>(frame.size()), false}});
  }

  uint64_t PostRx(uint32_t len) {
    uint64_t buf = rx_.Alloc(len);
    rx_.AddChain({{buf, len, true}});
    return buf;
  }

  static inline int counter_ = 0;
  static constexpr MacAddress kMac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
  GuestMemory memory_ = std::move(GuestMemory::Create(4 * kMiB, 3ull << 30, 4ull << 30).value());
  QueueDriver rx_{memory_, Net::kQueueSize, 0x10000, 0x100000};
  QueueDriver tx_{memory_, Net::kQueueSize, 0x20000, 0x200000};
  std::optional<ScopedTap> tap_;
  std::shared_ptr<MmioTransport> transport_;
  std::optional<MmioDriver> driver_;
  std::optional<PacketSocket> socket_;
};

TEST(NetMacTest, ParsesFormatsAndRefusesBadMacs) {
  EXPECT_EQ(ParseMac("52:54:00:AB:cd:0f").value(), (MacAddress{0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f}));
  EXPECT_EQ(FormatMac({0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f}), "52:54:00:ab:cd:0f");
  EXPECT_FALSE(ParseMac("52:54:00:ab:cd"));
  EXPECT_FALSE(ParseMac("52-54-00-ab-cd-0f"));
  EXPECT_FALSE(ParseMac("52:54:00:ab:cd:0g"));
  EXPECT_FALSE(ParseMac("01:00:5e:00:00:01"));  // multicast
  EXPECT_FALSE(ParseMac("00:00:00:00:00:00"));
  MacAddress random = RandomMac();
  EXPECT_EQ(random[0] & 3, 2);  // unicast, locally administered
  EXPECT_NE(RandomMac(), random);
}

TEST_F(NetTest, OpenTapExplainsWhatIsWrong) {
  REQUIRE_TAP();
  auto missing = OpenTap("clone-nope0");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message().find("does not exist"), std::string::npos) << missing.error().message();
  EXPECT_FALSE(OpenTap("a-name-far-too-long-for-linux"));

  ScopedTap tun("vtun0", IFF_TUN);
  ASSERT_TRUE(tun.created());
  auto not_tap = OpenTap("vtun0");
  ASSERT_FALSE(not_tap);
  EXPECT_NE(not_tap.error().message().find("not a TAP"), std::string::npos) << not_tap.error().message();

  ScopedTap tap("vbusy0");
  auto first = OpenTap("vbusy0");
  ASSERT_TRUE(first) << first.error().message();
  auto second = OpenTap("vbusy0");
  ASSERT_FALSE(second);
  EXPECT_NE(second.error().message().find("already in use"), std::string::npos) << second.error().message();
  EXPECT_EQ(TapName(*first).value(), "vbusy0");
}

TEST_F(NetTest, OffersMacStatusOffloadsAndConfig) {
  REQUIRE_TAP();
  Create(VhostMode::kOff);
  EXPECT_FALSE(device().uses_vhost());
  EXPECT_EQ(driver_->Read32(0x008), kDeviceTypeNet);
  uint64_t offered = driver_->DeviceFeatures();
  for (uint64_t f : {kNetFeatureMac, kNetFeatureStatus, kNetFeatureMrgRxbuf, kOffloads}) {
    EXPECT_EQ(offered & f, f) << std::hex << f;
  }
  EXPECT_EQ(offered & (1ull << 10 | 1ull << 14), 0u);  // no UFO
  uint8_t config[8];
  transport_->Read(MmioTransport::kConfigOffset, config);
  EXPECT_EQ(std::vector<uint8_t>(config, config + 6), std::vector<uint8_t>(kMac.begin(), kMac.end()));
  EXPECT_EQ(config[6] | (config[7] << 8), kNetStatusLinkUp);
}

TEST_F(NetTest, NegotiatedGuestOffloadsReachTheTap) {
  REQUIRE_TAP();
  Create(VhostMode::kOff);
  BringUp(kOffloads | kNetFeatureMrgRxbuf);
  EXPECT_EQ(device().tap_offloads(), unsigned{TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6});
  driver_->SetStatus(0);
  EXPECT_EQ(device().tap_offloads(), 0u);
  BringUp(kNetFeatureCsum);  // host-side checksum only: the TAP sends the guest nothing partial
  EXPECT_EQ(device().tap_offloads(), 0u);
}

TEST_F(NetTest, UserspaceTxWritesFramesToTheTap) {
  REQUIRE_TAP();
  Create(VhostMode::kOff);
  BringUp(kOffloads | kNetFeatureMrgRxbuf);
  std::vector<uint8_t> frame = TestFrame(200, 7);
  PostTx(frame);
  driver_->Notify(1);
  EXPECT_EQ(socket_->ReceiveTestFrame(2000), frame);
  ASSERT_EQ(tx_.UsedIdx(), 1);
  EXPECT_EQ(tx_.UsedElem(0).second, 0u);
  EXPECT_EQ(driver_->InterruptStatus() & kInterruptUsedBuffer, kInterruptUsedBuffer);
}

TEST_F(NetTest, UserspaceTxDropsRuntsAndKeepsWorking) {
  REQUIRE_TAP();
  Create(VhostMode::kOff);
  BringUp(kNetFeatureMrgRxbuf);
  uint64_t runt = tx_.Alloc(kVnetHdrSize + 5);
  tx_.AddChain({{runt, kVnetHdrSize + 5, false}});
  std::vector<uint8_t> frame = TestFrame(64, 1);
  PostTx(frame);
  driver_->Notify(1);
  EXPECT_EQ(tx_.UsedIdx(), 2);
  EXPECT_EQ(socket_->ReceiveTestFrame(2000), frame);
  EXPECT_EQ(driver_->Status() & kStatusNeedsReset, 0u);
}

TEST_F(NetTest, UserspaceTxYieldsToTheLoopAfterItsBudget) {
  REQUIRE_TAP();
  Create(VhostMode::kOff);
  BringUp(kNetFeatureMrgRxbuf);
  transport_->queue_eventfd(1).Drain();
  std::vector<uint8_t> frame = TestFrame(60, 4);
  for (int i = 0; i < 200; ++i) PostTx(frame);
  driver_->Notify(1);
  EXPECT_EQ(tx_.UsedIdx(), 128);
  EXPECT_NE(transport_->queue_eventfd(1).Drain(), 0u);  // the loop comes back for the rest
  transport_->queue_eventfd(1).Signal();
  transport_->HandleQueueNotify(1);
  EXPECT_EQ(tx_.UsedIdx(), 200);
  EXPECT_EQ(transport_->queue_eventfd(1).Drain(), 0u);
}

TEST_F(NetTest, UserspaceRxMergesBuffersAndWaitsForThem) {
  REQUIRE_TAP();
  Create(VhostMode::kOff);
  BringUp(kOffloads | kNetFeatureMrgRxbuf);
  std::vector<uint8_t> frame = TestFrame(100, 3);
  ASSERT_TRUE(socket_->Send(frame));
  transport_->HandleDeviceFd(0, POLLIN);  // the TAP became readable: no rx buffers yet
  EXPECT_EQ(rx_.UsedIdx(), 0);
  uint64_t a = PostRx(64);
  uint64_t b = PostRx(64);
  driver_->Notify(0);  // the guest's rx kick resumes delivery
  ASSERT_EQ(rx_.UsedIdx(), 2);
  EXPECT_EQ(rx_.UsedElem(0).second, 64u);
  EXPECT_EQ(rx_.UsedElem(1).second, kVnetHdrSize + frame.size() - 64);
  std::vector<uint8_t> got = ReadGuest(memory_, a, 64);
  std::vector<uint8_t> rest = ReadGuest(memory_, b, kVnetHdrSize + frame.size() - 64);
  got.insert(got.end(), rest.begin(), rest.end());
  EXPECT_EQ(got[10] | (got[11] << 8), 2);  // num_buffers
  EXPECT_EQ(std::vector<uint8_t>(got.begin() + kVnetHdrSize, got.end()), frame);
  EXPECT_EQ(driver_->InterruptStatus() & kInterruptUsedBuffer, kInterruptUsedBuffer);
}

TEST_F(NetTest, UserspaceRxWithoutMergeUsesOneChainAndDropsWhatDoesNotFit) {
  REQUIRE_TAP();
  Create(VhostMode::kOff);
  BringUp(0);
  uint64_t small = PostRx(64);
  uint64_t big = PostRx(2048);
  ASSERT_TRUE(socket_->Send(TestFrame(100, 1)));  // larger than the first buffer: dropped
  std::vector<uint8_t> frame = TestFrame(80, 2);
  ASSERT_TRUE(socket_->Send(frame));
  transport_->HandleDeviceFd(0, POLLIN);
  ASSERT_EQ(rx_.UsedIdx(), 2);
  EXPECT_EQ(rx_.UsedElem(0).second, 0u);
  EXPECT_EQ(rx_.UsedElem(1).second, kVnetHdrSize + frame.size());
  std::vector<uint8_t> got = ReadGuest(memory_, big, kVnetHdrSize + frame.size());
  EXPECT_EQ(got[10] | (got[11] << 8), 1);
  EXPECT_EQ(std::vector<uint8_t>(got.begin() + kVnetHdrSize, got.end()), frame);
  (void)small;
}

TEST_F(NetTest, RxChainWithoutWritableSpaceIsAGuestError) {
  REQUIRE_TAP();
  Create(VhostMode::kOff);
  BringUp(kNetFeatureMrgRxbuf);
  ASSERT_TRUE(socket_->Send(TestFrame(60, 0)));
  rx_.AddChain({{rx_.Alloc(64), 64, false}});
  driver_->Notify(0);
  EXPECT_EQ(driver_->Status() & kStatusNeedsReset, kStatusNeedsReset);
  EXPECT_EQ(transport_->guest_error_count(), 1u);
}

// A readable TAP with no rx buffers wakes the loop once per arriving frame, never in a loop.
TEST_F(NetTest, ReadableTapWithoutBuffersDoesNotSpinTheLoop) {
  REQUIRE_TAP();
  Create(VhostMode::kOff);
  BringUp(kNetFeatureMrgRxbuf);
  auto loop = EventLoop::Create().value();
  int wakeups = 0;
  std::vector<WatchedFd> fds = transport_->device().watched_fds();
  for (size_t k = 0; k < fds.size(); ++k) {
    ASSERT_TRUE(loop->Add(fds[k].fd, fds[k].events, [&, k](uint32_t events) {
      ++wakeups;
      transport_->HandleDeviceFd(k, events);
    }));
  }
  ASSERT_TRUE(socket_->Send(TestFrame(60, 0)));
  ASSERT_TRUE(loop->RunOnce(2000));
  EXPECT_EQ(wakeups, 1);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(loop->RunOnce(20));
  EXPECT_EQ(wakeups, 1);
  PostRx(2048);
  driver_->Notify(0);
  EXPECT_EQ(rx_.UsedIdx(), 1);
}

TEST_F(NetTest, PauseGivesHeldRxChainsBack) {
  REQUIRE_TAP();
  Create(VhostMode::kOff);
  BringUp(kNetFeatureMrgRxbuf);
  ASSERT_TRUE(socket_->Send(TestFrame(100, 9)));
  PostRx(64);
  driver_->Notify(0);  // one chain is not enough: held
  ASSERT_EQ(rx_.UsedIdx(), 0);
  ASSERT_TRUE(transport_->PauseDevice());
  nlohmann::json state = transport_->SaveState();
  EXPECT_EQ(state["queues"][0]["next_avail"], 0);
  EXPECT_EQ(state["device"]["mac"], "52:54:00:12:34:56");
  ASSERT_TRUE(transport_->ResumeDevice());
  PostRx(64);
  driver_->Notify(0);
  EXPECT_EQ(rx_.UsedIdx(), 2);
}

TEST_F(NetTest, VhostOnWithoutVhostFailsAndAutoFallsBack) {
  REQUIRE_TAP();
  ScopedTap tap("vnohost0");
  auto on = Net::Create(OpenTap("vnohost0").value(), kMac, VhostMode::kOn, "/nonexistent/vhost-net");
  ASSERT_FALSE(on);
  EXPECT_NE(on.error().message().find("vhost_net"), std::string::npos) << on.error().message();
  auto fallback = Net::Create(OpenTap("vnohost0").value(), kMac, VhostMode::kAuto, "/nonexistent/vhost-net");
  ASSERT_TRUE(fallback) << fallback.error().message();
  EXPECT_FALSE((*fallback)->uses_vhost());
  EXPECT_FALSE((*fallback)->kicks_go_to_backend(0));
}

// The same traffic through /dev/vhost-net: kicks through the queue eventfds, completions through
// the call eventfds (as the VMM's loop would see them).
TEST_F(NetTest, VhostNetMovesFramesBothWays) {
  REQUIRE_TAP();
  if (::access(Net::kDefaultVhostDevice, R_OK | W_OK) != 0) GTEST_SKIP() << "no /dev/vhost-net (run in the lab)";
  Create(VhostMode::kOn);
  ASSERT_TRUE(device().uses_vhost());
  EXPECT_TRUE(device().kicks_go_to_backend(0));
  BringUp(kOffloads | kNetFeatureMrgRxbuf);
  std::vector<WatchedFd> fds = transport_->device().watched_fds();
  ASSERT_EQ(fds.size(), 2u);

  std::vector<uint8_t> out = TestFrame(300, 5);
  PostTx(out);
  transport_->queue_eventfd(1).Signal();
  EXPECT_EQ(socket_->ReceiveTestFrame(5000), out);
  ASSERT_TRUE(WaitReadable(fds[1].fd, 5000));
  transport_->HandleDeviceFd(1, POLLIN);
  EXPECT_EQ(tx_.UsedIdx(), 1);
  EXPECT_EQ(driver_->InterruptStatus() & kInterruptUsedBuffer, kInterruptUsedBuffer);

  uint64_t buf = PostRx(4096);
  transport_->queue_eventfd(0).Signal();
  std::vector<uint8_t> in = TestFrame(150, 6);
  ASSERT_TRUE(socket_->Send(in));
  ASSERT_TRUE(WaitReadable(fds[0].fd, 5000)) << "vhost never signalled rx";
  transport_->HandleDeviceFd(0, POLLIN);
  ASSERT_EQ(rx_.UsedIdx(), 1);
  EXPECT_EQ(rx_.UsedElem(0).second, kVnetHdrSize + in.size());
  std::vector<uint8_t> got = ReadGuest(memory_, buf, kVnetHdrSize + in.size());
  EXPECT_EQ(got[10] | (got[11] << 8), 1);
  EXPECT_EQ(std::vector<uint8_t>(got.begin() + kVnetHdrSize, got.end()), in);

  ASSERT_TRUE(transport_->PauseDevice());
  nlohmann::json state = transport_->SaveState();
  EXPECT_EQ(state["queues"][0]["next_avail"], 1);
  EXPECT_EQ(state["queues"][1]["next_avail"], 1);
  EXPECT_EQ(state["queues"][1]["next_used"], 1);
  ASSERT_TRUE(transport_->ResumeDevice());
  std::vector<uint8_t> again = TestFrame(90, 8);
  PostTx(again);
  transport_->queue_eventfd(1).Signal();
  EXPECT_EQ(socket_->ReceiveTestFrame(5000), again);
}

}  // namespace
}  // namespace clonevm::virtio

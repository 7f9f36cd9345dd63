// virtio-vsock against the kernel's real vhost-vsock: CID allocation and errors, the config space,
// the TRANSPORT_RESET event path, the rx/tx data path (a host AF_VSOCK connect reaches the guest's
// rx ring; a guest reply kicked through the queue eventfd completes it), pause/save/restore.
// Needs /dev/vhost-vsock (the nested lab has it): skipped elsewhere.
#include "devices/virtio/vsock.h"

#include <gtest/gtest.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "devices/virtio/testing/mmio_driver.h"
#include "devices/virtio/testing/queue_driver.h"

namespace clonevm::virtio {
namespace {

using testing::MmioDriver;
using testing::QueueDriver;

constexpr uint64_t kMiB = 1 << 20;

// struct virtio_vsock_hdr (5.10.6), little-endian, packed.
struct __attribute__((packed)) VsockHdr {
  uint64_t src_cid, dst_cid;
  uint32_t src_port, dst_port, len;
  uint16_t type, op;
  uint32_t flags, buf_alloc, fwd_cnt;
};
static_assert(sizeof(VsockHdr) == 44);
constexpr uint16_t kTypeStream = 1;
constexpr uint16_t kOpRequest = 1, kOpResponse = 2;

bool HaveVhostVsock() { return ::access(Vsock::kDefaultDevice, R_OK | W_OK) == 0; }

#define REQUIRE_VHOST_VSOCK() \
  if (!HaveVhostVsock()) GTEST_SKIP() << "no /dev/vhost-vsock (run in the lab)"

// A CID that is free right now: claimed by a device that is then closed.
uint64_t FreeCid() { return Vsock::Create(0).value()->guest_cid(); }

bool WaitReadable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) == 1;
}

class VsockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveVhostVsock()) return;
    auto vsock = Vsock::Create(0);
    ASSERT_TRUE(vsock) << vsock.error().message();
    cid_ = (*vsock)->guest_cid();
    transport_ = MmioTransport::Create(memory_, std::move(*vsock)).value();
    driver_.emplace(*transport_);
  }

  Vsock& device() { return const_cast<Vsock&>(static_cast<const Vsock&>(transport_->device())); }

  void BringUp() {
    ASSERT_TRUE(driver_->Negotiate(kFeatureVersion1 | kFeatureEventIdx));
    driver_->SetUpQueue(0, rx_);
    driver_->SetUpQueue(1, tx_);
    driver_->SetUpQueue(2, ev_);
    driver_->DriverOk();
    ASSERT_EQ(driver_->Status() & (kStatusDriverOk | kStatusNeedsReset), kStatusDriverOk);
  }

  uint64_t ConfigCid() {
    uint8_t bytes[8];
    transport_->Read(MmioTransport::kConfigOffset, bytes);
    uint64_t cid;
    std::memcpy(&cid, bytes, 8);
    return cid;
  }

  GuestMemory memory_ = std::move(GuestMemory::Create(4 * kMiB, 3ull << 30, 4ull << 30).value());
  QueueDriver rx_{memory_, Vsock::kQueueSize, 0x10000, 0x100000};
  QueueDriver tx_{memory_, Vsock::kQueueSize, 0x20000, 0x180000};
  QueueDriver ev_{memory_, Vsock::kQueueSize, 0x30000, 0x200000};
  uint64_t cid_ = 0;
  std::shared_ptr<MmioTransport> transport_;
  std::optional<MmioDriver> driver_;
};

TEST_F(VsockTest, ExplicitCidTakenIsAClearError) {
  REQUIRE_VHOST_VSOCK();
  auto second = Vsock::Create(cid_);
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error().message(), fmt::format("vsock CID {} is already used by another VM", cid_));
  EXPECT_FALSE(Vsock::Create(2));              // the host's
  EXPECT_FALSE(Vsock::Create(0xffffffffull));  // VMADDR_CID_ANY
}

TEST_F(VsockTest, AutomaticCidsAreDistinct) {
  REQUIRE_VHOST_VSOCK();
  auto other = Vsock::Create(0).value();
  EXPECT_GE(cid_, Vsock::kFirstGuestCid);
  EXPECT_GE(other->guest_cid(), Vsock::kFirstGuestCid);
  EXPECT_NE(other->guest_cid(), cid_);
}

TEST_F(VsockTest, MissingVhostDeviceNamesTheModule) {
  auto vsock = Vsock::Create(0, "/nonexistent/vhost-vsock");
  ASSERT_FALSE(vsock);
  EXPECT_NE(vsock.error().message().find("load the vhost_vsock module"), std::string::npos) << vsock.error().message();
}

TEST_F(VsockTest, DeviceIdentityAndConfigSpace) {
  REQUIRE_VHOST_VSOCK();
  EXPECT_EQ(driver_->Read32(0x008), kDeviceTypeVsock);
  EXPECT_EQ(ConfigCid(), cid_);
  uint8_t high[4];
  transport_->Read(MmioTransport::kConfigOffset + 4, high);
  EXPECT_EQ(high[0] | high[1] | high[2] | high[3], 0);
  EXPECT_EQ(transport_->device().watched_fds().size(), 2u);
  EXPECT_TRUE(transport_->device().kicks_go_to_backend(Vsock::kRxQueue));
  EXPECT_TRUE(transport_->device().kicks_go_to_backend(Vsock::kTxQueue));
  EXPECT_FALSE(transport_->device().kicks_go_to_backend(Vsock::kEventQueue));
}

TEST_F(VsockTest, SetGuestCidSendsTransportReset) {
  REQUIRE_VHOST_VSOCK();
  BringUp();
  uint64_t event_buf = ev_.Alloc(4);
  ASSERT_TRUE(memory_.Write<uint32_t>(event_buf, 0xdeadbeef));
  uint16_t head = ev_.AddChain({{event_buf, 4, true}});
  driver_->Notify(2);
  EXPECT_EQ(ev_.UsedIdx(), 0);  // nothing to report yet: the buffer waits
  transport_->irq_eventfd().Drain();

  uint64_t old_cid = cid_;
  uint64_t new_cid = FreeCid();
  auto set = SetVsockGuestCid(*transport_, new_cid);
  ASSERT_TRUE(set) << set.error().message();
  ASSERT_EQ(ev_.UsedIdx(), 1);
  EXPECT_EQ(ev_.UsedElem(0), std::make_pair(uint32_t{head}, 4u));
  EXPECT_EQ(memory_.Read<uint32_t>(event_buf).value(), Vsock::kEventTransportReset);
  EXPECT_EQ(driver_->InterruptStatus() & kInterruptUsedBuffer, kInterruptUsedBuffer);
  EXPECT_NE(transport_->irq_eventfd().Drain(), 0u);
  EXPECT_EQ(ConfigCid(), new_cid);
  EXPECT_EQ(device().guest_cid(), new_cid);
  EXPECT_FALSE(device().reset_pending());
  // The kernel moved the VM: the old CID is free again, the new one is taken.
  EXPECT_TRUE(Vsock::Create(old_cid));
  EXPECT_FALSE(Vsock::Create(new_cid));
}

TEST_F(VsockTest, TransportResetWaitsForAnEventBuffer) {
  REQUIRE_VHOST_VSOCK();
  BringUp();
  ASSERT_TRUE(SetVsockGuestCid(*transport_, FreeCid()));
  EXPECT_TRUE(device().reset_pending());
  uint64_t event_buf = ev_.Alloc(8);
  ASSERT_TRUE(memory_.Write<uint32_t>(event_buf, 0xdeadbeef));
  ev_.AddChain({{event_buf, 8, true}});
  driver_->Notify(2);
  ASSERT_EQ(ev_.UsedIdx(), 1);
  EXPECT_EQ(ev_.UsedElem(0).second, 4u);
  EXPECT_EQ(memory_.Read<uint32_t>(event_buf).value(), 0u);
  EXPECT_FALSE(device().reset_pending());
}

TEST_F(VsockTest, TakenCidChangesNothing) {
  REQUIRE_VHOST_VSOCK();
  BringUp();
  auto other = Vsock::Create(0).value();
  ev_.AddChain({{ev_.Alloc(4), 4, true}});
  auto set = SetVsockGuestCid(*transport_, other->guest_cid());
  ASSERT_FALSE(set);
  EXPECT_EQ(set.error().message(), fmt::format("vsock CID {} is already used by another VM", other->guest_cid()));
  EXPECT_EQ(ConfigCid(), cid_);
  EXPECT_EQ(ev_.UsedIdx(), 0);
  EXPECT_FALSE(device().reset_pending());
}

TEST_F(VsockTest, ShortEventBufferIsAGuestError) {
  REQUIRE_VHOST_VSOCK();
  BringUp();
  ASSERT_TRUE(SetVsockGuestCid(*transport_, FreeCid()));
  ev_.AddChain({{ev_.Alloc(2), 2, true}});
  driver_->Notify(2);
  EXPECT_EQ(driver_->Status() & kStatusNeedsReset, kStatusNeedsReset);
  EXPECT_EQ(transport_->guest_error_count(), 1u);
  EXPECT_EQ(ev_.UsedIdx(), 0);
}

TEST_F(VsockTest, SetGuestCidBeforeTheDriverRunsNeedsNoEvent) {
  REQUIRE_VHOST_VSOCK();
  uint64_t new_cid = FreeCid();
  ASSERT_TRUE(SetVsockGuestCid(*transport_, new_cid));
  EXPECT_EQ(ConfigCid(), new_cid);
  BringUp();  // the driver reads the new CID at probe; a reset flag would be stale, but is harmless
  EXPECT_EQ(driver_->Status() & kStatusNeedsReset, 0u);
}

// The vhost data path: host connect() → REQUEST in the guest's rx ring (call eventfd → interrupt);
// the guest's RESPONSE on tx, kicked through the queue eventfd as KVM would → the host connects.
TEST_F(VsockTest, HostConnectsThroughVhost) {
  REQUIRE_VHOST_VSOCK();
  BringUp();
  std::vector<uint64_t> rx_bufs;
  for (int i = 0; i < 4; ++i) {
    rx_bufs.push_back(rx_.Alloc(4096));
    rx_.AddChain({{rx_bufs.back(), 4096, true}});
  }
  transport_->queue_eventfd(0).Signal();  // the guest's rx kick, as KVM's ioeventfd delivers it
  Fd sock(::socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(sock.valid()) << std::strerror(errno);
  sockaddr_vm addr{};
  addr.svm_family = AF_VSOCK;
  addr.svm_cid = static_cast<unsigned>(cid_);
  addr.svm_port = 1234;
  int rc = ::connect(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  ASSERT_TRUE(rc == 0 || errno == EINPROGRESS) << std::strerror(errno);

  std::vector<WatchedFd> fds = transport_->device().watched_fds();
  ASSERT_TRUE(WaitReadable(fds[0].fd, 5000)) << "vhost never signalled the rx call eventfd";
  transport_->irq_eventfd().Drain();
  transport_->HandleDeviceFd(0, POLLIN);
  EXPECT_EQ(driver_->InterruptStatus() & kInterruptUsedBuffer, kInterruptUsedBuffer);
  EXPECT_NE(transport_->irq_eventfd().Drain(), 0u);
  ASSERT_EQ(rx_.UsedIdx(), 1);
  EXPECT_GE(rx_.UsedElem(0).second, sizeof(VsockHdr));
  auto request = memory_.Read<VsockHdr>(rx_bufs[0]).value();
  EXPECT_EQ(request.op, kOpRequest);
  EXPECT_EQ(request.type, kTypeStream);
  EXPECT_EQ(request.src_cid, uint64_t{VMADDR_CID_HOST});
  EXPECT_EQ(request.dst_cid, cid_);
  EXPECT_EQ(request.dst_port, 1234u);

  VsockHdr response{};
  response.src_cid = cid_;
  response.dst_cid = VMADDR_CID_HOST;
  response.src_port = 1234;
  response.dst_port = request.src_port;
  response.type = kTypeStream;
  response.op = kOpResponse;
  response.buf_alloc = 65536;
  uint64_t tx_buf = tx_.Alloc(sizeof(response));
  ASSERT_TRUE(memory_.Write(tx_buf, response));
  tx_.AddChain({{tx_buf, sizeof(response), false}});
  transport_->queue_eventfd(1).Signal();
  pollfd p{sock.get(), POLLOUT, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1) << "the host socket never connected";
  int err = -1;
  socklen_t len = sizeof(err);
  ASSERT_EQ(::getsockopt(sock.get(), SOL_SOCKET, SO_ERROR, &err, &len), 0);
  EXPECT_EQ(err, 0) << std::strerror(err);
  ASSERT_TRUE(WaitReadable(fds[1].fd, 5000)) << "vhost never returned the tx buffer";
  transport_->HandleDeviceFd(1, POLLIN);
  EXPECT_EQ(tx_.UsedIdx(), 1);

  // Pause: vhost stops and the ring positions land in the transport's saved state.
  ASSERT_TRUE(transport_->PauseDevice());
  nlohmann::json state = transport_->SaveState();
  EXPECT_EQ(state["queues"][0]["next_avail"], 1);
  EXPECT_EQ(state["queues"][0]["next_used"], 1);
  EXPECT_EQ(state["queues"][1]["next_avail"], 1);
  EXPECT_EQ(state["device"]["guest_cid"], cid_);
  ASSERT_TRUE(transport_->ResumeDevice());
}

// A fork: the paused device's state restored into a new device that has another CID. The guest
// must hear TRANSPORT_RESET, through the event buffer it posted before the snapshot.
TEST_F(VsockTest, RestoreWithAnotherCidSendsTransportReset) {
  REQUIRE_VHOST_VSOCK();
  BringUp();
  uint64_t event_buf = ev_.Alloc(4);
  ev_.AddChain({{event_buf, 4, true}});
  driver_->Notify(2);
  ASSERT_TRUE(transport_->PauseDevice());
  nlohmann::json state = transport_->SaveState();

  auto fork_device = Vsock::Create(0).value();
  uint64_t fork_cid = fork_device->guest_cid();
  ASSERT_NE(fork_cid, cid_);
  auto fork = MmioTransport::Create(memory_, std::move(fork_device)).value();
  auto restored = fork->RestoreState(state);
  ASSERT_TRUE(restored) << restored.error().message();
  EXPECT_EQ(fork->device_status() & (kStatusDriverOk | kStatusNeedsReset), kStatusDriverOk);
  ASSERT_EQ(ev_.UsedIdx(), 1);
  EXPECT_EQ(memory_.Read<uint32_t>(event_buf).value(), Vsock::kEventTransportReset);
  uint8_t bytes[8];
  fork->Read(MmioTransport::kConfigOffset, bytes);
  uint64_t seen;
  std::memcpy(&seen, bytes, 8);
  EXPECT_EQ(seen, fork_cid);
  EXPECT_EQ(fork->SaveState()["device"]["reset_pending"], false);
}

TEST_F(VsockTest, RejectsNewerOrMalformedState) {
  REQUIRE_VHOST_VSOCK();
  EXPECT_FALSE(device().RestoreState({{"version", 2}, {"guest_cid", 3}, {"reset_pending", false}}));
  EXPECT_FALSE(device().RestoreState({{"version", 1}, {"reset_pending", false}}));
  EXPECT_TRUE(device().RestoreState({{"version", 1}, {"guest_cid", cid_}, {"reset_pending", false}}));
  EXPECT_FALSE(device().reset_pending());
}

}  // namespace
}  // namespace clonevm::virtio

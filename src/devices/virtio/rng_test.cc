#include "devices/virtio/rng.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "devices/virtio/mmio_transport.h"
#include "devices/virtio/testing/mmio_driver.h"
#include "devices/virtio/testing/queue_driver.h"
#include "devices/virtio/virtio_spec.h"

namespace clonevm::virtio {
namespace {

using testing::MmioDriver;
using testing::QueueDriver;

constexpr uint64_t kMiB = 1 << 20;

class RngTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(driver_.Negotiate(kFeatureVersion1 | kFeatureEventIdx | kFeatureIndirectDesc));
    driver_.SetUpQueue(0, queue_);
    driver_.DriverOk();
    ASSERT_EQ(driver_.Status() & kStatusDriverOk, kStatusDriverOk);
  }

  bool AllZero(uint64_t gpa, uint32_t len) {
    auto bytes = memory_.Span(gpa, len);
    return std::all_of(bytes.begin(), bytes.end(), [](uint8_t b) { return b == 0; });
  }

  GuestMemory memory_ = std::move(GuestMemory::Create(4 * kMiB, 3ull << 30, 4ull << 30).value());
  QueueDriver queue_{memory_, Rng::kQueueSize, 0x10000, 0x100000};
  std::shared_ptr<MmioTransport> transport_ = MmioTransport::Create(memory_, std::make_unique<Rng>()).value();
  MmioDriver driver_{*transport_};
};

TEST_F(RngTest, IsAnEntropyDeviceWithOneQueue) {
  EXPECT_EQ(driver_.Read32(0x008), kDeviceTypeEntropy);
  EXPECT_EQ(transport_->num_queues(), 1u);
  EXPECT_EQ(driver_.DeviceFeatures(), kFeatureVersion1 | kFeatureEventIdx | kFeatureIndirectDesc);
}

TEST_F(RngTest, FillsWritableBuffersAndReportsLengths) {
  uint64_t a = queue_.Alloc(64), b = queue_.Alloc(16), c = queue_.Alloc(32);
  uint16_t first = queue_.AddChain({{a, 64, true}});
  uint16_t second = queue_.AddChain({{b, 16, true}, {c, 32, true}});
  transport_->irq_eventfd().Drain();
  transport_->queue_eventfd(0).Signal();
  transport_->HandleQueueNotify(0);

  ASSERT_EQ(queue_.UsedIdx(), 2);
  EXPECT_EQ(queue_.UsedElem(0), (std::pair<uint32_t, uint32_t>{first, 64}));
  EXPECT_EQ(queue_.UsedElem(1), (std::pair<uint32_t, uint32_t>{second, 48}));
  EXPECT_FALSE(AllZero(a, 64));
  EXPECT_FALSE(AllZero(c, 32));
  EXPECT_EQ(driver_.InterruptStatus(), kInterruptUsedBuffer);
  EXPECT_EQ(transport_->irq_eventfd().Drain(), 1u);
}

TEST_F(RngTest, CapsEachRequest) {
  uint64_t big = queue_.Alloc(Rng::kMaxBytesPerRequest), tail = queue_.Alloc(4096);
  queue_.AddChain({{big, Rng::kMaxBytesPerRequest - 8, true}, {tail, 4096, true}});
  driver_.Notify(0);
  ASSERT_EQ(queue_.UsedIdx(), 1);
  EXPECT_EQ(queue_.UsedElem(0).second, Rng::kMaxBytesPerRequest);
  EXPECT_TRUE(AllZero(tail + 8, 4096 - 8));
}

TEST_F(RngTest, ReadOnlyChainsGetNothing) {
  uint64_t in = queue_.Alloc(16);
  queue_.AddChain({{in, 16}});
  driver_.Notify(0);
  ASSERT_EQ(queue_.UsedIdx(), 1);
  EXPECT_EQ(queue_.UsedElem(0).second, 0u);
  EXPECT_TRUE(AllZero(in, 16));
}

TEST_F(RngTest, IndirectRequests) {
  uint64_t out = queue_.Alloc(128);
  queue_.Publish(queue_.BuildIndirectChain({{out, 128, true}}));
  driver_.Notify(0);
  ASSERT_EQ(queue_.UsedIdx(), 1);
  EXPECT_EQ(queue_.UsedElem(0).second, 128u);
}

TEST_F(RngTest, HostileChainPutsTheDeviceInNeedsReset) {
  queue_.AddChain({{4 * kMiB - 8, 64, true}});
  driver_.Notify(0);
  EXPECT_EQ(driver_.Status() & kStatusNeedsReset, kStatusNeedsReset);
  EXPECT_EQ(transport_->guest_error_count(), 1u);
  EXPECT_EQ(queue_.UsedIdx(), 0);
}

TEST_F(RngTest, StateIsVersioned) {
  Rng rng;
  nlohmann::json state = rng.SaveState();
  EXPECT_EQ(state, (nlohmann::json{{"version", 1}}));
  EXPECT_TRUE(rng.RestoreState(state));
  EXPECT_FALSE(rng.RestoreState({{"version", 2}}));
  EXPECT_FALSE(rng.RestoreState(nlohmann::json::object()));
}

TEST_F(RngTest, SaveRestoreRoundTrips) {
  queue_.AddChain({{queue_.Alloc(8), 8, true}});
  driver_.Notify(0);
  nlohmann::json saved = transport_->SaveState();
  auto restored = MmioTransport::Create(memory_, std::make_unique<Rng>()).value();
  ASSERT_TRUE(restored->RestoreState(saved));
  EXPECT_EQ(restored->SaveState(), saved);
  queue_.AddChain({{queue_.Alloc(8), 8, true}});
  MmioDriver(*restored).Notify(0);
  EXPECT_EQ(queue_.UsedIdx(), 2);
}

}  // namespace
}  // namespace clonevm::virtio

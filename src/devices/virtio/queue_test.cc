#include "devices/virtio/queue.h"

#include <gtest/gtest.h>

#include <numeric>
#include <string>

#include "devices/virtio/testing/queue_driver.h"
#include "devices/virtio/virtio_spec.h"

namespace clonevm::virtio {
namespace {

using testing::BufferSpec;
using testing::QueueDriver;
using testing::RawDescriptor;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kRamBytes = 4 * kMiB;
constexpr uint64_t kRings = 0x10000;
constexpr uint64_t kData = 0x100000;
constexpr uint64_t kAllFeatures = kFeatureVersion1 | kFeatureEventIdx | kFeatureIndirectDesc;

GuestMemory MakeMemory() {
  auto memory = GuestMemory::Create(kRamBytes, 3ull << 30, 4ull << 30);
  EXPECT_TRUE(memory) << memory.error().message();
  return std::move(*memory);
}

class QueueTest : public ::testing::Test {
 protected:
  void Activate(uint64_t features = kAllFeatures) {
    queue_.config() = driver_.Config();
    auto activated = queue_.Activate(memory_, features);
    ASSERT_TRUE(activated) << activated.error().message();
  }

  // Pops and expects a valid chain.
  DescriptorChain PopChain() {
    auto popped = queue_.Pop();
    EXPECT_TRUE(popped) << popped.error().message();
    EXPECT_TRUE(popped && popped->has_value());
    return std::move(**popped);
  }

  // Pops and expects a guest error mentioning `what`.
  void ExpectGuestError(const std::string& what) {
    auto popped = queue_.Pop();
    ASSERT_FALSE(popped) << "expected an error about " << what;
    EXPECT_NE(popped.error().message().find(what), std::string::npos) << popped.error().message();
  }

  GuestMemory memory_ = MakeMemory();
  QueueDriver driver_{memory_, 16, kRings, kData};
  Queue queue_{256};
};

TEST_F(QueueTest, InactiveAndEmptyQueuesPopNothing) {
  auto popped = queue_.Pop();
  ASSERT_TRUE(popped);
  EXPECT_FALSE(popped->has_value());
  Activate();
  popped = queue_.Pop();
  ASSERT_TRUE(popped);
  EXPECT_FALSE(popped->has_value());
}

TEST_F(QueueTest, PopsReadableThenWritableBuffersAndReturnsThem) {
  Activate();
  uint64_t header = driver_.Alloc(6), body = driver_.Alloc(4), out = driver_.Alloc(8);
  ASSERT_TRUE(memory_.WriteBytes(header, std::vector<uint8_t>{'h', 'e', 'l', 'l', 'o', ' '}));
  ASSERT_TRUE(memory_.WriteBytes(body, std::vector<uint8_t>{'w', 'o', 'r', 'l'}));
  uint16_t head = driver_.AddChain({{header, 6}, {body, 4}, {out, 8, true}});

  DescriptorChain chain = PopChain();
  EXPECT_EQ(chain.head(), head);
  ASSERT_EQ(chain.readable().size(), 2u);
  ASSERT_EQ(chain.writable().size(), 1u);
  EXPECT_EQ(chain.readable()[1].gpa, body);
  EXPECT_EQ(chain.readable_bytes(), 10u);
  EXPECT_EQ(chain.writable_bytes(), 8u);

  std::string text(7, '\0');
  // SAFETY: std::string storage is contiguous bytes.
  EXPECT_EQ(chain.CopyFromReadable(3, std::span(reinterpret_cast<uint8_t*>(text.data()), text.size())), 7u);
  EXPECT_EQ(text, "lo worl");
  uint8_t reply[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  EXPECT_EQ(chain.CopyToWritable(2, reply), 6u);  // only 6 bytes left after offset 2
  EXPECT_EQ(memory_.Read<uint8_t>(out + 2).value(), 1);

  queue_.AddUsed(std::move(chain), 8);
  EXPECT_EQ(driver_.UsedIdx(), 1);
  EXPECT_EQ(driver_.UsedElem(0), (std::pair<uint32_t, uint32_t>{head, 8}));
  auto popped = queue_.Pop();
  ASSERT_TRUE(popped);
  EXPECT_FALSE(popped->has_value());
}

TEST_F(QueueTest, MarksDeviceWritesInTheDirtyLogOnlyWhileTracking) {
  Activate();
  uint64_t in = driver_.Alloc(3 * 4096), out = driver_.Alloc(2 * 4096);
  auto chain_once = [&] {
    driver_.AddChain({{in, 3 * 4096}, {out, 2 * 4096, true}});
    queue_.AddUsed(PopChain(), 16);
  };
  chain_once();  // tracking off: nothing marked
  EXPECT_EQ(memory_.dirty_log().TakeAll().Count(), 0u);

  memory_.dirty_log().Enable();
  driver_.AddChain({{in, 3 * 4096}, {out, 2 * 4096, true}});
  memory_.dirty_log().TakeAll();   // forget the driver's own ring writes (the guest's, for KVM)
  queue_.AddUsed(PopChain(), 16);  // reports 16 bytes: the whole writable part is marked anyway
  PageBitmap dirty = memory_.dirty_log().TakeAll();
  for (uint64_t page = out / 4096; page <= (out + 2 * 4096 - 1) / 4096; ++page) EXPECT_TRUE(dirty.Test(page)) << page;
  EXPECT_TRUE(dirty.Test(driver_.used_addr() / 4096));
  EXPECT_FALSE(dirty.Test(in / 4096 + 1));  // the middle of the device-readable buffer
}

TEST_F(QueueTest, WalksTheRingAcrossIndexWrap) {
  queue_.config() = driver_.Config();
  queue_.config().next_avail = queue_.config().next_used = 0xfffe;
  ASSERT_TRUE(queue_.Activate(memory_, kAllFeatures));
  driver_.SetAvailIdx(0xfffe);
  for (int i = 0; i < 4; ++i) driver_.AddChain({{driver_.Alloc(4), 4, true}});
  for (int i = 0; i < 4; ++i) queue_.AddUsed(PopChain(), 4);
  EXPECT_EQ(driver_.UsedIdx(), 2);
  EXPECT_EQ(queue_.config().next_avail, 2);
}

TEST_F(QueueTest, IndirectChains) {
  Activate();
  uint64_t in = driver_.Alloc(16), out = driver_.Alloc(32);
  uint16_t head = driver_.BuildIndirectChain({{in, 16}, {out, 32, true}});
  driver_.Publish(head);
  DescriptorChain chain = PopChain();
  EXPECT_EQ(chain.head(), head);
  EXPECT_EQ(chain.readable_bytes(), 16u);
  EXPECT_EQ(chain.writable_bytes(), 32u);
  queue_.AddUsed(std::move(chain), 0);

  // A direct prefix followed by an indirect table as the last descriptor is also valid.
  uint16_t table_head = driver_.BuildIndirectChain({{out, 32, true}});
  driver_.WriteDescriptor(9, {in, 16, kDescFlagNext, table_head});
  driver_.Publish(9);
  chain = PopChain();
  EXPECT_EQ(chain.readable().size(), 1u);
  EXPECT_EQ(chain.writable().size(), 1u);
  queue_.AddUsed(std::move(chain), 32);
}

TEST_F(QueueTest, IndirectNeedsTheFeature) {
  Activate(kFeatureVersion1);
  driver_.Publish(driver_.BuildIndirectChain({{driver_.Alloc(8), 8}}));
  ExpectGuestError("VIRTIO_F_INDIRECT_DESC");
}

TEST_F(QueueTest, RejectsHeadIndexOutOfRange) {
  Activate();
  driver_.Publish(16);
  ExpectGuestError("names descriptor 16");
}

TEST_F(QueueTest, RejectsNextIndexOutOfRange) {
  Activate();
  driver_.WriteDescriptor(0, {driver_.Alloc(8), 8, kDescFlagNext, 200});
  driver_.Publish(0);
  ExpectGuestError("index 200 out of range");
}

TEST_F(QueueTest, RejectsBuffersOutsideRam) {
  Activate();
  driver_.AddChain({{kRamBytes - 4, 8}});  // straddles the end of RAM
  ExpectGuestError("outside guest RAM");
}

TEST_F(QueueTest, RejectsAddressPlusLengthWrapping) {
  Activate();
  driver_.AddChain({{~0ull - 0xfff, 0x2000, true}});
  ExpectGuestError("outside guest RAM");
}

TEST_F(QueueTest, RejectsZeroLengthBuffers) {
  Activate();
  driver_.AddChain({{driver_.Alloc(8), 0}});
  ExpectGuestError("zero-length");
}

TEST_F(QueueTest, RejectsDescriptorLoops) {
  Activate();
  uint64_t buf = driver_.Alloc(8);
  driver_.WriteDescriptor(0, {buf, 8, kDescFlagNext, 1});
  driver_.WriteDescriptor(1, {buf, 8, kDescFlagNext, 0});
  driver_.Publish(0);
  ExpectGuestError("loops");
}

TEST_F(QueueTest, RejectsLoopsInsideIndirectTables) {
  Activate();
  uint64_t table = driver_.Alloc(32), buf = driver_.Alloc(8);
  ASSERT_TRUE(memory_.Write(table, RawDescriptor{buf, 8, kDescFlagNext, 1}));
  ASSERT_TRUE(memory_.Write(table + 16, RawDescriptor{buf, 8, kDescFlagNext, 0}));
  driver_.WriteDescriptor(0, {table, 32, kDescFlagIndirect, 0});
  driver_.Publish(0);
  ExpectGuestError("loops");
}

TEST_F(QueueTest, RejectsChainsLongerThanTheLimit) {
  constexpr uint16_t kSize = 2048;
  Queue big(kSize);
  QueueDriver driver(memory_, kSize, kRings, kData);
  big.config() = driver.Config();
  ASSERT_TRUE(big.Activate(memory_, kAllFeatures));
  uint64_t buf = driver.Alloc(8);
  driver.AddChain(std::vector<BufferSpec>(kMaxChainLength + 1, BufferSpec{buf, 8}));
  auto popped = big.Pop();
  ASSERT_FALSE(popped);
  EXPECT_NE(popped.error().message().find("longer than"), std::string::npos);
}

TEST_F(QueueTest, RejectsNestedIndirectTables) {
  Activate();
  uint64_t inner = driver_.Alloc(16), outer = driver_.Alloc(16);
  ASSERT_TRUE(memory_.Write(inner, RawDescriptor{driver_.Alloc(8), 8, 0, 0}));
  ASSERT_TRUE(memory_.Write(outer, RawDescriptor{inner, 16, kDescFlagIndirect, 0}));
  driver_.WriteDescriptor(0, {outer, 16, kDescFlagIndirect, 0});
  driver_.Publish(0);
  ExpectGuestError("nested indirect");
}

TEST_F(QueueTest, RejectsBadIndirectTables) {
  uint64_t table = driver_.Alloc(64);
  for (uint32_t len : {0u, 24u, 16u * (kMaxChainLength + 1)}) {
    Queue queue(256);
    queue.config() = driver_.Config();
    ASSERT_TRUE(queue.Activate(memory_, kAllFeatures));
    driver_.WriteDescriptor(0, {table, len, kDescFlagIndirect, 0});
    driver_.Publish(0);
    auto popped = queue.Pop();
    ASSERT_FALSE(popped) << "len " << len;
    EXPECT_NE(popped.error().message().find("bad indirect table length"), std::string::npos);
  }
  Activate();
  driver_.SetAvailIdx(0);
  driver_.WriteDescriptor(0, {table, 16, kDescFlagIndirect | kDescFlagNext, 1});
  driver_.Publish(0);
  ExpectGuestError("NEXT");
  queue_.config().next_avail = 1;
  driver_.WriteDescriptor(1, {kRamBytes - 8, 16, kDescFlagIndirect, 0});
  driver_.Publish(1);
  ExpectGuestError("outside guest RAM");
}

TEST_F(QueueTest, RejectsReadableAfterWritable) {
  Activate();
  driver_.AddChain({{driver_.Alloc(8), 8, true}, {driver_.Alloc(8), 8, false}});
  ExpectGuestError("readable descriptor after a writable one");
}

TEST_F(QueueTest, RejectsAvailIndexJumpingPastTheQueueSize) {
  Activate();
  driver_.SetAvailIdx(17);
  ExpectGuestError("17 entries ahead");
  driver_.SetAvailIdx(0xffff);  // "behind" the device: also more than size ahead modulo 2^16
  ExpectGuestError("entries ahead");
}

TEST_F(QueueTest, ActivateChecksTheLayout) {
  auto try_config = [&](auto mutate) {
    Queue queue(256);
    queue.config() = driver_.Config();
    mutate(queue.config());
    return static_cast<bool>(queue.Activate(memory_, kAllFeatures));
  };
  EXPECT_TRUE(try_config([](QueueConfig&) {}));
  EXPECT_FALSE(try_config([](QueueConfig& c) { c.size = 0; }));
  EXPECT_FALSE(try_config([](QueueConfig& c) { c.size = 12; }));
  EXPECT_FALSE(try_config([](QueueConfig& c) { c.size = 512; }));  // above max_size
  EXPECT_FALSE(try_config([](QueueConfig& c) { c.desc_addr += 8; }));
  EXPECT_FALSE(try_config([](QueueConfig& c) { c.avail_addr += 1; }));
  EXPECT_FALSE(try_config([](QueueConfig& c) { c.used_addr += 2; }));
  EXPECT_FALSE(try_config([](QueueConfig& c) { c.used_addr = kRamBytes - 16; }));
  EXPECT_FALSE(try_config([](QueueConfig& c) { c.desc_addr = 3ull << 30; }));
}

TEST_F(QueueTest, ChainsFromBeforeAResetAreDropped) {
  Activate();
  driver_.AddChain({{driver_.Alloc(8), 8, true}});
  DescriptorChain chain = PopChain();
  queue_.Deactivate();
  Activate();
  queue_.AddUsed(std::move(chain), 8);
  EXPECT_EQ(driver_.UsedIdx(), 0);
}

#ifndef NDEBUG
TEST_F(QueueTest, LeakedChainsAbortInDebugBuilds) {
  Activate();
  driver_.AddChain({{driver_.Alloc(8), 8, true}});
  EXPECT_DEATH({ DescriptorChain leaked = PopChain(); }, "destroyed without AddUsed");
  DescriptorChain abandoned = PopChain();
  abandoned.Abandon();  // an explicit drop is fine
}
#endif

TEST(NeedEventTest, WrapsAt16Bits) {
  EXPECT_TRUE(NeedEvent(0, 1, 0));
  EXPECT_FALSE(NeedEvent(1, 1, 0));  // the driver asked for the entry after the new one
  EXPECT_TRUE(NeedEvent(5, 10, 2));  // passed 5 while moving 2 -> 10
  EXPECT_FALSE(NeedEvent(10, 10, 2));
  EXPECT_TRUE(NeedEvent(0xffff, 0, 0xfffe));  // crossed the wrap
  EXPECT_TRUE(NeedEvent(0xfffe, 1, 0xfffe));
  EXPECT_FALSE(NeedEvent(1, 0, 0xfffe));
  EXPECT_FALSE(NeedEvent(0, 0, 0));  // nothing added
}

TEST_F(QueueTest, EventIdxDecidesNotifications) {
  queue_.config() = driver_.Config();
  queue_.config().next_avail = queue_.config().next_used = 0xfffd;
  ASSERT_TRUE(queue_.Activate(memory_, kAllFeatures));
  driver_.SetAvailIdx(0xfffd);
  for (int i = 0; i < 6; ++i) driver_.AddChain({{driver_.Alloc(4), 4, true}});

  driver_.SetUsedEvent(0xfffd);
  queue_.AddUsed(PopChain(), 0);            // used 0xfffd -> 0xfffe
  EXPECT_TRUE(queue_.NeedsNotification());  // the first check after activation always notifies
  queue_.AddUsed(PopChain(), 0);            // 0xfffe -> 0xffff; event 0xfffd already passed
  EXPECT_FALSE(queue_.NeedsNotification());
  driver_.SetUsedEvent(0);        // wants an interrupt once entry 0 is used
  queue_.AddUsed(PopChain(), 0);  // 0xffff -> 0
  EXPECT_FALSE(queue_.NeedsNotification());
  queue_.AddUsed(PopChain(), 0);  // 0 -> 1: passes event 0 across the wrap
  EXPECT_TRUE(queue_.NeedsNotification());
  EXPECT_FALSE(queue_.NeedsNotification());  // nothing new
  queue_.AddUsed(PopChain(), 0);
  queue_.AddUsed(PopChain(), 0);
  driver_.SetUsedEvent(2);
  EXPECT_TRUE(queue_.NeedsNotification());  // a batch 1 -> 3 passed event 2
}

TEST_F(QueueTest, EmptyPopPublishesAvailEvent) {
  Activate();
  driver_.AddChain({{driver_.Alloc(4), 4, true}});
  driver_.AddChain({{driver_.Alloc(4), 4, true}});
  queue_.AddUsed(PopChain(), 0);
  queue_.AddUsed(PopChain(), 0);
  EXPECT_EQ(driver_.AvailEvent(), 0);  // not published while work was pending
  auto popped = queue_.Pop();
  ASSERT_TRUE(popped);
  EXPECT_FALSE(popped->has_value());
  EXPECT_EQ(driver_.AvailEvent(), 2);
}

TEST_F(QueueTest, NoInterruptFlagWithoutEventIdx) {
  Activate(kFeatureVersion1);
  driver_.AddChain({{driver_.Alloc(4), 4, true}});
  queue_.AddUsed(PopChain(), 4);
  EXPECT_TRUE(queue_.NeedsNotification());
  driver_.SetAvailFlags(kAvailFlagNoInterrupt);
  EXPECT_FALSE(queue_.NeedsNotification());
  auto popped = queue_.Pop();
  ASSERT_TRUE(popped);
  EXPECT_EQ(driver_.AvailEvent(), 0);  // avail_event is only written with EVENT_IDX
}

}  // namespace
}  // namespace clonevm::virtio

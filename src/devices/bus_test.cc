#include "devices/bus.h"

#include <gtest/gtest.h>

#include <vector>

namespace clonevm {
namespace {

class Recorder : public BusDevice {
 public:
  void Read(uint64_t offset, std::span<uint8_t> data) override {
    last_offset = offset;
    data[0] = 0x42;
  }
  void Write(uint64_t offset, std::span<const uint8_t> data) override {
    last_offset = offset;
    written.assign(data.begin(), data.end());
  }
  uint64_t last_offset = ~0ull;
  std::vector<uint8_t> written;
};

TEST(BusTest, RoutesByRangeWithRelativeOffsets) {
  Bus bus;
  auto dev = std::make_shared<Recorder>();
  ASSERT_TRUE(bus.Insert(0x3f8, 8, dev));
  uint8_t byte = 0;
  EXPECT_TRUE(bus.Read(0x3fd, std::span(&byte, 1)));
  EXPECT_EQ(byte, 0x42);
  EXPECT_EQ(dev->last_offset, 5u);
  const uint8_t v[2] = {1, 2};
  EXPECT_TRUE(bus.Write(0x3f8, v));
  EXPECT_EQ(dev->written.size(), 2u);
}

TEST(BusTest, UnclaimedReadsFloatHigh) {
  Bus bus;
  uint8_t data[4] = {};
  EXPECT_FALSE(bus.Read(0xcf8, data));
  for (uint8_t b : data) EXPECT_EQ(b, 0xff);
}

TEST(BusTest, AccessesStraddlingTheEndAreUnclaimed) {
  Bus bus;
  ASSERT_TRUE(bus.Insert(0x1000, 0x10, std::make_shared<Recorder>()));
  uint8_t data[4];
  EXPECT_FALSE(bus.Read(0x100e, data));
  EXPECT_FALSE(bus.Read(0xfff, std::span(data, 1)));
}

TEST(BusTest, RejectsOverlaps) {
  Bus bus;
  ASSERT_TRUE(bus.Insert(0x1000, 0x10, std::make_shared<Recorder>()));
  EXPECT_FALSE(bus.Insert(0x100f, 1, std::make_shared<Recorder>()));
  EXPECT_FALSE(bus.Insert(0xff0, 0x11, std::make_shared<Recorder>()));
  EXPECT_FALSE(bus.Insert(0x2000, 0, std::make_shared<Recorder>()));
  EXPECT_TRUE(bus.Insert(0x1010, 1, std::make_shared<Recorder>()));
}

}  // namespace
}  // namespace clonevm

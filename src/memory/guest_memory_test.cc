#include "memory/guest_memory.h"

#include <gtest/gtest.h>

namespace clonevm {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kGiB = 1ull << 30;

TEST(GuestMemoryTest, SplitsAroundTheHole) {
  auto mem = GuestMemory::Create(4 * kGiB, 3 * kGiB, 4 * kGiB);
  ASSERT_TRUE(mem) << mem.error().message();
  ASSERT_EQ(mem->regions().size(), 2u);
  EXPECT_EQ(mem->low_end(), 3 * kGiB);
  EXPECT_EQ(mem->regions()[1].gpa, 4 * kGiB);
  EXPECT_EQ(mem->regions()[1].size, 1 * kGiB);
  EXPECT_TRUE(mem->Contains(4 * kGiB + 10, 100));
  EXPECT_FALSE(mem->Contains(3 * kGiB, 1));  // the hole
}

TEST(GuestMemoryTest, SmallGuestHasOneRegion) {
  auto mem = GuestMemory::Create(64 * kMiB, 3 * kGiB, 4 * kGiB);
  ASSERT_TRUE(mem);
  EXPECT_EQ(mem->regions().size(), 1u);
}

TEST(GuestMemoryTest, ReadWriteRoundTrip) {
  auto mem = GuestMemory::Create(16 * kMiB, 3 * kGiB, 4 * kGiB);
  ASSERT_TRUE(mem);
  ASSERT_TRUE(mem->Write<uint64_t>(0x1000, 0x1122334455667788ull));
  auto v = mem->Read<uint64_t>(0x1000);
  ASSERT_TRUE(v);
  EXPECT_EQ(*v, 0x1122334455667788ull);
}

TEST(GuestMemoryTest, RejectsOutOfRangeAndStraddlingAccesses) {
  auto mem = GuestMemory::Create(16 * kMiB, 3 * kGiB, 4 * kGiB);
  ASSERT_TRUE(mem);
  EXPECT_FALSE(mem->Read<uint32_t>(16 * kMiB - 2));  // straddles the end
  EXPECT_FALSE(mem->Read<uint32_t>(16 * kMiB));
  EXPECT_FALSE(mem->Read<uint32_t>(~0ull - 1));      // would wrap around
  EXPECT_TRUE(mem->Span(~0ull, 2).empty());
  EXPECT_TRUE(mem->Span(0, 17 * kMiB).empty());
}

TEST(GuestMemoryTest, RejectsBadSizes) {
  EXPECT_FALSE(GuestMemory::Create(0, 3 * kGiB, 4 * kGiB));
  EXPECT_FALSE(GuestMemory::Create(4095, 3 * kGiB, 4 * kGiB));
}

}  // namespace
}  // namespace clonevm

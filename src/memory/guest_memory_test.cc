#include "memory/guest_memory.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

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
  EXPECT_FALSE(mem->Read<uint32_t>(~0ull - 1));  // would wrap around
  EXPECT_TRUE(mem->Span(~0ull, 2).empty());
  EXPECT_TRUE(mem->Span(0, 17 * kMiB).empty());
}

TEST(GuestMemoryTest, RejectsBadSizes) {
  EXPECT_FALSE(GuestMemory::Create(0, 3 * kGiB, 4 * kGiB));
  EXPECT_FALSE(GuestMemory::Create(4095, 3 * kGiB, 4 * kGiB));
}

// A snapshot's memory file: regions back to back, mapped copy-on-write. Writes through the mapping
// never reach the file, and a second mapping still sees the file's bytes.
TEST(GuestMemoryTest, FileBackedRegionsAreCopyOnWrite) {
  constexpr uint64_t kHole = 8 * kMiB, kHigh = 16 * kMiB, kRam = 12 * kMiB;
  int fd = ::memfd_create("guest-memory-test", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, kRam), 0);
  uint8_t low = 0x11, high = 0x22;
  ASSERT_EQ(::pwrite(fd, &low, 1, 4096), 1);
  ASSERT_EQ(::pwrite(fd, &high, 1, kHole + 8), 1);  // the high region starts right after the low one
  auto mem = GuestMemory::CreateFromFile(fd, kRam, kHole, kHigh);
  ASSERT_TRUE(mem) << mem.error().message();
  ASSERT_EQ(mem->regions().size(), 2u);
  EXPECT_EQ(mem->FileOffset(1), kHole);
  EXPECT_EQ(*mem->Read<uint8_t>(4096), 0x11);
  EXPECT_EQ(*mem->Read<uint8_t>(kHigh + 8), 0x22);
  EXPECT_EQ(*mem->Read<uint8_t>(kHigh + 4 * kMiB - 1), 0);
  ASSERT_TRUE(mem->Write<uint8_t>(4096, 0x99));
  EXPECT_EQ(*mem->Read<uint8_t>(4096), 0x99);
  uint8_t in_file = 0;
  ASSERT_EQ(::pread(fd, &in_file, 1, 4096), 1);
  EXPECT_EQ(in_file, 0x11);
  auto other = GuestMemory::CreateFromFile(fd, kRam, kHole, kHigh);
  ASSERT_TRUE(other);
  EXPECT_EQ(*other->Read<uint8_t>(4096), 0x11);
  ::close(fd);
}

TEST(GuestMemoryTest, ShortMemoryFileIsRefused) {
  int fd = ::memfd_create("guest-memory-test", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 4 * kMiB), 0);
  auto mem = GuestMemory::CreateFromFile(fd, 8 * kMiB, 3 * kGiB, 4 * kGiB);
  ASSERT_FALSE(mem);
  EXPECT_NE(mem.error().message().find("truncated"), std::string::npos) << mem.error().message();
  ::close(fd);
}

}  // namespace
}  // namespace clonevm

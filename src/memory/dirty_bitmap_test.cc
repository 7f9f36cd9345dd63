#include "memory/dirty_bitmap.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <thread>

#include "memory/guest_memory.h"

namespace clonevm {
namespace {

constexpr uint64_t kPage = kDirtyPageSize;
constexpr uint64_t kMiB = 1 << 20;

TEST(PageBitmapTest, RunsSetRangeAndCount) {
  PageBitmap b(200);
  b.Set(0);
  b.SetRange(5, 70);  // crosses a word boundary and fills word 1 partly
  b.Set(199);
  b.Set(500);  // ignored: past the end
  EXPECT_EQ(b.Count(), 72u);
  auto runs = b.Runs();
  ASSERT_EQ(runs.size(), 3u);
  EXPECT_EQ(runs[0], std::make_pair(uint64_t{0}, uint64_t{1}));
  EXPECT_EQ(runs[1], std::make_pair(uint64_t{5}, uint64_t{70}));
  EXPECT_EQ(runs[2], std::make_pair(uint64_t{199}, uint64_t{1}));
  PageBitmap full(128);
  full.SetRange(0, 128);
  ASSERT_EQ(full.Runs().size(), 1u);
  EXPECT_EQ(full.Runs()[0].second, 128u);
  EXPECT_TRUE(PageBitmap(64).Runs().empty());
}

TEST(PageBitmapTest, BytesRoundTripAndChecks) {
  PageBitmap b(70);
  b.Set(3);
  b.Set(69);
  auto bytes = b.ToBytes();
  ASSERT_EQ(bytes.size(), 16u);
  auto back = PageBitmap::FromBytes(bytes, 70);
  ASSERT_TRUE(back) << back.error().message();
  EXPECT_EQ(*back, b);
  EXPECT_FALSE(PageBitmap::FromBytes(std::span(bytes).first(8), 70));  // wrong size
  bytes[15] = 0x80;                                                    // page 127: past the end
  EXPECT_FALSE(PageBitmap::FromBytes(bytes, 70));
  PageBitmap a(70);
  a.Set(1);
  a.Or(b);
  EXPECT_EQ(a.Count(), 3u);
}

TEST(DirtyLogTest, MarkTakeAllClears) {
  auto log = DirtyLog::Create(1 * kMiB);
  ASSERT_TRUE(log) << log.error().message();
  EXPECT_EQ((*log)->pages(), 256u);
  (*log)->Mark(kPage - 1, 2);            // straddles pages 0 and 1
  (*log)->Mark(10 * kPage, 65 * kPage);  // pages 10..74
  (*log)->Mark(2 * kMiB, 10);            // past the log: ignored
  (*log)->Mark(5 * kPage, 0);            // empty
  PageBitmap taken = (*log)->TakeAll();
  EXPECT_EQ(taken.Count(), 2u + 65u);
  EXPECT_TRUE(taken.Test(0) && taken.Test(1) && taken.Test(10) && taken.Test(74));
  EXPECT_FALSE(taken.Test(75) || taken.Test(5));
  EXPECT_EQ((*log)->TakeAll().Count(), 0u);
}

TEST(DirtyLogTest, ConcurrentMarksAreNotLost) {
  auto log = DirtyLog::Create(64 * kMiB);
  ASSERT_TRUE(log);
  PageBitmap collected((*log)->pages());
  std::thread writer([&] {
    for (uint64_t p = 0; p < (*log)->pages(); ++p) (*log)->Mark(p * kPage, 1);
  });
  for (int i = 0; i < 50; ++i) collected.Or((*log)->TakeAll());
  writer.join();
  collected.Or((*log)->TakeAll());
  EXPECT_EQ(collected.Count(), (*log)->pages());
}

TEST(GuestMemoryDirtyTest, WritesMarkOnlyWhenEnabled) {
  auto mem = GuestMemory::Create(4 * kMiB, 3 * kMiB, 4 * kMiB);  // 3 MiB low + 1 MiB at 4 MiB
  ASSERT_TRUE(mem);
  uint32_t v = 7;
  ASSERT_TRUE(mem->Write(0x1000, v));
  EXPECT_EQ(mem->dirty_log().TakeAll().Count(), 0u);
  mem->dirty_log().Enable();
  ASSERT_TRUE(mem->Write(0x1000, v));
  ASSERT_TRUE(mem->Write(4 * kMiB + 0x2000, v));  // high region
  PageBitmap gpa = mem->dirty_log().TakeAll();
  EXPECT_EQ(gpa.Count(), 2u);
  PageBitmap file = mem->FilePages(gpa);
  EXPECT_EQ(file.pages(), 1024u);
  EXPECT_TRUE(file.Test(1));
  EXPECT_TRUE(file.Test(3 * kMiB / kPage + 2));  // the high region follows low RAM in the file
  EXPECT_EQ(mem->GpaPages(file), gpa);
}

// A memory file whose page i holds the byte `fill + i` (zero pages stay holes).
Fd MemoryFile(uint64_t bytes, uint8_t fill, const PageBitmap* only) {
  int fd = ::memfd_create("mem", MFD_CLOEXEC);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(bytes)), 0);
  std::vector<uint8_t> page(kPage);
  for (uint64_t i = 0; i < bytes / kPage; ++i) {
    if (only != nullptr && !only->Test(i)) continue;
    std::fill(page.begin(), page.end(), static_cast<uint8_t>(fill + i));
    EXPECT_EQ(::pwrite(fd, page.data(), kPage, static_cast<off_t>(i * kPage)), static_cast<ssize_t>(kPage));
  }
  return Fd(fd);
}

uint8_t ByteAtFilePage(const GuestMemory& mem, uint64_t file_page) {
  uint64_t offset = file_page * kPage;
  for (size_t r = 0; r < mem.regions().size(); ++r) {
    uint64_t start = mem.FileOffset(r);
    if (offset >= start && offset < start + mem.regions()[r].size) return mem.regions()[r].host()[offset - start];
  }
  return 0xee;
}

TEST(GuestMemoryDirtyTest, ImageOverlaysLayersInOrder) {
  const uint64_t ram = 4 * kMiB, pages = ram / kPage;
  PageBitmap l1(pages), l2(pages);
  l1.SetRange(10, 20);
  l1.SetRange(3 * kMiB / kPage - 2, 4);  // a run across the low/high region boundary
  l2.SetRange(15, 2);
  l2.Set(pages - 1);
  MemoryImage image;
  image.base = MemoryFile(ram, 1, nullptr);
  image.layers.push_back({MemoryFile(ram, 100, &l1), l1});
  image.layers.push_back({MemoryFile(ram, 200, &l2), l2});
  auto mem = GuestMemory::CreateFromImage(image, ram, 3 * kMiB, 4 * kMiB);
  ASSERT_TRUE(mem) << mem.error().message();
  for (uint64_t p = 0; p < pages; ++p) {
    uint8_t want = static_cast<uint8_t>(l2.Test(p) ? 200 + p : l1.Test(p) ? 100 + p : 1 + p);
    ASSERT_EQ(ByteAtFilePage(*mem, p), want) << "page " << p;
  }
  // Private: writing does not reach the files.
  mem->regions()[0].host()[10 * kPage] = 0;
  uint8_t byte = 0;
  ASSERT_EQ(::pread(image.layers[0].file.get(), &byte, 1, 10 * kPage), 1);
  EXPECT_EQ(byte, static_cast<uint8_t>(110));
  // A bitmap of the wrong size is refused.
  MemoryImage bad;
  bad.base = MemoryFile(ram, 1, nullptr);
  bad.layers.push_back({MemoryFile(ram, 1, nullptr), PageBitmap(pages / 2)});
  EXPECT_FALSE(GuestMemory::CreateFromImage(bad, ram, 3 * kMiB, 4 * kMiB));
}

}  // namespace
}  // namespace clonevm

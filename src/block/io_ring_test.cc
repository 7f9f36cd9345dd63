#include "block/io_ring.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <vector>

#include "block/block_test_util.h"

namespace clonevm {
namespace {

using blocktest::Pattern;
using blocktest::ReadBytes;
using blocktest::TempDir;

Fd OpenTemp(const TempDir& dir, size_t size) {
  Fd fd(::open(dir.File("f").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644));
  EXPECT_TRUE(fd.valid());
  EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(size)), 0);
  return fd;
}

bool Readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) == 1;
}

// Waits on the eventfd as the event loop does, reaping until `count` completions arrived.
std::map<uint64_t, std::vector<int32_t>> ReapUntil(IoRing& ring, size_t count) {
  std::map<uint64_t, std::vector<int32_t>> results;
  size_t got = 0;
  while (got < count) {
    EXPECT_TRUE(Readable(ring.event_fd(), 5000)) << "no completion signalled on the eventfd";
    if (::testing::Test::HasFailure()) break;
    got += ring.Reap([&](uint64_t tag, int32_t res) { results[tag].push_back(res); });
  }
  return results;
}

TEST(IoRingTest, WritesAndReadsThroughIovecsAndSignalsTheEventfd) {
  TempDir dir;
  Fd fd = OpenTemp(dir, 1 << 20);
  auto ring = IoRing::Create(8);
  ASSERT_TRUE(ring) << ring.error().message();
  std::vector<uint8_t> a = Pattern(4096, 1), b = Pattern(8192, 2);
  iovec out[2] = {{a.data(), a.size()}, {b.data(), b.size()}};
  ASSERT_TRUE((*ring)->Writev(fd.get(), out, 65536, 11));
  EXPECT_EQ((*ring)->in_flight(), 1u);
  EXPECT_FALSE(Readable((*ring)->event_fd(), 0));  // queued, not submitted
  ASSERT_TRUE((*ring)->Submit());
  auto written = ReapUntil(**ring, 1);
  EXPECT_EQ(written[11], std::vector<int32_t>{12288});
  EXPECT_EQ((*ring)->in_flight(), 0u);

  std::vector<uint8_t> back(12288);
  iovec in[1] = {{back.data(), back.size()}};
  ASSERT_TRUE((*ring)->Readv(fd.get(), in, 65536, 12));
  ASSERT_TRUE((*ring)->Submit());
  auto read = ReapUntil(**ring, 1);
  EXPECT_EQ(read[12], std::vector<int32_t>{12288});
  EXPECT_TRUE(std::equal(a.begin(), a.end(), back.begin()));
  EXPECT_TRUE(std::equal(b.begin(), b.end(), back.begin() + 4096));
  EXPECT_FALSE(Readable((*ring)->event_fd(), 0));  // Reap reset the eventfd
}

TEST(IoRingTest, RefusesWorkBeyondItsDepth) {
  TempDir dir;
  Fd fd = OpenTemp(dir, 1 << 20);
  std::vector<uint8_t> buf(4096);  // outlives the ring, which waits for the last read
  iovec iov[1] = {{buf.data(), buf.size()}};
  auto ring = IoRing::Create(3);
  ASSERT_TRUE(ring) << ring.error().message();
  EXPECT_TRUE((*ring)->Readv(fd.get(), iov, 0, 1));
  EXPECT_TRUE((*ring)->Readv(fd.get(), iov, 0, 2));
  EXPECT_FALSE((*ring)->Writev(fd.get(), iov, 0, 3, SyncAfter::kDataSync));  // needs two slots
  EXPECT_TRUE((*ring)->Fsync(fd.get(), 3, FsyncOrder::kAny));
  EXPECT_FALSE((*ring)->Readv(fd.get(), iov, 0, 4));
  EXPECT_EQ((*ring)->room(), 0u);
  std::vector<uint64_t> tags;
  ASSERT_TRUE((*ring)->WaitAll([&](uint64_t tag, int32_t) { tags.push_back(tag); }));
  std::sort(tags.begin(), tags.end());
  EXPECT_EQ(tags, (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ((*ring)->room(), 3u);
  EXPECT_TRUE((*ring)->Readv(fd.get(), iov, 0, 4));
}

TEST(IoRingTest, LinkedSyncCompletesAfterTheWriteAndIsCancelledWhenItFails) {
  TempDir dir;
  Fd fd = OpenTemp(dir, 1 << 20);
  auto ring = IoRing::Create(4);
  ASSERT_TRUE(ring) << ring.error().message();
  std::vector<uint8_t> data = Pattern(4096, 3);
  iovec iov[1] = {{data.data(), data.size()}};
  ASSERT_TRUE((*ring)->Writev(fd.get(), iov, 0, 5, SyncAfter::kDataSync));
  ASSERT_TRUE((*ring)->Submit());
  EXPECT_EQ(ReapUntil(**ring, 2)[5], (std::vector<int32_t>{4096, 0}));

  // A write to a read-only descriptor fails; the linked sync must not run.
  Fd ro(::open(dir.File("f").c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE((*ring)->Writev(ro.get(), iov, 0, 6, SyncAfter::kDataSync));
  ASSERT_TRUE((*ring)->Submit());
  EXPECT_EQ(ReapUntil(**ring, 2)[6], (std::vector<int32_t>{-EBADF, -ECANCELED}));
}

TEST(IoRingTest, DrainedFsyncCompletesAfterEveryEarlierWrite) {
  TempDir dir;
  Fd fd = OpenTemp(dir, 8 << 20);
  auto ring = IoRing::Create(64);
  ASSERT_TRUE(ring) << ring.error().message();
  std::vector<uint8_t> data = Pattern(64 * 1024, 4);
  iovec iov[1] = {{data.data(), data.size()}};
  for (uint64_t i = 0; i < 32; ++i) ASSERT_TRUE((*ring)->Writev(fd.get(), iov, i * data.size(), i));
  ASSERT_TRUE((*ring)->Fsync(fd.get(), 100, FsyncOrder::kAfterSubmitted));
  ASSERT_TRUE((*ring)->Submit());
  std::vector<uint64_t> order;
  ASSERT_TRUE((*ring)->WaitAll([&](uint64_t tag, int32_t res) {
    order.push_back(tag);
    EXPECT_EQ(res, tag == 100 ? 0 : static_cast<int32_t>(data.size()));
  }));
  ASSERT_EQ(order.size(), 33u);
  EXPECT_EQ(order.back(), 100u);
  std::vector<uint8_t> file = ReadBytes(dir.File("f"));
  EXPECT_TRUE(std::equal(data.begin(), data.end(), file.begin() + 31 * data.size()));
}

TEST(IoRingTest, DestructorWaitsForInFlightReads) {
  TempDir dir;
  Fd fd = OpenTemp(dir, 1 << 20);
  std::vector<uint8_t> data = Pattern(1 << 20, 5);
  ASSERT_EQ(::pwrite(fd.get(), data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
  auto buf = std::make_unique<std::vector<uint8_t>>(1 << 20);
  {
    auto ring = IoRing::Create(16);
    ASSERT_TRUE(ring) << ring.error().message();
    std::vector<iovec> iov(16);
    for (size_t i = 0; i < 16; ++i) {
      iov[i] = {buf->data() + i * 65536, 65536};
      ASSERT_TRUE((*ring)->Readv(fd.get(), std::span(&iov[i], 1), i * 65536, i));
    }
    ASSERT_TRUE((*ring)->Submit());
  }  // must not return before the kernel is done with buf
  EXPECT_EQ(*buf, data);
}

TEST(IoRingTest, ReportsErrorsAsNegativeErrno) {
  auto ring = IoRing::Create(2);
  ASSERT_TRUE(ring) << ring.error().message();
  std::vector<uint8_t> buf(512);
  iovec iov[1] = {{buf.data(), buf.size()}};
  ASSERT_TRUE((*ring)->Readv(-1, iov, 0, 9));
  ASSERT_TRUE((*ring)->Submit());
  EXPECT_EQ(ReapUntil(**ring, 1)[9], std::vector<int32_t>{-EBADF});
}

TEST(IoRingTest, CreateFailsCleanlyWhereIoUringIsForbidden) {
  Result<std::unique_ptr<IoRing>> ring = IoRing::Create(4);
  ASSERT_TRUE(blocktest::RunWithoutIoUring([&] { ring = IoRing::Create(4); }));
  ASSERT_FALSE(ring);
  EXPECT_NE(ring.error().message().find("io_uring_queue_init"), std::string::npos) << ring.error().message();
  EXPECT_EQ(ring.error().error_number(), EPERM);
  EXPECT_FALSE(IoRing::Create(0));
}

}  // namespace
}  // namespace clonevm

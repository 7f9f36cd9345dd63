#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>

#include "block/block_test_util.h"
#include "block/image.h"

namespace clonevm {
namespace {

using blocktest::Pattern;
using blocktest::ReadBytes;
using blocktest::TempDir;
using ::testing::HasSubstr;

constexpr uint64_t kSize = 1 << 20;

std::string MakeSparseFile(const TempDir& dir, std::string_view name, uint64_t size) {
  const std::string path = dir.File(name);
  const int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0);
  ::close(fd);
  return path;
}

std::unique_ptr<BlockBackend> OpenRaw(const std::string& path, bool read_only = false) {
  auto disk = OpenImage(path, OpenMode{.read_only = read_only}, Format::kRaw);
  EXPECT_TRUE(disk) << disk.error().message();
  return disk ? std::move(*disk) : nullptr;
}

TEST(BlockRawTest, ReadsBackWritesAtAnyOffsetAndPersistsThem) {
  TempDir dir;
  const std::string path = MakeSparseFile(dir, "disk.raw", kSize);
  std::vector<uint8_t> expected(kSize, 0);
  {
    auto disk = OpenRaw(path);
    ASSERT_TRUE(disk);
    EXPECT_EQ(disk->size(), kSize);
    EXPECT_FALSE(disk->read_only());
    const std::pair<uint64_t, size_t> writes[] = {{0, 512}, {4095, 3000}, {kSize - 10, 10}, {300000, 65536}};
    uint32_t seed = 1;
    for (const auto& [offset, length] : writes) {
      const auto data = Pattern(length, seed++);
      ASSERT_TRUE(disk->Write(offset, data));
      std::memcpy(&expected[offset], data.data(), length);
    }
    std::vector<uint8_t> back(kSize);
    ASSERT_TRUE(disk->Read(0, back));
    EXPECT_EQ(back, expected);
    ASSERT_TRUE(disk->Flush());
  }
  EXPECT_EQ(ReadBytes(path), expected);
}

TEST(BlockRawTest, RejectsRangesOutsideTheDiskWithoutTouchingTheFile) {
  TempDir dir;
  const std::string path = MakeSparseFile(dir, "disk.raw", kSize);
  auto disk = OpenRaw(path);
  ASSERT_TRUE(disk);
  std::vector<uint8_t> buf(4096);
  const std::pair<uint64_t, uint64_t> bad[] = {{kSize, 1},      {kSize - 4095, 4096},   {kSize + 1, 0},
                                               {UINT64_MAX, 1}, {UINT64_MAX - 1, 4096}, {1, UINT64_MAX}};
  for (const auto& [offset, length] : bad) {
    SCOPED_TRACE(testing::Message() << "offset " << offset << " length " << length);
    const size_t n = static_cast<size_t>(std::min<uint64_t>(length, buf.size()));
    auto r = disk->Read(offset, std::span(buf).first(n));
    if (length <= buf.size()) {
      ASSERT_FALSE(r);
      EXPECT_THAT(r.error().message(), HasSubstr("outside the disk"));
      EXPECT_EQ(r.error().error_number(), EINVAL);
      EXPECT_FALSE(disk->Write(offset, std::span(buf).first(n)));
    }
    EXPECT_FALSE(disk->Discard(offset, length));
    EXPECT_FALSE(disk->WriteZeroes(offset, length));
  }
  // Empty requests at the very end are fine.
  EXPECT_TRUE(disk->Read(kSize, std::span(buf).first(0)));
  EXPECT_TRUE(disk->WriteZeroes(kSize, 0));
  disk.reset();
  EXPECT_EQ(std::filesystem::file_size(path), kSize);
}

TEST(BlockRawTest, ReadOnlyRefusesEveryChange) {
  TempDir dir;
  const std::string path = MakeSparseFile(dir, "disk.raw", kSize);
  auto disk = OpenRaw(path, /*read_only=*/true);
  ASSERT_TRUE(disk);
  EXPECT_TRUE(disk->read_only());
  std::vector<uint8_t> buf(512, 0xaa);
  auto w = disk->Write(0, buf);
  ASSERT_FALSE(w);
  EXPECT_EQ(w.error().error_number(), EROFS);
  EXPECT_THAT(w.error().message(), HasSubstr("read-only"));
  EXPECT_FALSE(disk->Discard(0, 512));
  EXPECT_FALSE(disk->WriteZeroes(0, 512));
  EXPECT_TRUE(disk->Flush());
  EXPECT_TRUE(disk->Read(0, buf));
  EXPECT_EQ(buf, std::vector<uint8_t>(512, 0));
}

TEST(BlockRawTest, DiscardAndWriteZeroesPunchHoles) {
  TempDir dir;
  const std::string path = MakeSparseFile(dir, "disk.raw", kSize);
  auto disk = OpenRaw(path);
  ASSERT_TRUE(disk);
  const auto data = Pattern(kSize, 7);
  ASSERT_TRUE(disk->Write(0, data));
  ASSERT_TRUE(disk->Flush());
  const uint64_t full = blocktest::AllocatedBytes(path);
  EXPECT_GE(full, kSize);

  ASSERT_TRUE(disk->Discard(0, kSize / 2));
  ASSERT_TRUE(disk->WriteZeroes(kSize / 2 + 100, 200000));  // unaligned: partial blocks are zeroed
  ASSERT_TRUE(disk->Flush());
  std::vector<uint8_t> expected = data;
  std::memset(expected.data(), 0, kSize / 2);
  std::memset(expected.data() + kSize / 2 + 100, 0, 200000);
  std::vector<uint8_t> back(kSize);
  ASSERT_TRUE(disk->Read(0, back));
  EXPECT_EQ(blocktest::FirstDifference(back, expected), -1);
  EXPECT_LE(blocktest::AllocatedBytes(path), full - kSize / 2 - 150000) << "holes were not punched";
}

TEST(BlockRawTest, OneWriterExcludesEveryoneReadersShare) {
  TempDir dir;
  const std::string path = MakeSparseFile(dir, "disk.raw", kSize);
  {
    auto writer = OpenRaw(path);
    ASSERT_TRUE(writer);
    auto second = OpenImage(path, OpenMode{}, Format::kRaw);
    ASSERT_FALSE(second);
    EXPECT_THAT(second.error().message(), HasSubstr("locked"));
    EXPECT_THAT(second.error().message(), HasSubstr(path));
    auto reader = OpenImage(path, OpenMode{.read_only = true}, Format::kRaw);
    ASSERT_FALSE(reader);
    EXPECT_THAT(reader.error().message(), HasSubstr("locked"));
  }
  auto reader1 = OpenImage(path, OpenMode{.read_only = true}, Format::kRaw);
  auto reader2 = OpenImage(path, OpenMode{.read_only = true}, Format::kRaw);
  ASSERT_TRUE(reader1) << reader1.error().message();
  ASSERT_TRUE(reader2) << reader2.error().message();
  auto writer = OpenImage(path, OpenMode{}, Format::kRaw);
  ASSERT_FALSE(writer);
  EXPECT_THAT(writer.error().message(), HasSubstr("locked"));
}

TEST(BlockRawTest, DescribeNamesFormatPathSizeAndMode) {
  TempDir dir;
  const std::string path = MakeSparseFile(dir, "disk.raw", 3 << 20);
  auto disk = OpenRaw(path, /*read_only=*/true);
  ASSERT_TRUE(disk);
  EXPECT_EQ(disk->Describe(), "raw " + path + " (3 MiB, read-only)");
}

TEST(BlockFormatBytesTest, UsesBinaryUnits) {
  EXPECT_EQ(FormatBytes(0), "0 B");
  EXPECT_EQ(FormatBytes(512), "512 B");
  EXPECT_EQ(FormatBytes(64 * 1024), "64 KiB");
  EXPECT_EQ(FormatBytes(1536ull << 20), "1.5 GiB");
}

}  // namespace
}  // namespace clonevm

// qcow2 interoperability with the real QEMU tools: images qemu-img makes are read and written by
// Clone; images Clone writes pass `qemu-img check` and convert to the expected bytes.
#include "block/qcow2.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <random>

#include "block/block_test_util.h"
#include "block/image.h"

namespace clonevm {
namespace {

using blocktest::ConvertToRaw;
using blocktest::ExpectCheckClean;
using blocktest::FirstDifference;
using blocktest::Pattern;
using blocktest::Quote;
using blocktest::ReadBytes;
using blocktest::TempDir;
using blocktest::WriteBytes;
using ::testing::HasSubstr;

constexpr uint64_t kMiB = 1 << 20;

// A disk under test and the bytes it should hold.
struct Modeled {
  std::unique_ptr<BlockBackend> disk;
  std::vector<uint8_t> model;

  ::testing::AssertionResult Write(uint64_t offset, std::span<const uint8_t> data) {
    if (auto r = disk->Write(offset, data); !r) return ::testing::AssertionFailure() << r.error().message();
    std::memcpy(&model[offset], data.data(), data.size());
    return ::testing::AssertionSuccess();
  }
  ::testing::AssertionResult Zero(uint64_t offset, uint64_t length, bool discard) {
    auto r = discard ? disk->Discard(offset, length) : disk->WriteZeroes(offset, length);
    if (!r) return ::testing::AssertionFailure() << r.error().message();
    if (!discard) std::memset(&model[offset], 0, length);
    return ::testing::AssertionSuccess();
  }
  // After a discard the model cannot know whether partial clusters kept their data: callers
  // resync it from the disk, checking that every byte is either the old value or zero.
  ::testing::AssertionResult DiscardAndResync(uint64_t offset, uint64_t length) {
    if (auto r = disk->Discard(offset, length); !r) return ::testing::AssertionFailure() << r.error().message();
    std::vector<uint8_t> now(length);
    if (auto r = disk->Read(offset, now); !r) return ::testing::AssertionFailure() << r.error().message();
    for (uint64_t i = 0; i < length; ++i) {
      if (now[i] != 0 && now[i] != model[offset + i]) {
        return ::testing::AssertionFailure() << "discarded byte at " << offset + i << " is neither old nor zero";
      }
    }
    std::memcpy(&model[offset], now.data(), length);
    return ::testing::AssertionSuccess();
  }
  ::testing::AssertionResult Matches(uint64_t offset = 0, uint64_t length = UINT64_MAX) {
    length = std::min<uint64_t>(length, model.size() - offset);
    std::vector<uint8_t> back(length);
    if (auto r = disk->Read(offset, back); !r) return ::testing::AssertionFailure() << r.error().message();
    const int64_t diff = FirstDifference(back, std::span(model).subspan(offset, length));
    if (diff >= 0) return ::testing::AssertionFailure() << "first difference at byte " << offset + diff;
    return ::testing::AssertionSuccess();
  }
};

std::unique_ptr<BlockBackend> Open(const std::string& path, OpenMode mode = {}) {
  auto disk = OpenImage(path, mode);
  EXPECT_TRUE(disk) << disk.error().message();
  return disk ? std::move(*disk) : nullptr;
}

// The raw contents of a qcow2 image (as QEMU sees them) equal `expected`.
void ExpectConvertsTo(const TempDir& dir, const std::string& image, const std::vector<uint8_t>& expected) {
  const std::vector<uint8_t> raw = ConvertToRaw(dir, image);
  EXPECT_EQ(raw.size(), expected.size());
  EXPECT_EQ(FirstDifference(raw, expected), -1) << "qemu-img convert of " << image << " differs";
}

class BlockQcow2QemuCreatedTest : public ::testing::TestWithParam<uint64_t> {};

TEST_P(BlockQcow2QemuCreatedTest, WritesReadBackAndPassQemuImgCheck) {
  const uint64_t cs = GetParam();
  const uint64_t size = 8 * kMiB;
  TempDir dir;
  const std::string path = dir.File("disk.qcow2");
  CLONE_QEMU_IMG_OK(fmt::format("create -q -f qcow2 -o cluster_size={} {} {}", cs, Quote(path), size));
  Modeled m{Open(path), std::vector<uint8_t>(size, 0)};
  ASSERT_TRUE(m.disk);
  ASSERT_EQ(m.disk->size(), size);
  ASSERT_TRUE(m.Matches());
  const std::pair<uint64_t, uint64_t> writes[] = {
      {0, 100}, {cs - 7, 20}, {3 * cs + 5, 2 * cs + 100}, {size - 300, 300},
      {50, 30}, {kMiB, kMiB}, {kMiB + cs / 2, 10},
  };
  uint32_t seed = 1;
  for (const auto& [offset, length] : writes) {
    ASSERT_TRUE(m.Write(offset, Pattern(std::min(length, size - offset), seed++)));
  }
  ASSERT_TRUE(m.Matches());
  ASSERT_TRUE(m.disk->Flush());
  ExpectCheckClean(path);
  m.disk.reset();

  auto reopened = Open(path, OpenMode{.read_only = true});
  ASSERT_TRUE(reopened);
  m.disk = std::move(reopened);
  EXPECT_TRUE(m.Matches());
  ExpectCheckClean(path);
  ExpectConvertsTo(dir, path, m.model);
}

INSTANTIATE_TEST_SUITE_P(ClusterSizes, BlockQcow2QemuCreatedTest, ::testing::Values(512, 4096, 65536, 2 * kMiB),
                         [](const auto& param_info) { return fmt::format("cluster{}", param_info.param); });

// Raw source bytes with compressible data, incompressible data, holes and a partial last cluster.
std::vector<uint8_t> MixedContent(uint64_t size) {
  std::vector<uint8_t> bytes(size, 0);
  for (uint64_t i = 0; i < kMiB; ++i) bytes[i] = static_cast<uint8_t>("clone block layer "[i % 18] + (i >> 12));
  const auto b = Pattern(kMiB + 1000, 12);
  std::memcpy(&bytes[2 * kMiB + 512], b.data(), b.size());
  std::memset(&bytes[size - 4096], 0x5a, 4096);
  return bytes;
}

class BlockQcow2QemuWrittenTest : public ::testing::TestWithParam<bool> {};

TEST_P(BlockQcow2QemuWrittenTest, ReadsQemuDataThenCopiesOnWrite) {
  const bool compressed = GetParam();
  TempDir dir;
  const uint64_t size = 4 * kMiB;
  const std::string raw = dir.File("source.raw");
  const std::string path = dir.File("disk.qcow2");
  const std::vector<uint8_t> content = MixedContent(size);
  WriteBytes(raw, content);
  CLONE_QEMU_IMG_OK(fmt::format("convert -f raw -O qcow2 {} -o cluster_size=4096 {} {}", compressed ? "-c" : "",
                                Quote(raw), Quote(path)));
  if (compressed) {
    // Sanity: QEMU really compressed it.
    EXPECT_LT(std::filesystem::file_size(path), 2 * kMiB);
  }
  Modeled m{Open(path, OpenMode{.read_only = true}), content};
  ASSERT_TRUE(m.disk);
  ASSERT_TRUE(m.Matches());
  ASSERT_TRUE(m.Matches(4097, 3));  // small reads inside one (compressed) cluster
  m.disk.reset();
  m.disk = Open(path);
  ASSERT_TRUE(m.disk);
  ASSERT_TRUE(m.Write(100, Pattern(50, 1)));          // partial: copy-on-write of the old cluster
  ASSERT_TRUE(m.Write(8192 - 10, Pattern(8200, 2)));  // spans three clusters, partial at both ends
  ASSERT_TRUE(m.Write(100, Pattern(10, 3)));          // now in place
  ASSERT_TRUE(m.Write(2 * kMiB, Pattern(70000, 4)));  // over a hole and data
  ASSERT_TRUE(m.Zero(3 * kMiB + 10, 20000, /*discard=*/false));
  ASSERT_TRUE(m.DiscardAndResync(kMiB / 2, kMiB));
  ASSERT_TRUE(m.Matches());
  m.disk.reset();
  ExpectCheckClean(path);
  ExpectConvertsTo(dir, path, m.model);
}

INSTANTIATE_TEST_SUITE_P(Compression, BlockQcow2QemuWrittenTest, ::testing::Bool(),
                         [](const auto& param_info) { return param_info.param ? "compressed" : "plain"; });

TEST(BlockQcow2Test, BackingFilesSupplyUnwrittenDataAndStayUntouched) {
  TempDir dir;
  const std::string base = dir.File("base.raw");
  const std::string overlay = dir.File("overlay.qcow2");
  const std::vector<uint8_t> base_bytes = Pattern(2 * kMiB, 21);
  WriteBytes(base, base_bytes);
  // The overlay is larger than its backing file: the rest reads as zeros.
  CLONE_QEMU_IMG_OK("create -q -f qcow2 -b base.raw -F raw " + Quote(overlay) + " 3M");
  std::vector<uint8_t> expected(3 * kMiB, 0);
  std::memcpy(expected.data(), base_bytes.data(), base_bytes.size());
  Modeled m{Open(overlay), expected};
  ASSERT_TRUE(m.disk);
  EXPECT_THAT(m.disk->Describe(), HasSubstr("backing: raw " + base + " (2 MiB, read-only)"));
  ASSERT_TRUE(m.Matches());
  ASSERT_TRUE(m.Write(4096 + 100, Pattern(5000, 1)));   // head and tail copied from the backing file
  ASSERT_TRUE(m.Write(2 * kMiB - 10, Pattern(20, 2)));  // straddles the end of the backing file
  ASSERT_TRUE(m.Write(65536 * 5 - 1, Pattern(65536 + 2, 3)));
  ASSERT_TRUE(m.Zero(kMiB, 3 * 65536, /*discard=*/false));  // must hide the backing data
  ASSERT_TRUE(m.Zero(kMiB + 5 * 65536, 2 * 65536, /*discard=*/true));
  std::memset(&m.model[kMiB + 5 * 65536], 0, 2 * 65536);  // whole clusters: zeros, not backing data
  ASSERT_TRUE(m.Matches());
  m.disk.reset();
  ExpectCheckClean(overlay);
  ExpectConvertsTo(dir, overlay, m.model);
  EXPECT_EQ(ReadBytes(base), base_bytes);

  // A chain: top (made by Clone, relative backing name) -> overlay (qcow2) -> base (raw).
  const std::string top = dir.File("top.qcow2");
  ASSERT_TRUE(Qcow2Create(top, 0, 65536, "overlay.qcow2"));
  Modeled t{Open(top), m.model};
  ASSERT_TRUE(t.disk);
  EXPECT_EQ(t.disk->size(), 3 * kMiB);
  ASSERT_TRUE(t.Matches());
  ASSERT_TRUE(t.Write(12345, Pattern(100000, 4)));
  ASSERT_TRUE(t.Matches());
  t.disk.reset();
  ExpectCheckClean(top);
  ExpectConvertsTo(dir, top, t.model);
  ExpectConvertsTo(dir, overlay, m.model);
}

TEST(BlockQcow2Test, ProbesBackingFormatWhenTheImageDoesNotRecordIt) {
  TempDir dir;
  const std::string base = dir.File("base.qcow2");
  const std::string overlay = dir.File("overlay.qcow2");
  const std::string raw = dir.File("base.raw");
  const std::vector<uint8_t> bytes = Pattern(kMiB, 5);
  WriteBytes(raw, bytes);
  CLONE_QEMU_IMG_OK("convert -f raw -O qcow2 " + Quote(raw) + " " + Quote(base));
  CLONE_QEMU_IMG_OK("create -q -f qcow2 -u -b base.qcow2 -F qcow2 " + Quote(overlay) + " 1M");
  // Drop the backing format extension: make its type unknown (unknown extensions are skipped).
  const std::vector<uint8_t> header = ReadBytes(overlay);
  const uint8_t kBackingFormatExt[4] = {0xe2, 0x79, 0x2a, 0xca};
  auto it =
      std::search(header.begin(), header.begin() + 4096, std::begin(kBackingFormatExt), std::end(kBackingFormatExt));
  ASSERT_NE(it, header.begin() + 4096);
  blocktest::PatchBe32(overlay, static_cast<uint64_t>(it - header.begin()), 0x12345678);
  Modeled m{Open(overlay, OpenMode{.read_only = true}), bytes};
  ASSERT_TRUE(m.disk);
  EXPECT_THAT(m.disk->Describe(), HasSubstr("backing: qcow2 v3"));
  EXPECT_TRUE(m.Matches());
}

TEST(BlockQcow2Test, CreatedImagesPassQemuImgInfoAndCheck) {
  TempDir dir;
  struct Case {
    uint64_t size;
    uint64_t cluster;
    uint64_t expected_size;
  };
  const Case cases[] = {
      {64 * kMiB, 65536, 64 * kMiB},          {1ull << 30, 512, 1ull << 30}, {1000, 4096, 1024}, {0, 65536, 0},
      {100ull << 30, 2 * kMiB, 100ull << 30},
  };
  int i = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "size " << c.size << " cluster " << c.cluster);
    const std::string path = dir.File(fmt::format("created{}.qcow2", i++));
    auto created = Qcow2Create(path, c.size, c.cluster);
    ASSERT_TRUE(created) << created.error().message();
    ASSERT_TRUE(blocktest::HaveQemuImg()) << blocktest::kQemuImgMissing;
    const auto info = blocktest::QemuImg("info --output=json " + Quote(path));
    ASSERT_EQ(info.exit_code, 0) << info.output;
    EXPECT_THAT(info.output, HasSubstr(fmt::format("\"virtual-size\": {},", c.expected_size)));
    EXPECT_THAT(info.output, HasSubstr(fmt::format("\"cluster-size\": {},", c.cluster)));
    EXPECT_THAT(info.output, HasSubstr("\"format\": \"qcow2\""));
    EXPECT_THAT(info.output, HasSubstr("\"compat\": \"1.1\""));
    ExpectCheckClean(path);
    if (c.expected_size >= kMiB) {
      Modeled m{Open(path), {}};
      ASSERT_TRUE(m.disk);
      const auto data = Pattern(300000, 9);
      ASSERT_TRUE(m.disk->Write(c.expected_size - data.size(), data));
      std::vector<uint8_t> back(data.size());
      ASSERT_TRUE(m.disk->Read(c.expected_size - data.size(), back));
      EXPECT_EQ(back, data);
      m.disk.reset();
      ExpectCheckClean(path);
    }
  }

  const std::string base = dir.File("base.raw");
  WriteBytes(base, Pattern(3 * kMiB + 100, 3));
  const std::string overlay = dir.File("overlay.qcow2");
  ASSERT_TRUE(Qcow2Create(overlay, 0, 65536, "base.raw"));
  const auto info = blocktest::QemuImg("info --output=json " + Quote(overlay));
  EXPECT_THAT(info.output, HasSubstr("\"backing-filename\": \"base.raw\""));
  EXPECT_THAT(info.output, HasSubstr("\"backing-filename-format\": \"raw\""));
  EXPECT_THAT(info.output, HasSubstr(fmt::format("\"virtual-size\": {},", 3 * kMiB + 512)));
  ExpectCheckClean(overlay);

  auto exists = Qcow2Create(overlay, kMiB);
  ASSERT_FALSE(exists);
  EXPECT_THAT(exists.error().message(), HasSubstr("File exists"));
  for (uint64_t bad : {uint64_t{256}, uint64_t{1000}, 4 * kMiB}) {
    auto r = Qcow2Create(dir.File("bad.qcow2"), kMiB, bad);
    ASSERT_FALSE(r);
    EXPECT_THAT(r.error().message(), HasSubstr("invalid cluster size"));
  }
  auto missing = Qcow2Create(dir.File("orphan.qcow2"), kMiB, 65536, "nothere.raw");
  ASSERT_FALSE(missing);
  EXPECT_THAT(missing.error().message(), HasSubstr("nothere.raw"));
  EXPECT_FALSE(std::filesystem::exists(dir.File("orphan.qcow2")));
}

TEST(BlockQcow2Test, DiscardAndWriteZeroesReturnSpaceWithoutLeaks) {
  TempDir dir;
  const std::string path = dir.File("disk.qcow2");
  ASSERT_TRUE(Qcow2Create(path, 16 * kMiB));
  Modeled m{Open(path), std::vector<uint8_t>(16 * kMiB, 0)};
  ASSERT_TRUE(m.disk);
  ASSERT_TRUE(m.Write(0, Pattern(8 * kMiB, 1)));
  ASSERT_TRUE(m.disk->Flush());
  const uint64_t full = blocktest::AllocatedBytes(path);
  EXPECT_GE(full, 8 * kMiB);
  ASSERT_TRUE(m.Zero(0, 4 * kMiB, /*discard=*/true));
  std::memset(m.model.data(), 0, 4 * kMiB);  // whole clusters without a backing file read as zeros
  ASSERT_TRUE(m.Zero(4 * kMiB + 1000, 2 * kMiB, /*discard=*/false));
  ASSERT_TRUE(m.Matches());
  ASSERT_TRUE(m.disk->Flush());
  EXPECT_LE(blocktest::AllocatedBytes(path), full - 5 * kMiB) << "freed clusters were not punched out";
  ExpectCheckClean(path);
  ASSERT_TRUE(m.Write(kMiB, Pattern(kMiB, 2)));             // reallocate part of the discarded range
  ASSERT_TRUE(m.Zero(15 * kMiB, kMiB, /*discard=*/false));  // never written: nothing to do
  m.disk.reset();
  ExpectCheckClean(path);
  ExpectConvertsTo(dir, path, m.model);
}

TEST(BlockQcow2Test, RefcountTableGrowsWhenTheFileOutgrowsIt) {
  TempDir dir;
  const std::string path = dir.File("small-clusters.qcow2");
  // 512-byte clusters: one refcount table cluster covers 64 blocks x 256 clusters = 8 MiB of file.
  ASSERT_TRUE(Qcow2Create(path, 64 * kMiB, 512));
  const uint64_t table_before = blocktest::ReadBe64(path, 48);
  Modeled m{Open(path), std::vector<uint8_t>(64 * kMiB, 0)};
  ASSERT_TRUE(m.disk);
  const auto chunk = Pattern(256 * 1024, 3);
  for (uint64_t off = 0; off < 12 * kMiB; off += chunk.size()) ASSERT_TRUE(m.Write(off * 2, chunk));
  ASSERT_TRUE(m.Matches());
  m.disk.reset();
  EXPECT_NE(blocktest::ReadBe64(path, 48), table_before) << "the refcount table did not move";
  ExpectCheckClean(path);
  ExpectConvertsTo(dir, path, m.model);
}

struct RandomCase {
  uint64_t cluster;
  int refcount_bits;
  bool backing;
};

void PrintTo(const RandomCase& c, std::ostream* os) {
  *os << "cluster " << c.cluster << ", refcount_bits " << c.refcount_bits << (c.backing ? ", backing" : "");
}

class BlockQcow2RandomOpsTest : public ::testing::TestWithParam<RandomCase> {};

// Random writes, discards, zeroing, flushes and reopenings against a byte model, with an L2 cache
// of two tables so that dirty tables are evicted mid-request.
TEST_P(BlockQcow2RandomOpsTest, MatchesModelAndQemu) {
  const RandomCase c = GetParam();
  const uint64_t size = 4 * kMiB;
  TempDir dir;
  const std::string path = dir.File("disk.qcow2");
  std::vector<uint8_t> model(size, 0);
  std::string backing_args;
  if (c.backing) {
    const auto base = Pattern(3 * kMiB, 77);
    WriteBytes(dir.File("base.raw"), base);
    std::memcpy(model.data(), base.data(), base.size());
    backing_args = "-b base.raw -F raw";
  }
  CLONE_QEMU_IMG_OK(fmt::format("create -q -f qcow2 -o cluster_size={},refcount_bits={} {} {} {}", c.cluster,
                                c.refcount_bits, backing_args, Quote(path), size));
  const OpenMode mode{.l2_cache_bytes = 2 * c.cluster};
  Modeled m{Open(path, mode), std::move(model)};
  ASSERT_TRUE(m.disk);
  std::mt19937_64 rng(c.cluster * 31 + c.refcount_bits + c.backing);
  for (int op = 0; op < 300; ++op) {
    SCOPED_TRACE(testing::Message() << "op " << op);
    const uint64_t offset = rng() % size;
    const uint64_t length = std::min<uint64_t>(size - offset, 1 + rng() % (3 * c.cluster + 5000));
    switch (rng() % 12) {
      case 0:
      case 1:
      case 2:
      case 3:
      case 4:
        ASSERT_TRUE(m.Write(offset, Pattern(length, static_cast<uint32_t>(op))));
        break;
      case 5:
        ASSERT_TRUE(m.DiscardAndResync(offset, length));
        break;
      case 6:
        ASSERT_TRUE(m.Zero(offset, length, /*discard=*/false));
        break;
      case 7:
      case 8:
        ASSERT_TRUE(m.Matches(offset, length));
        break;
      case 9:
        ASSERT_TRUE(m.disk->Flush());
        break;
      case 10:
        if (rng() % 4 == 0) {
          m.disk.reset();
          m.disk = Open(path, mode);
          ASSERT_TRUE(m.disk);
        }
        break;
      default:
        ASSERT_TRUE(m.Matches(0, size));
        break;
    }
  }
  ASSERT_TRUE(m.Matches());
  m.disk.reset();
  ExpectCheckClean(path);
  ExpectConvertsTo(dir, path, m.model);
}

INSTANTIATE_TEST_SUITE_P(Layouts, BlockQcow2RandomOpsTest,
                         ::testing::Values(RandomCase{512, 16, false}, RandomCase{512, 1, true},
                                           RandomCase{4096, 64, true}, RandomCase{65536, 8, true},
                                           RandomCase{65536, 16, false}),
                         [](const auto& param_info) {
                           return fmt::format("cluster{}_refcount{}_{}", param_info.param.cluster,
                                              param_info.param.refcount_bits,
                                              param_info.param.backing ? "backing" : "standalone");
                         });

TEST(BlockQcow2Test, AKilledWriterLeavesAConsistentImageWithItsFlushedData) {
  TempDir dir;
  const std::string path = dir.File("disk.qcow2");
  ASSERT_TRUE(Qcow2Create(path, 8 * kMiB, 4096));
  const auto flushed = Pattern(kMiB, 1);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // No destructors run past _exit: whatever was not flushed is simply lost, as in a crash.
    auto disk = OpenImage(path, OpenMode{.l2_cache_bytes = 8192});
    if (!disk || !(*disk)->Write(0, flushed) || !(*disk)->Flush()) ::_exit(1);
    const auto more = Pattern(64 * 1024, 2);
    for (uint64_t off = 2 * kMiB; off < 8 * kMiB; off += 3 * more.size()) {
      if (!(*disk)->Write(off, more)) ::_exit(1);
    }
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_TRUE(blocktest::HaveQemuImg()) << blocktest::kQemuImgMissing;
  const auto check = blocktest::QemuImg("check " + Quote(path));
  // Leaked clusters (exit code 3) are allowed after a crash; errors (2) are not.
  EXPECT_TRUE(check.exit_code == 0 || check.exit_code == 3) << check.output;
  EXPECT_THAT(check.output, ::testing::Not(HasSubstr("ERROR")));
  auto disk = Open(path, OpenMode{.read_only = true});
  ASSERT_TRUE(disk);
  std::vector<uint8_t> back(flushed.size());
  ASSERT_TRUE(disk->Read(0, back));
  EXPECT_EQ(back, flushed);
}

TEST(BlockQcow2Test, Version2ImagesAreReadOnly) {
  TempDir dir;
  const std::string raw = dir.File("source.raw");
  const std::string path = dir.File("v2.qcow2");
  const std::vector<uint8_t> content = MixedContent(4 * kMiB);
  WriteBytes(raw, content);
  CLONE_QEMU_IMG_OK("convert -f raw -O qcow2 -o compat=0.10 " + Quote(raw) + " " + Quote(path));
  Modeled m{Open(path, OpenMode{.read_only = true}), content};
  ASSERT_TRUE(m.disk);
  EXPECT_THAT(m.disk->Describe(), HasSubstr("qcow2 v2"));
  EXPECT_TRUE(m.Matches());
  m.disk.reset();
  auto rw = OpenImage(path);
  ASSERT_FALSE(rw);
  EXPECT_THAT(rw.error().message(), HasSubstr("version 2 images are supported read-only"));
  EXPECT_THAT(rw.error().message(), HasSubstr("qemu-img amend"));
}

TEST(BlockQcow2Test, ReadOnlyLockingAndRangeChecks) {
  TempDir dir;
  const std::string path = dir.File("disk.qcow2");
  ASSERT_TRUE(Qcow2Create(path, kMiB));
  {
    auto ro = Open(path, OpenMode{.read_only = true});
    ASSERT_TRUE(ro);
    std::vector<uint8_t> buf(512);
    auto w = ro->Write(0, buf);
    ASSERT_FALSE(w);
    EXPECT_EQ(w.error().error_number(), EROFS);
    EXPECT_FALSE(ro->Discard(0, 512));
    EXPECT_FALSE(ro->WriteZeroes(0, 512));
    EXPECT_TRUE(ro->Flush());
  }
  auto rw = Open(path);
  ASSERT_TRUE(rw);
  auto second = OpenImage(path);
  ASSERT_FALSE(second);
  EXPECT_THAT(second.error().message(), HasSubstr("locked"));
  std::vector<uint8_t> buf(4096);
  for (const auto& [offset, length] : std::vector<std::pair<uint64_t, uint64_t>>{
           {kMiB, 1}, {kMiB - 100, 4096}, {UINT64_MAX - 10, 4096}, {kMiB + 1, 0}}) {
    const auto span = std::span(buf).first(static_cast<size_t>(length));
    auto r = rw->Read(offset, span);
    ASSERT_FALSE(r);
    EXPECT_THAT(r.error().message(), HasSubstr("outside the disk"));
    EXPECT_FALSE(rw->Write(offset, span));
    EXPECT_FALSE(rw->Discard(offset, length));
    EXPECT_FALSE(rw->WriteZeroes(offset, length));
  }
  EXPECT_FALSE(rw->Discard(1, UINT64_MAX));
  rw.reset();
  ExpectCheckClean(path);
  EXPECT_EQ(std::filesystem::file_size(path), 4 * 65536u);  // nothing was allocated
}

TEST(BlockQcow2Test, ClearsAutoclearBitsBeforeWritingAndIgnoresCompatibleOnes) {
  TempDir dir;
  const std::string path = dir.File("disk.qcow2");
  CLONE_QEMU_IMG_OK("create -q -f qcow2 -o lazy_refcounts=on " + Quote(path) + " 1M");
  blocktest::PatchBe64(path, 88, uint64_t{1} << 5);  // an autoclear bit Clone does not know
  {
    auto ro = Open(path, OpenMode{.read_only = true});
    ASSERT_TRUE(ro);
  }
  EXPECT_EQ(blocktest::ReadBe64(path, 88), uint64_t{1} << 5);
  auto rw = Open(path);
  ASSERT_TRUE(rw);
  EXPECT_EQ(blocktest::ReadBe64(path, 88), 0u);
  ASSERT_TRUE(rw->Write(1000, Pattern(100000, 1)));
  rw.reset();
  ExpectCheckClean(path);
}

}  // namespace
}  // namespace clonevm

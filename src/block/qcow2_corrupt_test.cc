// Corrupt, hostile and unsupported qcow2 images: each is a clear Error naming the problem, never
// a crash, an out-of-bounds access (run under ASan) or a write outside the image's own clusters.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "block/block_test_util.h"
#include "block/image.h"
#include "block/qcow2.h"
#include "block/qcow2_format.h"

namespace clonevm {
namespace {

using blocktest::PatchBe32;
using blocktest::PatchBe64;
using blocktest::Pattern;
using blocktest::Quote;
using blocktest::ReadBe64;
using blocktest::ReadBytes;
using blocktest::TempDir;
using blocktest::WriteBytes;
using ::testing::HasSubstr;

constexpr uint64_t kMiB = 1 << 20;
constexpr OpenMode kReadOnly{.read_only = true};

// An empty 1 MiB qcow2 image made by qemu-img (64 KiB clusters: header, refcount table, refcount
// block, L1 table at 0x30000).
std::string EmptyImage(const TempDir& dir, const std::string& name = "disk.qcow2", const std::string& options = "") {
  const std::string path = dir.File(name);
  const auto r = blocktest::QemuImg("create -q -f qcow2 " + options + " " + Quote(path) + " 1M");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return path;
}

// A 1 MiB image full of data, 4 KiB clusters (L1 at 0x3000, L2 table at 0x4000, data after).
std::string DataImage(const TempDir& dir, bool compressed = false, const std::string& name = "data.qcow2") {
  const std::string raw = dir.File(name + ".raw");
  std::vector<uint8_t> bytes(kMiB);
  for (size_t i = 0; i < bytes.size(); ++i)
    bytes[i] = static_cast<uint8_t>(compressed ? i / 4096 + 1 : i * 7 + i / 300);
  WriteBytes(raw, bytes);
  const std::string path = dir.File(name);
  const auto r = blocktest::QemuImg(std::string("convert -f raw -O qcow2 -o cluster_size=4096 ") +
                                    (compressed ? "-c " : "") + Quote(raw) + " " + Quote(path));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return path;
}

std::string OpenError(const std::string& path, OpenMode mode = {}, Format format = Format::kAuto) {
  auto disk = OpenImage(path, mode, format);
  if (disk) return "<opened>";
  return disk.error().message();
}

uint64_t L2TableOffset(const std::string& path) {
  const uint64_t l1 = ReadBe64(path, 40);
  return ReadBe64(path, l1) & qcow2::kOffsetMask;
}

TEST(BlockQcow2CorruptTest, HeaderFieldsAreValidated) {
  ASSERT_TRUE(blocktest::HaveQemuImg()) << blocktest::kQemuImgMissing;
  TempDir dir;
  const std::string pristine = EmptyImage(dir, "pristine.qcow2");
  const std::vector<uint8_t> good = ReadBytes(pristine);
  const std::string path = dir.File("disk.qcow2");
  struct Case {
    const char* name;
    std::function<void()> corrupt;
    const char* message;
  };
  const Case cases[] = {
      {"truncated v2 header", [&] { WriteBytes(path, std::span(good).first(50)); }, "truncated qcow2 header"},
      {"truncated v3 header", [&] { WriteBytes(path, std::span(good).first(80)); }, "a version 3 header needs 104"},
      {"version 1", [&] { PatchBe32(path, 4, 1); }, "unsupported qcow2 version 1"},
      {"version 4", [&] { PatchBe32(path, 4, 4); }, "unsupported qcow2 version 4"},
      {"cluster_bits 8", [&] { PatchBe32(path, 20, 8); }, "invalid cluster_bits 8: must be 9..21"},
      {"cluster_bits 22", [&] { PatchBe32(path, 20, 22); }, "invalid cluster_bits 22"},
      {"cluster_bits 200", [&] { PatchBe32(path, 20, 200); }, "invalid cluster_bits 200"},
      {"unknown incompatible bit", [&] { PatchBe64(path, 72, uint64_t{1} << 10); },
       "unsupported qcow2 incompatible feature(s): bit 10"},
      {"unknown incompatible bits", [&] { PatchBe64(path, 72, (uint64_t{1} << 63) | (1 << 5)); }, "bit 5, bit 63"},
      {"L1 past EOF", [&] { PatchBe64(path, 40, 0x100000); }, "L1 table 0x100000+0x8 lies past the end of the file"},
      {"L1 misaligned", [&] { PatchBe64(path, 40, 0x30008); }, "L1 table offset 0x30008 is not a non-zero multiple"},
      {"L1 too small", [&] { PatchBe64(path, 24, uint64_t{1} << 40); }, "too few for the virtual size"},
      {"L1 huge", [&] { PatchBe32(path, 36, 0xffffffff); }, "exceeds the limit"},
      {"refcount table misaligned", [&] { PatchBe64(path, 48, 0x10200); },
       "refcount table offset 0x10200 is not a non-zero multiple of the cluster size 0x10000"},
      {"refcount table at 0", [&] { PatchBe64(path, 48, 0); }, "refcount table offset 0x0"},
      {"refcount table past EOF", [&] { PatchBe64(path, 48, 0x400000); },
       "refcount table 0x400000+0x10000 lies past the end"},
      {"refcount table empty", [&] { PatchBe32(path, 56, 0); }, "refcount table size of 0 clusters"},
      {"header_length", [&] { PatchBe32(path, 100, 100); }, "invalid header_length 100"},
      {"refcount_order", [&] { PatchBe32(path, 96, 7); }, "invalid refcount_order 7"},
      {"encrypted", [&] { PatchBe32(path, 32, 1); }, "encrypted qcow2 images are not supported"},
      {"extension overrun", [&] { PatchBe32(path, 0x74, 0x10000); }, "overruns the header area"},
      {"snapshot table",
       [&] {
         PatchBe32(path, 60, 1);
         PatchBe64(path, 64, 0x12345);
       },
       "snapshot table offset"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    WriteBytes(path, good);
    c.corrupt();
    const std::string error = OpenError(path, kReadOnly, Format::kQcow2);
    EXPECT_THAT(error, HasSubstr(c.message));
    EXPECT_THAT(error, HasSubstr(path));
  }
  WriteBytes(path, good);
  PatchBe32(path, 0, 0x12345678);
  EXPECT_THAT(OpenError(path, {}, Format::kQcow2), HasSubstr("not a qcow2 image: bad magic 0x12345678"));
}

TEST(BlockQcow2CorruptTest, UnknownFeatureBitsAreNamedFromTheImagesFeatureTable) {
  TempDir dir;
  const std::string path = EmptyImage(dir);
  // Rename the table's "extended L2 entries" entry (incompatible bit 4) to bit 12, then set bit 12.
  const std::vector<uint8_t> bytes = ReadBytes(path);
  const std::string name = "extended L2 entries";
  auto it = std::search(bytes.begin(), bytes.begin() + 4096, name.begin(), name.end());
  ASSERT_NE(it, bytes.begin() + 4096);
  const uint8_t bit = 12;
  blocktest::PatchBytes(path, static_cast<uint64_t>(it - bytes.begin()) - 1, std::span(&bit, 1));
  PatchBe64(path, 72, uint64_t{1} << 12);
  EXPECT_THAT(OpenError(path, kReadOnly), HasSubstr("incompatible feature(s): bit 12 (\"extended L2 entries\")"));
}

TEST(BlockQcow2CorruptTest, UnsupportedFeaturesAreRefused) {
  TempDir dir;
  EXPECT_THAT(OpenError(EmptyImage(dir, "ext.qcow2", "-o data_file=" + Quote(dir.File("data.raw"))), kReadOnly),
              HasSubstr("external data file, which Clone does not support"));
  EXPECT_THAT(OpenError(EmptyImage(dir, "l2.qcow2", "-o extended_l2=on"), kReadOnly),
              HasSubstr("extended L2 entries (subclusters), which Clone does not support"));
  EXPECT_THAT(OpenError(EmptyImage(dir, "zstd.qcow2", "-o compression_type=zstd"), kReadOnly),
              HasSubstr("zstd compression; Clone supports only zlib"));
}

TEST(BlockQcow2CorruptTest, DirtyCorruptAndSnapshottedImagesOpenOnlyReadOnly) {
  TempDir dir;
  const std::string dirty = EmptyImage(dir, "dirty.qcow2", "-o lazy_refcounts=on");
  PatchBe64(dirty, 72, qcow2::kIncompatDirty);
  EXPECT_THAT(OpenError(dirty), HasSubstr("not closed cleanly (dirty bit set"));
  EXPECT_THAT(OpenError(dirty), HasSubstr("qemu-img check -r all " + dirty));
  EXPECT_EQ(OpenError(dirty, kReadOnly), "<opened>");

  const std::string corrupt = EmptyImage(dir, "corrupt.qcow2");
  PatchBe64(corrupt, 72, qcow2::kIncompatCorrupt);
  EXPECT_THAT(OpenError(corrupt), HasSubstr("marked corrupt"));
  EXPECT_EQ(OpenError(corrupt, kReadOnly), "<opened>");

  const std::string snapshotted = DataImage(dir, false, "snap.qcow2");
  CLONE_QEMU_IMG_OK("snapshot -c first " + Quote(snapshotted));
  EXPECT_THAT(OpenError(snapshotted), HasSubstr("1 internal snapshot(s)"));
  auto ro = OpenImage(snapshotted, kReadOnly);
  ASSERT_TRUE(ro) << ro.error().message();
  std::vector<uint8_t> buf(kMiB);
  EXPECT_TRUE((*ro)->Read(0, buf));
  EXPECT_EQ(buf[12345], static_cast<uint8_t>(12345 * 7 + 12345 / 300));
}

TEST(BlockQcow2CorruptTest, BackingChainProblemsAreClearErrors) {
  TempDir dir;
  // a -> b -> a
  const std::string b = EmptyImage(dir, "b.qcow2");
  const std::string a = EmptyImage(dir, "a.qcow2", "-b b.qcow2 -F qcow2");
  CLONE_QEMU_IMG_OK("rebase -u -b a.qcow2 -F qcow2 " + Quote(b));
  EXPECT_THAT(OpenError(a), HasSubstr("backing file loop"));
  EXPECT_THAT(OpenError(a, kReadOnly), HasSubstr("backing file loop"));
  const std::string self = EmptyImage(dir, "self.qcow2");
  CLONE_QEMU_IMG_OK("rebase -u -b self.qcow2 -F qcow2 " + Quote(self));
  EXPECT_THAT(OpenError(self, kReadOnly), HasSubstr("backing file loop"));

  const std::string orphan = EmptyImage(dir, "orphan.qcow2", "-u -b missing.raw -F raw");
  const std::string error = OpenError(orphan, kReadOnly);
  EXPECT_THAT(error, HasSubstr("backing file \"missing.raw\""));
  EXPECT_THAT(error, HasSubstr("No such file or directory"));
  EXPECT_THAT(error, HasSubstr(dir.File("missing.raw")));

  const std::string odd_format = EmptyImage(dir, "vmdk.qcow2", "-u -b base.vmdk -F vmdk");
  EXPECT_THAT(OpenError(odd_format, kReadOnly), HasSubstr("unsupported image format \"vmdk\""));

  const std::string json = EmptyImage(dir, "json.qcow2", "-u -b 'json:{}' -F raw");
  EXPECT_THAT(OpenError(json, kReadOnly), HasSubstr("json: syntax"));

  // base <- c1 <- ... <- c17: c16 has 16 backing files and opens; c17 has 17 and does not.
  WriteBytes(dir.File("c0"), std::vector<uint8_t>(4096, 1));
  for (int i = 1; i <= kMaxBackingDepth + 1; ++i) {
    ASSERT_TRUE(Qcow2Create(dir.File(fmt::format("c{}", i)), 0, 65536, fmt::format("c{}", i - 1)));
  }
  auto deep = OpenImage(dir.File(fmt::format("c{}", kMaxBackingDepth)), kReadOnly);
  ASSERT_TRUE(deep) << deep.error().message();
  std::vector<uint8_t> byte(1);
  ASSERT_TRUE((*deep)->Read(4095, byte));
  EXPECT_EQ(byte[0], 1);
  EXPECT_THAT(OpenError(dir.File(fmt::format("c{}", kMaxBackingDepth + 1)), kReadOnly),
              HasSubstr("backing chain is deeper than 16 images"));

  const std::string long_name = EmptyImage(dir, "long.qcow2", "-u -b base.raw -F raw");
  PatchBe32(long_name, 16, 2000);
  EXPECT_THAT(OpenError(long_name, kReadOnly), HasSubstr("invalid backing file name length 2000"));
}

TEST(BlockQcow2CorruptTest, BadTableEntriesFailRequestsNotTheProcess) {
  TempDir dir;
  const std::string pristine = DataImage(dir);
  const std::vector<uint8_t> good = ReadBytes(pristine);
  const std::string path = dir.File("disk.qcow2");
  const uint64_t l1 = ReadBe64(pristine, 40);
  const uint64_t l2 = L2TableOffset(pristine);
  std::vector<uint8_t> buf(kMiB);

  WriteBytes(path, good);
  PatchBe64(path, l1, l2 | 1);  // reserved bit
  EXPECT_THAT(OpenError(path, kReadOnly), HasSubstr("L1 entry 0 is invalid: 0x"));
  WriteBytes(path, good);
  PatchBe64(path, l1, uint64_t{1} << 40);
  EXPECT_THAT(OpenError(path, kReadOnly), HasSubstr("L1 entry 0 points past the end of the file"));

  WriteBytes(path, good);
  PatchBe64(path, l2 + 8, ReadBe64(path, l2 + 8) | 2);  // reserved bit in cluster 1's entry
  {
    auto disk = OpenImage(path);
    ASSERT_TRUE(disk) << disk.error().message();
    auto r = (*disk)->Read(0, buf);
    ASSERT_FALSE(r);
    EXPECT_THAT(r.error().message(), HasSubstr("corrupt qcow2 image: invalid L2 entry"));
    EXPECT_THAT(r.error().message(), HasSubstr("guest offset 0x1000"));
    EXPECT_TRUE((*disk)->Read(8192, std::span(buf).first(4096)));
    EXPECT_FALSE((*disk)->Write(4096, std::span(buf).first(10)));
    EXPECT_FALSE((*disk)->WriteZeroes(0, 3 * 4096));
  }
  {
    // The failed requests changed nothing: cluster 0 still holds its data.
    auto disk = OpenImage(path, kReadOnly);
    ASSERT_TRUE(disk) << disk.error().message();
    ASSERT_TRUE((*disk)->Read(0, std::span(buf).first(4096)));
    EXPECT_EQ(buf[4000], static_cast<uint8_t>(4000 * 7 + 4000 / 300));
    EXPECT_EQ(ReadBytes(path).size(), good.size());
  }

  // Clusters mapped past the end of the file read as zeros; writing them in place is refused.
  WriteBytes(path, good);
  PatchBe64(path, l2 + 16, qcow2::kOflagCopied | (uint64_t{1} << 30));
  {
    auto disk = OpenImage(path);
    ASSERT_TRUE(disk) << disk.error().message();
    ASSERT_TRUE((*disk)->Read(8192, std::span(buf).first(4096)));
    EXPECT_EQ(buf[0], 0);
    auto w = (*disk)->Write(8192, std::span(buf).first(4096));
    ASSERT_FALSE(w);
    EXPECT_THAT(w.error().message(), HasSubstr("past the allocated area"));
  }
  EXPECT_LT(std::filesystem::file_size(path), 2 * kMiB);

  // A data cluster pointing at the L1 table: the write is refused and the table survives.
  WriteBytes(path, good);
  PatchBe64(path, l2 + 24, qcow2::kOflagCopied | l1);
  {
    auto disk = OpenImage(path);
    ASSERT_TRUE(disk) << disk.error().message();
    auto w = (*disk)->Write(3 * 4096, std::span(buf).first(100));
    ASSERT_FALSE(w);
    EXPECT_THAT(w.error().message(), HasSubstr("overlaps image metadata"));
  }
  EXPECT_EQ(ReadBe64(path, l1), ReadBe64(pristine, l1));

  // A refcount table entry that is misaligned: read-only opens (no refcounts needed) still work.
  WriteBytes(path, good);
  const uint64_t reftable = ReadBe64(path, 48);
  PatchBe64(path, reftable, ReadBe64(path, reftable) + 8);
  EXPECT_THAT(OpenError(path), HasSubstr("corrupt refcount table entry 0"));
  EXPECT_EQ(OpenError(path, kReadOnly), "<opened>");
}

TEST(BlockQcow2CorruptTest, GarbageCompressedDataIsAReadError) {
  TempDir dir;
  const std::string path = DataImage(dir, /*compressed=*/true);
  const uint64_t l2 = L2TableOffset(path);
  const uint64_t entry = ReadBe64(path, l2);
  ASSERT_TRUE(entry & qcow2::kOflagCompressed);
  const uint64_t host = entry & ((uint64_t{1} << (62 - (12 - 8))) - 1);
  blocktest::PatchBytes(path, host, Pattern(16, 3));
  auto disk = OpenImage(path);
  ASSERT_TRUE(disk) << disk.error().message();
  std::vector<uint8_t> buf(4096);
  auto r = (*disk)->Read(0, buf);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().message(), HasSubstr("corrupt compressed cluster"));
  EXPECT_TRUE((*disk)->Read(8192, buf));
  EXPECT_EQ(buf[0], 3);
  // Overwriting the whole cluster needs none of the old data.
  EXPECT_TRUE((*disk)->Write(0, buf));
}

// Random header bytes: ParseHeader must reject or accept them without reading out of bounds.
TEST(BlockQcow2CorruptTest, ParseHeaderSurvivesRandomBytes) {
  std::mt19937_64 rng(42);
  std::vector<uint8_t> bytes(4096);
  for (int i = 0; i < 4000; ++i) {
    for (auto& b : bytes) b = static_cast<uint8_t>(rng() % 4 == 0 ? rng() : 0);
    qcow2::StoreBe32(bytes.data(), qcow2::kMagic);
    qcow2::StoreBe32(bytes.data() + 4, 2 + static_cast<uint32_t>(rng() % 2));
    qcow2::StoreBe32(bytes.data() + 20, 9 + static_cast<uint32_t>(rng() % 4));
    const size_t length = rng() % bytes.size();
    (void)qcow2::ParseHeader(std::span(bytes).first(length), rng() % (1 << 20));
  }
}

// Flipped bytes in the metadata of an image with data and a backing file: every operation either
// works or fails with an Error. (Run under ASan to catch out-of-bounds accesses.)
TEST(BlockQcow2CorruptTest, RandomMetadataCorruptionNeverCrashes) {
  TempDir dir;
  WriteBytes(dir.File("base.raw"), Pattern(kMiB, 1));
  const std::string pristine = DataImage(dir, /*compressed=*/true);
  CLONE_QEMU_IMG_OK("rebase -u -b base.raw -F raw " + Quote(pristine));
  const std::vector<uint8_t> good = ReadBytes(pristine);
  const std::string path = dir.File("fuzzed.qcow2");
  std::mt19937_64 rng(7);
  std::vector<uint8_t> buf(kMiB);
  int opened = 0;
  for (int i = 0; i < 100; ++i) {
    std::vector<uint8_t> bytes = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      const size_t at = rng() % 4 == 0 ? rng() % bytes.size() : rng() % std::min<size_t>(bytes.size(), 0x6000);
      bytes[at] ^= static_cast<uint8_t>(1u << (rng() % 8));
    }
    WriteBytes(path, bytes);
    auto disk = OpenImage(path, OpenMode{.read_only = i % 3 == 0, .l2_cache_bytes = 8192});
    if (!disk) continue;
    ++opened;
    BlockBackend& d = **disk;
    (void)d.Read(0, std::span(buf).first(std::min<uint64_t>(buf.size(), d.size())));
    if (d.read_only() || d.size() < 3 * 4096) continue;
    const uint64_t off = rng() % (d.size() - 3 * 4096);
    (void)d.Write(off, std::span(buf).first(5000));
    (void)d.WriteZeroes(off / 2, 4096 * 3 + 7);
    (void)d.Discard(off / 3, 4096 * 5);
    (void)d.Read(0, std::span(buf).first(std::min<uint64_t>(buf.size(), d.size())));
    (void)d.Flush();
  }
  EXPECT_GT(opened, 10);
}

}  // namespace
}  // namespace clonevm

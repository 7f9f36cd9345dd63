#include "block/image.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "block/block_test_util.h"

namespace clonevm {
namespace {

using blocktest::Quote;
using blocktest::TempDir;
using blocktest::WriteBytes;
using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST(BlockOpenImageTest, ProbesQcow2ByMagicAndRawOtherwise) {
  TempDir dir;
  const std::string qcow = dir.File("disk.qcow2");
  const std::string raw = dir.File("disk.raw");
  CLONE_QEMU_IMG_OK("create -q -f qcow2 " + Quote(qcow) + " 1M");
  WriteBytes(raw, std::vector<uint8_t>(4096, 'Q'));
  EXPECT_EQ(ProbeFormat(qcow).value(), Format::kQcow2);
  EXPECT_EQ(ProbeFormat(raw).value(), Format::kRaw);
  auto q = OpenImage(qcow);
  ASSERT_TRUE(q) << q.error().message();
  EXPECT_THAT((*q)->Describe(), StartsWith("qcow2 v3 " + qcow + " (1 MiB, cluster 64 KiB, read-write)"));
  EXPECT_EQ((*q)->size(), 1u << 20);
  auto r = OpenImage(raw);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_THAT((*r)->Describe(), StartsWith("raw "));
  EXPECT_EQ((*r)->size(), 4096u);
}

TEST(BlockOpenImageTest, AnExplicitFormatOverridesProbing) {
  TempDir dir;
  const std::string qcow = dir.File("disk.qcow2");
  CLONE_QEMU_IMG_OK("create -q -f qcow2 " + Quote(qcow) + " 1M");
  auto as_raw = OpenImage(qcow, OpenMode{.read_only = true}, Format::kRaw);
  ASSERT_TRUE(as_raw) << as_raw.error().message();
  EXPECT_EQ((*as_raw)->size(), std::filesystem::file_size(qcow));
  std::vector<uint8_t> magic(4);
  ASSERT_TRUE((*as_raw)->Read(0, magic));
  EXPECT_EQ(magic, (std::vector<uint8_t>{'Q', 'F', 'I', 0xfb}));

  const std::string raw = dir.File("disk.raw");
  WriteBytes(raw, std::vector<uint8_t>(4096, 0));
  auto as_qcow = OpenImage(raw, OpenMode{}, Format::kQcow2);
  ASSERT_FALSE(as_qcow);
  EXPECT_THAT(as_qcow.error().message(), HasSubstr("bad magic"));
  EXPECT_THAT(as_qcow.error().message(), HasSubstr(raw));
}

TEST(BlockOpenImageTest, MissingUnreadableAndOddFilesAreClearErrors) {
  TempDir dir;
  auto missing = OpenImage(dir.File("nope.img"));
  ASSERT_FALSE(missing);
  EXPECT_THAT(missing.error().message(), HasSubstr("No such file or directory"));
  EXPECT_THAT(missing.error().message(), HasSubstr("nope.img"));

  auto directory = OpenImage(dir.path().string(), OpenMode{.read_only = true});
  ASSERT_FALSE(directory);
  EXPECT_THAT(directory.error().message(), HasSubstr("not a regular file or block device"));

  const std::string file = dir.File("file");
  WriteBytes(file, std::vector<uint8_t>(512, 0));
  auto under_file = OpenImage(file + "/child");
  ASSERT_FALSE(under_file);
  EXPECT_THAT(under_file.error().message(), HasSubstr("Not a directory"));

  if (::geteuid() != 0) {  // root reads anything; the check above covers that case
    ASSERT_EQ(::chmod(file.c_str(), 0), 0);
    auto unreadable = OpenImage(file);
    ASSERT_FALSE(unreadable);
    EXPECT_THAT(unreadable.error().message(), HasSubstr("Permission denied"));
  }
}

TEST(BlockOpenImageTest, TruncatedQcow2IsAnErrorAndEmptyFilesAreRaw) {
  TempDir dir;
  const std::string truncated = dir.File("truncated.qcow2");
  WriteBytes(truncated, std::vector<uint8_t>{'Q', 'F', 'I', 0xfb, 0, 0, 0, 3, 0, 0});
  auto t = OpenImage(truncated);
  ASSERT_FALSE(t);
  EXPECT_THAT(t.error().message(), HasSubstr("truncated qcow2 header"));
  EXPECT_THAT(t.error().message(), HasSubstr(truncated));

  const std::string empty = dir.File("empty.img");
  WriteBytes(empty, {});
  auto e = OpenImage(empty);
  ASSERT_TRUE(e) << e.error().message();
  EXPECT_EQ((*e)->size(), 0u);
}

TEST(BlockOpenImageTest, FormatNames) {
  EXPECT_EQ(ParseFormatName("raw").value(), Format::kRaw);
  EXPECT_EQ(ParseFormatName("qcow2").value(), Format::kQcow2);
  auto vmdk = ParseFormatName("vmdk");
  ASSERT_FALSE(vmdk);
  EXPECT_THAT(vmdk.error().message(), HasSubstr("unsupported image format \"vmdk\""));
  EXPECT_EQ(FormatName(Format::kQcow2), "qcow2");
}

TEST(BlockQemuImgTest, IsInstalled) { EXPECT_TRUE(blocktest::HaveQemuImg()) << blocktest::kQemuImgMissing; }

}  // namespace
}  // namespace clonevm

// Disks in snapshots without KVM: path rewrites, the config's disk records, sparse copies, and
// freeze + restore on real raw and qcow2 images in a temporary directory — two restores of one
// snapshot write their own overlays, never the frozen base; missing, changed or corrupt bases and
// an unusable overlay directory are clear errors that leave nothing behind.
#include "snapshot/disks.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "block/block_test_util.h"
#include "block/qcow2.h"

namespace clonevm::snapshot {
namespace {

namespace fs = std::filesystem;
using blocktest::Pattern;
using blocktest::ReadBytes;
using blocktest::TempDir;

constexpr uint64_t kMiB = 1 << 20;
constexpr int64_t kFrozenMtime = 1'700'000'000'123'456'789;

// --- Path rewrites ---

TEST(PathRewriteTest, ParsesAbsolutePairsAndNormalizes) {
  auto r = ParsePathRewrite("/old/images=/new/place");
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->from, "/old/images");
  EXPECT_EQ(r->to, "/new/place");
  r = ParsePathRewrite("/old/images///=/new/./x/../place/");
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(*r, (PathRewrite{"/old/images", "/new/place"}));
  r = ParsePathRewrite("/=/mnt/root");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->from, "/");
  r = ParsePathRewrite("/a=b=/c");  // the first '=' separates: TO is "b=/c", relative
  EXPECT_FALSE(r);
}

TEST(PathRewriteTest, RefusesRelativeAndMalformed) {
  for (const char* bad : {"images=/new", "/old=new", "/old=", "=/new", "/old", "", "./a=/b"}) {
    auto r = ParsePathRewrite(bad);
    EXPECT_FALSE(r) << bad;
  }
  auto r = ParsePathRewrite("rel=/abs");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("must be an absolute path"), std::string::npos) << r.error().message();
  std::vector<std::string> twice = {"/a=/b", "/a/=/c"};
  EXPECT_FALSE(ParsePathRewrites(twice));
}

TEST(PathRewriteTest, ExactAndDirectoryPrefixOnComponentBoundaries) {
  std::vector<PathRewrite> rw = {{"/a/b", "/x"}, {"/a/b/c", "/y/z"}, {"/data/disk.img", "/srv/disk.img"}};
  EXPECT_EQ(RewritePath("/a/b", rw), "/x");              // exact
  EXPECT_EQ(RewritePath("/a/b/d.raw", rw), "/x/d.raw");  // prefix
  EXPECT_EQ(RewritePath("/a/b/c", rw), "/y/z");          // the longest FROM wins
  EXPECT_EQ(RewritePath("/a/b/c/d", rw), "/y/z/d");
  EXPECT_EQ(RewritePath("/a/bc", rw), "/a/bc");  // not a component boundary
  EXPECT_EQ(RewritePath("/a/b.raw", rw), "/a/b.raw");
  EXPECT_EQ(RewritePath("/a", rw), "/a");
  EXPECT_EQ(RewritePath("/data/disk.img", rw), "/srv/disk.img");
  EXPECT_EQ(RewritePath("/data/disk.img2", rw), "/data/disk.img2");
  EXPECT_EQ(RewritePath("/other", {}), "/other");
  std::vector<PathRewrite> root = {{"/", "/mnt/old"}};
  EXPECT_EQ(RewritePath("/a/b", root), "/mnt/old/a/b");
  std::vector<PathRewrite> to_root = {{"/mnt/old", "/"}};
  EXPECT_EQ(RewritePath("/mnt/old/a", to_root), "/a");
  EXPECT_EQ(RewritePath("/mnt/old", to_root), "/");
}

// --- The config's disk records ---

SnapshotConfig ConfigWithDisks() {
  SnapshotConfig c;
  c.mem_bytes = 64 * kMiB;
  c.vcpus = 1;
  c.virtio_types = {2, 2};
  c.disks.push_back({"/images/base.qcow2", true, Format::kQcow2, "clone-rootfs", {123, -5, 77}, {}});
  c.disks.push_back({"disk1.qcow2",
                     false,
                     Format::kQcow2,
                     "clone-disk1",
                     {65536, kFrozenMtime, 0},
                     {{"/tpl/a/disk0.raw", {1 << 20, 42, 9}}}});
  return c;
}

TEST(SnapshotDiskConfigTest, RoundTrips) {
  SnapshotConfig c = ConfigWithDisks();
  auto back = ConfigFromJson(ConfigToJson(c));
  ASSERT_TRUE(back) << back.error().message();
  ASSERT_EQ(back->disks.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(back->disks[i].path, c.disks[i].path);
    EXPECT_EQ(back->disks[i].read_only, c.disks[i].read_only);
    EXPECT_EQ(back->disks[i].format, c.disks[i].format);
    EXPECT_EQ(back->disks[i].serial, c.disks[i].serial);
    EXPECT_EQ(back->disks[i].stamp, c.disks[i].stamp);
    ASSERT_EQ(back->disks[i].backing.size(), c.disks[i].backing.size());
  }
  EXPECT_EQ(back->disks[1].backing[0].path, "/tpl/a/disk0.raw");
  EXPECT_EQ(back->disks[1].backing[0].stamp, (FileStamp{1 << 20, 42, 9}));
}

TEST(SnapshotDiskConfigTest, RefusesPathsOutsideTheSnapshotAndBadFields) {
  auto refused = [](auto mutate) {
    nlohmann::json j = ConfigToJson(ConfigWithDisks());
    mutate(j);
    return !ConfigFromJson(j);
  };
  EXPECT_FALSE(refused([](nlohmann::json&) {}));
  EXPECT_TRUE(refused([](nlohmann::json& j) { j["disks"][1]["path"] = "../other/disk.raw"; }));
  EXPECT_TRUE(refused([](nlohmann::json& j) { j["disks"][1]["path"] = ".."; }));
  EXPECT_TRUE(refused([](nlohmann::json& j) { j["disks"][1]["path"] = "/etc/shadow"; }));
  EXPECT_TRUE(refused([](nlohmann::json& j) { j["disks"][1]["path"] = ""; }));
  EXPECT_TRUE(refused([](nlohmann::json& j) { j["disks"][0]["path"] = "relative.img"; }));
  EXPECT_TRUE(refused([](nlohmann::json& j) { j["disks"][0]["format"] = "vmdk"; }));
  EXPECT_TRUE(refused([](nlohmann::json& j) { j["disks"][0].erase("format"); }));
  EXPECT_TRUE(refused([](nlohmann::json& j) { j["disks"][0].erase("stamp"); }));
  EXPECT_TRUE(refused([](nlohmann::json& j) { j["disks"][0]["stamp"]["size"] = -1; }));
  EXPECT_TRUE(refused([](nlohmann::json& j) { j["disks"][1]["backing"][0]["path"] = "rel.raw"; }));
  EXPECT_TRUE(refused([](nlohmann::json& j) { j["disks"][1]["format"] = "raw"; }));  // raw with a backing chain
}

// --- Files ---

void WriteFile(const std::string& path, uint64_t size,
               const std::vector<std::pair<uint64_t, std::vector<uint8_t>>>& data) {
  blocktest::WriteBytes(path, {});
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(size)), 0);
  for (const auto& [offset, bytes] : data) blocktest::PatchBytes(path, offset, bytes);
}

TEST(CopySparseTest, CopiesDataAndKeepsHoles) {
  TempDir dir;
  ASSERT_TRUE(dir.ok());
  std::string from = dir.File("sparse.raw"), to = dir.File("copy.raw");
  WriteFile(from, 64 * kMiB,
            {{0, Pattern(8192, 1)}, {40 * kMiB, Pattern(100000, 2)}, {64 * kMiB - 4096, Pattern(4096, 3)}});
  auto copied = CopySparse(from, to);
  ASSERT_TRUE(copied) << copied.error().message();
  EXPECT_EQ(ReadBytes(to), ReadBytes(from));
  EXPECT_LT(blocktest::AllocatedBytes(to), 8 * kMiB) << "holes were filled";
  EXPECT_FALSE(CopySparse(from, to)) << "an existing target must be refused";
  EXPECT_FALSE(CopySparse(dir.File("missing"), dir.File("never")));
  EXPECT_FALSE(fs::exists(dir.File("never")));
}

// --- Freeze and restore ---

class DiskSnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    fs::create_directories(Path("images"));
    fs::create_directories(Path("snap"));
    fs::create_directories(Path("vm1"));
    fs::create_directories(Path("vm2"));
  }
  std::string Path(const std::string& name) const { return dir_.File(name); }

  // disk0: writable raw; disk1: read-only raw; disk2: writable qcow2 (written through Clone).
  std::vector<DiskImage> MakeImages() {
    WriteFile(Path("images/data.raw"), 4 * kMiB, {{0, Pattern(4096, 10)}, {3 * kMiB, Pattern(65536, 11)}});
    WriteFile(Path("images/ro.raw"), 2 * kMiB, {{kMiB, Pattern(4096, 12)}});
    EXPECT_TRUE(Qcow2Create(Path("images/data.qcow2"), 8 * kMiB));
    auto q = OpenImage(Path("images/data.qcow2"), {}, Format::kQcow2);
    EXPECT_TRUE(q);
    EXPECT_TRUE((*q)->Write(5 * kMiB, Pattern(70000, 13)));
    EXPECT_TRUE((*q)->Flush());
    return {{Path("images/data.raw"), false, Format::kRaw, "clone-disk0"},
            {Path("images/ro.raw"), true, Format::kRaw, "clone-disk1"},
            {Path("images/data.qcow2"), false, Format::kQcow2, "clone-disk2"}};
  }

  // Takes the disks into snap/ and returns the config.
  SnapshotConfig Freeze(const std::vector<DiskImage>& images) {
    SnapshotConfig c;
    auto described = DescribeDisks(images, kFrozenMtime);
    EXPECT_TRUE(described) << described.error().message();
    if (!described) return c;
    c.disks = *described;
    auto copied = FreezeDisks(images, c.disks, Path("snap"));
    EXPECT_TRUE(copied) << copied.error().message();
    return c;
  }

  static std::vector<uint8_t> ReadDisk(BlockBackend& disk, uint64_t offset, size_t n) {
    std::vector<uint8_t> out(n);
    EXPECT_TRUE(disk.Read(offset, out));
    return out;
  }

  bool Empty(const std::string& name) const { return fs::is_empty(Path(name)); }

  TempDir dir_;
};

TEST_F(DiskSnapshotTest, FrozenCopiesAndRecords) {
  SnapshotConfig c = Freeze(MakeImages());
  ASSERT_EQ(c.disks.size(), 3u);
  EXPECT_EQ(c.disks[0].path, "disk0.raw");
  EXPECT_FALSE(c.disks[0].read_only);
  EXPECT_EQ(c.disks[0].stamp.size, 4 * kMiB);
  EXPECT_EQ(c.disks[0].stamp.mtime_ns, kFrozenMtime);
  EXPECT_EQ(c.disks[1].path, Path("images/ro.raw"));
  EXPECT_TRUE(c.disks[1].read_only);
  EXPECT_NE(c.disks[1].stamp.inode, 0u);
  EXPECT_EQ(c.disks[2].path, "disk2.qcow2");
  EXPECT_EQ(c.disks[2].format, Format::kQcow2);
  EXPECT_TRUE(c.disks[2].backing.empty());
  EXPECT_EQ(ReadBytes(Path("snap/disk0.raw")), ReadBytes(Path("images/data.raw")));
  EXPECT_EQ(ReadBytes(Path("snap/disk2.qcow2")), ReadBytes(Path("images/data.qcow2")));
  EXPECT_FALSE(fs::exists(Path("snap/disk1.raw"))) << "read-only disks are referenced, not copied";
  blocktest::ExpectCheckClean(Path("snap/disk2.qcow2"));
  struct stat st {};
  ASSERT_EQ(::stat(Path("snap/disk0.raw").c_str(), &st), 0);
  EXPECT_EQ(st.st_mtim.tv_sec * 1'000'000'000 + st.st_mtim.tv_nsec, kFrozenMtime);
}

TEST_F(DiskSnapshotTest, TwoRestoresWriteOnlyTheirOwnOverlays) {
  SnapshotConfig c = Freeze(MakeImages());
  std::vector<uint8_t> base0 = ReadBytes(Path("snap/disk0.raw"));
  std::vector<uint8_t> base2 = ReadBytes(Path("snap/disk2.qcow2"));
  auto vm1 = OpenDisks(c, Path("snap"), {Path("vm1"), {}});
  ASSERT_TRUE(vm1) << vm1.error().message();
  auto vm2 = OpenDisks(c, Path("snap"), {Path("vm2"), {}});
  ASSERT_TRUE(vm2) << vm2.error().message() << " (two restores at once must not conflict on locks)";
  ASSERT_EQ(vm1->size(), 3u);
  EXPECT_EQ((*vm1)[0].image.path, Path("vm1/disk0.qcow2"));
  EXPECT_EQ((*vm1)[0].image.format, Format::kQcow2);
  EXPECT_FALSE((*vm1)[0].image.read_only);
  EXPECT_EQ((*vm1)[1].image.path, Path("images/ro.raw"));
  EXPECT_TRUE((*vm1)[1].backend->read_only());
  EXPECT_EQ((*vm1)[2].image.serial, "clone-disk2");
  // Both see the snapshot's data.
  for (auto* vm : {&*vm1, &*vm2}) {
    EXPECT_EQ(ReadDisk(*(*vm)[0].backend, 0, 4096), Pattern(4096, 10));
    EXPECT_EQ(ReadDisk(*(*vm)[0].backend, 3 * kMiB, 65536), Pattern(65536, 11));
    EXPECT_EQ(ReadDisk(*(*vm)[1].backend, kMiB, 4096), Pattern(4096, 12));
    EXPECT_EQ(ReadDisk(*(*vm)[2].backend, 5 * kMiB, 70000), Pattern(70000, 13));
    EXPECT_EQ((*vm)[0].backend->size(), 4 * kMiB);
    EXPECT_EQ((*vm)[2].backend->size(), 8 * kMiB);
  }
  // Each writes its own data; neither sees the other's.
  ASSERT_TRUE((*vm1)[0].backend->Write(0, Pattern(4096, 21)));
  ASSERT_TRUE((*vm2)[0].backend->Write(0, Pattern(4096, 22)));
  ASSERT_TRUE((*vm1)[2].backend->Write(5 * kMiB, Pattern(512, 23)));
  EXPECT_EQ(ReadDisk(*(*vm1)[0].backend, 0, 4096), Pattern(4096, 21));
  EXPECT_EQ(ReadDisk(*(*vm2)[0].backend, 0, 4096), Pattern(4096, 22));
  std::vector<uint8_t> original = Pattern(70000, 13);
  original.resize(512);
  EXPECT_EQ(ReadDisk(*(*vm2)[2].backend, 5 * kMiB, 512), original);
  EXPECT_FALSE((*vm1)[1].backend->Write(0, Pattern(512, 24))) << "a read-only disk stays read-only";
  for (auto* vm : {&*vm1, &*vm2}) {
    for (auto& d : *vm) ASSERT_TRUE(d.backend->Flush());
  }
  vm1->clear();
  vm2->clear();
  // The frozen bases never change; the overlays are valid qcow2 on them.
  EXPECT_EQ(ReadBytes(Path("snap/disk0.raw")), base0);
  EXPECT_EQ(ReadBytes(Path("snap/disk2.qcow2")), base2);
  EXPECT_TRUE(CheckDisks(c, Path("snap"), {})) << "restoring must not change what the next restore checks";
  blocktest::ExpectCheckClean(Path("vm1/disk0.qcow2"));
  blocktest::ExpectCheckClean(Path("vm2/disk2.qcow2"));
  auto info = blocktest::QemuImg("info " + blocktest::Quote(Path("vm1/disk0.qcow2")));
  EXPECT_NE(info.output.find("backing file format: raw"), std::string::npos) << info.output;
}

TEST_F(DiskSnapshotTest, MissingOrChangedBasesAreRefusedAndNothingIsCreated) {
  SnapshotConfig c = Freeze(MakeImages());
  // Missing frozen base.
  fs::rename(Path("snap/disk0.raw"), Path("moved.raw"));
  auto r = OpenDisks(c, Path("snap"), {Path("vm1"), {}});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("frozen base of disk 0"), std::string::npos) << r.error().message();
  EXPECT_NE(r.error().message().find("is missing"), std::string::npos) << r.error().message();
  EXPECT_TRUE(Empty("vm1"));
  fs::rename(Path("moved.raw"), Path("snap/disk0.raw"));
  ASSERT_TRUE(CheckDisks(c, Path("snap"), {}));
  // A read-only disk that changed (size), then one whose mtime changed.
  std::vector<uint8_t> ro = ReadBytes(Path("images/ro.raw"));
  blocktest::WriteBytes(Path("images/ro.raw"), Pattern(4096, 1));
  r = OpenDisks(c, Path("snap"), {Path("vm1"), {}});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("read-only disk 1"), std::string::npos) << r.error().message();
  EXPECT_NE(r.error().message().find("changed since the snapshot"), std::string::npos) << r.error().message();
  EXPECT_TRUE(Empty("vm1"));
  // A frozen base written in place (same size, new mtime).
  blocktest::PatchBytes(Path("snap/disk2.qcow2"), 4 * kMiB, Pattern(16, 5));
  EXPECT_FALSE(CheckDisks(c, Path("snap"), {}));
}

TEST_F(DiskSnapshotTest, CorruptBaseOrBadOverlayDirLeavesNothing) {
  SnapshotConfig c = Freeze(MakeImages());
  // The qcow2 base corrupted behind the stamps' back (size and mtime kept).
  blocktest::PatchBe32(Path("snap/disk2.qcow2"), 20, 40);  // cluster_bits = 40
  timespec times[2] = {{kFrozenMtime / 1'000'000'000, kFrozenMtime % 1'000'000'000},
                       {kFrozenMtime / 1'000'000'000, kFrozenMtime % 1'000'000'000}};
  ASSERT_EQ(::utimensat(AT_FDCWD, Path("snap/disk2.qcow2").c_str(), times, 0), 0);
  ASSERT_TRUE(CheckDisks(c, Path("snap"), {}));
  auto r = OpenDisks(c, Path("snap"), {Path("vm1"), {}});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("disk 2"), std::string::npos) << r.error().message();
  EXPECT_TRUE(Empty("vm1")) << "the overlay made for disk 0 must be removed";
  // An overlay directory that does not exist.
  SnapshotConfig good = c;
  good.disks.pop_back();
  r = OpenDisks(good, Path("snap"), {Path("nosuch"), {}});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("cannot create its overlay"), std::string::npos) << r.error().message();
  EXPECT_FALSE(fs::exists(Path("nosuch")));
}

TEST_F(DiskSnapshotTest, RewritesMoveTheTemplateAndItsReadOnlyDisks) {
  SnapshotConfig c = Freeze(MakeImages());
  fs::rename(Path("snap"), Path("moved-snap"));
  fs::create_directories(Path("elsewhere"));
  fs::copy_file(Path("images/ro.raw"), Path("elsewhere/ro.raw"));
  struct stat st {};
  ASSERT_EQ(::stat(Path("images/ro.raw").c_str(), &st), 0);
  timespec times[2] = {st.st_atim, st.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, Path("elsewhere/ro.raw").c_str(), times, 0), 0);  // as cp -a does
  std::vector<PathRewrite> rewrites = {{Path("snap"), Path("moved-snap")}, {Path("images"), Path("elsewhere")}};
  EXPECT_FALSE(CheckDisks(c, Path("snap"), {}));
  auto r = OpenDisks(c, Path("snap"), {Path("vm1"), rewrites});
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ((*r)[1].image.path, Path("elsewhere/ro.raw"));
  EXPECT_EQ(ReadDisk(*(*r)[0].backend, 0, 4096), Pattern(4096, 10));
}

TEST_F(DiskSnapshotTest, BackingChainsKeptByAbsolutePathRelativeRefused) {
  SnapshotConfig first = Freeze(MakeImages());
  // A restored VM's disk (an overlay on a frozen base) snapshotted again: top copied, chain kept.
  auto vm1 = OpenDisks(first, Path("snap"), {Path("vm1"), {}});
  ASSERT_TRUE(vm1) << vm1.error().message();
  ASSERT_TRUE((*vm1)[0].backend->Write(8192, Pattern(4096, 31)));
  ASSERT_TRUE((*vm1)[0].backend->Flush());
  std::vector<DiskImage> images = {(*vm1)[0].image};
  fs::create_directories(Path("snap2"));
  auto described = DescribeDisks(images, kFrozenMtime);
  ASSERT_TRUE(described) << described.error().message();
  ASSERT_EQ((*described)[0].backing.size(), 1u);
  EXPECT_EQ((*described)[0].backing[0].path, Path("snap/disk0.raw"));
  ASSERT_TRUE(FreezeDisks(images, *described, Path("snap2")));
  vm1->clear();
  SnapshotConfig second;
  second.disks = *described;
  auto vm2 = OpenDisks(second, Path("snap2"), {Path("vm2"), {}});
  ASSERT_TRUE(vm2) << vm2.error().message();
  EXPECT_EQ(ReadDisk(*(*vm2)[0].backend, 8192, 4096), Pattern(4096, 31));
  EXPECT_EQ(ReadDisk(*(*vm2)[0].backend, 0, 4096), Pattern(4096, 10));
  vm2->clear();
  fs::remove_all(Path("vm2"));
  fs::create_directories(Path("vm2"));
  // The chain's base changes: refused.
  ::truncate(Path("snap/disk0.raw").c_str(), static_cast<off_t>(8 * kMiB));
  auto r = OpenDisks(second, Path("snap2"), {Path("vm2"), {}});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("backing file of disk 0"), std::string::npos) << r.error().message();
  EXPECT_TRUE(Empty("vm2"));
  // A writable qcow2 whose backing name is relative cannot be frozen.
  ASSERT_TRUE(Qcow2Create(Path("images/top.qcow2"), 0, 65536, "data.raw"));
  std::vector<DiskImage> relative = {{Path("images/top.qcow2"), false, Format::kQcow2, "s"}};
  auto refused = DescribeDisks(relative, kFrozenMtime);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message().find("relative"), std::string::npos) << refused.error().message();
}

TEST_F(DiskSnapshotTest, WritableBlockDevicesAreRefused) {
  std::vector<DiskImage> dev = {{"/dev/null", false, Format::kRaw, "s"}};
  auto r = DescribeDisks(dev, kFrozenMtime);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("not a regular file"), std::string::npos) << r.error().message();
}

}  // namespace
}  // namespace clonevm::snapshot

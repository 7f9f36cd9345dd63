#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "base/bytes.h"
#include "base/testing/host_tools.h"
#include "image/cpio.h"
#include "image/rootfs_initrd.h"

namespace clonevm {
namespace {

using host_tools::RunCommand;
using host_tools::TempDir;

void WriteText(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

TEST(CpioWriterTest, TheRealCpioToolListsAndExtractsTheArchive) {
  TempDir dir("clone-image");
  ASSERT_TRUE(dir.ok());
  CpioWriter cpio;
  cpio.Directory("bin");
  cpio.File("bin/hello", std::string("hi there\n"), 0755);
  cpio.Symlink("bin/hi", "hello");
  cpio.CharDevice("console", 5, 1);
  auto archive = cpio.Finish();
  std::ofstream(dir.File("a.cpio"), std::ios::binary)
      .write(reinterpret_cast<const char*>(archive.data()), archive.size());
  auto list = RunCommand("cd " + dir.path().string() + " && cpio -itv < a.cpio");
  ASSERT_EQ(list.exit_code, 0) << list.output;
  EXPECT_NE(list.output.find("bin/hello"), std::string::npos) << list.output;
  EXPECT_NE(list.output.find("bin/hi -> hello"), std::string::npos) << list.output;
  EXPECT_NE(list.output.find("5,   1"), std::string::npos) << list.output;
  auto extract = RunCommand("cd " + dir.path().string() +
                            " && mkdir x && cd x && cpio -id --no-absolute-filenames "
                            "--quiet < ../a.cpio 2>&1; cat bin/hello");
  EXPECT_NE(extract.output.find("hi there"), std::string::npos) << extract.output;
}

TEST(KernelReleaseTest, ReadsTheBzImageHeaderAndTheElfBanner) {
  std::vector<uint8_t> bz(0x400, 0);
  std::memcpy(bz.data() + 0x202, "HdrS", 4);
  uint16_t off = 0x100;  // string at 0x200 + 0x100
  std::memcpy(bz.data() + 0x20e, &off, 2);
  const char version[] = "6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP";
  std::memcpy(bz.data() + 0x300, version, sizeof(version));
  auto r = KernelRelease(bz);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(*r, "6.1.0-56-cloud-amd64");
  std::string elf = std::string(
                        "\x7f"
                        "ELF....") +
                    "Linux version 6.1.0-56-amd64 (gcc) #1";
  auto e = KernelRelease(AsBytes(elf));
  ASSERT_TRUE(e);
  EXPECT_EQ(*e, "6.1.0-56-amd64");
  std::vector<uint8_t> junk(100, 'x');
  EXPECT_FALSE(KernelRelease(junk));
}

class ModulesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    WriteText(
        dir_.File("modules.dep"),
        "kernel/drivers/virtio/virtio_ring.ko:\n"
        "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/fs/overlayfs/overlay.ko:\n");
    WriteText(dir_.File("modules.builtin"), "kernel/fs/ext4/ext4.ko\nkernel/crypto/crc32c_generic.ko\n");
  }
  TempDir dir_{"clone-modules"};
};

TEST_F(ModulesTest, DependenciesFirstEachOnceBuiltinsSkipped) {
  auto order = ResolveModules(dir_.path().string(), kRootfsModules);
  ASSERT_TRUE(order) << order.error().message();
  EXPECT_EQ(*order, (std::vector<std::string>{"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
                                              "kernel/drivers/virtio/virtio_mmio.ko",
                                              "kernel/drivers/block/virtio_blk.ko", "kernel/fs/overlayfs/overlay.ko"}));
}

TEST_F(ModulesTest, UnknownModulesAndMissingDirectoriesAreErrors) {
  const char* names[] = {"nosuchmod"};
  auto r = ResolveModules(dir_.path().string(), names);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("nosuchmod not found"), std::string::npos);
  auto missing = ResolveModules("/nonexistent/modules", kRootfsModules);
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message().find("/nonexistent/modules/modules.dep"), std::string::npos);
}

TEST_F(ModulesTest, BuildsAnInitrdWithBusyboxInitAndModulesInOrder) {
  for (const char* m : {"drivers/virtio/virtio_ring.ko", "drivers/virtio/virtio.ko", "drivers/virtio/virtio_mmio.ko",
                        "drivers/block/virtio_blk.ko", "fs/overlayfs/overlay.ko"}) {
    std::string path = dir_.File(std::string("kernel/") + m);
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    WriteText(path, std::string("module ") + m);
  }
  auto initrd = BuildRootfsInitrd(dir_.path().string());
  ASSERT_TRUE(initrd) << initrd.error().message();
  std::ofstream(dir_.File("i.cpio"), std::ios::binary)
      .write(reinterpret_cast<const char*>(initrd->data()), initrd->size());
  auto list = RunCommand("cpio -it < " + dir_.File("i.cpio"));
  ASSERT_EQ(list.exit_code, 0) << list.output;
  for (const char* want : {"init", "bin/busybox", "bin/switch_root", "bin/chroot", "dev/console", "modules/order",
                           "modules/00-virtio_ring.ko", "modules/03-virtio_blk.ko"}) {
    EXPECT_NE(list.output.find(want), std::string::npos) << want << "\n" << list.output;
  }
}

TEST_F(ModulesTest, OptionalModulesAreAddedWhenPresentAndSkippedWhenNot) {
  std::ofstream(dir_.File("modules.dep"), std::ios::app)
      << "kernel/net/vmw_vsock/vsock.ko:\n"
         "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko\n"
         "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: "
         "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/drivers/virtio/virtio.ko "
         "kernel/drivers/virtio/virtio_ring.ko kernel/net/vmw_vsock/vsock.ko\n";
  auto order = ResolveModules(dir_.path().string(), kOptionalRootfsModules, MissingModule::kSkip);
  ASSERT_TRUE(order) << order.error().message();
  // virtio_net, failover and net_failover are not in this modules.dep: skipped.
  EXPECT_EQ(*order, (std::vector<std::string>{"kernel/net/vmw_vsock/vsock.ko",
                                              "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
                                              "kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
                                              "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko"}));
  EXPECT_FALSE(ResolveModules(dir_.path().string(), kOptionalRootfsModules, MissingModule::kFail));
}

class InitrdCacheTest : public ModulesTest {
 protected:
  void SetUp() override {
    ModulesTest::SetUp();
    for (const char* m : {"drivers/virtio/virtio_ring.ko", "drivers/virtio/virtio.ko", "drivers/virtio/virtio_mmio.ko",
                          "drivers/block/virtio_blk.ko", "fs/overlayfs/overlay.ko"}) {
      std::string path = dir_.File(std::string("kernel/") + m);
      std::filesystem::create_directories(std::filesystem::path(path).parent_path());
      WriteText(path, std::string("module ") + m);
    }
    cache_ = dir_.File("cache/clone/initrd");
  }
  std::string modules() const { return dir_.path().string(); }
  std::string cache_;
};

TEST_F(InitrdCacheTest, MissThenHitWithTheSameBytes) {
  auto first = CachedRootfsInitrd(modules(), cache_);
  ASSERT_TRUE(first) << first.error().message();
  EXPECT_FALSE(first->hit);
  ASSERT_TRUE(std::filesystem::exists(first->path)) << first->path;
  auto built = BuildRootfsInitrd(modules());
  ASSERT_TRUE(built);
  EXPECT_EQ(first->bytes, *built);
  auto second = CachedRootfsInitrd(modules(), cache_);
  ASSERT_TRUE(second) << second.error().message();
  EXPECT_TRUE(second->hit);
  EXPECT_EQ(second->path, first->path);
  EXPECT_EQ(second->bytes, first->bytes);
  // No temporary files are left behind.
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(cache_)) files += e.path().extension() == ".cpio" ? 1 : 100;
  EXPECT_EQ(files, 1u);
}

TEST_F(InitrdCacheTest, ARerunDepmodOrAnotherBusyboxChangesTheKey) {
  auto key = RootfsInitrdKey(modules());
  ASSERT_TRUE(key) << key.error().message();
  EXPECT_EQ(key->size(), 64u);
  EXPECT_EQ(*RootfsInitrdKey(modules() + "/."), *key);  // the canonical path counts
  struct timespec times[2] = {{0, UTIME_OMIT}, {12345, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, dir_.File("modules.dep").c_str(), times, 0), 0);
  auto after_depmod = RootfsInitrdKey(modules());
  ASSERT_TRUE(after_depmod);
  EXPECT_NE(*after_depmod, *key);
  std::string busybox = dir_.File("busybox");
  std::filesystem::copy_file("/bin/busybox", busybox);
  ::setenv("CLONE_BUSYBOX", busybox.c_str(), 1);
  auto other_busybox = RootfsInitrdKey(modules());
  ::unsetenv("CLONE_BUSYBOX");
  ASSERT_TRUE(other_busybox);
  EXPECT_NE(*other_busybox, *after_depmod);
  EXPECT_FALSE(RootfsInitrdKey("/nonexistent/modules"));
}

TEST_F(InitrdCacheTest, ACorruptEntryIsRebuiltAndOldEntriesArePruned) {
  std::filesystem::create_directories(cache_);
  for (int i = 0; i < 12; ++i) {
    std::string old = cache_ + "/old" + std::to_string(i) + ".cpio";
    WriteText(old, "x");
    struct timespec times[2] = {{1000 + i, 0}, {1000 + i, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, old.c_str(), times, 0), 0);
  }
  auto key = RootfsInitrdKey(modules());
  ASSERT_TRUE(key);
  WriteText(cache_ + "/" + *key + ".cpio", "070701 truncated");
  auto result = CachedRootfsInitrd(modules(), cache_);
  ASSERT_TRUE(result) << result.error().message();
  EXPECT_FALSE(result->hit);
  EXPECT_EQ(result->bytes, *BuildRootfsInitrd(modules()));
  std::vector<std::string> left;
  for (const auto& e : std::filesystem::directory_iterator(cache_)) left.push_back(e.path().filename().string());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left.size(), kInitrdCacheEntries);
  EXPECT_NE(std::find(left.begin(), left.end(), *key + ".cpio"), left.end());
  EXPECT_NE(std::find(left.begin(), left.end(), "old11.cpio"), left.end());  // the newest old ones stay
  EXPECT_EQ(std::find(left.begin(), left.end(), "old0.cpio"), left.end());
}

TEST_F(InitrdCacheTest, AnUnusableCacheStillGivesTheInitrd) {
  WriteText(dir_.File("cache"), "a file where the cache directory should be");
  auto result = CachedRootfsInitrd(modules(), cache_);
  ASSERT_TRUE(result) << result.error().message();
  EXPECT_FALSE(result->hit);
  EXPECT_EQ(result->bytes, *BuildRootfsInitrd(modules()));
  auto uncached = CachedRootfsInitrd(modules(), "");
  ASSERT_TRUE(uncached);
  EXPECT_EQ(uncached->bytes, result->bytes);
}

TEST(RootfsCmdlineTest, NamesTheMode) {
  EXPECT_EQ(RootfsCmdline(RootMode::kReadWrite), "clone.root=rw");
  EXPECT_EQ(RootfsCmdline(RootMode::kOverlayTmpfs), "clone.root=overlay");
  EXPECT_EQ(RootfsCmdline(RootMode::kOverlayDisk), "clone.root=overlay-disk");
}

}  // namespace
}  // namespace clonevm

#include <gtest/gtest.h>

#include <fstream>

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
  std::ofstream(dir.File("a.cpio"), std::ios::binary).write(reinterpret_cast<const char*>(archive.data()), archive.size());
  auto list = RunCommand("cd " + dir.path().string() + " && cpio -itv < a.cpio");
  ASSERT_EQ(list.exit_code, 0) << list.output;
  EXPECT_NE(list.output.find("bin/hello"), std::string::npos) << list.output;
  EXPECT_NE(list.output.find("bin/hi -> hello"), std::string::npos) << list.output;
  EXPECT_NE(list.output.find("5,   1"), std::string::npos) << list.output;
  auto extract = RunCommand("cd " + dir.path().string() + " && mkdir x && cd x && cpio -id --no-absolute-filenames "
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
  std::string elf = std::string("\x7f" "ELF....") + "Linux version 6.1.0-56-amd64 (gcc) #1";
  auto e = KernelRelease(std::span(reinterpret_cast<const uint8_t*>(elf.data()), elf.size()));
  ASSERT_TRUE(e);
  EXPECT_EQ(*e, "6.1.0-56-amd64");
  std::vector<uint8_t> junk(100, 'x');
  EXPECT_FALSE(KernelRelease(junk));
}

class ModulesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    WriteText(dir_.File("modules.dep"),
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
  std::ofstream(dir_.File("i.cpio"), std::ios::binary).write(reinterpret_cast<const char*>(initrd->data()), initrd->size());
  auto list = RunCommand("cpio -it < " + dir_.File("i.cpio"));
  ASSERT_EQ(list.exit_code, 0) << list.output;
  for (const char* want : {"init", "bin/busybox", "bin/switch_root", "dev/console", "modules/order",
                           "modules/00-virtio_ring.ko", "modules/03-virtio_blk.ko"}) {
    EXPECT_NE(list.output.find(want), std::string::npos) << want << "\n" << list.output;
  }
}

TEST(RootfsCmdlineTest, NamesTheMode) {
  EXPECT_EQ(RootfsCmdline(RootMode::kReadWrite), "clone.root=rw");
  EXPECT_EQ(RootfsCmdline(RootMode::kOverlayTmpfs), "clone.root=overlay");
  EXPECT_EQ(RootfsCmdline(RootMode::kOverlayDisk), "clone.root=overlay-disk");
}

}  // namespace
}  // namespace clonevm

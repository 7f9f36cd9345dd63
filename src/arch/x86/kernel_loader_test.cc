#include "arch/x86/kernel_loader.h"

#include <asm/bootparam.h>
#include <elf.h>
#include <gtest/gtest.h>

#include <cstring>

#include "arch/x86/layout.h"

namespace clonevm::x86 {
namespace {

// A synthetic bzImage: a setup header that says "64-bit boot protocol 2.15" plus a payload.
std::vector<uint8_t> FakeBzImage(size_t payload_size, uint16_t version = 0x20f, uint16_t xloadflags = XLF_KERNEL_64) {
  constexpr int kSetupSects = 4;
  std::vector<uint8_t> image((kSetupSects + 1) * 512 + payload_size, 0xcc);
  setup_header hdr{};
  hdr.setup_sects = kSetupSects;
  hdr.boot_flag = 0xAA55;
  hdr.header = 0x53726448;
  hdr.version = version;
  hdr.xloadflags = xloadflags;
  hdr.cmdline_size = 2047;
  hdr.initrd_addr_max = 0x7fffffff;
  hdr.init_size = static_cast<uint32_t>(payload_size);
  std::memcpy(image.data() + 0x1f1, &hdr, sizeof(hdr));
  image[0x201] = static_cast<uint8_t>(sizeof(hdr) - (0x202 - 0x1f1));
  return image;
}

GuestMemory Mem(uint64_t bytes = 64 * kMiB) {
  return std::move(*GuestMemory::Create(bytes, kMmioHoleStart, kHighRamStart));
}

TEST(KernelLoaderTest, RejectsWhatIsNotAKernel) {
  auto mem = Mem();
  std::vector<uint8_t> junk(4096, 0x41);
  auto r = LoadKernel(mem, {junk, {}, "", 0});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message(), "not a Linux kernel (neither a bzImage nor an ELF vmlinux)");
  std::vector<uint8_t> empty;
  EXPECT_FALSE(LoadKernel(mem, {empty, {}, "", 0}));
}

TEST(KernelLoaderTest, LoadsABzImageWithInitrdAndCmdline) {
  auto mem = Mem();
  auto image = FakeBzImage(1 * kMiB);
  std::vector<uint8_t> initrd(3 * 4096 + 5, 0x5a);
  auto r = LoadKernel(mem, {image, initrd, "console=ttyS0 quiet", 0xe0000});
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->protocol, BootProtocol::kLinux64);
  EXPECT_EQ(r->entry, kKernelLoadAddr + 0x200);
  EXPECT_EQ(r->boot_info_gpa, kZeroPageAddr);
  auto params = mem.Read<boot_params>(kZeroPageAddr);
  ASSERT_TRUE(params);
  EXPECT_EQ(params->hdr.cmd_line_ptr, kCmdlineAddr);
  EXPECT_EQ(params->hdr.ramdisk_size, initrd.size());
  EXPECT_EQ(params->hdr.ramdisk_image, r->initrd_gpa);
  EXPECT_EQ(params->hdr.ramdisk_image % 4096, 0u);
  EXPECT_LE(params->hdr.ramdisk_image + initrd.size(), 64 * kMiB);
  EXPECT_EQ(params->hdr.type_of_loader, 0xff);
  EXPECT_EQ(params->acpi_rsdp_addr, 0xe0000u);
  EXPECT_EQ(params->e820_entries, 6);
  EXPECT_EQ(params->e820_table[1].addr, kIdentityPageAddr);
  EXPECT_EQ(params->e820_table[1].type, 2u);  // reserved: readable through /dev/mem by the agent
  EXPECT_EQ(params->e820_table[5].addr, kHighMemoryStart);
  EXPECT_EQ(params->e820_table[5].size, 63 * kMiB);
  char cmdline[32] = {};
  ASSERT_TRUE(mem.ReadBytes(kCmdlineAddr, std::span(reinterpret_cast<uint8_t*>(cmdline), 20)));
  EXPECT_STREQ(cmdline, "console=ttyS0 quiet");
  EXPECT_EQ(*mem.Read<uint8_t>(kKernelLoadAddr), 0xcc);
  EXPECT_EQ(*mem.Read<uint8_t>(r->initrd_gpa), 0x5a);
}

TEST(KernelLoaderTest, RejectsOldBootProtocols) {
  auto mem = Mem();
  auto image = FakeBzImage(4096, 0x20b);
  auto r = LoadKernel(mem, {image, {}, "", 0});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("without a 64-bit entry point"), std::string::npos);
  auto no64 = FakeBzImage(4096, 0x20f, 0);
  EXPECT_FALSE(LoadKernel(mem, {no64, {}, "", 0}));
}

TEST(KernelLoaderTest, RejectsTruncatedBzImages) {
  auto mem = Mem();
  auto image = FakeBzImage(0);
  image.resize(5 * 512);  // the setup sectors and nothing else
  auto r = LoadKernel(mem, {image, {}, "", 0});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("truncated"), std::string::npos);
}

TEST(KernelLoaderTest, RejectsAnInitrdThatDoesNotFit) {
  auto mem = Mem(32 * kMiB);
  auto image = FakeBzImage(1 * kMiB);
  std::vector<uint8_t> initrd(31 * kMiB);
  auto r = LoadKernel(mem, {image, initrd, "", 0});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("initrd (31 MiB) does not fit"), std::string::npos);
}

TEST(KernelLoaderTest, RejectsAKernelLargerThanMemory) {
  auto mem = Mem(32 * kMiB);
  auto image = FakeBzImage(40 * kMiB);
  auto r = LoadKernel(mem, {image, {}, "", 0});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("guest memory is too small"), std::string::npos);
}

TEST(KernelLoaderTest, RejectsATooLongCommandLine) {
  auto mem = Mem();
  auto image = FakeBzImage(4096);
  auto r = LoadKernel(mem, {image, {}, std::string(3000, 'x'), 0});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("command line is 3000 bytes"), std::string::npos);
}

// A minimal ELF64 vmlinux with one PT_LOAD at 16 MiB and, optionally, a PVH entry note.
std::vector<uint8_t> FakeElf(bool pvh, uint64_t load_size = 4096) {
  std::vector<uint8_t> image(0x2000 + load_size, 0);
  Elf64_Ehdr eh{};
  std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
  eh.e_ident[EI_CLASS] = ELFCLASS64;
  eh.e_type = ET_EXEC;
  eh.e_machine = EM_X86_64;
  eh.e_entry = 0x1000000;
  eh.e_phoff = sizeof(eh);
  eh.e_phentsize = sizeof(Elf64_Phdr);
  eh.e_phnum = pvh ? 2 : 1;
  std::memcpy(image.data(), &eh, sizeof(eh));
  Elf64_Phdr load{};
  load.p_type = PT_LOAD;
  load.p_offset = 0x2000;
  load.p_paddr = 0x1000000;
  load.p_filesz = load_size;
  load.p_memsz = load_size + 4096;
  std::memcpy(image.data() + sizeof(eh), &load, sizeof(load));
  std::memset(image.data() + 0x2000, 0x90, load_size);
  if (pvh) {
    Elf64_Phdr note{};
    note.p_type = PT_NOTE;
    note.p_offset = 0x1000;
    note.p_filesz = sizeof(Elf64_Nhdr) + 4 + 4;
    std::memcpy(image.data() + sizeof(eh) + sizeof(load), &note, sizeof(note));
    Elf64_Nhdr nh{4, 4, 18};
    std::memcpy(image.data() + 0x1000, &nh, sizeof(nh));
    std::memcpy(image.data() + 0x1000 + sizeof(nh), "Xen", 4);
    uint32_t entry = 0x1000123;
    std::memcpy(image.data() + 0x1000 + sizeof(nh) + 4, &entry, 4);
  }
  return image;
}

TEST(KernelLoaderTest, LoadsAnElfWithAPvhNote) {
  auto mem = Mem();
  auto image = FakeElf(true);
  std::vector<uint8_t> initrd(8192, 7);
  auto r = LoadKernel(mem, {image, initrd, "console=ttyS0", 0xe0000});
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->protocol, BootProtocol::kPvh);
  EXPECT_EQ(r->entry, 0x1000123u);
  EXPECT_EQ(r->boot_info_gpa, kPvhStartInfoAddr);
  EXPECT_EQ(*mem.Read<uint32_t>(kPvhStartInfoAddr), 0x336ec578u);
  EXPECT_EQ(*mem.Read<uint8_t>(0x1000000), 0x90);
  EXPECT_EQ(*mem.Read<uint64_t>(kPvhModlistAddr), r->initrd_gpa);
}

TEST(KernelLoaderTest, LoadsAnElfWithoutPvhThroughTheLinuxProtocol) {
  auto mem = Mem();
  auto image = FakeElf(false);
  auto r = LoadKernel(mem, {image, {}, "", 0});
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->protocol, BootProtocol::kLinux64);
  EXPECT_EQ(r->entry, 0x1000000u);
}

TEST(KernelLoaderTest, RejectsElfSegmentsOutsideTheFileOrMemory) {
  auto mem = Mem(32 * kMiB);
  auto image = FakeElf(false);
  image.resize(0x2000 + 100);  // segment data cut short
  auto r = LoadKernel(mem, {image, {}, "", 0});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("truncated"), std::string::npos);
  auto big = FakeElf(false, 20 * kMiB);  // 16 MiB + 20 MiB > 32 MiB
  auto r2 = LoadKernel(mem, {big, {}, "", 0});
  ASSERT_FALSE(r2);
  EXPECT_NE(r2.error().message().find("does not fit"), std::string::npos);
}

TEST(KernelLoaderTest, E820CoversRamAboveTheHole) {
  auto mem = std::move(*GuestMemory::Create(4 * kGiB, kMmioHoleStart, kHighRamStart));
  auto e820 = BuildE820(mem);
  ASSERT_EQ(e820.size(), 7u);
  EXPECT_EQ(e820[5].addr + e820[5].size, kMmioHoleStart);
  EXPECT_EQ(e820[6].addr, kHighRamStart);
  EXPECT_EQ(e820[6].size, 4 * kGiB - kMmioHoleStart);
}

}  // namespace
}  // namespace clonevm::x86

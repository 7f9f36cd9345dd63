#include "arch/x86/cpu_setup.h"

#include <gtest/gtest.h>

#include "arch/x86/layout.h"

namespace clonevm::x86 {
namespace {

TEST(CpuSetupTest, PageTablesIdentityMapAllRam) {
  auto mem = std::move(*GuestMemory::Create(6 * kGiB, kMmioHoleStart, kHighRamStart));
  ASSERT_TRUE(WritePageTables(mem));
  // Walk the tables for a few addresses, including RAM above 4 GiB.
  for (uint64_t addr : {uint64_t{0}, uint64_t{0x200000}, 3 * kGiB + 0x1234, 7 * kGiB - 1}) {
    uint64_t pml4e = *mem.Read<uint64_t>(kPml4Addr + ((addr >> 39) & 511) * 8);
    ASSERT_TRUE(pml4e & 1);
    uint64_t pdpte = *mem.Read<uint64_t>((pml4e & ~0xfffull) + ((addr >> 30) & 511) * 8);
    ASSERT_TRUE(pdpte & 1) << addr;
    uint64_t pde = *mem.Read<uint64_t>((pdpte & ~0xfffull) + ((addr >> 21) & 511) * 8);
    ASSERT_TRUE(pde & 0x80);
    EXPECT_EQ((pde & ~0x1fffffull) | (addr & 0x1fffff), addr);
  }
}

TEST(CpuSetupTest, LongModeSregs) {
  kvm_sregs base{};
  auto s = BootSregs(base, BootProtocol::kLinux64);
  EXPECT_EQ(s.cs.l, 1);
  EXPECT_EQ(s.cs.db, 0);
  EXPECT_EQ(s.cs.selector, 0x10);
  EXPECT_EQ(s.ds.selector, 0x18);
  EXPECT_EQ(s.cr3, kPml4Addr);
  EXPECT_TRUE(s.cr0 & (1ull << 31));
  EXPECT_EQ(s.efer & 0x500, 0x500u);
  EXPECT_EQ(s.tr.type, 0xb);
}

TEST(CpuSetupTest, PvhEntersFlat32BitProtectedMode) {
  kvm_sregs base{};
  auto s = BootSregs(base, BootProtocol::kPvh);
  EXPECT_EQ(s.cs.l, 0);
  EXPECT_EQ(s.cs.db, 1);
  EXPECT_EQ(s.cs.limit, 0xffffffffu);
  EXPECT_FALSE(s.cr0 & (1ull << 31));
  EXPECT_EQ(s.efer, 0u);
  BootSetup setup{BootProtocol::kPvh, 0x1000123, kPvhStartInfoAddr, 0, 0};
  auto r = BootRegs(setup);
  EXPECT_EQ(r.rbx, kPvhStartInfoAddr);
  EXPECT_EQ(r.rip, 0x1000123u);
}

TEST(CpuSetupTest, CpuidCarriesApicIdAndTopology) {
  std::vector<kvm_cpuid_entry2> supported(3);
  supported[0].function = 1;
  supported[1].function = 0xb;
  supported[1].index = 1;
  supported[2].function = 0x80000008;
  auto cpuid = VcpuCpuid(supported, 3, 4);
  EXPECT_EQ(cpuid[0].ebx >> 24, 3u);
  EXPECT_EQ((cpuid[0].ebx >> 16) & 0xff, 4u);
  EXPECT_TRUE(cpuid[0].ecx & (1u << 31));
  EXPECT_EQ(cpuid[1].edx, 3u);
  EXPECT_EQ(cpuid[1].ebx, 4u);
  EXPECT_EQ(cpuid[1].eax, 2u);
  EXPECT_EQ(cpuid[2].ecx & 0xff, 3u);
}

TEST(CpuSetupTest, CpuidHidesInvariantTscKeepsTheRest) {
  std::vector<kvm_cpuid_entry2> supported(1);
  supported[0].function = 0x80000007;
  supported[0].edx = 0xffffffffu;
  auto cpuid = VcpuCpuid(supported, 0, 1);
  EXPECT_EQ(cpuid[0].edx, 0xffffffffu & ~(1u << 8));
}

TEST(CpuSetupTest, BootMsrsIncludeMiscEnableAndMtrr) {
  auto msrs = BootMsrs();
  bool misc = false, mtrr = false;
  for (auto& m : msrs) {
    misc |= m.index == 0x1a0 && m.data == 1;
    mtrr |= m.index == 0x2ff && (m.data & (1 << 11));
  }
  EXPECT_TRUE(misc);
  EXPECT_TRUE(mtrr);
}

}  // namespace
}  // namespace clonevm::x86

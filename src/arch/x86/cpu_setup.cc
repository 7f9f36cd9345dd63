#include "arch/x86/cpu_setup.h"

#include <bit>

#include "arch/x86/layout.h"

namespace clonevm::x86 {
namespace {

constexpr uint64_t kPtePresent = 1 << 0;
constexpr uint64_t kPteWritable = 1 << 1;
constexpr uint64_t kPteHuge = 1 << 7;

constexpr uint64_t kCr0Pe = 1 << 0;
constexpr uint64_t kCr0Et = 1 << 4;
constexpr uint64_t kCr0Ne = 1 << 5;
constexpr uint64_t kCr0Pg = 1ull << 31;
constexpr uint64_t kCr4Pae = 1 << 5;
constexpr uint64_t kEferLme = 1 << 8;
constexpr uint64_t kEferLma = 1 << 10;

// GDT selectors (index * 8), matching the Linux boot protocol's __BOOT_CS/__BOOT_DS.
constexpr uint16_t kCodeSelector = 0x10;
constexpr uint16_t kDataSelector = 0x18;
constexpr uint16_t kTssSelector = 0x20;

// A GDT descriptor from flags (type/S/DPL/P in bits 0-7, AVL/L/DB/G in bits 12-15), base, limit.
constexpr uint64_t GdtEntry(uint16_t flags, uint32_t base, uint32_t limit) {
  return ((uint64_t{base} & 0xff000000) << 32) | ((uint64_t{flags} & 0xf0ff) << 40) |
         ((uint64_t{limit} & 0x000f0000) << 32) | ((uint64_t{base} & 0x00ffffff) << 16) | (limit & 0xffff);
}

kvm_segment SegmentFromGdt(uint64_t entry, uint16_t selector) {
  kvm_segment s{};
  s.base = ((entry >> 16) & 0xffffff) | (((entry >> 56) & 0xff) << 24);
  uint32_t limit = static_cast<uint32_t>((entry & 0xffff) | (((entry >> 48) & 0xf) << 16));
  s.g = (entry >> 55) & 1;
  s.limit = s.g ? (limit << 12) | 0xfff : limit;
  s.selector = selector;
  s.type = (entry >> 40) & 0xf;
  s.s = (entry >> 44) & 1;
  s.dpl = (entry >> 45) & 3;
  s.present = (entry >> 47) & 1;
  s.avl = (entry >> 52) & 1;
  s.l = (entry >> 53) & 1;
  s.db = (entry >> 54) & 1;
  s.unusable = s.present ? 0 : 1;
  return s;
}

constexpr uint64_t kGdtCode64 = GdtEntry(0xa09b, 0, 0xfffff);
constexpr uint64_t kGdtCode32 = GdtEntry(0xc09b, 0, 0xfffff);
constexpr uint64_t kGdtData = GdtEntry(0xc093, 0, 0xfffff);
constexpr uint64_t kGdtTss = GdtEntry(0x008b, 0, 0xfffff);

// KVM MSR indices (arch/x86/include/asm/msr-index.h).
constexpr uint32_t kMsrSysenterCs = 0x174;
constexpr uint32_t kMsrSysenterEsp = 0x175;
constexpr uint32_t kMsrSysenterEip = 0x176;
constexpr uint32_t kMsrStar = 0xc0000081;
constexpr uint32_t kMsrLstar = 0xc0000082;
constexpr uint32_t kMsrCstar = 0xc0000083;
constexpr uint32_t kMsrSyscallMask = 0xc0000084;
constexpr uint32_t kMsrKernelGsBase = 0xc0000102;
constexpr uint32_t kMsrTsc = 0x10;
constexpr uint32_t kMsrMiscEnable = 0x1a0;
constexpr uint64_t kMiscEnableFastString = 1;
constexpr uint32_t kMsrMtrrDefType = 0x2ff;
constexpr uint64_t kMtrrEnableWriteBack = (1 << 11) | 6;

}  // namespace

Result<void> WritePageTables(const GuestMemory& mem) {
  uint64_t top = 0;
  for (const auto& r : mem.regions()) top = std::max(top, r.end());
  uint64_t pds = (top + kGiB - 1) / kGiB;
  if (pds > kMaxPageDirectories) return Fail("guest address space ({} GiB) exceeds the boot page tables", pds);
  CLONE_TRY_VOID(mem.Write<uint64_t>(kPml4Addr, kPdptAddr | kPtePresent | kPteWritable));
  for (uint64_t i = 0; i < pds; ++i) {
    uint64_t pd = kPdAddr + i * 0x1000;
    CLONE_TRY_VOID(mem.Write<uint64_t>(kPdptAddr + i * 8, pd | kPtePresent | kPteWritable));
    std::array<uint64_t, 512> entries;
    for (uint64_t j = 0; j < 512; ++j) entries[j] = (i * kGiB + j * 2 * kMiB) | kPtePresent | kPteWritable | kPteHuge;
    CLONE_TRY_VOID(mem.Write(pd, entries));
  }
  return {};
}

Result<void> WriteGdt(const GuestMemory& mem) {
  const std::array<uint64_t, 5> gdt = {0, 0, kGdtCode64, kGdtData, kGdtTss};
  return mem.Write(kGdtAddr, gdt);
}

kvm_sregs BootSregs(const kvm_sregs& base, BootProtocol protocol) {
  kvm_sregs s = base;
  bool long_mode = protocol == BootProtocol::kLinux64;
  s.gdt.base = kGdtAddr;
  s.gdt.limit = 5 * 8 - 1;
  s.idt.base = 0;
  s.idt.limit = 0;
  s.cs = SegmentFromGdt(long_mode ? kGdtCode64 : kGdtCode32, kCodeSelector);
  kvm_segment data = SegmentFromGdt(kGdtData, kDataSelector);
  s.ds = s.es = s.fs = s.gs = s.ss = data;
  s.tr = SegmentFromGdt(kGdtTss, kTssSelector);
  s.cr0 = kCr0Pe | kCr0Et | kCr0Ne;
  s.cr4 = 0;
  s.efer = 0;
  if (long_mode) {
    s.cr0 |= kCr0Pg;
    s.cr3 = kPml4Addr;
    s.cr4 = kCr4Pae;
    s.efer = kEferLme | kEferLma;
  }
  return s;
}

kvm_regs BootRegs(const BootSetup& setup) {
  kvm_regs r{};
  r.rflags = 0x2;  // bit 1 is reserved and must be set
  r.rip = setup.entry;
  r.rsp = kBootStackTop;
  r.rbp = kBootStackTop;
  if (setup.protocol == BootProtocol::kPvh) {
    r.rbx = setup.boot_info_gpa;
  } else {
    r.rsi = setup.boot_info_gpa;
  }
  return r;
}

kvm_fpu BootFpu() {
  kvm_fpu fpu{};
  fpu.fcw = 0x37f;     // x87 default: all exceptions masked, 64-bit precision
  fpu.mxcsr = 0x1f80;  // SSE default: all exceptions masked
  return fpu;
}

std::vector<kvm_msr_entry> BootMsrs() {
  auto msr = [](uint32_t index, uint64_t data) {
    kvm_msr_entry e{};
    e.index = index;
    e.data = data;
    return e;
  };
  return {msr(kMsrSysenterCs, 0),
          msr(kMsrSysenterEsp, 0),
          msr(kMsrSysenterEip, 0),
          msr(kMsrStar, 0),
          msr(kMsrLstar, 0),
          msr(kMsrCstar, 0),
          msr(kMsrSyscallMask, 0),
          msr(kMsrKernelGsBase, 0),
          msr(kMsrTsc, 0),
          msr(kMsrMiscEnable, kMiscEnableFastString),
          msr(kMsrMtrrDefType, kMtrrEnableWriteBack)};
}

std::vector<kvm_cpuid_entry2> VcpuCpuid(std::vector<kvm_cpuid_entry2> entries, uint32_t index, uint32_t count) {
  constexpr uint32_t kHypervisorBit = 1u << 31;
  constexpr uint32_t kHttBit = 1u << 28;
  uint32_t shift = count <= 1 ? 0 : std::bit_width(count - 1);
  for (auto& e : entries) {
    switch (e.function) {
      case 0x1:
        // EBX[31:24] initial APIC ID, EBX[23:16] logical processors per package, EBX[15:8] CLFLUSH size.
        e.ebx = (index << 24) | ((count & 0xff) << 16) | (8 << 8);
        e.ecx |= kHypervisorBit;
        if (count > 1)
          e.edx |= kHttBit;
        else
          e.edx &= ~kHttBit;
        break;
      case 0x4:
        // EAX[31:26]: cores per package - 1 (deterministic cache parameters).
        e.eax = (e.eax & 0x03ffffff) | (((count - 1) & 0x3f) << 26);
        break;
      case 0xb:
      case 0x1f:
        // Extended topology: one thread per core, `count` cores per package.
        e.edx = index;
        if (e.index == 0) {
          e.eax = 0;
          e.ebx = 1;
          e.ecx = (1 << 8) | 0;
        } else if (e.index == 1) {
          e.eax = shift;
          e.ebx = count;
          e.ecx = (2 << 8) | 1;
        } else {
          e.eax = 0;
          e.ebx = 0;
          e.ecx = e.index;
        }
        break;
      case 0x80000007:
        // EDX[8] invariant TSC off. With it, Linux prefers the TSC clocksource to kvm-clock, and a
        // restored or forked guest's time would stand still at the snapshot: Clone moves a
        // restored guest's time on through the kvmclock (vm_state.h AdvanceClock). QEMU hides it
        // by default for the same reason (it blocks migration).
        e.edx &= ~(1u << 8);
        break;
      case 0x80000008:
        // ECX[15:12] APIC ID size, ECX[7:0] cores - 1 (AMD).
        e.ecx = (shift << 12) | ((count - 1) & 0xff);
        break;
      default:
        break;
    }
  }
  return entries;
}

}  // namespace clonevm::x86

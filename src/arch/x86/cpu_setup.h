// The initial CPU state of a Clone vCPU: page tables, GDT, segment/control registers, general
// registers, FPU, MSRs and CPUID. Pure functions of their inputs (no KVM calls) so they are unit
// tested; vmm/ applies the results with the KVM ioctls.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <vector>

#include "arch/x86/kernel_loader.h"
#include "base/result.h"
#include "memory/guest_memory.h"

namespace clonevm::x86 {

// Identity-maps [0, top of RAM) with 2 MiB pages (PML4 → PDPT → one PD per GiB).
[[nodiscard]] Result<void> WritePageTables(const GuestMemory& mem);
// Writes the boot GDT (null, null, code64, data, tss) at kGdtAddr.
[[nodiscard]] Result<void> WriteGdt(const GuestMemory& mem);

// Segment and control registers for entering `protocol` (64-bit long mode for kLinux64, 32-bit
// flat protected mode without paging for kPvh). `base` is the vCPU's current sregs.
kvm_sregs BootSregs(const kvm_sregs& base, BootProtocol protocol);
kvm_regs BootRegs(const BootSetup& setup);
kvm_fpu BootFpu();
std::vector<kvm_msr_entry> BootMsrs();

// The CPUID table for vCPU `index` of `count`: KVM's supported leaves with the APIC ID, topology
// and hypervisor bit set.
std::vector<kvm_cpuid_entry2> VcpuCpuid(std::vector<kvm_cpuid_entry2> supported, uint32_t index, uint32_t count);

}  // namespace clonevm::x86

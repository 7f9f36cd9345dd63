// The guest physical and I/O port layout of a Clone x86_64 VM. One place for every fixed address.
//
//   0x0000_0500  GDT
//   0x0000_6000  identity page (VM id, hostname, CID, MAC/IP, entropy seed, generation;
//                VM Generation ID at +0x800)
//   0x0000_7000  zero page (Linux boot_params)
//   0x0000_9000  PVH start_info, memory map and module list
//   0x0001_0000  page tables: PML4, PDPT, then one PD per GiB (2 MiB pages)
//   0x0006_0000  kernel command line (up to 64 KiB)
//   0x0009_FC00  EBDA (reserved)
//   0x000E_0000  ACPI tables, RSDP first (reserved)
//   0x0010_0000  kernel (bzImage protected-mode part; ELF segments go where they say)
//   ...          initrd, placed at the top of low RAM
//   0xB000_0000  start of the 32-bit MMIO hole: PCI ECAM (256 MiB)
//   0xD000_0000  virtio-mmio slots, 4 KiB each
//   0xFEC0_0000  IOAPIC      0xFEE0_0000  LAPIC
//   0xFFFB_C000  KVM identity-map page, 0xFFFB_D000 KVM TSS (3 pages)
//   4 GiB        RAM above the hole
#pragma once

#include <cstdint>

namespace clonevm::x86 {

inline constexpr uint64_t kKiB = 1024;
inline constexpr uint64_t kMiB = 1024 * kKiB;
inline constexpr uint64_t kGiB = 1024 * kMiB;

inline constexpr uint64_t kGdtAddr = 0x500;
inline constexpr uint64_t kIdentityPageAddr = 0x6000;
inline constexpr uint64_t kIdentityPageSize = 0x1000;  // e820-reserved (see BuildE820)
// The 16-byte VM Generation ID inside the identity page (agent::kVmGenIdGpa; the runtime checks
// the two agree). The DSDT's VGEN device hands this address to the guest's vmgenid driver.
inline constexpr uint64_t kVmGenIdAddr = kIdentityPageAddr + 0x800;
inline constexpr uint64_t kZeroPageAddr = 0x7000;
inline constexpr uint64_t kBootStackTop = 0x8ff0;
inline constexpr uint64_t kPvhStartInfoAddr = 0x9000;
inline constexpr uint64_t kPvhMemmapAddr = 0x9100;
inline constexpr uint64_t kPvhModlistAddr = 0x9800;
inline constexpr uint64_t kPml4Addr = 0x10000;
inline constexpr uint64_t kPdptAddr = 0x11000;
inline constexpr uint64_t kPdAddr = 0x12000;
inline constexpr uint64_t kMaxPageDirectories = 72;  // identity map up to 72 GiB of address space
inline constexpr uint64_t kCmdlineAddr = 0x60000;
inline constexpr uint64_t kCmdlineMax = 0x10000;
inline constexpr uint64_t kEbdaStart = 0x9fc00;
inline constexpr uint64_t kAcpiAddr = 0xe0000;
inline constexpr uint64_t kAcpiMax = 0x20000;
inline constexpr uint64_t kHighMemoryStart = 0x100000;  // 1 MiB
inline constexpr uint64_t kKernelLoadAddr = 0x100000;

inline constexpr uint64_t kMmioHoleStart = 0xB000'0000;
inline constexpr uint64_t kPciEcamAddr = 0xB000'0000;
inline constexpr uint64_t kPciEcamSize = 256 * kMiB;
inline constexpr uint64_t kVirtioMmioBase = 0xD000'0000;
inline constexpr uint64_t kVirtioMmioSlotSize = 0x1000;
inline constexpr uint64_t kIoapicAddr = 0xFEC0'0000;
inline constexpr uint64_t kLapicAddr = 0xFEE0'0000;
inline constexpr uint64_t kKvmIdentityMapAddr = 0xFFFB'C000;
inline constexpr uint64_t kKvmTssAddr = 0xFFFB'D000;
inline constexpr uint64_t kHighRamStart = 4 * kGiB;

inline constexpr uint64_t kMinRamBytes = 32 * kMiB;
inline constexpr uint64_t kMaxRamBytes = 64 * kGiB;

// Port I/O.
inline constexpr uint16_t kCom1Port = 0x3f8;
inline constexpr uint32_t kCom1Irq = 4;
inline constexpr uint16_t kI8042DataPort = 0x60;
inline constexpr uint16_t kI8042CommandPort = 0x64;
inline constexpr uint16_t kCmosPort = 0x70;
inline constexpr uint16_t kAcpiPmPort = 0x600;
inline constexpr uint16_t kAcpiPmPortLen = 8;

// GSIs: 0-15 are the ISA IRQs; virtio-mmio devices get GSIs from here up to the last IOAPIC pin.
inline constexpr uint32_t kFirstDeviceGsi = 16;
inline constexpr uint32_t kIoapicPins = 24;
// The ACPI Generic Event Device's interrupt (edge, active high; it notifies VGEN of a new VM
// generation). ISA IRQ 9 is the SCI on a full ACPI PC; a hardware-reduced platform has no SCI, so
// it is free (QEMU's microvm puts its GED there too). In use below 16: COM1 (4), the RTC (8).
inline constexpr uint32_t kGedGsi = 9;
static_assert(kGedGsi < kFirstDeviceGsi && kGedGsi != kCom1Irq, "the GED needs a GSI of its own");

}  // namespace clonevm::x86

// ACPI tables for a firmware-less x86_64 guest: RSDP, XSDT, FADT, DSDT and MADT describing a
// hardware-reduced ACPI platform (ACPI 6.4). See src/acpi/README.md for what the guest kernel
// does with each table.
//
// Contract: BuildAcpiTables is a pure function of its arguments (no I/O, no global state); the
// caller copies AcpiBlob::bytes into guest RAM at base_gpa, marks that range reserved (or ACPI)
// in the e820 map, and hands rsdp_gpa to the kernel (boot_params.acpi_rsdp_addr, or place the
// blob in 0xE0000-0xFFFFF where the kernel scans for the RSDP).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "base/result.h"

namespace clonevm::acpi {

// A virtio-mmio transport: a DSDT device "LNRO0005" with Memory32Fixed(base, size) and an edge,
// active-high Interrupt on `gsi`. base + size must lie below 4 GiB.
struct VirtioMmioNode {
  uint64_t base;
  uint32_t size;
  uint32_t gsi;
};

// The ISA IRQs (== GSIs: no Interrupt Source Overrides) of the legacy devices the DSDT describes.
inline constexpr uint8_t kCom1Irq = 4;
inline constexpr uint8_t kRtcIrq = 8;

struct AcpiConfig {
  uint32_t num_cpus = 1;  // 1..255; APIC ids and ACPI processor UIDs are 0..num_cpus-1
  uint32_t lapic_addr = 0xFEE00000;
  uint32_t ioapic_addr = 0xFEC00000;
  uint8_t ioapic_id = 0;                    // caller sets it (e.g. num_cpus)
  uint16_t pm_io_base = 0x600;              // see the PM register layout below
  bool com1 = true;                         // describe the 16550 at 0x3F8, IRQ 4 (PNP0501)
  bool cmos_rtc = true;                     // describe the MC146818 at 0x70 (2 ports), IRQ 8 (PNP0B00)
  std::vector<VirtioMmioNode> virtio_mmio;  // one LNRO0005 device each, _UID = index
  // If set, a VM Generation ID device whose ADDR method returns this guest-physical address of
  // the 16-byte generation GUID (8-byte aligned, in memory the guest treats as reserved).
  std::optional<uint64_t> vmgenid_gpa;
  // If set (needs vmgenid_gpa), a Generic Event Device (ACPI0013) with one edge, active-high
  // Interrupt on this GSI whose _EVT does Notify(VGEN, 0x80): the VMM pulses the GSI after writing
  // a new generation id. It must differ from every other device's GSI (COM1 4, RTC 8, virtio).
  // With no Interrupt Source Override in the MADT, a GSI below 16 is an ISA IRQ whose default is
  // edge/active high as well, so the MADT and _CRS agree.
  std::optional<uint32_t> ged_gsi;
};

// The PM register block at pm_io_base (I/O ports, byte access), implemented by the VMM's ACPI PM
// device. The guest powers off by writing SLP_TYP << 2 | SLP_EN to SLEEP_CONTROL with
// SLP_TYP == kS5SleepType, i.e. the byte 0x34, after writing 0x80 (WAK_STS, write-1-to-clear)
// to SLEEP_STATUS; it reboots by writing kResetValue to RESET.
inline constexpr uint16_t kSleepControlOffset = 0;   // FADT SLEEP_CONTROL_REG: SLP_TYP<<2 | SLP_EN
inline constexpr uint16_t kSleepStatusOffset = 1;    // FADT SLEEP_STATUS_REG: bit 7 WAK_STS
inline constexpr uint16_t kResetOffset = 4;          // FADT RESET_REG
inline constexpr uint16_t kPmRegisterBlockSize = 8;  // ports the PM device should claim
inline constexpr uint8_t kResetValue = 0x1;
inline constexpr uint8_t kS5SleepType = 5;       // \_S5_ package value
inline constexpr uint8_t kSleepEnable = 0x20;    // SLP_EN in SLEEP_CONTROL
inline constexpr uint8_t kSleepTypeShift = 2;    // SLP_TYP position in SLEEP_CONTROL
inline constexpr uint8_t kSleepTypeMask = 0x1C;  // SLP_TYP bits in SLEEP_CONTROL
inline constexpr uint8_t kWakeStatus = 0x80;     // WAK_STS in SLEEP_STATUS

// The Generic Event Device's _HID (ACPI 6.4 §5.6.9); Linux drivers/acpi/evged.c binds it.
inline constexpr char kGedHid[] = "ACPI0013";

// Identifiers of the VM Generation ID device (Microsoft's "Virtual Machine Generation ID" spec;
// Linux drivers/virt/vmgenid.c binds on the _CID, which ACPICA upper-cases to VM_GEN_COUNTER).
inline constexpr char kVmGenIdHid[] = "CLON0001";
inline constexpr char kVmGenIdCid[] = "VM_Gen_Counter";

struct AcpiBlob {
  uint64_t base_gpa;           // where `bytes` must be copied in guest memory
  std::vector<uint8_t> bytes;  // RSDP, XSDT, FADT, DSDT, MADT; each 16-byte aligned
  uint64_t rsdp_gpa;           // == base_gpa
};

// Lays out RSDP (first, at base_gpa, which must be 16-byte aligned) -> XSDT -> FADT, DSDT, MADT
// in one contiguous blob meant to be copied to guest memory at base_gpa. Table pointers are
// absolute guest-physical addresses. Fails on an invalid config or if the blob would exceed
// max_size bytes (~650 bytes + 8 per CPU + 64 per virtio device + 80 for VMGENID + 60 for
// the GED).
[[nodiscard]] Result<AcpiBlob> BuildAcpiTables(const AcpiConfig& config, uint64_t base_gpa, size_t max_size);

}  // namespace clonevm::acpi

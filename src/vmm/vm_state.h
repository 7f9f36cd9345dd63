// VmState: everything a paused guest depends on besides its RAM — per-vCPU CPU state, the in-kernel
// irqchip (PIC master/slave, IOAPIC), PIT and kvmclock, the legacy devices (16550, CMOS, PCI
// config address) and every virtio-mmio transport with its device — plus its versioned encoding.
//
// Plain values: no fds, no threads. Vm::SaveState() fills one from a paused VM; Vm::Restore() builds
// a VM from one (vmm/vm.h). snapshot/ stores it as CBOR (state file, see docs/snapshots.md).
//
// Encoding: a JSON tree keyed by component id, every leaf an object with an integer "version":
//   "vm"             {"version", "vcpu_count", "virtio_count"}
//   "vcpu/<i>"       {"version", "regs", "sregs", "xsave", "xcrs", "lapic", "events", "mp_state",
//                     "debugregs", "tsc_khz", "cpuid", "msrs"}
//   "irqchip"        {"version", "pic_master", "pic_slave", "ioapic"}
//   "pit"            {"version", "pit"}
//   "clock"          {"version", "clock", "flags"}
//   "devices/serial" {"version", "ier", "iir_fifo", "lcr", "mcr", "lsr", "msr", "scr", "dll", "dlm",
//                     "thr_interrupt", "rx"}
//   "devices/cmos"   {"version", "index", "nvram"}
//   "devices/pci"    {"version", "config_address"}
//   "devices/virtio/<slot>" {"version", "device_type", "transport": MmioTransport::SaveState()}
// KVM structures whose layout is kernel ABI (kvm_regs, kvm_sregs, kvm_lapic_state, kvm_xcrs,
// kvm_vcpu_events, kvm_debugregs, kvm_irqchip, kvm_pit_state2; pinned in kvm/uapi_test) are stored
// verbatim as byte strings and their size is checked on load; the XSAVE area is a byte string of
// the size KVM reported; cpuid and msrs are arrays of [function, index, flags, eax, ebx, ecx, edx]
// and [index, value]. A reader accepts every leaf version up to its own and rejects newer ones;
// fields added later must be optional. Component ids never change meaning.
//
// Untrusted input: FromJson checks every type, size and count (a snapshot file may be corrupt or
// crafted) and returns an Error naming the component; values inside KVM structs are validated by
// KVM itself when restored.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

#include "base/result.h"
#include "devices/legacy/cmos.h"
#include "devices/legacy/serial.h"
#include "devices/pci/pci_root.h"

namespace clonevm {

struct VcpuState {
  kvm_regs regs{};
  kvm_sregs sregs{};
  std::vector<uint8_t> xsave;  // KVM_GET_XSAVE(2) area, at least 4096 bytes
  kvm_xcrs xcrs{};
  kvm_lapic_state lapic{};
  kvm_vcpu_events events{};
  kvm_mp_state mp_state{};
  kvm_debugregs debugregs{};
  uint32_t tsc_khz = 0;
  std::vector<kvm_cpuid_entry2> cpuid;  // as the vCPU was given it (KVM_GET_CPUID2)
  std::vector<kvm_msr_entry> msrs;      // every MSR of KVM_GET_MSR_INDEX_LIST that reads (TSC, kvmclock, APIC base...)
};

struct VirtioSlotState {
  uint32_t device_type = 0;  // checked against the device recreated in the same slot
  nlohmann::json transport;  // MmioTransport::SaveState()
};

struct VmState {
  std::vector<VcpuState> vcpus;
  kvm_irqchip pic_master{};
  kvm_irqchip pic_slave{};
  kvm_irqchip ioapic{};
  kvm_pit_state2 pit{};
  kvm_clock_data clock{};
  Serial::State serial;
  Cmos::State cmos;
  PciRoot::State pci;
  std::vector<VirtioSlotState> virtio;  // in MMIO slot order
};

nlohmann::json VmStateToJson(const VmState& state);
[[nodiscard]] Result<VmState> VmStateFromJson(const nlohmann::json& tree);

// Restored time. A snapshot stops the guest's clocks; a restore (or fork) hours later must not
// start hours behind, so both of the guest's time bases move forward by the wall-clock time between
// the snapshot (`clock.realtime`) and `now_realtime_ns`, as after a suspend:
//   * ElapsedSinceSnapshot: that time (0 for snapshots without `realtime`, or a clock that went back);
//   * AdvanceClock: the kvmclock (KVM_SET_CLOCK's value), what Linux guests keep time with;
//   * AdvanceTsc: IA32_TSC in a vCPU's saved MSRs by elapsed × tsc_khz, so rdtsc users and the
//     guest's clocksource watchdog (TSC against kvmclock) see the same jump. Every vCPU moves by the
//     same amount, so their TSCs stay synchronised. No-op without a TSC MSR or a known frequency.
uint64_t ElapsedSinceSnapshot(const kvm_clock_data& saved, uint64_t now_realtime_ns);
kvm_clock_data AdvanceClock(const kvm_clock_data& saved, uint64_t elapsed_ns);
void AdvanceTsc(std::vector<kvm_msr_entry>& msrs, uint32_t tsc_khz, uint64_t elapsed_ns);

// Byte-wise equality of every field (for round-trip tests and checks).
bool operator==(const VcpuState& a, const VcpuState& b);
bool operator==(const VmState& a, const VmState& b);

}  // namespace clonevm

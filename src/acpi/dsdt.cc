#include "acpi/dsdt.h"

#include <fmt/format.h>

namespace clonevm::acpi {
namespace {

using aml::Term;

constexpr uint16_t kCom1Port = 0x3F8;
constexpr uint8_t kCom1PortCount = 8;
constexpr uint16_t kRtcPort = 0x70;
constexpr uint8_t kRtcPortCount = 2;
constexpr uint64_t kStaPresentEnabledShownFunctioning = 0x0F;
// The notification value the VM Generation ID spec defines for "the id changed".
constexpr uint64_t kVmGenIdNotifyValue = 0x80;

// \_S5_: Package {SLP_TYP for S5, reserved...}. On a hardware-reduced platform ACPICA
// (acpi_hw_extended_sleep) uses only the first element, writing it as SLP_TYP into
// SLEEP_CONTROL_REG; the remaining elements keep the classic 4-element shape.
Term S5Object() {
  return aml::Name("_S5_",
                   aml::Package({aml::Integer(kS5SleepType), aml::Integer(0), aml::Integer(0), aml::Integer(0)}));
}

Term StaAlwaysPresent() {
  return aml::Method("_STA", 0, aml::Serialize::kNotSerialized,
                     {aml::Return(aml::Integer(kStaPresentEnabledShownFunctioning))});
}

// The 16550 UART: Linux's pnpacpi/8250_pnp binds PNP0501 and takes port and IRQ from _CRS.
Term Com1Device() {
  return aml::Device("COM1", {aml::Name("_HID", aml::EisaId("PNP0501")), aml::Name("_UID", aml::Integer(0)),
                              aml::Name("_DDN", aml::String("COM1")), StaAlwaysPresent(),
                              aml::Name("_CRS", aml::ResourceTemplate({
                                                    aml::Io(kCom1Port, kCom1Port, 1, kCom1PortCount),
                                                    aml::IrqNoFlags(kCom1Irq),
                                                }))});
}

// The CMOS RTC. Without this node Linux registers a platform rtc_cmos with a hard-coded IRQ 8,
// which on a hardware-reduced platform (no legacy PIC, so no pre-mapped ISA IRQs) has no
// interrupt mapping and the probe fails; described here, rtc_cmos binds through PNP and gets
// GSI 8 mapped from _CRS, as on QEMU's microvm.
Term RtcDevice() {
  return aml::Device("RTC", {aml::Name("_HID", aml::EisaId("PNP0B00")),
                             aml::Name("_CRS", aml::ResourceTemplate({
                                                   aml::Io(kRtcPort, kRtcPort, 1, kRtcPortCount),
                                                   aml::IrqNoFlags(kRtcIrq),
                                               }))});
}

// A virtio-mmio transport: Linux's virtio_mmio matches _HID LNRO0005 and takes the register
// window (resource 0) and the interrupt (IRQ 0) from _CRS.
Term VirtioMmioDevice(size_t index, const VirtioMmioNode& node) {
  return aml::Device(
      fmt::format("V{:03X}", index),
      {aml::Name("_HID", aml::String("LNRO0005")), aml::Name("_UID", aml::Integer(index)),
       aml::Name("_CRS", aml::ResourceTemplate({
                             aml::Memory32Fixed(aml::Access::kReadWrite, static_cast<uint32_t>(node.base), node.size),
                             aml::Interrupt(aml::Usage::kConsumer, aml::Trigger::kEdge, aml::Polarity::kActiveHigh,
                                            aml::Sharing::kExclusive, {node.gsi}),
                         }))});
}

// Microsoft's VM Generation ID device. Linux's vmgenid driver evaluates ADDR, expects a Package
// of two integers {low 32 bits, high 32 bits} of the GUID's guest-physical address, and rereads
// the GUID on Notify(VGEN, 0x80).
Term VmGenIdDevice(uint64_t guid_gpa) {
  const Term addr = aml::Package({aml::Integer(guid_gpa & 0xFFFF'FFFF), aml::Integer(guid_gpa >> 32)});
  return aml::Device("VGEN", {aml::Name("_HID", aml::String(kVmGenIdHid)), aml::Name("_CID", aml::String(kVmGenIdCid)),
                              aml::Name("_DDN", aml::String(kVmGenIdCid)),
                              aml::Method("ADDR", 0, aml::Serialize::kNotSerialized, {aml::Return(addr)})});
}

// The Generic Event Device (ACPI 6.4 §5.6.9): how a hardware-reduced platform, which has no GPE
// blocks, raises ACPI events. Linux's evged driver requests the _CRS interrupt ("ACPI:Ged" in
// /proc/interrupts) and, on each edge, evaluates _EVT with the GSI as Arg0 (it would prefer an
// _Exx method, but _EVT is the general form). The only event is a new VM generation: the VMM has
// written a new id where VGEN's ADDR points and pulses the GSI; Notify(VGEN, 0x80) makes vmgenid
// reread it. The GED keeps no state of its own: a pending edge lives in the in-kernel IOAPIC (saved
// with the irqchip), and the AML is in guest RAM, so a snapshot carries both unchanged.
Term GedDevice(uint32_t gsi) {
  const Term notify_vgen = aml::Notify(aml::Path("\\_SB.VGEN"), aml::Integer(kVmGenIdNotifyValue));
  return aml::Device("GED0", {aml::Name("_HID", aml::String(kGedHid)), aml::Name("_UID", aml::Integer(0)),
                              aml::Name("_CRS", aml::ResourceTemplate({aml::Interrupt(
                                                    aml::Usage::kConsumer, aml::Trigger::kEdge,
                                                    aml::Polarity::kActiveHigh, aml::Sharing::kExclusive, {gsi})})),
                              aml::Method("_EVT", 1, aml::Serialize::kSerialized,
                                          {aml::If(aml::Equal(aml::Arg(0), aml::Integer(gsi)), {notify_vgen})})});
}

}  // namespace

aml::Bytes BuildDsdtBody(const AcpiConfig& config) {
  std::vector<Term> system_bus;
  if (config.com1) system_bus.push_back(Com1Device());
  if (config.cmos_rtc) system_bus.push_back(RtcDevice());
  for (size_t i = 0; i < config.virtio_mmio.size(); ++i) {
    system_bus.push_back(VirtioMmioDevice(i, config.virtio_mmio[i]));
  }
  if (config.vmgenid_gpa) system_bus.push_back(VmGenIdDevice(*config.vmgenid_gpa));
  if (config.ged_gsi) system_bus.push_back(GedDevice(*config.ged_gsi));
  return aml::TermList({S5Object(), aml::Scope("\\_SB", system_bus)});
}

}  // namespace clonevm::acpi

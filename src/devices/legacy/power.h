// Devices through which the guest powers off or resets the machine:
//  - AcpiPm: the hardware-reduced ACPI sleep control/status and reset registers the FADT points
//    at (layout in acpi/tables.h): writing SLP_TYP=S5 with SLP_EN powers off; writing the reset
//    value to the reset register resets.
//  - I8042: just enough of the PS/2 controller for "write 0xFE to port 0x64" (pulse reset line),
//    the fallback reboot method of Linux. It reports no keyboard data.
// The callbacks run on the vCPU thread that made the access.
#pragma once

#include <functional>

#include "devices/bus.h"

namespace clonevm {

enum class PowerEvent { kPowerOff, kReset };
using PowerHandler = std::function<void(PowerEvent)>;

class AcpiPm : public BusDevice {
 public:
  explicit AcpiPm(PowerHandler handler) : handler_(std::move(handler)) {}
  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

 private:
  PowerHandler handler_;
};

class I8042 : public BusDevice {
 public:
  explicit I8042(PowerHandler handler) : handler_(std::move(handler)) {}
  // Offsets: 0 = data port 0x60, 4 = command/status port 0x64.
  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

 private:
  PowerHandler handler_;
};

}  // namespace clonevm

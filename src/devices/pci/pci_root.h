// PciRoot: PCI configuration space through the legacy type-1 mechanism (I/O ports 0xCF8 address,
// 0xCFC-0xCFF data) with one host bridge at 00:00.0 and no other devices yet.
//
// Why a bridge with nothing behind it: stock kernels probe PCI at boot. Without a working config
// mechanism they print "PCI: Fatal: No config space access function found"; with one but no host
// bridge on bus 0 (and no DMI year) their sanity check rejects it the same way. A host bridge
// makes the probe succeed quickly (a vendor-ID read per slot). Passthrough devices (VFIO) will be
// added behind this root.
//
// Reads of absent functions return all ones. Guest writes to the bridge's header are ignored
// (it has no BARs and nothing to configure). Thread-safety: locked; vCPU threads call it.
#pragma once

#include <cstdint>
#include <mutex>

#include "devices/bus.h"

namespace clonevm {

class PciRoot : public BusDevice {
 public:
  static constexpr uint16_t kConfigAddressPort = 0xcf8;
  static constexpr uint16_t kPortCount = 8;  // 0xCF8-0xCFF

  // Offsets relative to 0xCF8.
  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

  struct State {
    uint32_t config_address = 0;
  };
  State SaveState() const;
  void RestoreState(const State& state);

 private:
  uint32_t ReadConfigDword(uint32_t address) const;

  mutable std::mutex mu_;
  State s_;
};

}  // namespace clonevm

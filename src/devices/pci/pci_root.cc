#include "devices/pci/pci_root.h"

#include <algorithm>
#include <cstring>

namespace clonevm {
namespace {

constexpr uint32_t kEnableBit = 1u << 31;
constexpr uint16_t kHostBridgeVendor = 0x8086;  // the ID other VMMs use for a virtual host bridge
constexpr uint16_t kHostBridgeDevice = 0x0d57;
constexpr uint32_t kClassHostBridge = 0x060000;  // base class 06 (bridge), subclass 00 (host)

uint32_t BusNumber(uint32_t a) { return (a >> 16) & 0xff; }
uint32_t DevFn(uint32_t a) { return (a >> 8) & 0xff; }
uint32_t Register(uint32_t a) { return a & 0xfc; }

}  // namespace

uint32_t PciRoot::ReadConfigDword(uint32_t address) const {
  if (!(address & kEnableBit) || BusNumber(address) != 0 || DevFn(address) != 0) return 0xffffffff;
  switch (Register(address)) {
    case 0x00:
      return (uint32_t{kHostBridgeDevice} << 16) | kHostBridgeVendor;
    case 0x08:
      return kClassHostBridge << 8;  // revision 0
    default:
      return 0;  // command/status, header type 0, no BARs, no capabilities
  }
}

void PciRoot::Read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mu_);
  if (offset < 4) {
    if (offset != 0 || data.size() != 4) return;  // the address register is dword-only
    std::memcpy(data.data(), &s_.config_address, 4);
    return;
  }
  uint64_t byte = offset - 4;
  if (byte + data.size() > 4) return;
  uint32_t dword = ReadConfigDword(s_.config_address);
  std::memcpy(data.data(), reinterpret_cast<uint8_t*>(&dword) + byte, data.size());
}

void PciRoot::Write(uint64_t offset, std::span<const uint8_t> data) {
  std::lock_guard lock(mu_);
  if (offset == 0 && data.size() == 4) {
    std::memcpy(&s_.config_address, data.data(), 4);
    s_.config_address &= 0x80fffffc;  // reserved bits 30:24 and 1:0 read as zero
  }
  // Data writes: the host bridge header is read-only and absent functions ignore writes.
}

PciRoot::State PciRoot::SaveState() const {
  std::lock_guard lock(mu_);
  return s_;
}

void PciRoot::RestoreState(const State& state) {
  std::lock_guard lock(mu_);
  s_ = state;
}

}  // namespace clonevm

// Buses: maps from guest address ranges (port I/O or MMIO) to devices.
//
// A BusDevice sees offsets relative to its base. Read() fills `data` (pre-set to 0xff by the bus,
// the value of an undriven line); Write() consumes it. Accesses come from vCPU threads, several at
// once: devices lock their own state. The bus map is built before the vCPUs start and is immutable
// afterwards, so lookups need no lock.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>

#include "base/result.h"

namespace clonevm {

class BusDevice {
 public:
  virtual ~BusDevice() = default;
  virtual void Read(uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void Write(uint64_t offset, std::span<const uint8_t> data) = 0;
};

class Bus {
 public:
  // Fails if [base, base+len) overlaps a range already inserted.
  [[nodiscard]] Result<void> Insert(uint64_t base, uint64_t len, std::shared_ptr<BusDevice> device);
  // Returns false when no device covers addr (data is then all 0xff for reads).
  bool Read(uint64_t addr, std::span<uint8_t> data) const;
  bool Write(uint64_t addr, std::span<const uint8_t> data) const;
  // The device covering `addr`, or null (snapshots find their stateful devices this way).
  std::shared_ptr<BusDevice> DeviceAt(uint64_t addr) const;

 private:
  struct Range {
    uint64_t len;
    std::shared_ptr<BusDevice> device;
  };
  const std::pair<const uint64_t, Range>* Find(uint64_t addr, uint64_t len) const;
  std::map<uint64_t, Range> ranges_;
};

}  // namespace clonevm

// MmioDriver: a virtio-mmio driver for tests, doing what Linux's virtio_mmio does through
// registers: identify, negotiate features, set up queues from QueueDriver layouts, DRIVER_OK.
#pragma once

#include <cstdint>

#include "devices/virtio/mmio_transport.h"
#include "devices/virtio/testing/queue_driver.h"

namespace clonevm::virtio::testing {

class MmioDriver {
 public:
  explicit MmioDriver(MmioTransport& transport) : transport_(transport) {}

  uint32_t Read32(uint64_t offset);
  void Write32(uint64_t offset, uint32_t value);

  uint64_t DeviceFeatures();
  // Reset, ACKNOWLEDGE | DRIVER, writes `features`, sets FEATURES_OK. Returns whether the device
  // kept FEATURES_OK.
  bool Negotiate(uint64_t features);
  // Selects queue `index`, writes size and ring addresses from `queue`, sets QueueReady.
  void SetUpQueue(uint32_t index, const QueueDriver& queue);
  void SetStatus(uint32_t status) { Write32(0x70, status); }
  uint32_t Status() { return Read32(0x70); }
  // Sets DRIVER_OK on top of the current status.
  void DriverOk();
  void Notify(uint32_t queue) { Write32(0x50, queue); }
  uint32_t InterruptStatus() { return Read32(0x60); }
  void Ack(uint32_t bits) { Write32(0x64, bits); }

 private:
  MmioTransport& transport_;
};

}  // namespace clonevm::virtio::testing

#include "devices/virtio/testing/mmio_driver.h"

#include <cstring>

#include "devices/virtio/virtio_spec.h"

namespace clonevm::virtio::testing {

uint32_t MmioDriver::Read32(uint64_t offset) {
  uint8_t bytes[4];
  transport_.Read(offset, bytes);
  uint32_t value;
  std::memcpy(&value, bytes, 4);
  return value;
}

void MmioDriver::Write32(uint64_t offset, uint32_t value) {
  uint8_t bytes[4];
  std::memcpy(bytes, &value, 4);
  transport_.Write(offset, bytes);
}

uint64_t MmioDriver::DeviceFeatures() {
  Write32(0x14, 1);
  uint64_t high = Read32(0x10);
  Write32(0x14, 0);
  return (high << 32) | Read32(0x10);
}

bool MmioDriver::Negotiate(uint64_t features) {
  SetStatus(0);
  SetStatus(kStatusAcknowledge);
  SetStatus(kStatusAcknowledge | kStatusDriver);
  Write32(0x24, 0);
  Write32(0x20, static_cast<uint32_t>(features));
  Write32(0x24, 1);
  Write32(0x20, static_cast<uint32_t>(features >> 32));
  SetStatus(kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  return (Status() & kStatusFeaturesOk) != 0;
}

void MmioDriver::SetUpQueue(uint32_t index, const QueueDriver& queue) {
  Write32(0x30, index);
  Write32(0x38, queue.Config().size);
  Write32(0x80, static_cast<uint32_t>(queue.desc_addr()));
  Write32(0x84, static_cast<uint32_t>(queue.desc_addr() >> 32));
  Write32(0x90, static_cast<uint32_t>(queue.avail_addr()));
  Write32(0x94, static_cast<uint32_t>(queue.avail_addr() >> 32));
  Write32(0xa0, static_cast<uint32_t>(queue.used_addr()));
  Write32(0xa4, static_cast<uint32_t>(queue.used_addr() >> 32));
  Write32(0x44, 1);
}

void MmioDriver::DriverOk() { SetStatus(Status() | kStatusDriverOk); }

}  // namespace clonevm::virtio::testing

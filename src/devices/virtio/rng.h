// Rng: virtio-rng, the entropy device (virtio 1.2, 5.4). One request queue, no config space, no
// device features.
//
// Every chain the driver makes available is answered with random bytes from getrandom(2) written
// into its writable buffers, at most kMaxBytesPerRequest per chain so one request cannot make the
// event loop spend long on it (5.4.6.1 lets the device use less than the whole buffer). Readable
// buffers, which the driver should not send, are ignored.
#pragma once

#include <array>
#include <optional>

#include "devices/virtio/virtio_device.h"

namespace clonevm::virtio {

class Rng : public VirtioDevice {
 public:
  static constexpr uint16_t kQueueSize = 256;
  static constexpr uint32_t kMaxBytesPerRequest = 64 * 1024;

  uint32_t device_type() const override { return kDeviceTypeEntropy; }
  std::span<const uint16_t> queue_max_sizes() const override { return kQueueSizes; }
  uint64_t device_features() const override { return 0; }

  Result<void> Activate(const DeviceContext& context) override;
  void Reset() override;
  Result<void> ProcessQueue(size_t index) override;

  nlohmann::json SaveState() const override;
  Result<void> RestoreState(const nlohmann::json& state) override;

 private:
  static constexpr std::array<uint16_t, 1> kQueueSizes = {kQueueSize};

  std::optional<DeviceContext> context_;  // set while active
};

// Fills `out` with random bytes from getrandom(2); returns how many were written (less only when
// the kernel fails, which is logged).
size_t FillRandom(std::span<uint8_t> out);

}  // namespace clonevm::virtio

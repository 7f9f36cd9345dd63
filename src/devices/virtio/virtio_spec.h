// Constants from the virtio 1.2 specification shared by the queue, the transports and the devices.
// Section numbers refer to "Virtual I/O Device (VIRTIO) Version 1.2".
#pragma once

#include <bit>
#include <cstdint>

namespace clonevm::virtio {

// Virtio structures are little-endian (2.4); Clone only runs on little-endian hosts, so guest
// memory is read and written with native byte order.
static_assert(std::endian::native == std::endian::little);

// Device types (5): the DeviceID register.
inline constexpr uint32_t kDeviceTypeNet = 1;
inline constexpr uint32_t kDeviceTypeBlock = 2;
inline constexpr uint32_t kDeviceTypeConsole = 3;
inline constexpr uint32_t kDeviceTypeEntropy = 4;
inline constexpr uint32_t kDeviceTypeBalloon = 5;
inline constexpr uint32_t kDeviceTypeVsock = 19;
inline constexpr uint32_t kDeviceTypeFs = 26;

// Device-independent feature bits (6).
inline constexpr uint64_t kFeatureIndirectDesc = 1ull << 28;  // VIRTIO_F_INDIRECT_DESC
inline constexpr uint64_t kFeatureEventIdx = 1ull << 29;      // VIRTIO_F_EVENT_IDX
inline constexpr uint64_t kFeatureVersion1 = 1ull << 32;      // VIRTIO_F_VERSION_1

// Device status bits (2.1).
inline constexpr uint32_t kStatusAcknowledge = 1;
inline constexpr uint32_t kStatusDriver = 2;
inline constexpr uint32_t kStatusDriverOk = 4;
inline constexpr uint32_t kStatusFeaturesOk = 8;
inline constexpr uint32_t kStatusNeedsReset = 64;
inline constexpr uint32_t kStatusFailed = 128;

// Split virtqueue descriptor flags (2.7.5) and ring flags (2.7.6, 2.7.8).
inline constexpr uint16_t kDescFlagNext = 1;
inline constexpr uint16_t kDescFlagWrite = 2;
inline constexpr uint16_t kDescFlagIndirect = 4;
inline constexpr uint16_t kAvailFlagNoInterrupt = 1;
inline constexpr uint16_t kUsedFlagNoNotify = 1;

// Largest queue size a split virtqueue may have (2.7: "Queue Size ... maximum 32768").
inline constexpr uint32_t kMaxQueueSize = 32768;

// InterruptStatus bits (4.2.2).
inline constexpr uint32_t kInterruptUsedBuffer = 1;
inline constexpr uint32_t kInterruptConfigChange = 2;

}  // namespace clonevm::virtio

// Block: virtio-blk, the block device (virtio 1.2, 5.2), over a BlockBackend (raw or qcow2 image).
//
//   auto backend = CLONE_TRY(OpenImage(path, OpenMode{.read_only = ro}, Format::kRaw));
//   auto block = CLONE_TRY(virtio::Block::Create(std::move(backend), "serial-1234"));
//   auto transport = CLONE_TRY(virtio::MmioTransport::Create(memory, std::move(block)));
//
// One request queue (kQueueSize entries). Features offered: SEG_MAX (kSegMax), BLK_SIZE (512),
// FLUSH, and RO for a read-only backend or DISCARD + WRITE_ZEROES for a writable one. The config
// space is struct virtio_blk_config (little-endian); capacity is size() / 512, rounded down (a
// trailing partial sector is not visible to the guest).
//
// Requests: a 16-byte header (type, reserved, sector) at the start of the readable part, the data,
// and a status byte as the last writable byte. Data moves straight between guest buffers and the
// backend, one backend call per guest buffer. Results the protocol can express are answered
// in-band: a backend error, a write to a read-only disk, a range outside the disk, a data length
// that is not a multiple of 512 or a bad discard/write-zeroes segment → VIRTIO_BLK_S_IOERR; an
// unknown type, or DISCARD / WRITE_ZEROES not negotiated, or unknown segment flags (or UNMAP on a
// discard) → VIRTIO_BLK_S_UNSUPP. The device keeps working.
//
// Guest errors (ProcessQueue returns an Error → the transport sets NEEDS_RESET): a chain without a
// writable status byte, a readable part shorter than the header, or data in the wrong direction
// for the type (readable data after an IN/GET_ID header, writable data before the status of an
// OUT/DISCARD/WRITE_ZEROES request).
//
// Write cache: when the driver negotiates FLUSH the backend is a write-back cache and T_FLUSH calls
// BlockBackend::Flush(); when it does not, every write is flushed before it completes (5.2.6.2).
//
// State: the backend is reopened by the VMM and handed to a fresh Block, never serialized. The
// saved JSON (version, capacity, serial, read_only, features) must match the new device: a different
// capacity, serial, mode or feature set is an error, since the guest has already read them.
//
// Thread-safety: none (the transport's lock); the backend is used on the thread calling
// ProcessQueue().
#pragma once

#include <linux/virtio_blk.h>

#include <array>
#include <memory>
#include <optional>
#include <string>

#include "block/block_backend.h"
#include "devices/virtio/virtio_device.h"
#include "devices/virtio/virtio_spec.h"

namespace clonevm::virtio {

class Block : public VirtioDevice {
 public:
  static constexpr uint16_t kQueueSize = 256;
  static constexpr uint32_t kSectorSize = 512;
  // Data segments per request; + header + status stays far inside kMaxChainLength.
  static constexpr uint32_t kSegMax = 126;
  static constexpr size_t kMaxSerialLength = VIRTIO_BLK_ID_BYTES;  // 20
  static constexpr uint32_t kMaxDiscardSectors = 1u << 22;         // 2 GiB per segment
  static constexpr uint32_t kMaxDiscardSegments = 32;
  static constexpr uint32_t kDiscardSectorAlignment = 8;  // 4 KiB: hole-punching granularity
  static constexpr uint32_t kMaxWriteZeroesSectors = 1u << 16;  // 32 MiB per segment
  static constexpr uint32_t kMaxWriteZeroesSegments = 32;

  // Fails when backend is null or serial is longer than kMaxSerialLength bytes.
  [[nodiscard]] static Result<std::unique_ptr<Block>> Create(std::unique_ptr<BlockBackend> backend,
                                                             std::string serial);

  uint32_t device_type() const override { return kDeviceTypeBlock; }
  std::span<const uint16_t> queue_max_sizes() const override { return kQueueSizes; }
  uint64_t device_features() const override { return features_; }

  uint32_t config_size() const override { return sizeof(config_); }
  void ReadConfig(uint64_t offset, std::span<uint8_t> data) override;

  Result<void> Activate(const DeviceContext& context) override;
  void Reset() override;
  Result<void> ProcessQueue(size_t index) override;

  nlohmann::json SaveState() const override;
  Result<void> RestoreState(const nlohmann::json& state) override;

  uint64_t capacity_sectors() const { return capacity_; }
  const std::string& serial() const { return serial_; }
  bool read_only() const { return read_only_; }

 private:
  static constexpr std::array<uint16_t, 1> kQueueSizes = {kQueueSize};

  Block(std::unique_ptr<BlockBackend> backend, std::string serial);

  // Handles one chain: the status to write, or an Error for a guest error.
  [[nodiscard]] Result<uint8_t> HandleRequest(const DescriptorChain& chain);
  [[nodiscard]] uint8_t DoRead(const DescriptorChain& chain, uint64_t sector, uint64_t len);
  [[nodiscard]] uint8_t DoWrite(const DescriptorChain& chain, uint64_t sector, uint64_t len);
  [[nodiscard]] uint8_t DoFlush();
  [[nodiscard]] uint8_t DoGetId(const DescriptorChain& chain, uint64_t len);
  [[nodiscard]] uint8_t DoDiscardOrWriteZeroes(const DescriptorChain& chain, uint32_t type, uint64_t len);
  // Flushes after a write when the driver did not negotiate FLUSH (write-through).
  [[nodiscard]] uint8_t CompleteWrite();

  std::unique_ptr<BlockBackend> backend_;
  std::string serial_;
  bool read_only_;
  uint64_t capacity_;  // sectors
  uint64_t features_;
  virtio_blk_config config_{};  // little-endian, as the guest reads it
  bool write_back_ = false;     // FLUSH negotiated
  std::optional<DeviceContext> context_;  // set while active
};

}  // namespace clonevm::virtio

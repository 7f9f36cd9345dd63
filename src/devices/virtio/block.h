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
// Asynchronous I/O: for a backend with a direct_fd() (raw images) reads, writes and flushes go
// through an IoRing (io_uring): ProcessQueue() validates and submits them and returns; their
// completions arrive on completion_fd(), and HandleCompletions() (the VM event loop, under the
// transport lock) returns each finished request to the used ring as it completes, out of order.
// At most `max_in_flight` io_uring operations are outstanding; when the ring is full the device
// stops taking chains from the avail ring and continues when completions free room. A flush is an
// IORING_OP_FSYNC (DATASYNC) with IOSQE_IO_DRAIN, so it starts after every earlier request
// completed; a write without negotiated FLUSH is linked to an fdatasync. A short transfer is
// finished synchronously. Discard, write-zeroes and GET_ID stay synchronous, and so does every
// request on a backend without direct_fd() (qcow2: its cluster mapping and metadata updates are
// synchronous; a data-only fast path is possible later). When io_uring is unavailable
// (io_uring_queue_init fails: old kernel, seccomp, io_uring_disabled) or BlockIo::kSync is asked
// for, all I/O is synchronous on the calling thread, as completion_fd() == -1 tells the VMM.
//
// Reset() (and the destructor) wait for the requests in flight — the kernel may still be writing
// into guest buffers — and drop them without an answer, as the driver expects after a reset.
// Drain() waits for them and answers them (for a pause or snapshot).
//
// State: the backend is reopened by the VMM and handed to a fresh Block, never serialized. The
// saved JSON (version, capacity, serial, read_only, features) must match the new device: a different
// capacity, serial, mode or feature set is an error, since the guest has already read them. Call
// Drain() before SaveState(): requests in flight are not part of the state.
//
// Thread-safety: none (the transport's lock); the backend and the ring are used on the thread
// calling ProcessQueue() / HandleCompletions() (vCPU threads and the event loop, one at a time).
#pragma once

#include <linux/virtio_blk.h>
#include <sys/uio.h>

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "block/block_backend.h"
#include "block/io_ring.h"
#include "devices/virtio/virtio_device.h"
#include "devices/virtio/virtio_spec.h"

namespace clonevm::virtio {

enum class BlockIo {
  kAuto,  // io_uring when the backend has a direct_fd() and io_uring works, else synchronous
  kSync,  // always synchronous (the fallback, selectable for tests and debugging)
};

struct BlockOptions {
  BlockIo io = BlockIo::kAuto;
  unsigned max_in_flight = 128;  // io_uring operations outstanding at once (1..IoRing::kMaxDepth)
};

class Block : public VirtioDevice {
 public:
  static constexpr uint16_t kQueueSize = 256;
  static constexpr uint32_t kSectorSize = 512;
  // Data segments per request; + header + status stays far inside kMaxChainLength.
  static constexpr uint32_t kSegMax = 126;
  static constexpr size_t kMaxSerialLength = VIRTIO_BLK_ID_BYTES;  // 20
  static constexpr uint32_t kMaxDiscardSectors = 1u << 22;         // 2 GiB per segment
  static constexpr uint32_t kMaxDiscardSegments = 32;
  static constexpr uint32_t kDiscardSectorAlignment = 8;        // 4 KiB: hole-punching granularity
  static constexpr uint32_t kMaxWriteZeroesSectors = 1u << 16;  // 32 MiB per segment
  static constexpr uint32_t kMaxWriteZeroesSegments = 32;

  // Fails when backend is null, serial is longer than kMaxSerialLength bytes or max_in_flight is
  // out of range. An unavailable io_uring is not an error: the device logs it and runs synchronously.
  [[nodiscard]] static Result<std::unique_ptr<Block>> Create(std::unique_ptr<BlockBackend> backend, std::string serial,
                                                             BlockOptions options = {});
  ~Block() override;

  uint32_t device_type() const override { return kDeviceTypeBlock; }
  std::span<const uint16_t> queue_max_sizes() const override { return kQueueSizes; }
  uint64_t device_features() const override { return features_; }

  uint32_t config_size() const override { return sizeof(config_); }
  void ReadConfig(uint64_t offset, std::span<uint8_t> data) override;

  Result<void> Activate(const DeviceContext& context) override;
  void Reset() override;
  Result<void> ProcessQueue(size_t index) override;

  // The io_uring completion eventfd (when async()), watched by the VMM's event loop; its event
  // runs HandleCompletions(). Pause() is Drain() then the backend's Flush(): nothing changes
  // guest memory afterwards, and the image file is complete (qcow2 metadata written), so a
  // snapshot can copy it.
  std::vector<WatchedFd> watched_fds() const override;
  Result<void> HandleFdEvent(size_t index, uint32_t events) override;
  Result<void> Pause() override {
    CLONE_TRY_VOID(Drain());
    return backend_->Flush();
  }

  nlohmann::json SaveState() const override;
  Result<void> RestoreState(const nlohmann::json& state) override;

  // The eventfd that becomes readable when asynchronous requests complete, or -1 when the device
  // does all its I/O synchronously. The VMM watches it and calls HandleCompletions().
  int completion_fd() const { return ring_ ? ring_->event_fd() : -1; }
  // Returns finished requests to the used ring (interrupting the driver as it asks), then takes
  // more chains if a full ring had stopped it. An Error is a guest error, as from ProcessQueue().
  [[nodiscard]] Result<void> HandleCompletions();
  // Waits for every request in flight and answers it. An Error is a host failure of io_uring.
  [[nodiscard]] Result<void> Drain();
  bool async() const { return ring_ != nullptr; }
  size_t requests_in_flight() const { return requests_.size() - free_requests_.size(); }

  uint64_t capacity_sectors() const { return capacity_; }
  const std::string& serial() const { return serial_; }
  bool read_only() const { return read_only_; }

 private:
  static constexpr std::array<uint16_t, 1> kQueueSizes = {kQueueSize};

  // A request handed to io_uring, from submission to its last completion.
  struct AsyncRequest {
    enum class Kind : uint8_t { kRead, kWrite, kFlush };
    std::optional<DescriptorChain> chain;
    Kind kind = Kind::kRead;
    uint64_t offset = 0;       // disk byte offset (reads and writes)
    uint64_t length = 0;       // bytes (reads and writes)
    std::vector<iovec> iov;    // the guest data buffers; must live until the last completion
    uint8_t pending = 0;       // completions still to come
    bool sync_linked = false;  // a write followed by a linked fdatasync (write-through)
    int32_t data_result = 0;
    int32_t sync_result = 0;
  };

  Block(std::unique_ptr<BlockBackend> backend, std::string serial);
  void SetUpAsync(const BlockOptions& options);

  // Pops and handles chains until the avail ring is empty or the io_uring is full.
  [[nodiscard]] Result<void> TakeRequests(Queue& queue, bool* used_any);
  // Handles one chain: the status to answer with now, nullopt when it went to io_uring (the chain
  // was moved into an AsyncRequest), or an Error for a guest error.
  [[nodiscard]] Result<std::optional<uint8_t>> HandleRequest(DescriptorChain& chain);
  [[nodiscard]] std::optional<uint8_t> DoRead(DescriptorChain& chain, uint64_t sector, uint64_t len);
  [[nodiscard]] std::optional<uint8_t> DoWrite(DescriptorChain& chain, uint64_t sector, uint64_t len);
  [[nodiscard]] std::optional<uint8_t> DoFlush(DescriptorChain& chain);
  [[nodiscard]] uint8_t SyncFlush();
  [[nodiscard]] uint8_t DoGetId(const DescriptorChain& chain, uint64_t len);
  [[nodiscard]] uint8_t DoDiscardOrWriteZeroes(const DescriptorChain& chain, uint32_t type, uint64_t len);
  // Flushes after a write when the driver did not negotiate FLUSH (write-through).
  [[nodiscard]] uint8_t CompleteWrite();
  // Writes the status byte and returns the chain to the used ring.
  static void Answer(Queue& queue, DescriptorChain chain, uint8_t status);

  // io_uring: submission and completion of AsyncRequests.
  [[nodiscard]] bool Submit(DescriptorChain& chain, AsyncRequest::Kind kind, uint64_t offset, uint64_t length);
  void OnCompletion(uint64_t tag, int32_t result, bool answer);
  [[nodiscard]] uint8_t FinishStatus(AsyncRequest& request);
  // Waits for all requests in flight; answers them (answer) or abandons them.
  [[nodiscard]] Result<void> WaitForRequests(bool answer);
  void SubmitQueued();

  std::unique_ptr<BlockBackend> backend_;
  std::string serial_;
  bool read_only_;
  uint64_t capacity_;  // sectors
  uint64_t features_;
  virtio_blk_config config_{};            // little-endian, as the guest reads it
  bool write_back_ = false;               // FLUSH negotiated
  std::optional<DeviceContext> context_;  // set while active
  bool used_pending_ = false;             // answers added since the last notification check
  bool queue_blocked_ = false;            // stopped popping because the ring was full

  // Asynchronous I/O (ring_ null: synchronous). ring_ is declared after requests_ so it is
  // destroyed (waiting for the kernel) before the iovecs it points to.
  std::vector<AsyncRequest> requests_;  // indexed by io_uring tag
  std::vector<uint32_t> free_requests_;
  std::unique_ptr<IoRing> ring_;
};

}  // namespace clonevm::virtio

// Queue: the device side of one split virtqueue (virtio 1.2, 2.7) over GuestMemory.
//
// Life cycle: the transport writes the driver's configuration (size, ring addresses, ready) into
// config(), then Activate() checks it against guest RAM and binds the queue; Pop()/AddUsed()/
// NeedsNotification() work only while the queue is active. Deactivate() stops it (outstanding
// chains become stale and AddUsed() drops them); Reset() also forgets the configuration.
//
// Guest data: the descriptor table, the avail ring and every index in them are guest-controlled.
// Each is copied out of guest memory once and then checked: a descriptor index >= size, a buffer
// outside RAM, a zero-length buffer, a loop, a chain longer than kMaxChainLength, a readable buffer
// after a writable one, a nested indirect table or one whose length is not a multiple of 16, or an
// avail index more than `size` ahead: Pop() returns an Error and the transport puts the device in
// NEEDS_RESET. Nothing the guest writes makes the queue read outside guest RAM or abort.
//
// Memory ordering (2.7.13): the avail index is read before the ring entries it publishes (acquire
// fence); used entries are written before the used index (release fence); a full fence separates
// publishing our index from reading the driver's suppression fields.
//
// Dirty tracking (incremental snapshots): this is the choke point through which userspace devices
// write guest memory on the guest's behalf. While the memory's dirty log is enabled, AddUsed() marks
// the chain's device-writable buffers and the used ring, and Pop() marks the avail_event it writes
// (GuestMemory::MarkDirty). Devices write a chain's buffers only between Pop() and AddUsed(), and
// Vm::PauseDevices() completes every chain a device was writing, so a snapshot sees all their writes.
//
// Thread-safety: none; the transport serialises access with its lock. DescriptorChains popped from
// the queue may be completed later (AddUsed) under the same lock.
#pragma once

#include <cstdint>
#include <optional>

#include "base/result.h"
#include "devices/virtio/descriptor_chain.h"
#include "memory/guest_memory.h"

namespace clonevm::virtio {

// The longest chain accepted, counting every descriptor in it (direct and indirect). Devices must
// advertise request limits inside it (e.g. virtio-blk seg_max <= kMaxChainLength - 2).
inline constexpr uint32_t kMaxChainLength = 1024;

// Per-queue configuration written by the driver (size, ready, addresses: guest-controlled), plus the
// device's own ring positions. Plain data for snapshots.
struct QueueConfig {
  uint16_t size = 0;        // QueueNum: must be a power of two, 1..max_size (checked by Activate)
  bool ready = false;       // QueueReady
  uint64_t desc_addr = 0;   // descriptor table, 16-byte aligned
  uint64_t avail_addr = 0;  // "driver area", 2-byte aligned
  uint64_t used_addr = 0;   // "device area", 4-byte aligned
  uint16_t next_avail = 0;  // the next avail ring slot the device reads
  uint16_t next_used = 0;   // the used index the device publishes next

  bool operator==(const QueueConfig&) const = default;
};

class Queue {
 public:
  // max_size: the QueueNumMax the device supports; a power of two <= kMaxQueueSize.
  explicit Queue(uint16_t max_size);

  uint16_t max_size() const { return max_size_; }
  QueueConfig& config() { return config_; }
  const QueueConfig& config() const { return config_; }
  bool active() const { return memory_ != nullptr; }

  // Checks the configuration (size, alignment, rings inside RAM) and binds the queue to `memory`,
  // which must outlive the activation. `features` are the negotiated feature bits (EVENT_IDX,
  // INDIRECT_DESC). An error names the guest's mistake; the queue stays inactive.
  [[nodiscard]] Result<void> Activate(const GuestMemory& memory, uint64_t features);
  // Unbinds the queue; chains popped before are dropped when returned. Keeps the configuration.
  void Deactivate();
  // Deactivate() and back to the power-on configuration (size = max_size, not ready, indices 0).
  void Reset();

  // The next available chain: nullopt when the ring is empty (or the queue is inactive), an Error
  // when the guest published something invalid. With EVENT_IDX an empty result also publishes
  // avail_event so the driver notifies us of the next buffer.
  [[nodiscard]] Result<std::optional<DescriptorChain>> Pop();

  // Returns `chain` to the guest with `written_len` bytes written into its writable part (must be
  // <= chain.writable_bytes()). A chain from before the last Deactivate()/Reset() is dropped.
  void AddUsed(DescriptorChain chain, uint32_t written_len);

  // Whether the driver wants an interrupt for the used buffers added since the last call
  // (EVENT_IDX: used_event; otherwise VIRTQ_AVAIL_F_NO_INTERRUPT). Call after a batch of AddUsed().
  bool NeedsNotification();

 private:
  [[nodiscard]] Result<void> CheckLayout(const GuestMemory& memory) const;
  // Marks `chain`'s writable buffers and the used ring in the dirty log (when tracking).
  void MarkDeviceWrites(const DescriptorChain& chain) const;
  [[nodiscard]] Result<DescriptorChain> ParseChain(uint16_t head) const;
  uint16_t LoadAvailIdx() const;

  uint16_t max_size_;
  QueueConfig config_;
  uint32_t generation_ = 0;  // bumped by Deactivate(); stamps chains

  // Valid while active: the negotiated features and host views of the rings.
  const GuestMemory* memory_ = nullptr;
  bool event_idx_ = false;
  bool indirect_ = false;
  std::span<uint8_t> desc_;
  std::span<uint8_t> avail_;
  std::span<uint8_t> used_;
  uint16_t signalled_used_ = 0;        // next_used at the last NeedsNotification()
  bool signalled_used_valid_ = false;  // false until the first NeedsNotification() after Activate
};

// vring_need_event (2.7.10): whether moving the used index from `old_idx` to `new_idx` passed
// `event_idx`. All arithmetic wraps at 2^16.
inline bool NeedEvent(uint16_t event_idx, uint16_t new_idx, uint16_t old_idx) {
  return static_cast<uint16_t>(new_idx - event_idx - 1) < static_cast<uint16_t>(new_idx - old_idx);
}

}  // namespace clonevm::virtio

// QueueDriver: the driver side of one split virtqueue, for tests. It lays out a descriptor table,
// avail ring and used ring in a real GuestMemory the way a driver would, builds descriptor chains
// (direct and indirect), publishes them, and reads back what the device put in the used ring. It
// writes whatever it is told, including hostile values, so tests can attack the device side.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "devices/virtio/queue.h"
#include "memory/guest_memory.h"

namespace clonevm::virtio::testing {

// One buffer of a chain to build.
struct BufferSpec {
  uint64_t gpa = 0;
  uint32_t len = 0;
  bool writable = false;
};

// A raw descriptor, written exactly as given.
struct RawDescriptor {
  uint64_t addr = 0;
  uint32_t len = 0;
  uint16_t flags = 0;
  uint16_t next = 0;
};

class QueueDriver {
 public:
  // Rings for a queue of `size` entries at `base` (16-byte aligned); data buffers are handed out
  // by Alloc() from `data_base` upward.
  QueueDriver(const GuestMemory& memory, uint16_t size, uint64_t base, uint64_t data_base);

  // The configuration a driver would write to the transport (ready = true).
  QueueConfig Config() const;
  uint64_t desc_addr() const { return desc_; }
  uint64_t avail_addr() const { return avail_; }
  uint64_t used_addr() const { return used_; }

  // A fresh, zero-filled data area of `len` bytes (16-byte aligned).
  uint64_t Alloc(uint32_t len);

  void WriteDescriptor(uint16_t index, RawDescriptor d);
  // Writes descriptors for `buffers` linked with NEXT at free table slots; returns the head index.
  uint16_t BuildChain(const std::vector<BufferSpec>& buffers);
  // Writes an indirect table holding `buffers` and one table slot pointing to it; returns the head.
  uint16_t BuildIndirectChain(const std::vector<BufferSpec>& buffers);
  // Puts `head` in the next avail slot and bumps avail->idx.
  void Publish(uint16_t head);
  uint16_t AddChain(const std::vector<BufferSpec>& buffers);  // BuildChain + Publish

  void SetAvailIdx(uint16_t idx);
  uint16_t avail_idx() const { return avail_idx_; }
  void SetAvailFlags(uint16_t flags);
  void SetUsedEvent(uint16_t idx);

  uint16_t UsedIdx() const;
  uint16_t AvailEvent() const;
  // Used ring element i (mod size): {id, len}.
  std::pair<uint32_t, uint32_t> UsedElem(uint16_t i) const;

 private:
  uint16_t NextFreeSlot();

  const GuestMemory& memory_;
  uint16_t size_;
  uint64_t desc_, avail_, used_;
  uint64_t data_next_;
  uint16_t next_slot_ = 0;
  uint16_t avail_idx_ = 0;
};

}  // namespace clonevm::virtio::testing

#include "devices/virtio/queue.h"

#include <atomic>
#include <bit>
#include <cstring>

#include "base/check.h"
#include "devices/virtio/virtio_spec.h"

namespace clonevm::virtio {
namespace {

// A split-ring descriptor as the driver wrote it (2.7.5). Every field is guest-controlled.
struct Descriptor {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(Descriptor) == 16);

// Ring layout (2.7): avail = flags, idx, ring[size], used_event; used = flags, idx,
// ring[size] of {id, len}, avail_event.
constexpr uint64_t kAvailIdxOffset = 2;
constexpr uint64_t kAvailRingOffset = 4;
constexpr uint64_t kUsedIdxOffset = 2;
constexpr uint64_t kUsedRingOffset = 4;
constexpr uint64_t kUsedElemSize = 8;

uint64_t DescTableBytes(uint32_t size) { return 16ull * size; }
uint64_t AvailRingBytes(uint32_t size) { return 6 + 2ull * size; }
uint64_t UsedRingBytes(uint32_t size) { return 6 + kUsedElemSize * size; }

// Single-copy-atomic 16-bit accesses to ring fields the driver reads or writes concurrently.
uint16_t LoadU16(std::span<uint8_t> area, uint64_t offset) {
  // SAFETY: Activate() checked that the ring is 2-byte aligned (host mappings are page-aligned, so
  // guest and host alignment agree) and `offset` is even and inside the ring.
  auto* p = reinterpret_cast<uint16_t*>(area.data() + offset);
  return std::atomic_ref<uint16_t>(*p).load(std::memory_order_relaxed);
}

void StoreU16(std::span<uint8_t> area, uint64_t offset, uint16_t value) {
  // SAFETY: as in LoadU16.
  auto* p = reinterpret_cast<uint16_t*>(area.data() + offset);
  std::atomic_ref<uint16_t>(*p).store(value, std::memory_order_relaxed);
}

Descriptor ReadDescriptor(std::span<const uint8_t> table, uint32_t index) {
  Descriptor d;
  // Copied once; the guest may rewrite the table while we parse it.
  std::memcpy(&d, table.data() + sizeof(Descriptor) * index, sizeof(Descriptor));
  return d;
}

}  // namespace

Queue::Queue(uint16_t max_size) : max_size_(max_size) {
  CLONE_CHECK(max_size > 0 && std::has_single_bit(max_size));
  config_.size = max_size;
}

Result<void> Queue::CheckLayout(const GuestMemory& memory) const {
  uint32_t size = config_.size;
  if (size == 0 || size > max_size_ || !std::has_single_bit(size)) {
    return Fail("queue size {} is not a power of two in 1..{}", size, max_size_);
  }
  if (config_.desc_addr % 16 != 0 || config_.avail_addr % 2 != 0 || config_.used_addr % 4 != 0) {
    return Fail("misaligned rings (desc {:#x}, avail {:#x}, used {:#x})", config_.desc_addr, config_.avail_addr,
                config_.used_addr);
  }
  if (memory.Span(config_.desc_addr, DescTableBytes(size)).empty() ||
      memory.Span(config_.avail_addr, AvailRingBytes(size)).empty() ||
      memory.Span(config_.used_addr, UsedRingBytes(size)).empty()) {
    return Fail("rings outside guest RAM (desc {:#x}, avail {:#x}, used {:#x}, size {})", config_.desc_addr,
                config_.avail_addr, config_.used_addr, size);
  }
  return {};
}

Result<void> Queue::Activate(const GuestMemory& memory, uint64_t features) {
  Deactivate();
  CLONE_TRY_VOID(CheckLayout(memory));
  uint32_t size = config_.size;
  desc_ = memory.Span(config_.desc_addr, DescTableBytes(size));
  avail_ = memory.Span(config_.avail_addr, AvailRingBytes(size));
  used_ = memory.Span(config_.used_addr, UsedRingBytes(size));
  event_idx_ = (features & kFeatureEventIdx) != 0;
  indirect_ = (features & kFeatureIndirectDesc) != 0;
  signalled_used_valid_ = false;
  memory_ = &memory;
  return {};
}

void Queue::Deactivate() {
  memory_ = nullptr;
  desc_ = avail_ = used_ = {};
  ++generation_;
}

void Queue::Reset() {
  Deactivate();
  config_ = QueueConfig{};
  config_.size = max_size_;
}

uint16_t Queue::LoadAvailIdx() const {
  uint16_t idx = LoadU16(avail_, kAvailIdxOffset);  // guest-controlled
  // The ring entries (and the descriptors they name) are read only after the index.
  std::atomic_thread_fence(std::memory_order_acquire);
  return idx;
}

Result<std::optional<DescriptorChain>> Queue::Pop() {
  if (!active()) return std::nullopt;
  const uint16_t size = config_.size;
  uint16_t pending = static_cast<uint16_t>(LoadAvailIdx() - config_.next_avail);
  if (pending == 0 && event_idx_) {
    // Ask for a notification at the next buffer, then look again in case it raced with us.
    StoreU16(used_, UsedRingBytes(size) - 2, config_.next_avail);  // avail_event
    memory_->MarkDirty(config_.used_addr + UsedRingBytes(size) - 2, 2);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    pending = static_cast<uint16_t>(LoadAvailIdx() - config_.next_avail);
  }
  if (pending == 0) return std::nullopt;
  if (pending > size) {
    return Fail("avail index is {} entries ahead of the device (queue size {})", pending, size);
  }
  uint16_t head = LoadU16(avail_, kAvailRingOffset + 2ull * (config_.next_avail % size));  // guest-controlled
  if (head >= size) return Fail("avail ring names descriptor {} (queue size {})", head, size);
  DescriptorChain chain = CLONE_TRY(ParseChain(head));
  ++config_.next_avail;
  return std::optional<DescriptorChain>(std::move(chain));
}

Result<DescriptorChain> Queue::ParseChain(uint16_t head) const {
  DescriptorChain chain(this, generation_, head);
  std::span<const uint8_t> table = desc_;
  uint32_t table_size = config_.size;
  bool in_indirect = false;
  uint32_t index = head;
  uint32_t visited = 0;  // descriptors read from the current table: more than its size is a loop
  for (;;) {
    if (index >= table_size) return Fail("descriptor index {} out of range (table of {})", index, table_size);
    if (++visited > table_size) return Fail("descriptor chain from head {} loops", head);
    Descriptor d = ReadDescriptor(table, index);
    if (d.flags & kDescFlagIndirect) {
      if (!indirect_) return Fail("indirect descriptor without VIRTIO_F_INDIRECT_DESC");
      if (in_indirect) return Fail("nested indirect descriptor");
      if (d.flags & kDescFlagNext) return Fail("indirect descriptor with NEXT set");
      if (d.len == 0 || d.len % sizeof(Descriptor) != 0 || d.len / sizeof(Descriptor) > kMaxChainLength) {
        return Fail("bad indirect table length {}", d.len);
      }
      table = memory_->Span(d.addr, d.len);
      if (table.empty()) return Fail("indirect table {:#x}+{:#x} outside guest RAM", d.addr, d.len);
      table_size = d.len / sizeof(Descriptor);
      in_indirect = true;
      index = 0;
      visited = 0;
      continue;
    }
    bool writable = (d.flags & kDescFlagWrite) != 0;
    if (d.len == 0) return Fail("zero-length descriptor {}", index);
    if (!writable && chain.buffers_.size() > chain.num_readable_)
      return Fail("readable descriptor after a writable one");
    if (chain.buffers_.size() >= kMaxChainLength) return Fail("descriptor chain longer than {}", kMaxChainLength);
    std::span<uint8_t> host = memory_->Span(d.addr, d.len);
    if (host.empty()) return Fail("buffer {:#x}+{:#x} outside guest RAM", d.addr, d.len);
    chain.AddBuffer(GuestBuffer{d.addr, host}, writable);
    if (!(d.flags & kDescFlagNext)) break;
    index = d.next;
  }
  chain.owed_ = true;
  return chain;
}

void Queue::AddUsed(DescriptorChain chain, uint32_t written_len) {
  CLONE_CHECK(chain.owed_ && chain.owner_ == this);
  chain.owed_ = false;
  if (!active() || chain.generation_ != generation_) return;  // popped before a reset: the guest forgot it
  CLONE_CHECK(written_len <= chain.writable_bytes());
  const uint16_t size = config_.size;
  MarkDeviceWrites(chain);
  uint32_t elem[2] = {chain.head(), written_len};  // struct virtq_used_elem { le32 id; le32 len; }
  std::memcpy(used_.data() + kUsedRingOffset + kUsedElemSize * (config_.next_used % size), elem, sizeof(elem));
  ++config_.next_used;
  // The element must be visible before the index that publishes it.
  std::atomic_thread_fence(std::memory_order_release);
  StoreU16(used_, kUsedIdxOffset, config_.next_used);
}

void Queue::MarkDeviceWrites(const DescriptorChain& chain) const {
  if (!memory_->dirty_log().enabled()) return;
  // The whole writable part, not just written_len: a device may have written more than it reports
  // (and a short report must not leave a stale page in an incremental snapshot).
  for (const GuestBuffer& b : chain.writable()) memory_->MarkDirty(b.gpa, b.host.size());
  memory_->MarkDirty(config_.used_addr, UsedRingBytes(config_.size));
}

bool Queue::NeedsNotification() {
  if (!active()) return false;
  // Our used index store must be globally visible before we read the driver's suppression state.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (!event_idx_) return (LoadU16(avail_, 0) & kAvailFlagNoInterrupt) == 0;  // guest-controlled flags
  uint16_t used_event = LoadU16(avail_, AvailRingBytes(config_.size) - 2);    // guest-controlled
  uint16_t old_used = signalled_used_;
  bool valid = signalled_used_valid_;
  signalled_used_ = config_.next_used;
  signalled_used_valid_ = true;
  return !valid || NeedEvent(used_event, config_.next_used, old_used);
}

}  // namespace clonevm::virtio

#include "devices/virtio/testing/queue_driver.h"

#include "base/check.h"
#include "devices/virtio/virtio_spec.h"

namespace clonevm::virtio::testing {

QueueDriver::QueueDriver(const GuestMemory& memory, uint16_t size, uint64_t base, uint64_t data_base)
    : memory_(memory), size_(size), data_next_(data_base) {
  desc_ = base;
  avail_ = desc_ + 16ull * size;
  used_ = (avail_ + 6 + 2ull * size + 3) & ~3ull;
  std::vector<uint8_t> zeros(used_ + 6 + 8ull * size - base);
  CLONE_CHECK(memory_.WriteBytes(base, zeros));
}

QueueConfig QueueDriver::Config() const {
  QueueConfig c;
  c.size = size_;
  c.ready = true;
  c.desc_addr = desc_;
  c.avail_addr = avail_;
  c.used_addr = used_;
  return c;
}

uint64_t QueueDriver::Alloc(uint32_t len) {
  uint64_t gpa = data_next_;
  data_next_ = (data_next_ + len + 15) & ~15ull;
  std::vector<uint8_t> zeros(len);
  CLONE_CHECK(memory_.WriteBytes(gpa, zeros));
  return gpa;
}

void QueueDriver::WriteDescriptor(uint16_t index, RawDescriptor d) {
  uint64_t at = desc_ + 16ull * index;
  CLONE_CHECK(memory_.Write(at, d.addr));
  CLONE_CHECK(memory_.Write(at + 8, d.len));
  CLONE_CHECK(memory_.Write(at + 12, d.flags));
  CLONE_CHECK(memory_.Write(at + 14, d.next));
}

uint16_t QueueDriver::NextFreeSlot() {
  uint16_t slot = next_slot_;
  next_slot_ = static_cast<uint16_t>((next_slot_ + 1) % size_);
  return slot;
}

uint16_t QueueDriver::BuildChain(const std::vector<BufferSpec>& buffers) {
  std::vector<uint16_t> slots;
  for (size_t i = 0; i < buffers.size(); ++i) slots.push_back(NextFreeSlot());
  for (size_t i = 0; i < buffers.size(); ++i) {
    bool last = i + 1 == buffers.size();
    uint16_t flags = static_cast<uint16_t>((buffers[i].writable ? kDescFlagWrite : 0) | (last ? 0 : kDescFlagNext));
    WriteDescriptor(slots[i], {buffers[i].gpa, buffers[i].len, flags, last ? uint16_t{0} : slots[i + 1]});
  }
  return slots.front();
}

uint16_t QueueDriver::BuildIndirectChain(const std::vector<BufferSpec>& buffers) {
  uint32_t table_len = static_cast<uint32_t>(16 * buffers.size());
  uint64_t table = Alloc(table_len);
  for (size_t i = 0; i < buffers.size(); ++i) {
    bool last = i + 1 == buffers.size();
    uint64_t at = table + 16 * i;
    uint16_t flags = static_cast<uint16_t>((buffers[i].writable ? kDescFlagWrite : 0) | (last ? 0 : kDescFlagNext));
    CLONE_CHECK(memory_.Write(at, buffers[i].gpa));
    CLONE_CHECK(memory_.Write(at + 8, buffers[i].len));
    CLONE_CHECK(memory_.Write(at + 12, flags));
    CLONE_CHECK(memory_.Write(at + 14, static_cast<uint16_t>(last ? 0 : i + 1)));
  }
  uint16_t head = NextFreeSlot();
  WriteDescriptor(head, {table, table_len, kDescFlagIndirect, 0});
  return head;
}

void QueueDriver::Publish(uint16_t head) {
  CLONE_CHECK(memory_.Write<uint16_t>(avail_ + 4 + 2ull * (avail_idx_ % size_), head));
  SetAvailIdx(static_cast<uint16_t>(avail_idx_ + 1));
}

uint16_t QueueDriver::AddChain(const std::vector<BufferSpec>& buffers) {
  uint16_t head = BuildChain(buffers);
  Publish(head);
  return head;
}

void QueueDriver::SetAvailIdx(uint16_t idx) {
  avail_idx_ = idx;
  CLONE_CHECK(memory_.Write<uint16_t>(avail_ + 2, idx));
}

void QueueDriver::SetAvailFlags(uint16_t flags) { CLONE_CHECK(memory_.Write<uint16_t>(avail_, flags)); }

void QueueDriver::SetUsedEvent(uint16_t idx) { CLONE_CHECK(memory_.Write<uint16_t>(avail_ + 4 + 2ull * size_, idx)); }

uint16_t QueueDriver::UsedIdx() const { return memory_.Read<uint16_t>(used_ + 2).value(); }

uint16_t QueueDriver::AvailEvent() const { return memory_.Read<uint16_t>(used_ + 4 + 8ull * size_).value(); }

std::pair<uint32_t, uint32_t> QueueDriver::UsedElem(uint16_t i) const {
  uint64_t at = used_ + 4 + 8ull * (i % size_);
  return {memory_.Read<uint32_t>(at).value(), memory_.Read<uint32_t>(at + 4).value()};
}

}  // namespace clonevm::virtio::testing

// DescriptorChain: one request popped from a split virtqueue, as validated guest buffers.
//
// A chain is created only by Queue::Pop(), after every descriptor index, address and length in it
// was checked, so each GuestBuffer lies inside one guest RAM region and `host` maps it. Readable
// (device-read) buffers come first, writable (device-write) buffers after them.
//
// Ownership: a chain is move-only and owes the guest exactly one answer. Give it back with
// Queue::AddUsed() (which consumes it), or, only when the device is being reset or has failed,
// call Abandon(). Destroying a chain that still owes an answer is a device bug: debug builds abort,
// release builds log it (the guest would lose that descriptor until it resets the device).
//
// The bytes behind `host` are shared with the guest, which may change them at any time: copy
// guest data before validating it, and never read it twice expecting the same value.
// Thread-safety: a chain may be handled on any one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace clonevm::virtio {

class Queue;

// One validated guest buffer: [gpa, gpa + host.size()) inside one RAM region.
struct GuestBuffer {
  uint64_t gpa = 0;
  std::span<uint8_t> host;
};

class DescriptorChain {
 public:
  DescriptorChain(DescriptorChain&& other) noexcept;
  DescriptorChain& operator=(DescriptorChain&& other) noexcept;
  DescriptorChain(const DescriptorChain&) = delete;
  DescriptorChain& operator=(const DescriptorChain&) = delete;
  ~DescriptorChain();

  // The head descriptor index: the id written to the used ring.
  uint16_t head() const { return head_; }
  std::span<const GuestBuffer> readable() const { return std::span(buffers_).first(num_readable_); }
  std::span<const GuestBuffer> writable() const { return std::span(buffers_).subspan(num_readable_); }
  uint64_t readable_bytes() const { return readable_bytes_; }
  uint64_t writable_bytes() const { return writable_bytes_; }

  // Copies readable bytes, starting `offset` bytes into the readable part (the concatenation of
  // the readable buffers), into `out`. Returns the number copied: less than out.size() when the
  // readable part ends first.
  size_t CopyFromReadable(uint64_t offset, std::span<uint8_t> out) const;
  // Copies `in` into the writable part starting `offset` bytes into it. Returns the number copied.
  size_t CopyToWritable(uint64_t offset, std::span<const uint8_t> in) const;

  // Gives up on returning this chain (device reset or failure). The chain owes nothing afterwards.
  void Abandon() { owed_ = false; }
  bool owed() const { return owed_; }

 private:
  friend class Queue;
  // Created owing nothing; Queue sets owed_ once the whole chain is valid.
  DescriptorChain(const Queue* owner, uint32_t generation, uint16_t head)
      : owner_(owner), generation_(generation), head_(head) {}

  // Adds a validated buffer; readable buffers must all be added before writable ones.
  void AddBuffer(GuestBuffer buffer, bool writable);

  const Queue* owner_ = nullptr;  // the queue it must go back to
  uint32_t generation_ = 0;       // the owner's generation at Pop(); stale after a queue reset
  uint16_t head_ = 0;
  bool owed_ = false;
  size_t num_readable_ = 0;
  uint64_t readable_bytes_ = 0;
  uint64_t writable_bytes_ = 0;
  std::vector<GuestBuffer> buffers_;
};

}  // namespace clonevm::virtio

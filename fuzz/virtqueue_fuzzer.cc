// libFuzzer target: the split virtqueue parser (devices/virtio/queue.h) against hostile guest memory.
//
// Input: an 8-byte header, then the first bytes of a 64 KiB guest RAM image (the rest is zero).
//   header[0]  queue size = 1 << (header[0] % 9)        (1..256)
//   header[1]  bit 0: INDIRECT_DESC, bit 1: EVENT_IDX, bits 2-7: how many chains a "device" may
//              hold before returning them (0..63, returned in an input-chosen order)
//   header[2..3]  the device's starting next_avail / next_used (little-endian), as after a restore
//   header[4..7]  ring addresses: desc = header[4] * 16, avail = header[5] * 8, used = header[6] * 8
//              (all in the first 4 KiB, so short inputs reach them; overlaps are allowed);
//              header[7] = operations to run (pops)
// The guest image holds the descriptor table, the rings, indirect tables and buffers, all of them
// fuzzer-controlled. The harness checks the queue's contract: every chain it hands out lies in
// guest RAM, is bounded by kMaxChainLength, lists readable buffers before writable ones, and the
// copy helpers stay in bounds; errors are fine, crashes and sanitizer reports are not.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "devices/virtio/queue.h"
#include "devices/virtio/virtio_spec.h"
#include "memory/guest_memory.h"

namespace {

using clonevm::GuestMemory;
using clonevm::virtio::DescriptorChain;
using clonevm::virtio::GuestBuffer;
using clonevm::virtio::Queue;

constexpr uint64_t kRamBytes = 64 * 1024;
constexpr size_t kHeader = 8;

#define FUZZ_ASSERT(cond)          \
  do {                             \
    if (!(cond)) __builtin_trap(); \
  } while (0)

const GuestMemory& Memory() {
  // Created once: mapping 64 KiB per input would dominate the run time. Never freed (harness only).
  static GuestMemory* memory =
      new GuestMemory(std::move(GuestMemory::Create(kRamBytes, 1ull << 30, 4ull << 30).value()));
  return *memory;
}

bool InsideRam(const GuestBuffer& b) {
  const auto& region = Memory().regions().front();
  return b.host.data() >= region.host() && b.host.data() + b.host.size() <= region.host() + region.size &&
         b.host.data() == region.host() + b.gpa && !b.host.empty();
}

void CheckChain(const DescriptorChain& chain, uint16_t size) {
  FUZZ_ASSERT(chain.head() < size && chain.owed());
  FUZZ_ASSERT(chain.readable().size() + chain.writable().size() <= clonevm::virtio::kMaxChainLength);
  uint64_t readable = 0, writable = 0;
  for (const GuestBuffer& b : chain.readable()) {
    FUZZ_ASSERT(InsideRam(b));
    readable += b.host.size();
  }
  for (const GuestBuffer& b : chain.writable()) {
    FUZZ_ASSERT(InsideRam(b));
    writable += b.host.size();
  }
  FUZZ_ASSERT(readable == chain.readable_bytes() && writable == chain.writable_bytes());
}

// Exercises the copy helpers like a device would, then returns how many bytes it "wrote".
uint32_t Serve(const DescriptorChain& chain, uint8_t salt) {
  std::vector<uint8_t> request(std::min<uint64_t>(chain.readable_bytes() + 7, 4096));
  size_t got = chain.CopyFromReadable(salt % 8, request);
  FUZZ_ASSERT(got <= request.size() && got <= chain.readable_bytes());
  std::vector<uint8_t> reply(std::min<uint64_t>(chain.writable_bytes(), 4096), salt);
  size_t put = chain.CopyToWritable(0, reply);
  FUZZ_ASSERT(put == reply.size());
  return static_cast<uint32_t>(put);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < kHeader) return 0;
  const GuestMemory& memory = Memory();
  std::span<uint8_t> ram = memory.Span(0, kRamBytes);
  std::memset(ram.data(), 0, ram.size());
  std::memcpy(ram.data(), data + kHeader, std::min<size_t>(size - kHeader, ram.size()));

  const uint16_t queue_size = static_cast<uint16_t>(1u << (data[0] % 9));
  uint64_t features = clonevm::virtio::kFeatureVersion1;
  if (data[1] & 1) features |= clonevm::virtio::kFeatureIndirectDesc;
  if (data[1] & 2) features |= clonevm::virtio::kFeatureEventIdx;
  const size_t max_held = data[1] >> 2;

  Queue queue(256);
  queue.config().size = queue_size;
  queue.config().desc_addr = uint64_t{data[4]} * 16;
  queue.config().avail_addr = uint64_t{data[5]} * 8;
  queue.config().used_addr = uint64_t{data[6]} * 8;
  queue.config().next_avail = queue.config().next_used = static_cast<uint16_t>(data[2] | (data[3] << 8));
  if (!queue.Activate(memory, features)) return 0;

  std::vector<DescriptorChain> held;
  for (int op = 0; op < data[7]; ++op) {
    auto popped = queue.Pop();
    if (!popped) break;  // a guest error: the device would go NEEDS_RESET
    if (!popped->has_value()) break;
    DescriptorChain chain = std::move(**popped);
    CheckChain(chain, queue_size);
    held.push_back(std::move(chain));
    if (held.size() > max_held) {
      // Return one chain, picked by the input, out of order.
      size_t pick = data[op % size] % held.size();
      uint32_t written = Serve(held[pick], static_cast<uint8_t>(op));
      queue.AddUsed(std::move(held[pick]), written);
      held.erase(held.begin() + static_cast<ptrdiff_t>(pick));
      queue.NeedsNotification();
    }
  }
  for (DescriptorChain& chain : held) {
    uint32_t written = Serve(chain, 0);
    queue.AddUsed(std::move(chain), written);
  }
  queue.NeedsNotification();
  return 0;
}

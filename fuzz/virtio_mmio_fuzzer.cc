// libFuzzer target: the virtio-mmio transport (register state machine, feature negotiation, queue
// setup, NEEDS_RESET) driving a virtio-rng device over hostile guest memory.
//
// Input: [n] then n 6-byte register accesses [kind, offset / 4, value (le32)], then the guest RAM
// image (copied to address 0; the rest of the 64 KiB RAM is zero).
// kind % 4: 0 = 32-bit write, 1 = 32-bit read, 2 = odd-width access, 3 = QueueNotify via ioeventfd.
// After the sequence, the transport's state must survive a save -> restore -> save round trip.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>

#include "devices/virtio/mmio_transport.h"
#include "devices/virtio/rng.h"
#include "memory/guest_memory.h"

namespace {

using clonevm::GuestMemory;
using clonevm::virtio::MmioTransport;
using clonevm::virtio::Rng;

constexpr uint64_t kRamBytes = 64 * 1024;
constexpr size_t kAccess = 6;

const GuestMemory& Memory() {
  // Created once (harness only): mapping RAM per input would dominate the run time.
  static GuestMemory* memory =
      new GuestMemory(std::move(GuestMemory::Create(kRamBytes, 1ull << 30, 4ull << 30).value()));
  return *memory;
}

void Access(MmioTransport& transport, const uint8_t* a) {
  uint64_t offset = uint64_t{a[1]} * 4;
  uint8_t bytes[4];
  std::memcpy(bytes, a + 2, 4);
  switch (a[0] % 4) {
    case 0:
      transport.Write(offset, bytes);
      return;
    case 1:
      transport.Read(offset, bytes);
      return;
    case 2: {
      size_t width = 1u << (a[0] >> 6);  // 1, 2, 4 or 8 bytes at an unaligned offset
      uint8_t wide[8] = {};
      transport.Write(offset + (a[0] >> 2) % 4, std::span(wide, width));
      transport.Read(offset + (a[0] >> 4) % 4, std::span(wide, width));
      return;
    }
    default:
      transport.HandleQueueNotify(0);
      return;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const GuestMemory& memory = Memory();
  std::span<uint8_t> ram = memory.Span(0, kRamBytes);
  std::memset(ram.data(), 0, ram.size());
  if (size < 1) return 0;
  size_t accesses = std::min<size_t>(data[0], (size - 1) / kAccess);
  const uint8_t* image = data + 1 + accesses * kAccess;
  std::memcpy(ram.data(), image, std::min<size_t>(data + size - image, ram.size()));

  auto transport = MmioTransport::Create(memory, std::make_unique<Rng>()).value();
  for (size_t i = 0; i < accesses; ++i) Access(*transport, data + 1 + i * kAccess);

  nlohmann::json saved = transport->SaveState();
  auto restored = MmioTransport::Create(memory, std::make_unique<Rng>()).value();
  // A state whose queues were never valid cannot be re-activated; anything else must round-trip.
  if (restored->RestoreState(saved) && restored->SaveState() != saved) __builtin_trap();
  return 0;
}

// Interrupt: the interrupt line of one virtio-mmio device.
//
// The transport owns it. Devices call SignalUsed() after returning buffers the driver asked to hear
// about (Queue::NeedsNotification()), and SignalConfigChange() after changing their config space.
// Each call ORs a bit into InterruptStatus (the driver reads it, then clears bits through
// InterruptACK) and signals the irqfd EventFd, which the VMM registers with KVM_IRQFD on the
// device's GSI: every signal is one edge. Spurious edges are harmless (the driver checks the
// status); missing ones hang the guest, so the line is signalled on every call.
//
// Thread-safety: all methods may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>

#include "base/fd.h"
#include "devices/virtio/virtio_spec.h"

namespace clonevm::virtio {

class Interrupt {
 public:
  // `irq` must outlive the Interrupt.
  explicit Interrupt(const EventFd& irq) : irq_(irq) {}

  // A used buffer notification (InterruptStatus bit 0).
  void SignalUsed() { Raise(kInterruptUsedBuffer); }
  // A configuration change notification (bit 1). Call it in the same critical section (a device
  // entry point, under the transport lock) as the config change, so ConfigGeneration moves with it.
  void SignalConfigChange() {
    config_generation_.fetch_add(1, std::memory_order_relaxed);
    Raise(kInterruptConfigChange);
  }

  void Raise(uint32_t bits) {
    status_.fetch_or(bits, std::memory_order_acq_rel);
    irq_.Signal();
  }
  uint32_t status() const { return status_.load(std::memory_order_acquire); }
  void Acknowledge(uint32_t bits) { status_.fetch_and(~bits, std::memory_order_acq_rel); }
  uint32_t config_generation() const { return config_generation_.load(std::memory_order_relaxed); }

  // For device reset and snapshot restore (by the transport).
  void SetState(uint32_t status, uint32_t config_generation) {
    status_.store(status, std::memory_order_release);
    config_generation_.store(config_generation, std::memory_order_relaxed);
  }

 private:
  const EventFd& irq_;
  std::atomic<uint32_t> status_{0};
  std::atomic<uint32_t> config_generation_{0};
};

}  // namespace clonevm::virtio

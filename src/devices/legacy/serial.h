// A 16550A UART (COM1): interrupt-driven transmit and receive with 16-byte FIFOs, scratch and
// modem-control registers, and loopback as the Linux 8250 driver's autoconfig expects.
//
// Transmitted bytes go to the OutputSink at once (the line is infinitely fast), so THRE is always
// set and a THR-empty interrupt follows every write. Received bytes come from the host through
// EnqueueInput(), from any thread. The interrupt line (level) is driven through IrqLine whenever it
// changes; the VMM wires it to an edge-triggered IOAPIC pin, so every rising edge is one interrupt.
//
// Thread-safety: all entry points lock the device; callbacks are invoked with the lock held and
// must not call back into the device.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>

#include "devices/bus.h"

namespace clonevm {

class Serial : public BusDevice {
 public:
  using OutputSink = std::function<void(std::span<const uint8_t>)>;
  using IrqLine = std::function<void(bool level)>;

  // Plain state for snapshots: everything except the callbacks.
  struct State {
    uint8_t ier = 0, iir_fifo = 0, lcr = 0, mcr = 0, lsr = 0, msr = 0, scr = 0, dll = 0, dlm = 0;
    bool thr_interrupt = false;
    std::deque<uint8_t> rx;
  };

  Serial(OutputSink out, IrqLine irq);

  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

  // Queues bytes typed on the host for the guest. Returns how many were accepted (the buffer is
  // bounded at kMaxInput bytes).
  size_t EnqueueInput(std::span<const uint8_t> bytes);
  static constexpr size_t kMaxInput = 64 * 1024;

  State SaveState() const;
  void RestoreState(const State& state);

 private:
  uint8_t ReadRegister(uint64_t offset);
  void WriteRegister(uint64_t offset, uint8_t value);
  uint8_t ComputeIir() const;
  void UpdateIrq();

  mutable std::mutex mu_;
  State s_;
  bool irq_level_ = false;
  OutputSink out_;
  IrqLine irq_;
};

}  // namespace clonevm

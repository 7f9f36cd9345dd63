#include "devices/legacy/serial.h"

namespace clonevm {
namespace {

// Register offsets.
constexpr uint64_t kData = 0;  // RBR (read) / THR (write) / DLL (DLAB)
constexpr uint64_t kIer = 1;   // DLM when DLAB
constexpr uint64_t kIir = 2;   // IIR (read) / FCR (write)
constexpr uint64_t kLcr = 3;
constexpr uint64_t kMcr = 4;
constexpr uint64_t kLsr = 5;
constexpr uint64_t kMsr = 6;
constexpr uint64_t kScr = 7;

constexpr uint8_t kIerRdi = 0x01, kIerThri = 0x02, kIerRlsi = 0x04, kIerMsi = 0x08;
constexpr uint8_t kIirNone = 0x01, kIirThri = 0x02, kIirRdi = 0x04, kIirRlsi = 0x06, kIirMsi = 0x00;
constexpr uint8_t kIirFifoEnabled = 0xc0;
constexpr uint8_t kFcrEnable = 0x01, kFcrClearRx = 0x02;
constexpr uint8_t kLcrDlab = 0x80;
constexpr uint8_t kMcrLoop = 0x10;
constexpr uint8_t kLsrDr = 0x01, kLsrErrors = 0x1e, kLsrThre = 0x20, kLsrTemt = 0x40;
constexpr uint8_t kMsrDeltas = 0x0f;
constexpr uint8_t kMsrIdle = 0xb0;  // DCD | DSR | CTS: a connected, ready line

}  // namespace

Serial::Serial(OutputSink out, IrqLine irq) : out_(std::move(out)), irq_(std::move(irq)) {
  s_.lsr = kLsrThre | kLsrTemt;
  s_.msr = kMsrIdle;
}

void Serial::Read(uint64_t offset, std::span<uint8_t> data) {
  if (data.size() != 1 || offset > kScr) return;  // 16550 registers are bytes; wider reads float
  std::lock_guard lock(mu_);
  data[0] = ReadRegister(offset);
  UpdateIrq();
}

void Serial::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (data.size() != 1 || offset > kScr) return;
  std::lock_guard lock(mu_);
  WriteRegister(offset, data[0]);
  UpdateIrq();
}

uint8_t Serial::ReadRegister(uint64_t offset) {
  switch (offset) {
    case kData: {
      if (s_.lcr & kLcrDlab) return s_.dll;
      if (s_.rx.empty()) return 0;
      uint8_t byte = s_.rx.front();
      s_.rx.pop_front();
      if (s_.rx.empty()) s_.lsr &= ~kLsrDr;
      return byte;
    }
    case kIer:
      return (s_.lcr & kLcrDlab) ? s_.dlm : s_.ier;
    case kIir: {
      uint8_t iir = ComputeIir();
      // Reading IIR while it reports THRE acknowledges that interrupt.
      if (iir == kIirThri) s_.thr_interrupt = false;
      return iir | s_.iir_fifo;
    }
    case kLcr:
      return s_.lcr;
    case kMcr:
      return s_.mcr;
    case kLsr: {
      uint8_t lsr = s_.lsr;
      s_.lsr &= ~kLsrErrors;  // error bits clear on read
      return lsr;
    }
    case kMsr: {
      uint8_t msr = s_.msr;
      if (s_.mcr & kMcrLoop) {
        // Loopback: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD.
        msr = static_cast<uint8_t>(((s_.mcr & 0x01) << 5) | ((s_.mcr & 0x02) << 3) | ((s_.mcr & 0x04) << 4) |
                                   ((s_.mcr & 0x08) << 4));
      }
      s_.msr &= ~kMsrDeltas;
      return msr;
    }
    case kScr:
      return s_.scr;
    default:
      return 0xff;
  }
}

void Serial::WriteRegister(uint64_t offset, uint8_t value) {
  switch (offset) {
    case kData:
      if (s_.lcr & kLcrDlab) {
        s_.dll = value;
        return;
      }
      if (s_.mcr & kMcrLoop) {
        if (s_.rx.size() < kMaxInput) s_.rx.push_back(value);
        s_.lsr |= kLsrDr;
      } else {
        out_(std::span(&value, 1));
      }
      // The byte left at once: the holding register is empty again.
      s_.thr_interrupt = true;
      return;
    case kIer:
      if (s_.lcr & kLcrDlab) {
        s_.dlm = value;
        return;
      }
      // Enabling THRI while the holding register is empty raises THRE at once.
      if (!(s_.ier & kIerThri) && (value & kIerThri)) s_.thr_interrupt = true;
      s_.ier = value & 0x0f;
      return;
    case kIir:  // FCR
      s_.iir_fifo = (value & kFcrEnable) ? kIirFifoEnabled : 0;
      if (value & kFcrClearRx) {
        s_.rx.clear();
        s_.lsr &= ~kLsrDr;
      }
      return;
    case kLcr:
      s_.lcr = value;
      return;
    case kMcr:
      s_.mcr = value & 0x1f;
      return;
    case kScr:
      s_.scr = value;
      return;
    default:
      return;  // LSR and MSR are read-only
  }
}

uint8_t Serial::ComputeIir() const {
  if ((s_.ier & kIerRlsi) && (s_.lsr & kLsrErrors)) return kIirRlsi;
  if ((s_.ier & kIerRdi) && (s_.lsr & kLsrDr)) return kIirRdi;
  if ((s_.ier & kIerThri) && s_.thr_interrupt) return kIirThri;
  if ((s_.ier & kIerMsi) && (s_.msr & kMsrDeltas)) return kIirMsi;
  return kIirNone;
}

void Serial::UpdateIrq() {
  bool level = ComputeIir() != kIirNone;
  if (level == irq_level_) return;
  irq_level_ = level;
  irq_(level);
}

size_t Serial::EnqueueInput(std::span<const uint8_t> bytes) {
  std::lock_guard lock(mu_);
  size_t n = std::min(bytes.size(), kMaxInput - s_.rx.size());
  s_.rx.insert(s_.rx.end(), bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(n));
  if (n > 0) s_.lsr |= kLsrDr;
  UpdateIrq();
  return n;
}

Serial::State Serial::SaveState() const {
  std::lock_guard lock(mu_);
  return s_;
}

void Serial::RestoreState(const State& state) {
  std::lock_guard lock(mu_);
  s_ = state;
  irq_level_ = false;
  UpdateIrq();
}

}  // namespace clonevm

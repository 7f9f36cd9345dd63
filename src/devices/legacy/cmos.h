// The MC146818 CMOS RTC and NVRAM at ports 0x70 (index) / 0x71 (data).
//
// Time registers read the host's current UTC time in BCD, 24-hour mode; "update in progress" is
// never set, so a guest reading the clock never spins. Guest writes to time registers are ignored
// (the host clock is authoritative); the rest of the 128 bytes behave as NVRAM.
#pragma once

#include <array>
#include <cstdint>
#include <ctime>
#include <functional>
#include <mutex>

#include "devices/bus.h"

namespace clonevm {

class Cmos : public BusDevice {
 public:
  using Clock = std::function<time_t()>;
  explicit Cmos(Clock clock = [] { return ::time(nullptr); });

  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

  struct State {
    uint8_t index = 0;
    std::array<uint8_t, 128> nvram{};
  };
  State SaveState() const;
  void RestoreState(const State& state);

 private:
  uint8_t ReadData();

  mutable std::mutex mu_;
  State s_;
  Clock clock_;
};

}  // namespace clonevm

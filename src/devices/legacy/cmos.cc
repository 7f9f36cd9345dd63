#include "devices/legacy/cmos.h"

namespace clonevm {
namespace {

constexpr uint8_t kSeconds = 0x00, kMinutes = 0x02, kHours = 0x04, kWeekday = 0x06, kDay = 0x07;
constexpr uint8_t kMonth = 0x08, kYear = 0x09, kStatusA = 0x0a, kStatusB = 0x0b, kStatusC = 0x0c;
constexpr uint8_t kStatusD = 0x0d, kCentury = 0x32;

constexpr uint8_t kStatusADefault = 0x26;  // 32.768 kHz time base, 1024 Hz rate, UIP clear
constexpr uint8_t kStatusB24Hour = 0x02;   // 24-hour mode, BCD, no interrupts enabled
constexpr uint8_t kStatusDValid = 0x80;    // RAM and time valid (battery good)

uint8_t ToBcd(int v) { return static_cast<uint8_t>(((v / 10) << 4) | (v % 10)); }

}  // namespace

Cmos::Cmos(Clock clock) : clock_(std::move(clock)) {
  s_.nvram[kStatusA] = kStatusADefault;
  s_.nvram[kStatusB] = kStatusB24Hour;
  s_.nvram[kStatusD] = kStatusDValid;
}

void Cmos::Read(uint64_t offset, std::span<uint8_t> data) {
  if (data.size() != 1) return;
  std::lock_guard lock(mu_);
  data[0] = offset == 0 ? s_.index : ReadData();
}

void Cmos::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (data.size() != 1) return;
  std::lock_guard lock(mu_);
  if (offset == 0) {
    s_.index = data[0] & 0x7f;  // bit 7 is the NMI mask, not part of the index
    return;
  }
  uint8_t reg = s_.index;
  if (reg <= kYear || reg == kCentury || reg == kStatusC || reg == kStatusD) return;
  if (reg == kStatusA) {
    s_.nvram[reg] = data[0] & 0x7f;  // UIP is read-only
    return;
  }
  s_.nvram[reg] = data[0];
}

uint8_t Cmos::ReadData() {
  uint8_t reg = s_.index;
  bool bcd = !(s_.nvram[kStatusB] & 0x04);
  auto encode = [bcd](int v) { return bcd ? ToBcd(v) : static_cast<uint8_t>(v); };
  time_t now = clock_();
  struct tm tm {};
  gmtime_r(&now, &tm);
  switch (reg) {
    case kSeconds:
      return encode(tm.tm_sec);
    case kMinutes:
      return encode(tm.tm_min);
    case kHours:
      return encode(tm.tm_hour);
    case kWeekday:
      return encode(tm.tm_wday + 1);
    case kDay:
      return encode(tm.tm_mday);
    case kMonth:
      return encode(tm.tm_mon + 1);
    case kYear:
      return encode(tm.tm_year % 100);
    case kCentury:
      return encode((tm.tm_year + 1900) / 100);
    case kStatusC:
      return 0;  // no pending RTC interrupts
    default:
      return s_.nvram[reg];
  }
}

Cmos::State Cmos::SaveState() const {
  std::lock_guard lock(mu_);
  return s_;
}

void Cmos::RestoreState(const State& state) {
  std::lock_guard lock(mu_);
  s_ = state;
}

}  // namespace clonevm

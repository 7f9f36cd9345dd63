#include "devices/legacy/power.h"

#include <algorithm>

#include "acpi/tables.h"
#include "base/log.h"

namespace clonevm {
namespace {

constexpr uint8_t kI8042ResetCommand = 0xfe;
constexpr uint64_t kI8042CommandOffset = 4;

}  // namespace

void AcpiPm::Read(uint64_t, std::span<uint8_t> data) {
  // Sleep status: never asleep (WAK_STS clear); reset register reads as zero.
  std::fill(data.begin(), data.end(), 0);
}

void AcpiPm::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (data.empty()) return;
  uint8_t value = data[0];
  CLONE_LOG_RATELIMITED(LogLevel::kDebug, "acpi pm: write {:#x} at +{}", value, offset);
  uint8_t sleep_type = (value & acpi::kSleepTypeMask) >> acpi::kSleepTypeShift;
  if (offset == acpi::kSleepControlOffset && (value & acpi::kSleepEnable) && sleep_type == acpi::kS5SleepType) {
    handler_(PowerEvent::kPowerOff);
  } else if (offset == acpi::kResetOffset && value == acpi::kResetValue) {
    handler_(PowerEvent::kReset);
  }
}

void I8042::Read(uint64_t, std::span<uint8_t> data) {
  // Status: output buffer empty, input buffer empty; data: nothing.
  std::fill(data.begin(), data.end(), 0);
}

void I8042::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (!data.empty()) CLONE_LOG_RATELIMITED(LogLevel::kDebug, "i8042: write {:#x} at +{}", data[0], offset);
  if (offset == kI8042CommandOffset && data.size() == 1 && data[0] == kI8042ResetCommand) handler_(PowerEvent::kReset);
}

}  // namespace clonevm

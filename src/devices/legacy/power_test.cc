#include "devices/legacy/power.h"

#include <gtest/gtest.h>

#include <vector>

#include "acpi/tables.h"

namespace clonevm {
namespace {

TEST(PowerTest, AcpiSleepS5PowersOffAndResetRegisterResets) {
  std::vector<PowerEvent> events;
  AcpiPm pm([&](PowerEvent e) { events.push_back(e); });
  uint8_t slp = static_cast<uint8_t>((acpi::kS5SleepType << 2) | 0x20);
  pm.Write(acpi::kSleepControlOffset, std::span<const uint8_t>(&slp, 1));
  uint8_t not_enabled = static_cast<uint8_t>(acpi::kS5SleepType << 2);
  pm.Write(acpi::kSleepControlOffset, std::span<const uint8_t>(&not_enabled, 1));
  uint8_t reset = acpi::kResetValue;
  pm.Write(acpi::kResetOffset, std::span<const uint8_t>(&reset, 1));
  EXPECT_EQ(events, (std::vector<PowerEvent>{PowerEvent::kPowerOff, PowerEvent::kReset}));
}

TEST(PowerTest, I8042ResetCommand) {
  std::vector<PowerEvent> events;
  I8042 kbd([&](PowerEvent e) { events.push_back(e); });
  uint8_t other = 0xaa, reset = 0xfe;
  kbd.Write(4, std::span<const uint8_t>(&other, 1));
  kbd.Write(0, std::span<const uint8_t>(&reset, 1));
  kbd.Write(4, std::span<const uint8_t>(&reset, 1));
  EXPECT_EQ(events, std::vector<PowerEvent>{PowerEvent::kReset});
  uint8_t status = 0xff;
  kbd.Read(4, std::span(&status, 1));
  EXPECT_EQ(status, 0);
}

}  // namespace
}  // namespace clonevm

#include "devices/legacy/cmos.h"

#include <gtest/gtest.h>

namespace clonevm {
namespace {

uint8_t ReadReg(Cmos& cmos, uint8_t reg) {
  cmos.Write(0, std::span<const uint8_t>(&reg, 1));
  uint8_t v = 0;
  cmos.Read(1, std::span(&v, 1));
  return v;
}

TEST(CmosTest, ReportsHostTimeInBcd) {
  // 2026-11-22 15:04:05 UTC, a Sunday.
  Cmos cmos([] { return time_t{1795359845}; });
  EXPECT_EQ(ReadReg(cmos, 0x00), 0x05);
  EXPECT_EQ(ReadReg(cmos, 0x02), 0x04);
  EXPECT_EQ(ReadReg(cmos, 0x04), 0x15);
  EXPECT_EQ(ReadReg(cmos, 0x07), 0x22);
  EXPECT_EQ(ReadReg(cmos, 0x08), 0x11);
  EXPECT_EQ(ReadReg(cmos, 0x09), 0x26);
  EXPECT_EQ(ReadReg(cmos, 0x32), 0x20);
  EXPECT_EQ(ReadReg(cmos, 0x0a) & 0x80, 0);  // never "update in progress"
  EXPECT_EQ(ReadReg(cmos, 0x0d), 0x80);
}

TEST(CmosTest, NmiBitIsNotPartOfTheIndexAndNvramPersists) {
  Cmos cmos;
  uint8_t idx = 0x80 | 0x40;
  cmos.Write(0, std::span<const uint8_t>(&idx, 1));
  uint8_t v = 0x77;
  cmos.Write(1, std::span<const uint8_t>(&v, 1));
  EXPECT_EQ(ReadReg(cmos, 0x40), 0x77);
}

TEST(CmosTest, TimeWritesAreIgnored) {
  Cmos cmos([] { return time_t{0}; });
  uint8_t idx = 0x09, v = 0x99;
  cmos.Write(0, std::span<const uint8_t>(&idx, 1));
  cmos.Write(1, std::span<const uint8_t>(&v, 1));
  EXPECT_EQ(ReadReg(cmos, 0x09), 0x70);
}

}  // namespace
}  // namespace clonevm

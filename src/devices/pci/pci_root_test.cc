#include "devices/pci/pci_root.h"

#include <gtest/gtest.h>

#include <cstring>

namespace clonevm {
namespace {

void Out32(PciRoot& pci, uint64_t off, uint32_t v) {
  uint8_t b[4];
  std::memcpy(b, &v, 4);
  pci.Write(off, b);
}
uint32_t In32(PciRoot& pci, uint64_t off) {
  uint8_t b[4] = {0xff, 0xff, 0xff, 0xff};
  pci.Read(off, b);
  uint32_t v;
  std::memcpy(&v, b, 4);
  return v;
}

TEST(PciRootTest, Type1ProbeSeesTheAddressRegister) {
  PciRoot pci;
  Out32(pci, 0, 0x80000000);
  EXPECT_EQ(In32(pci, 0), 0x80000000u);
}

TEST(PciRootTest, HostBridgeAtZeroAndNothingElse) {
  PciRoot pci;
  Out32(pci, 0, 0x80000000);
  EXPECT_EQ(In32(pci, 4), 0x0d578086u);
  Out32(pci, 0, 0x80000008);
  EXPECT_EQ(In32(pci, 4) >> 8, 0x060000u);
  uint8_t byte = 0;
  pci.Read(7, std::span(&byte, 1));  // class code high byte through port 0xCFF
  EXPECT_EQ(byte, 0x06);
  Out32(pci, 0, 0x80000800);  // 00:01.0
  EXPECT_EQ(In32(pci, 4), 0xffffffffu);
  Out32(pci, 0, 0x80010000);  // bus 1
  EXPECT_EQ(In32(pci, 4), 0xffffffffu);
  Out32(pci, 0, 0x00000000);  // enable bit clear
  EXPECT_EQ(In32(pci, 4), 0xffffffffu);
}

TEST(PciRootTest, MisalignedAndOversizedAccessesAreIgnored) {
  PciRoot pci;
  Out32(pci, 0, 0x80000000);
  uint8_t b[4] = {1, 2, 3, 4};
  pci.Read(6, b);  // would cross the data window
  EXPECT_EQ(b[0], 1);
  pci.Write(1, std::span<const uint8_t>(b, 2));
  EXPECT_EQ(In32(pci, 0), 0x80000000u);
}

}  // namespace
}  // namespace clonevm

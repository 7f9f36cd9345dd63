#include "devices/legacy/serial.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace clonevm {
namespace {

class SerialTest : public ::testing::Test {
 protected:
  uint8_t In(uint64_t reg) {
    uint8_t v = 0;
    serial_.Read(reg, std::span(&v, 1));
    return v;
  }
  void Out(uint64_t reg, uint8_t v) { serial_.Write(reg, std::span(&v, 1)); }

  std::string output_;
  std::vector<bool> irq_changes_;
  Serial serial_{[this](std::span<const uint8_t> b) { output_.append(b.begin(), b.end()); },
                 [this](bool level) { irq_changes_.push_back(level); }};
};

TEST_F(SerialTest, AutoconfigSeesA16550A) {
  Out(7, 0xa5);
  EXPECT_EQ(In(7), 0xa5);  // scratch register
  Out(1, 0x0f);
  EXPECT_EQ(In(1), 0x0f);  // IER keeps its low nibble
  Out(1, 0);
  Out(2, 0x01);  // enable FIFOs
  EXPECT_EQ(In(2) & 0xc0, 0xc0);
  Out(4, 0x10 | 0x0a);  // loopback with RTS and OUT2
  EXPECT_EQ(In(6) & 0xf0, 0x90);
}

TEST_F(SerialTest, TransmitsAndRaisesThreOncePerBurst) {
  Out(1, 0x02);  // THRI
  ASSERT_EQ(irq_changes_, std::vector<bool>{true});
  EXPECT_EQ(In(2) & 0x0f, 0x02);  // THRE reported and acknowledged
  EXPECT_EQ(irq_changes_.back(), false);
  for (char c : std::string("hello")) Out(0, static_cast<uint8_t>(c));
  EXPECT_EQ(output_, "hello");
  EXPECT_EQ(irq_changes_, (std::vector<bool>{true, false, true}));
  EXPECT_EQ(In(5) & 0x60, 0x60);  // THRE | TEMT
}

TEST_F(SerialTest, ReceivesInputWithDataReadyInterrupt) {
  Out(1, 0x01);  // RDI
  const uint8_t input[] = {'o', 'k'};
  EXPECT_EQ(serial_.EnqueueInput(input), 2u);
  EXPECT_EQ(irq_changes_.back(), true);
  EXPECT_EQ(In(2) & 0x0f, 0x04);
  EXPECT_EQ(In(5) & 1, 1);
  EXPECT_EQ(In(0), 'o');
  EXPECT_EQ(In(0), 'k');
  EXPECT_EQ(In(5) & 1, 0);
  EXPECT_EQ(irq_changes_.back(), false);
}

TEST_F(SerialTest, DivisorLatchDoesNotDisturbData) {
  Out(3, 0x80);
  Out(0, 0x01);
  Out(1, 0x00);
  EXPECT_EQ(In(0), 0x01);
  Out(3, 0x03);
  EXPECT_TRUE(output_.empty());
}

TEST_F(SerialTest, InputIsBounded) {
  std::vector<uint8_t> big(Serial::kMaxInput + 10, 'x');
  EXPECT_EQ(serial_.EnqueueInput(big), Serial::kMaxInput);
  EXPECT_EQ(serial_.EnqueueInput(big), 0u);
}

TEST_F(SerialTest, WideAndOutOfRangeAccessesAreIgnored) {
  uint8_t wide[4] = {1, 2, 3, 4};
  serial_.Write(0, wide);
  serial_.Write(9, std::span(wide, 1));
  EXPECT_TRUE(output_.empty());
}

TEST_F(SerialTest, SaveRestoreRoundTrip) {
  Out(1, 0x05);
  Out(7, 0x33);
  const uint8_t input[] = {'z'};
  serial_.EnqueueInput(input);
  auto saved = serial_.SaveState();
  Serial other([](std::span<const uint8_t>) {}, [](bool) {});
  other.RestoreState(saved);
  auto again = other.SaveState();
  EXPECT_EQ(again.ier, 0x05);
  EXPECT_EQ(again.scr, 0x33);
  EXPECT_EQ(again.rx.size(), 1u);
  EXPECT_EQ(again.lsr, saved.lsr);
}

}  // namespace
}  // namespace clonevm

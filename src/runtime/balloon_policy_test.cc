// Every rule of the balloon policy (issue #12 §2), with a made-up clock.
#include "runtime/balloon_policy.h"

#include <gtest/gtest.h>

namespace clonevm {
namespace {

using std::chrono::seconds;
constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kRam = 512 * kMiB;
constexpr uint64_t kFloor = 24 * kMiB;

class BalloonPolicyTest : public ::testing::Test {
 protected:
  // Feeds a report `at` seconds after the start.
  uint64_t At(int at, bool active, uint64_t available_mib = 400, std::optional<double> psi = 0.0) {
    return policy_.Update({active, false, false, psi, available_mib * kMiB}, start_ + seconds(at));
  }
  // Idle reports every second over [from, to].
  uint64_t IdleFrom(int from, int to, uint64_t available_mib = 400) {
    uint64_t b = 0;
    for (int t = from; t <= to; ++t) b = At(t, false, available_mib);
    return b;
  }

  BalloonPolicy policy_{BalloonPolicyConfig{kRam, kFloor, {}, 10.0}};
  BalloonPolicy::Clock::time_point start_ = BalloonPolicy::Clock::time_point() + std::chrono::hours(1);
};

TEST_F(BalloonPolicyTest, IdleInflatesInThreeSteps) {
  EXPECT_EQ(IdleFrom(0, 29), 0u);                  // before IDLE1: nothing
  EXPECT_EQ(IdleFrom(30, 30), 100 * kMiB);         // 30 s: 25 % of the 400 MiB available
  EXPECT_EQ(IdleFrom(31, 119, 300), 100 * kMiB);   // reclaimable stays what it was at the first step
  EXPECT_EQ(IdleFrom(120, 120, 300), 200 * kMiB);  // 2 min: 50 %
  EXPECT_EQ(IdleFrom(121, 299, 200), 200 * kMiB);
  EXPECT_EQ(IdleFrom(300, 300, 200), kRam - kFloor);  // 5 min: down to the floor
  EXPECT_EQ(IdleFrom(301, 900, 10), kRam - kFloor);   // and it stays there
}

TEST_F(BalloonPolicyTest, ActivityDeflatesAtOnce) {
  IdleFrom(0, 300);
  ASSERT_EQ(policy_.balloon_bytes(), kRam - kFloor);
  EXPECT_EQ(At(301, true), 0u);
  EXPECT_EQ(At(302, true), 0u);
}

TEST_F(BalloonPolicyTest, MemoryPressureDeflatesAnIdleGuest) {
  IdleFrom(0, 130);
  ASSERT_EQ(policy_.balloon_bytes(), 200 * kMiB);
  EXPECT_EQ(At(131, false, 400, 9.9), 200 * kMiB);  // below the threshold
  EXPECT_EQ(At(132, false, 400, 25.0), 0u);
}

TEST_F(BalloonPolicyTest, NoInflationForTheCooldownAfterADeflate) {
  IdleFrom(0, 30);
  ASSERT_EQ(policy_.balloon_bytes(), 100 * kMiB);
  At(31, true);                     // deflate at 31; idle again from 32
  EXPECT_EQ(IdleFrom(32, 90), 0u);  // IDLE1 passed at 62, but the cooldown runs until 91
  EXPECT_EQ(IdleFrom(91, 91), 100 * kMiB);
  EXPECT_EQ(policy_.Cooldown(start_ + seconds(91)), seconds(60));
}

TEST_F(BalloonPolicyTest, StepsReachedDuringTheCooldownAreTakenWhenItEnds) {
  policy_ = BalloonPolicy(
      BalloonPolicyConfig{kRam, kFloor, {seconds(10), seconds(20), seconds(300), seconds(60), seconds(180)}, 10.0});
  IdleFrom(0, 10);
  At(11, true);
  EXPECT_EQ(IdleFrom(12, 70), 0u);          // 2nd step due at 32, cooldown until 71
  EXPECT_EQ(IdleFrom(71, 71), 200 * kMiB);  // straight to 50 %
}

TEST_F(BalloonPolicyTest, BurstsOfTransitionsLengthenTheCooldown) {
  IdleFrom(0, 30);
  At(31, true);      // transition 1 (idle -> active)
  At(32, false);     // 2 (active -> idle)
  At(33, true);      // 3
  IdleFrom(34, 34);  // 4: idle from 34, last deflate at 31
  EXPECT_EQ(policy_.Cooldown(start_ + seconds(34)), seconds(180));
  EXPECT_EQ(IdleFrom(35, 210), 0u);           // 60 s would have allowed it at 91; 3 min: at 211
  EXPECT_EQ(IdleFrom(211, 211), 200 * kMiB);  // idle 177 s: the 2-minute step
}

TEST_F(BalloonPolicyTest, OldTransitionsLeaveTheBurstWindow) {
  IdleFrom(0, 30);
  At(31, true);
  At(32, false);
  At(33, true);
  At(34, false);
  EXPECT_EQ(policy_.Cooldown(start_ + seconds(34)), seconds(180));
  EXPECT_EQ(policy_.Cooldown(start_ + seconds(34 + 5 * 60)), seconds(60));  // 31, 32, 33 have aged out
}

TEST_F(BalloonPolicyTest, ALyingGuestCannotPassTheFloor) {
  EXPECT_EQ(IdleFrom(0, 30, 1 << 20), (kRam - kFloor) / 4);  // "1 TiB available": clamped to RAM - floor
  EXPECT_EQ(IdleFrom(31, 120, 1 << 20), (kRam - kFloor) / 2);
  EXPECT_EQ(IdleFrom(121, 300, 1 << 20), kRam - kFloor);
}

TEST_F(BalloonPolicyTest, AGuestWithNothingAvailableOnlyReachesTheFloorStep) {
  EXPECT_EQ(IdleFrom(0, 299, 0), 0u);
  EXPECT_EQ(IdleFrom(300, 300, 0), kRam - kFloor);
}

TEST_F(BalloonPolicyTest, AGuestSmallerThanTheFloorIsNeverInflated) {
  policy_ = BalloonPolicy(BalloonPolicyConfig{16 * kMiB, kFloor, {}, 10.0});
  EXPECT_EQ(IdleFrom(0, 600), 0u);
}

TEST_F(BalloonPolicyTest, TheBalloonsOwnWorkIsNotActivity) {
  IdleFrom(0, 30);
  ASSERT_EQ(policy_.balloon_bytes(), 100 * kMiB);
  auto at = [this](int t) { return start_ + seconds(t); };
  // CPU-busy while the balloon is still inflating: the driver's work, not the guest's.
  EXPECT_EQ(policy_.Update({true, false, true, 0.0, 300 * kMiB}, at(31)), 100 * kMiB);
  // An exec session is activity even then, and so is pressure.
  EXPECT_EQ(policy_.Update({true, true, true, 0.0, 300 * kMiB}, at(32)), 0u);
  IdleFrom(33, 200);
  ASSERT_GT(policy_.balloon_bytes(), 0u);
  EXPECT_EQ(policy_.Update({false, false, true, 50.0, 300 * kMiB}, at(201)), 0u);
  // Once settled, CPU use counts again.
  IdleFrom(202, 400);
  ASSERT_GT(policy_.balloon_bytes(), 0u);
  EXPECT_EQ(policy_.Update({true, false, false, 0.0, 300 * kMiB}, at(401)), 0u);
}

TEST_F(BalloonPolicyTest, NoPsiIsNoPressure) {
  EXPECT_EQ(At(0, false, 400, std::nullopt), 0u);
  EXPECT_EQ(At(30, false, 400, std::nullopt), 100 * kMiB);
}

TEST(BalloonTimesTest, ParsesTheFlagForm) {
  auto t = ParseBalloonTimes("30s,2m,5m,60s,3m");
  ASSERT_TRUE(t) << t.error().message();
  EXPECT_EQ(*t, BalloonPolicyTimes{});
  auto compressed = ParseBalloonTimes("2,4,6,5,10");
  ASSERT_TRUE(compressed);
  EXPECT_EQ(compressed->idle3, seconds(6));
  EXPECT_EQ(compressed->burst_cooldown, seconds(10));
  EXPECT_EQ(ParseBalloonTimes("1h,1h,1h,0,0")->idle1, seconds(3600));
}

TEST(BalloonTimesTest, BadFormsAreOneLineErrors) {
  for (const char* bad : {"", "30s,2m,5m,60s", "30s,2m,5m,60s,3m,1s", "30x,2m,5m,60s,3m", "a,b,c,d,e",
                          "3m,2m,5m,60s,3m", "30s,,5m,60s,3m"}) {
    auto t = ParseBalloonTimes(bad);
    EXPECT_FALSE(t) << bad;
    if (!t) {
      EXPECT_NE(t.error().message().find("--balloon-times"), std::string::npos) << t.error().message();
    }
  }
}

}  // namespace
}  // namespace clonevm

namespace clonevm {
namespace {

TEST(MemorySizeTest, ParsesMibWithUnits) {
  EXPECT_EQ(*ParseMemoryMib("64M"), 64u);
  EXPECT_EQ(*ParseMemoryMib("256"), 256u);
  EXPECT_EQ(*ParseMemoryMib("1G"), 1024u);
  EXPECT_EQ(*ParseMemoryMib("2048K"), 2u);
  EXPECT_EQ(*ParseMemoryMib("1536k"), 1u);  // rounded down
  for (const char* bad : {"", "M", "64X", "-1", "512K", "0", "99999999999999999999"}) {
    EXPECT_FALSE(ParseMemoryMib(bad)) << bad;
  }
}

}  // namespace
}  // namespace clonevm

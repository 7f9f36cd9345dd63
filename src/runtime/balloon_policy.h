// BalloonPolicy: the hysteresis policy of issue #12 §2 (docs/density.md), as pure logic — its inputs
// are the guest agent's reports and the time they arrived, its output the balloon size to ask for.
// No clock, thread or device of its own, so every rule is unit-tested with made-up times.
//
// Rules (times configurable, `--balloon-times IDLE1,IDLE2,IDLE3,COOLDOWN,BURST_COOLDOWN`):
//   * An active guest, or one under memory pressure (PSI "some" avg10 at or above a threshold),
//     gets the balloon deflated at once, whatever the cooldown: responsiveness first.
//   * An idle guest is inflated in steps, timed from when it became idle: after IDLE1 (30 s) by 25 %
//     of its reclaimable memory, after IDLE2 (2 min) by 50 %, after IDLE3 (5 min) down to the floor
//     (default 24 MiB kept). "Reclaimable" is the guest's own MemAvailable when the first step is
//     taken, never more than the floor allows.
//   * After any deflate, no inflation for COOLDOWN (60 s); when 3 or more active/idle transitions
//     happened within the last 5 minutes, for BURST_COOLDOWN (3 min) instead. Steps the idle time
//     reached during a cooldown are taken when it ends.
//   * The balloon's own work is not activity: while the balloon is still moving towards the size
//     the policy set (the driver's actual differs from the target), CPU use alone does not count
//     as active — only a running exec session or memory pressure does. Otherwise every inflation
//     (kernel time in the guest) would look like activity and deflate the balloon it is filling.
// A guest's report is guest-controlled: an available size above its RAM is clamped, and the floor
// bounds every inflation, so a lying guest can only make its own balloon smaller or get itself
// deflated.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>

#include "base/result.h"

namespace clonevm {

struct BalloonPolicyTimes {
  std::chrono::seconds idle1{30}, idle2{120}, idle3{300}, cooldown{60}, burst_cooldown{180};
  bool operator==(const BalloonPolicyTimes&) const = default;
};
// "64M", "1G", "512K" (rounded down to whole MiB), "256" (MiB) -> MiB; at least 1 MiB. The one
// parser of memory sizes for balloon targets and floors.
[[nodiscard]] Result<uint64_t> ParseMemoryMib(const std::string& text);

// "30s,2m,5m,60s,3m" (units s, m, h; a bare number is seconds); IDLE1 <= IDLE2 <= IDLE3.
[[nodiscard]] Result<BalloonPolicyTimes> ParseBalloonTimes(const std::string& text);

struct BalloonPolicyConfig {
  uint64_t ram_bytes = 0;
  uint64_t floor_bytes = 24ull << 20;  // what an idle guest keeps at the last step
  BalloonPolicyTimes times;
  double pressure_threshold = 10.0;  // PSI memory "some" avg10, percent
};

// One agent report, as the policy reads it.
struct GuestActivity {
  bool active = false;                   // the agent's verdict (CPU use or an exec session)
  bool exec_running = false;             // an exec session runs (always activity)
  bool balloon_settling = false;         // the balloon has not reached its target yet (VMM side)
  std::optional<double> psi_some_avg10;  // null without PSI
  uint64_t available_bytes = 0;          // the guest's MemAvailable (with the current balloon)
};

class BalloonPolicy {
 public:
  using Clock = std::chrono::steady_clock;
  explicit BalloonPolicy(BalloonPolicyConfig config) : config_(config) {}

  // Takes one report received at `now` (reports must come in time order) and returns the balloon
  // size in bytes to ask of the guest now.
  uint64_t Update(const GuestActivity& report, Clock::time_point now);
  uint64_t balloon_bytes() const { return balloon_; }
  // The cooldown in force at `now`: COOLDOWN, or BURST_COOLDOWN after 3+ recent transitions.
  std::chrono::seconds Cooldown(Clock::time_point now);

 private:
  static constexpr std::chrono::minutes kBurstWindow{5};
  static constexpr int kBurstTransitions = 3;

  uint64_t MaxBalloon() const {
    return config_.ram_bytes > config_.floor_bytes ? config_.ram_bytes - config_.floor_bytes : 0;
  }
  void Deflate(Clock::time_point now);
  void Inflate(const GuestActivity& report, Clock::time_point now);
  void NoteTransition(Clock::time_point now);

  BalloonPolicyConfig config_;
  uint64_t balloon_ = 0;
  std::optional<bool> busy_;  // the last report's verdict (active or under pressure)
  Clock::time_point idle_since_{};
  std::optional<Clock::time_point> last_deflate_;
  std::deque<Clock::time_point> transitions_;  // within the last kBurstWindow
  int stage_ = 0;                              // inflation steps taken in this idle period (0..3)
  uint64_t base_ = 0;                          // the balloon when this idle period began
  uint64_t reclaimable_ = 0;                   // fixed at the first step of the idle period
};

}  // namespace clonevm

#include "runtime/balloon_policy.h"

#include <algorithm>
#include <charconv>
#include <vector>

namespace clonevm {
namespace {

Result<std::chrono::seconds> ParseDuration(std::string_view text) {
  uint64_t value = 0;
  const char* end = text.data() + text.size();
  auto [rest, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || rest == text.data() || value > 86400) {
    return Fail("'{}': expected a duration such as 30s, 2m or 1h", text);
  }
  std::string_view unit(rest, static_cast<size_t>(end - rest));
  if (unit.empty() || unit == "s") return std::chrono::seconds(value);
  if (unit == "m") return std::chrono::seconds(value * 60);
  if (unit == "h") return std::chrono::seconds(value * 3600);
  return Fail("'{}': unknown unit '{}' (use s, m or h)", text, unit);
}

}  // namespace

Result<uint64_t> ParseMemoryMib(const std::string& text) {
  uint64_t value = 0;
  const char* end = text.data() + text.size();
  auto [rest, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || rest == text.data()) return Fail("'{}': expected a size such as 64M, 1G or 256", text);
  std::string_view unit(rest, static_cast<size_t>(end - rest));
  constexpr uint64_t kMaxKib = uint64_t{1} << 40;
  if (value > kMaxKib) return Fail("'{}': too large", text);
  uint64_t kib = 0;
  if (unit.empty() || unit == "M" || unit == "m" || unit == "MiB") {
    kib = value * 1024;
  } else if (unit == "G" || unit == "g" || unit == "GiB") {
    kib = value * 1024 * 1024;
  } else if (unit == "K" || unit == "k" || unit == "KiB") {
    kib = value;
  } else {
    return Fail("'{}': unknown unit '{}' (use K, M or G)", text, unit);
  }
  if (kib < 1024) return Fail("'{}': at least 1M", text);
  return kib / 1024;
}

Result<BalloonPolicyTimes> ParseBalloonTimes(const std::string& text) {
  std::vector<std::chrono::seconds> parts;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    std::string_view part(text.data() + start, (comma == std::string::npos ? text.size() : comma) - start);
    auto d = ParseDuration(part);
    if (!d) return Fail(d.error().Wrap("--balloon-times"));
    parts.push_back(*d);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (parts.size() != 5) {
    return Fail("--balloon-times '{}': expected IDLE1,IDLE2,IDLE3,COOLDOWN,BURST_COOLDOWN (e.g. 30s,2m,5m,60s,3m)",
                text);
  }
  if (parts[0] > parts[1] || parts[1] > parts[2]) {
    return Fail("--balloon-times '{}': the idle times must not decrease", text);
  }
  return BalloonPolicyTimes{parts[0], parts[1], parts[2], parts[3], parts[4]};
}

std::chrono::seconds BalloonPolicy::Cooldown(Clock::time_point now) {
  while (!transitions_.empty() && now - transitions_.front() > kBurstWindow) transitions_.pop_front();
  return transitions_.size() >= kBurstTransitions ? config_.times.burst_cooldown : config_.times.cooldown;
}

void BalloonPolicy::NoteTransition(Clock::time_point now) {
  transitions_.push_back(now);
  Cooldown(now);  // drops the old ones
}

void BalloonPolicy::Deflate(Clock::time_point now) {
  if (balloon_ > 0) {
    balloon_ = 0;
    last_deflate_ = now;
  }
}

uint64_t BalloonPolicy::Update(const GuestActivity& report, Clock::time_point now) {
  bool pressure = report.psi_some_avg10 && *report.psi_some_avg10 >= config_.pressure_threshold;
  bool busy = pressure || report.exec_running || (report.active && !report.balloon_settling);
  if (busy_ && *busy_ != busy) NoteTransition(now);
  bool became_idle = !busy && (!busy_ || *busy_);
  busy_ = busy;
  if (busy) {
    Deflate(now);
    stage_ = 0;
    return balloon_;
  }
  if (became_idle) {
    idle_since_ = now;
    stage_ = 0;
    base_ = balloon_;
  }
  Inflate(report, now);
  return balloon_;
}

void BalloonPolicy::Inflate(const GuestActivity& report, Clock::time_point now) {
  if (last_deflate_ && now - *last_deflate_ < Cooldown(now)) return;
  auto idle = now - idle_since_;
  const BalloonPolicyTimes& t = config_.times;
  int stage = idle >= t.idle3 ? 3 : idle >= t.idle2 ? 2 : idle >= t.idle1 ? 1 : 0;
  if (stage <= stage_) return;
  uint64_t room = MaxBalloon() > base_ ? MaxBalloon() - base_ : 0;
  // The guest's own number, clamped: it cannot make the balloon pass the floor.
  if (stage_ == 0) reclaimable_ = std::min(report.available_bytes, room);
  uint64_t target = base_;
  if (stage == 1) target = base_ + reclaimable_ / 4;
  if (stage == 2) target = base_ + reclaimable_ / 2;
  if (stage == 3) target = MaxBalloon();
  balloon_ = std::max(balloon_, std::min(target, MaxBalloon()));
  stage_ = stage;
}

}  // namespace clonevm

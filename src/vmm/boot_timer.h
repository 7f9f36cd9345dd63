// BootTimer: named timestamps of the VMM's start-up phases, relative to process start, for
// `clone run --boot-timing`. Mark() may be called from any thread.
#pragma once

#include <chrono>
#include <mutex>
#include <string>
#include <vector>

namespace clonevm {

class BootTimer {
 public:
  using Clock = std::chrono::steady_clock;
  explicit BootTimer(Clock::time_point start = Clock::now()) : start_(start) {}

  void Mark(std::string phase) {
    auto now = Clock::now();
    std::lock_guard lock(mu_);
    marks_.push_back({std::move(phase), now});
  }
  // "phase1 0.42 ms, phase2 3.10 ms, ..." in order of marking.
  std::string Summary() const;

 private:
  struct MarkPoint {
    std::string phase;
    Clock::time_point when;
  };
  Clock::time_point start_;
  mutable std::mutex mu_;
  std::vector<MarkPoint> marks_;
};

}  // namespace clonevm

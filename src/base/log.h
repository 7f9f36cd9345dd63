// Logging to stderr, prefixed "clone: ". The level comes from CLONE_LOG (error|warn|info|debug),
// default warn. Guest-triggered paths must use CLONE_LOG_RATELIMITED so a hostile guest cannot
// flood the host's logs.
#pragma once

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <string_view>

namespace clonevm {

enum class LogLevel { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

LogLevel CurrentLogLevel();
void SetLogLevel(LogLevel level);
void LogLine(LogLevel level, std::string_view message);

template <typename... Args>
void Log(LogLevel level, fmt::format_string<Args...> f, Args&&... args) {
  if (level > CurrentLogLevel()) return;
  LogLine(level, fmt::format(f, std::forward<Args>(args)...));
}

// Allows a burst of kBurst messages, then at most one per second. Thread-safe.
class RateLimiter {
 public:
  bool Allow();

 private:
  static constexpr int kBurst = 10;
  std::atomic<int64_t> next_allowed_ns_{0};
  std::atomic<int> burst_left_{kBurst};
};

}  // namespace clonevm

#define CLONE_LOG_RATELIMITED(level, ...)                                \
  do {                                                                   \
    static ::clonevm::RateLimiter _clone_rate_limiter;                   \
    if (_clone_rate_limiter.Allow()) ::clonevm::Log(level, __VA_ARGS__); \
  } while (0)

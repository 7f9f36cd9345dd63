#include "base/log.h"

#include <unistd.h>

#include <cstdlib>
#include <string>

namespace clonevm {
namespace {

LogLevel LevelFromEnv() {
  const char* env = std::getenv("CLONE_LOG");
  if (env == nullptr) return LogLevel::kWarn;
  std::string_view v(env);
  if (v == "error") return LogLevel::kError;
  if (v == "info") return LogLevel::kInfo;
  if (v == "debug") return LogLevel::kDebug;
  return LogLevel::kWarn;
}

std::atomic<int>& LevelStorage() {
  static std::atomic<int> level{static_cast<int>(LevelFromEnv())};
  return level;
}

}  // namespace

LogLevel CurrentLogLevel() { return static_cast<LogLevel>(LevelStorage().load(std::memory_order_relaxed)); }

void SetLogLevel(LogLevel level) { LevelStorage().store(static_cast<int>(level)); }

void LogLine(LogLevel level, std::string_view message) {
  static constexpr std::string_view kNames[] = {"error", "warning", "info", "debug"};
  // "\r\n": the host terminal may be in raw mode while a guest runs.
  std::string line = fmt::format("clone: {}: {}\r\n", kNames[static_cast<int>(level)], message);
  [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
}

bool RateLimiter::Allow() {
  if (burst_left_.load(std::memory_order_relaxed) > 0 && burst_left_.fetch_sub(1) > 0) return true;
  int64_t now =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
  int64_t next = next_allowed_ns_.load(std::memory_order_relaxed);
  if (now < next) return false;
  return next_allowed_ns_.compare_exchange_strong(next, now + 1'000'000'000);
}

}  // namespace clonevm

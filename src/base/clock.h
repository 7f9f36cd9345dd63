// The host's wall-clock time as one number, for timestamps that cross a process or a snapshot
// (snapshot state, identity pages, the agent's clock).
#pragma once

#include <time.h>

#include <cstdint>

namespace clonevm {

// CLOCK_REALTIME in nanoseconds since the Unix epoch.
inline uint64_t RealtimeNs() {
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  return static_cast<uint64_t>(now.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(now.tv_nsec);
}

}  // namespace clonevm

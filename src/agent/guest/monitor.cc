// Monitor sessions and the Report they push: everything comes from /proc (see docs/agent.md).
#include <dirent.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <cstring>

#include "agent/guest/agent.h"

namespace clonevm::agent {

namespace {

// A report is "active" when busy CPU time over the interval reaches this share of one CPU.
constexpr double kActiveCpuThreshold = 0.05;

std::string ReadProcFile(const char* path) {
  auto text = ReadFile(path);
  return text ? *text : std::string();
}

// The value after "key" in text (a /proc "key value" line), or 0.
uint64_t FieldAfter(const std::string& text, const char* key) {
  size_t pos = 0;
  size_t key_len = std::strlen(key);
  while ((pos = text.find(key, pos)) != std::string::npos) {
    if (pos == 0 || text[pos - 1] == '\n') return std::strtoull(text.c_str() + pos + key_len, nullptr, 10);
    pos += key_len;
  }
  return 0;
}

// Sum of the non-idle columns of the aggregate "cpu" line of /proc/stat.
uint64_t BusyTicks(const std::string& stat) {
  unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  if (std::sscanf(stat.c_str(), "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &user, &nice, &system, &idle, &iowait,
                  &irq, &softirq, &steal) < 4) {
    return 0;
  }
  return user + nice + system + irq + softirq + steal;
}

// "some avg10=1.23 ..." / "full avg10=..." lines of /proc/pressure/memory.
std::optional<double> PsiAvg10(const std::string& text, const char* kind) {
  std::string key = std::string(kind) + " avg10=";
  size_t pos = text.find(key);
  if (pos == std::string::npos) return std::nullopt;
  return std::strtod(text.c_str() + pos + key.size(), nullptr);
}

uint32_t CountProcesses() {
  DIR* dir = ::opendir("/proc");
  if (!dir) return 0;
  uint32_t count = 0;
  while (dirent* entry = ::readdir(dir)) {
    if (std::isdigit(static_cast<unsigned char>(entry->d_name[0]))) ++count;
  }
  ::closedir(dir);
  return count;
}

}  // namespace

Report CollectReport(CpuSample* previous, uint32_t exec_sessions) {
  Report r;
  std::string stat = ReadProcFile("/proc/stat");
  CpuSample now{BusyTicks(stat), Clock::now()};
  double wall = std::chrono::duration<double>(now.when - previous->when).count();
  if (previous->busy_ticks != 0 && wall > 0 && now.busy_ticks >= previous->busy_ticks) {
    double hz = static_cast<double>(::sysconf(_SC_CLK_TCK));
    r.cpu_busy = static_cast<double>(now.busy_ticks - previous->busy_ticks) / hz / wall;
  }
  *previous = now;
  r.procs_running = static_cast<uint32_t>(FieldAfter(stat, "procs_running "));
  r.exec_sessions = exec_sessions;
  r.active = r.cpu_busy >= kActiveCpuThreshold || exec_sessions > 0;

  std::string psi = ReadProcFile("/proc/pressure/memory");
  r.psi_some_avg10 = PsiAvg10(psi, "some");
  r.psi_full_avg10 = PsiAvg10(psi, "full");
  std::string loadavg = ReadProcFile("/proc/loadavg");
  std::sscanf(loadavg.c_str(), "%lf %lf %lf", &r.load1, &r.load5, &r.load15);
  std::string meminfo = ReadProcFile("/proc/meminfo");
  r.mem_total_kb = FieldAfter(meminfo, "MemTotal:");
  r.mem_available_kb = FieldAfter(meminfo, "MemAvailable:");
  std::string uptime = ReadProcFile("/proc/uptime");
  std::sscanf(uptime.c_str(), "%lf", &r.uptime_s);
  r.procs = CountProcesses();
  return r;
}

Result<void> RunMonitorSession(int conn, const Monitor& request, const AgentConfig& config) {
  auto interval = std::chrono::milliseconds(request.interval_ms);
  CpuSample sample{BusyTicks(ReadProcFile("/proc/stat")), Clock::now()};
  auto next = Clock::now() + interval;
  for (;;) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(next - Clock::now()).count();
    pollfd p{conn, POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(left, 0)));
    if (n < 0 && errno != EINTR) return FailErrno("poll");
    if (n > 0) {
      // The host only closes a monitor connection; anything else is a protocol error.
      char byte;
      if (::recv(conn, &byte, 1, MSG_DONTWAIT) <= 0) return {};
      return Fail("unexpected data on a monitor connection");
    }
    if (Clock::now() < next) continue;
    uint32_t sessions = config.exec_sessions ? config.exec_sessions->load() : 0;
    CLONE_TRY_VOID(
        WriteMessage(conn, CollectReport(&sample, sessions), DeadlineAfter(interval + std::chrono::seconds(10))));
    next += interval;
    if (next < Clock::now()) next = Clock::now() + interval;  // we fell behind (guest paused)
  }
}

}  // namespace clonevm::agent

#include "cli/list.h"

#include <fstream>
#include <sstream>

#include "base/log.h"
#include "cli/daemon.h"
#include "cli/exit_codes.h"
#include "control/client.h"
#include "runtime/vm_dir.h"

namespace clonevm::cli {
namespace {

constexpr std::chrono::milliseconds kQueryTimeout{2000};

// Memory of a process from /proc/PID/smaps_rollup, in KiB: Rss, Pss, Private_* summed, Shared_*.
struct MemoryUse {
  uint64_t rss = 0, pss = 0, private_kib = 0, shared_kib = 0;
};

MemoryUse ReadMemoryUse(int64_t pid) {
  MemoryUse use;
  std::ifstream in(fmt::format("/proc/{}/smaps_rollup", pid));
  std::string key;
  uint64_t value = 0;
  std::string unit;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    if (!(fields >> key >> value)) continue;
    if (key == "Rss:") use.rss = value;
    if (key == "Pss:") use.pss = value;
    if (key == "Private_Clean:" || key == "Private_Dirty:") use.private_kib += value;
    if (key == "Shared_Clean:" || key == "Shared_Dirty:") use.shared_kib += value;
  }
  return use;
}

// One VM: info.json, its live state from GET /vm (or "unresponsive"), its memory.
nlohmann::json Describe(const VmEntry& vm) {
  nlohmann::json d = vm.info;
  d["id"] = vm.id;
  auto response = control::Call(vm.control_socket(), "GET", "/vm", std::nullopt, kQueryTimeout);
  auto state = response ? control::ResponseJson(*response) : Result<nlohmann::json>(Fail(response.error()));
  if (state && state->is_object()) {
    d["state"] = state->value("state", "unknown");
    d["agent"] = state->value("agent", nlohmann::json::object()).value("connected", false);
    if (auto timing = state->find("timing"); timing != state->end()) d["timing"] = *timing;
    if (auto balloon = state->find("balloon"); balloon != state->end()) d["balloon"] = *balloon;
  } else {
    d["state"] = "unresponsive";
  }
  int64_t pid = d.value("pid", int64_t{0});
  if (pid > 0) {
    MemoryUse use = ReadMemoryUse(pid);
    d["rss_kib"] = use.rss;
    d["pss_kib"] = use.pss;
    d["private_kib"] = use.private_kib;
    d["shared_kib"] = use.shared_kib;
  }
  return d;
}

// The host's side of the summary: MemAvailable and the KSM counters (read, never changed).
nlohmann::json HostMemory() {
  nlohmann::json host = nlohmann::json::object();
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  std::string line;
  while (std::getline(meminfo, line)) {
    std::istringstream fields(line);
    if (fields >> key >> kib && key == "MemAvailable:") host["mem_available_kib"] = kib;
  }
  for (const char* counter : {"run", "pages_shared", "pages_sharing"}) {
    std::ifstream in(fmt::format("/sys/kernel/mm/ksm/{}", counter));
    uint64_t value = 0;
    if (in >> value) host["ksm"][counter] = value;
  }
  return host;
}

// What the guest keeps with its balloon, in MiB ("-" without a balloon).
std::string BalloonColumn(const nlohmann::json& d) {
  auto balloon = d.find("balloon");
  if (balloon == d.end() || !balloon->is_object()) return "-";
  return fmt::format("{:.0f}", balloon->value("actual_mib", 0.0));
}

void Print(const std::string& text) { [[maybe_unused]] auto r = WriteAll(STDOUT_FILENO, text.data(), text.size()); }

}  // namespace

void AddListCommands(CLI::App& app, ListOptions& o) {
  auto* list = app.add_subcommand("list", "List running VMs: id, PID, state, vCPUs, memory, RSS, vsock CID");
  list->add_flag("--json", o.json, "Print a JSON array instead of a table");
  list->add_flag("--no-daemon", o.no_daemon,
                 "Find VMs through their runtime directories instead of asking the daemon (the default when none "
                 "serves its socket)");
  auto* status = app.add_subcommand("status", "Running VMs and their memory use (RSS, PSS, private, shared)");
  status->add_flag("--json", o.json, "Print JSON instead of a table");
  status->add_flag("--no-daemon", o.no_daemon, "Find VMs through their runtime directories (the default today)");
}

int ListCommand(const ListOptions& o) {
  nlohmann::json all = nlohmann::json::array();
  if (auto through_daemon = o.no_daemon ? std::nullopt : ListThroughDaemon()) {
    all = std::move(*through_daemon);
  } else {
    for (const auto& vm : ListVms()) all.push_back(Describe(vm));
  }
  if (o.json) {
    Print(all.dump(2) + "\n");
    return kExitOk;
  }
  std::string out = fmt::format("{:<20} {:>8} {:<12} {:>5} {:>8} {:>8} {:>6} {}\n", "ID", "PID", "STATE", "VCPUS",
                                "MEM_MIB", "RSS_MIB", "CID", "AGENT");
  for (const auto& d : all) {
    out +=
        fmt::format("{:<20} {:>8} {:<12} {:>5} {:>8} {:>8} {:>6} {}\n", d.value("id", ""), d.value("pid", 0),
                    d.value("state", ""), d.value("vcpus", 0), d.value("mem_mib", 0),
                    d.value("rss_kib", uint64_t{0}) / 1024, d.value("cid", 0), d.value("agent", false) ? "yes" : "no");
  }
  Print(out);
  return kExitOk;
}

int StatusCommand(const ListOptions& o) {
  nlohmann::json all = nlohmann::json::array();
  uint64_t rss = 0, pss = 0, priv = 0, mem = 0;
  for (const auto& vm : ListVms()) {
    auto d = Describe(vm);
    rss += d.value("rss_kib", uint64_t{0});
    pss += d.value("pss_kib", uint64_t{0});
    priv += d.value("private_kib", uint64_t{0});
    mem += d.value("mem_mib", uint64_t{0});
    all.push_back(std::move(d));
  }
  nlohmann::json summary = {{"vms", all.size()}, {"guest_mem_mib", mem}, {"rss_kib", rss},
                            {"pss_kib", pss},    {"private_kib", priv},  {"host", HostMemory()}};
  if (o.json) {
    Print(nlohmann::json{{"summary", summary}, {"vms", all}}.dump(2) + "\n");
    return kExitOk;
  }
  std::string out = fmt::format("{:<20} {:<12} {:>8} {:>12} {:>10} {:>10} {:>12} {:>11}\n", "ID", "STATE", "MEM_MIB",
                                "BALLOON_KEEP", "RSS_KIB", "PSS_KIB", "PRIVATE_KIB", "SHARED_KIB");
  for (const auto& d : all) {
    out += fmt::format("{:<20} {:<12} {:>8} {:>12} {:>10} {:>10} {:>12} {:>11}\n", d.value("id", ""),
                       d.value("state", ""), d.value("mem_mib", 0), BalloonColumn(d), d.value("rss_kib", uint64_t{0}),
                       d.value("pss_kib", uint64_t{0}), d.value("private_kib", uint64_t{0}),
                       d.value("shared_kib", uint64_t{0}));
  }
  out += fmt::format("{} VM(s), {} MiB of guest memory configured; RSS {} KiB, PSS {} KiB, private {} KiB\n",
                     all.size(), mem, rss, pss, priv);
  const nlohmann::json& host = summary["host"];
  out += fmt::format("host: MemAvailable {} KiB", host.value("mem_available_kib", uint64_t{0}));
  if (host.contains("ksm")) {
    out += fmt::format("; KSM {} (pages_shared {}, pages_sharing {})",
                       host["ksm"].value("run", uint64_t{0}) == 1 ? "running" : "not running",
                       host["ksm"].value("pages_shared", uint64_t{0}), host["ksm"].value("pages_sharing", uint64_t{0}));
  } else {
    out += "; no KSM";
  }
  out += "\n";
  Print(out);
  return kExitOk;
}

}  // namespace clonevm::cli

// VmRecord: what the daemon knows about one VM, persisted as <state>/vms/<id>/vm.json so that a
// restarted daemon finds every VM again (supervisor.h adopts the live ones, cleans up the dead).
//
// Layout of <state>/vms/<id>/:
//   vm.json      this record (written atomically on every change)
//   vmm.log      the VM process's stderr (all its runs, appended)
//   exit.json    how the last run ended, written by the VM process itself ({"status", "how"}): a
//                daemon that was not the VM process's parent (it adopted it) learns the end from it
//   overlay.qcow2  the upper layer of a spec whose rootfs overlay is "auto" (removed at exit)
//
// Threads: RecordStore's functions touch only files; one thread (the daemon loop) calls them.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"
#include "daemon/requests.h"
#include "spec/vm_spec.h"

namespace clonevm::daemon {

inline constexpr uint32_t kRecordVersion = 1;

// How a VM process's run ended.
struct ExitInfo {
  // The `clone` exit status (0 powered off, 1 VMM error, 2 bad spec, 3 rebooted, 4 crashed, 128+N
  // signal N); nullopt when nobody could learn it (the VM process died while the daemon was down).
  std::optional<int> status;
  std::string how;      // "powered off", "killed by signal 9", ...
  int64_t at_unix = 0;  // when the daemon noticed
  bool operator==(const ExitInfo&) const = default;
};

struct VmRecord {
  std::string id;
  uid_t owner = 0;                // the caller that created it (SO_PEERCRED)
  std::string template_name;      // a fork of this template; empty: booted from `spec`
  spec::VmSpec spec;              // boot: the spec (name = id)
  spec::ForkOverrides overrides;  // fork: applied to the template's recorded spec (name = id)
  RestartPolicy restart = RestartPolicy::kNo;
  bool want_running = false;  // started and not since stopped: what restart policies act on
  pid_t pid = 0;              // the VM process of the current run; 0: none
  uint64_t pid_start = 0;     // its start time (/proc/PID/stat field 22): a reused PID is not it
  int64_t created_unix = 0;
  uint32_t restarts = 0;  // restarts made by the restart policy
  std::optional<ExitInfo> last_exit;
  bool operator==(const VmRecord&) const = default;
};

nlohmann::json ExitToJson(const ExitInfo& exit);  // {"status": N or null, "how", "at_unix"}
nlohmann::json RecordToJson(const VmRecord& record);
// Errors name the field ("owner: expected an integer ...").
[[nodiscard]] Result<VmRecord> RecordFromJson(const nlohmann::json& j);

// A process's start time in clock ticks since boot (/proc/PID/stat field 22); nullopt when there
// is no such process.
std::optional<uint64_t> ProcessStartTime(pid_t pid);
// Whether `record`'s VM process is alive: its PID exists with the recorded start time.
bool ProcessAlive(const VmRecord& record);

class RecordStore {
 public:
  explicit RecordStore(std::string state_dir) : state_dir_(std::move(state_dir)) {}
  const std::string& state_dir() const { return state_dir_; }
  std::string VmDir(const std::string& id) const { return state_dir_ + "/vms/" + id; }
  std::string VmmLog(const std::string& id) const { return VmDir(id) + "/vmm.log"; }
  std::string ExitFile(const std::string& id) const { return VmDir(id) + "/exit.json"; }
  std::string AutoOverlay(const std::string& id) const { return VmDir(id) + "/overlay.qcow2"; }
  std::string TemplatesDir() const { return state_dir_ + "/templates"; }

  // Creates <state>/vms and <state>/templates (0700).
  [[nodiscard]] Result<void> Init() const;
  // Writes vm.json atomically (creating the VM's directory).
  [[nodiscard]] Result<void> Save(const VmRecord& record) const;
  // Every readable record, sorted by id; unreadable ones are reported in *errors ("<path>: why").
  std::vector<VmRecord> LoadAll(std::vector<std::string>* errors) const;
  // Removes the VM's directory and everything in it.
  void Remove(const std::string& id) const;
  // The exit record a VM process wrote (and removes it); nullopt when there is none.
  std::optional<ExitInfo> TakeExitFile(const std::string& id) const;

 private:
  std::string state_dir_;
};

}  // namespace clonevm::daemon

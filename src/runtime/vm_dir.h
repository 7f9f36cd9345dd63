// VmDir: where a running VM process publishes itself, and how the CLI finds running VMs.
//
// Layout: <runtime>/vms/<id>/ with
//   lock          flock(LOCK_EX) held by the VM process for its whole life: a VM directory whose
//                 lock can be taken belongs to a dead process and is stale
//   info.json     static facts written at start (id, pid, vcpus, mem_mib, kernel, created_unix, cid)
//   control.sock  the control API (HTTP/1.1 + JSON, see docs/api/openapi.yaml)
//   console.sock  the serial console (raw bytes both ways; `clone attach`)
//   console.log   guest serial output when the VM runs detached (--detach)
// <runtime> is $CLONE_RUNTIME_DIR if set, else /run/clone for root, else $XDG_RUNTIME_DIR/clone,
// else /tmp/clone-<uid>. Directories are created 0700: the sockets give full control of the VM.
//
// Ids: [a-z0-9][a-z0-9-]{0,31} (they appear in paths, interface names and hostnames); Create()
// refuses an id a live VM uses and replaces a stale directory.
#pragma once

#include <sys/types.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "spec/vm_spec.h"

namespace clonevm {

std::string RuntimeDir();
std::string VmsDir();

// Whether `id` is a valid VM id (see above); the rule is the VM spec's.
using spec::IsValidVmId;
// A fresh random id, "vm-" + 6 hex digits.
std::string NewVmId();

class VmDir {
 public:
  // Creates (or reclaims a stale) <runtime>/vms/<id> and takes its lock. Fails if a live VM has it.
  [[nodiscard]] static Result<VmDir> Create(const std::string& id);
  VmDir(VmDir&&) = default;
  VmDir& operator=(VmDir&&) = default;
  // Removes the directory (the VM is gone).
  ~VmDir();

  const std::string& id() const { return id_; }
  const std::string& path() const { return path_; }
  std::string control_socket() const { return path_ + "/control.sock"; }
  std::string console_socket() const { return path_ + "/console.sock"; }
  std::string console_log() const { return path_ + "/console.log"; }
  // A detached VM process's own stderr: its warnings, errors and a seccomp report.
  std::string vmm_log() const { return path_ + "/vmm.log"; }
  // Writes info.json atomically.
  [[nodiscard]] Result<void> WriteInfo(const nlohmann::json& info) const;

 private:
  VmDir(std::string id, std::string path, Fd lock)
      : id_(std::move(id)), path_(std::move(path)), lock_(std::move(lock)) {}
  std::string id_;
  std::string path_;
  Fd lock_;
};

// A running VM as seen from outside (by `clone list`, `attach`, `exec`).
struct VmEntry {
  std::string id;
  std::string path;
  nlohmann::json info;  // info.json (empty object if unreadable)
  std::string control_socket() const { return path + "/control.sock"; }
  std::string console_socket() const { return path + "/console.sock"; }
};

// Live VMs, sorted by id; stale directories are removed on the way.
std::vector<VmEntry> ListVms();
// The VM named `id` — its id, or else the PID of its VM process (info.json "pid") — or the only
// running VM when `id` is empty; a clear error otherwise ("no VM is running", "3 VMs are running:
// pass --vm-id (one of a, b, c)", "no running VM named 'x'").
[[nodiscard]] Result<VmEntry> FindVm(const std::string& id);

}  // namespace clonevm

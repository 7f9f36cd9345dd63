// What a caller may make the daemon open. The daemon (root, serving a group) starts VM processes
// with its own credentials, so without a check any caller allowed on its socket could have a VM
// read /etc/shadow as its "kernel" or attach a root-only disk. Before a non-root caller's VM is
// created, every host path its spec names is checked by the kernel against the caller's own
// credentials: a child process takes the caller's uid, gid and supplementary groups and calls
// access(2) with the mode the VM needs (read for kernel, initrd, modules and read-only disks; read
// and write for writable disks, an overlay-less rootfs and writable shares; a new overlay file's
// directory must be writable). A path that does not exist is left for the VM process to report.
//
// Thread-safety: free functions; CheckCallerAccess forks (only async-signal-safe calls in the child).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "base/result.h"
#include "spec/vm_spec.h"

namespace clonevm::daemon {

struct PathUse {
  std::string what;  // "kernel", "disks[1]", "shares[0]" ...
  std::string path;
  int mode = 0;  // R_OK / W_OK / X_OK bits for access(2)
  bool operator==(const PathUse&) const = default;
};

// The host paths `spec` names and the access a VM process needs to each.
std::vector<PathUse> PathsOf(const spec::VmSpec& spec);
// The host paths fork overrides name: new share directories, and the targets of disk rewrites
// (read and write: whether the recorded disk is read-only is the template's to say).
std::vector<PathUse> PathsOf(const spec::ForkOverrides& overrides);

// Fails, naming the first path and the access it lacks, unless a process with the credentials of
// `uid` (its primary group from the password database, else `gid`, and its supplementary groups)
// may access every path of `uses`. Root (uid 0) and the daemon's own user pass unchecked.
[[nodiscard]] Result<void> CheckCallerAccess(const std::vector<PathUse>& uses, uid_t uid, gid_t gid);

}  // namespace clonevm::daemon

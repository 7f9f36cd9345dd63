// `clone daemon`: many VMs of one host behind one REST API on a Unix socket (docs/daemon.md).
//
// RunDaemon serves the API (api.h) on `socket` until SIGTERM or SIGINT; VMs keep running when the
// daemon stops and are adopted when it starts again (supervisor.h). One daemon per state
// directory (flock on <state>/daemon.lock). It logs at info level unless $CLONE_LOG says otherwise.
//
// Access: the socket is 0600, or 0660 with group `group` (its directory is then made searchable by
// the group); the API checks every request's SO_PEERCRED uid (api.h). The daemon runs VM processes
// as itself: whoever may use its socket may have it read the host files a VmSpec names.
#pragma once

#include <string>
#include <vector>

#include "base/result.h"

namespace clonevm::daemon {

struct DaemonOptions {
  std::string socket;     // empty: DefaultSocketPath()
  std::string state_dir;  // empty: DefaultStateDir()
  std::string group;      // empty: socket 0600
  // The VM process's argv before "--state-dir S --id ID" (empty: this binary + "daemon-vm").
  std::vector<std::string> vm_command;
};

// /run/clone/daemon.sock for root; $XDG_RUNTIME_DIR/clone/daemon.sock, else /tmp/clone-<uid>/daemon.sock.
// $CLONE_DAEMON_SOCKET overrides both (the CLI looks there too).
std::string DefaultSocketPath();
// /var/lib/clone for root; else ~/.local/share/clone ($XDG_DATA_HOME/clone when set).
std::string DefaultStateDir();

[[nodiscard]] Result<void> RunDaemon(const DaemonOptions& options);

}  // namespace clonevm::daemon

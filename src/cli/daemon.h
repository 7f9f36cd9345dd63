// The CLI side of `clone daemon` (docs/daemon.md):
//
//   clone daemon [--socket PATH] [--state-dir DIR] [--group G]   serve the API until SIGTERM
//   clone create [every clone run option] [--restart P] [--no-start]   a VM through the daemon
//   clone start|stop|destroy --vm-id ID [--force]                  one VM through the daemon
//   clone events [--since N]                                       the event stream, JSON lines
//   clone daemon-vm --state-dir DIR --id ID                        (internal) one daemon VM process
//
// `clone fork --template N -d` (or --count K) forks through the daemon when it has template N
// (ForkThroughDaemon), else directly. `clone list` asks the daemon when one serves its socket
// (ListThroughDaemon) and scans runtime directories otherwise or with --no-daemon. Every client
// command takes --socket (default daemon::DefaultSocketPath()) and --json (the API's JSON instead
// of a line of text).
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "cli/run.h"
#include "spec/vm_spec.h"
#include "vmm/boot_timer.h"

namespace clonevm::cli {

struct DaemonCliOptions {
  std::string socket;
  std::string state_dir;
  std::string group;
  // create
  RunOptions run;
  std::string restart = "no";
  bool no_start = false;
  // start/stop/destroy
  std::string vm_id;
  bool force = false;
  // events
  uint64_t since = 0;
  bool since_given = false;
  bool json = false;
  // daemon-vm
  std::string id;
};

void AddDaemonCommands(CLI::App& app, DaemonCliOptions& options);
// The exit status of whichever daemon command was given, or nullopt if none was.
std::optional<int> RunDaemonCommands(const CLI::App& app, const DaemonCliOptions& options, BootTimer& timer);

// `clone fork --template N` (detached) through the daemon serving the default socket when that
// daemon has template N: the forks' ids one per line, as a direct fork prints them. nullopt (fork
// directly) when no daemon answers or it has no such template.
std::optional<int> ForkThroughDaemon(const std::string& template_name, uint32_t count, const std::string& name,
                                     const spec::ForkOverrides& overrides);

// GET /vms from the daemon serving the default socket, shaped like `clone list --no-daemon`'s
// entries; nullopt when no daemon answers there.
std::optional<nlohmann::json> ListThroughDaemon();

}  // namespace clonevm::cli

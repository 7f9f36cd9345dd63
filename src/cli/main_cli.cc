#include "cli/main_cli.h"

#include <signal.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>

#include "base/log.h"
#include "cli/attach.h"
#include "cli/balloon.h"
#include "cli/check.h"
#include "cli/daemon.h"
#include "cli/exec.h"
#include "cli/exit_codes.h"
#include "cli/fork.h"
#include "cli/list.h"
#include "cli/rootfs.h"
#include "cli/run.h"
#include "cli/snapshot.h"
#include "host/check.h"

namespace clonevm::cli {

int Main(int argc, char** argv) {
  BootTimer timer;
  ::signal(SIGPIPE, SIG_IGN);
  CLI::App app(
      "clone: a lightweight KVM virtual machine monitor.\n"
      "Boot stock Linux kernels in milliseconds-fast VMs. Try: clone run --help",
      "clone");
  app.require_subcommand(1);
  app.set_version_flag("--version", "clone 0.1.0");
  // Registering a subcommand builds every one of its options (CLI11: ~1.2 M instructions for all
  // of them, most of `clone exec -- true`'s own start-up): when argv[1] names a subcommand only its
  // group is registered; anything else (--help, --version, a typo) registers them all.
  CheckOptions check_options;
  RunOptions run_options;
  RootfsOptions rootfs_options;
  AttachOptions attach_options;
  ExecOptions exec_options;
  ListOptions list_options;
  SnapshotOptions snapshot_options;
  RestoreOptions restore_options;
  ForkOptions fork_options;
  BalloonOptions balloon_options;
  DaemonCliOptions daemon_options;
  bool daemon_commands = false;  // registered (RunDaemonCommands asks CLI11 about each of them)
  struct Group {
    std::initializer_list<std::string_view> names;
    std::function<void()> add;
  };
  const Group groups[] = {
      {{"check"}, [&] { AddCheckCommand(app, check_options); }},
      {{"run"}, [&] { AddRunCommand(app, run_options); }},
      {{"rootfs"}, [&] { AddRootfsCommand(app, rootfs_options); }},
      {{"attach"}, [&] { AddAttachCommand(app, attach_options); }},
      {{"exec"}, [&] { AddExecCommand(app, exec_options); }},
      {{"list", "status"}, [&] { AddListCommands(app, list_options); }},
      {{"snapshot", "restore"}, [&] { AddSnapshotCommands(app, snapshot_options, restore_options); }},
      {{"fork"}, [&] { AddForkCommand(app, fork_options); }},
      {{"balloon"}, [&] { AddBalloonCommand(app, balloon_options); }},
      {{"daemon", "daemon-vm", "create", "start", "stop", "destroy", "events"},
       [&] {
         AddDaemonCommands(app, daemon_options);
         daemon_commands = true;
       }},
  };
  std::string_view first = argc > 1 ? argv[1] : "";
  auto named = [&](const Group& g) { return std::find(g.names.begin(), g.names.end(), first) != g.names.end(); };
  bool one = std::any_of(std::begin(groups), std::end(groups), named);
  for (const Group& g : groups) {
    if (!one || named(g)) g.add();
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    Log(LogLevel::kError, "{} (see 'clone --help')", e.what());
    return kExitUsage;
  }
  // require_subcommand(1): exactly one was parsed (not every subcommand is registered: see above).
  const std::string command = app.get_subcommands().empty() ? "" : app.get_subcommands().front()->get_name();
  if (command == "check") return CheckCommand(check_options);
  // A KVM that cannot run stock kernels (PVM, ...) is refused before any image is read
  // (Vm::OpenKvm checks again for every other way a VM is built).
  if (command == "run" || command == "restore" || command == "fork" || command == "daemon-vm") {
    if (auto why = host::RefuseNonHardwareKvm(host::System())) {
      Log(LogLevel::kError, "{}", *why);
      return kExitError;
    }
  }
  if (command == "run") return RunCommand(run_options, timer);
  if (daemon_commands) {
    if (auto status = RunDaemonCommands(app, daemon_options, timer)) return *status;
  }
  if (command == "rootfs") return RootfsCreateCommand(rootfs_options);
  if (command == "attach") return AttachCommand(attach_options);
  if (command == "exec") return ExecCommand(exec_options);
  if (command == "list") return ListCommand(list_options);
  if (command == "status") return StatusCommand(list_options);
  if (command == "snapshot") return SnapshotCommand(snapshot_options);
  if (command == "restore") return RestoreCommand(restore_options, timer);
  if (command == "fork") return ForkCommand(fork_options, timer);
  if (command == "balloon") return BalloonCommand(balloon_options);
  return kExitUsage;
}

}  // namespace clonevm::cli

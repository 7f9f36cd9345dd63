#include "cli/main_cli.h"

#include <signal.h>

#include <CLI/CLI.hpp>

#include "base/log.h"
#include "cli/attach.h"
#include "cli/balloon.h"
#include "cli/check.h"
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
  CheckOptions check_options;
  AddCheckCommand(app, check_options);
  RunOptions run_options;
  AddRunCommand(app, run_options);
  RootfsOptions rootfs_options;
  AddRootfsCommand(app, rootfs_options);
  AttachOptions attach_options;
  AddAttachCommand(app, attach_options);
  ExecOptions exec_options;
  AddExecCommand(app, exec_options);
  ListOptions list_options;
  AddListCommands(app, list_options);
  SnapshotOptions snapshot_options;
  RestoreOptions restore_options;
  AddSnapshotCommands(app, snapshot_options, restore_options);
  ForkOptions fork_options;
  AddForkCommand(app, fork_options);
  BalloonOptions balloon_options;
  AddBalloonCommand(app, balloon_options);
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
  if (app.got_subcommand("check")) return CheckCommand(check_options);
  // A KVM that cannot run stock kernels (PVM, ...) is refused before any image is read
  // (Vm::OpenKvm checks again for every other way a VM is built).
  for (const char* sub : {"run", "restore", "fork"}) {
    if (!app.got_subcommand(sub)) continue;
    if (auto why = host::RefuseNonHardwareKvm(host::System())) {
      Log(LogLevel::kError, "{}", *why);
      return kExitError;
    }
  }
  if (app.got_subcommand("run")) return RunCommand(run_options, timer);
  if (app.got_subcommand("rootfs")) return RootfsCreateCommand(rootfs_options);
  if (app.got_subcommand("attach")) return AttachCommand(attach_options);
  if (app.got_subcommand("exec")) return ExecCommand(exec_options);
  if (app.got_subcommand("list")) return ListCommand(list_options);
  if (app.got_subcommand("status")) return StatusCommand(list_options);
  if (app.got_subcommand("snapshot")) return SnapshotCommand(snapshot_options);
  if (app.got_subcommand("restore")) return RestoreCommand(restore_options, timer);
  if (app.got_subcommand("fork")) return ForkCommand(fork_options, timer);
  if (app.got_subcommand("balloon")) return BalloonCommand(balloon_options);
  return kExitUsage;
}

}  // namespace clonevm::cli

#include "cli/main_cli.h"

#include <signal.h>

#include <CLI/CLI.hpp>

#include "base/log.h"
#include "cli/exit_codes.h"
#include "cli/rootfs.h"
#include "cli/run.h"

namespace clonevm::cli {

int Main(int argc, char** argv) {
  BootTimer timer;
  ::signal(SIGPIPE, SIG_IGN);
  CLI::App app("clone: a lightweight KVM virtual machine monitor.\n"
               "Boot stock Linux kernels in milliseconds-fast VMs. Try: clone run --help", "clone");
  app.require_subcommand(1);
  app.set_version_flag("--version", "clone 0.1.0");
  RunOptions run_options;
  AddRunCommand(app, run_options);
  RootfsOptions rootfs_options;
  AddRootfsCommand(app, rootfs_options);
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
  if (app.got_subcommand("run")) return RunCommand(run_options, timer);
  if (app.got_subcommand("rootfs")) return RootfsCreateCommand(rootfs_options);
  return kExitUsage;
}

}  // namespace clonevm::cli

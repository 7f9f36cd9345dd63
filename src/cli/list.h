// `clone list` and `clone status`: the running VMs (found through their runtime directories and
// asked over their control sockets) and their memory use.
#pragma once

#include <CLI/CLI.hpp>

namespace clonevm::cli {

struct ListOptions {
  bool json = false;
  bool no_daemon = false;  // scan the runtime directory (the only mode until `clone daemon` exists)
};

void AddListCommands(CLI::App& app, ListOptions& options);
int ListCommand(const ListOptions& options);
int StatusCommand(const ListOptions& options);

}  // namespace clonevm::cli

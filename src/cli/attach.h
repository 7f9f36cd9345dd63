// `clone attach`: connect this terminal to a running VM's serial console (Ctrl-Q detaches).
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace clonevm::cli {

struct AttachOptions {
  std::string vm_id;
};

void AddAttachCommand(CLI::App& app, AttachOptions& options);
int AttachCommand(const AttachOptions& options);

}  // namespace clonevm::cli

// `clone exec`: run a command in a running VM through its guest agent (real exit status).
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace clonevm::cli {

struct ExecOptions {
  std::string vm_id;
  bool interactive = false;  // -i: forward stdin
  bool tty = false;          // -t: a pseudo-terminal in the guest
  std::vector<std::string> env;
  std::string cwd;
  std::vector<std::string> command;
  uint32_t timeout_s = 0;
};

void AddExecCommand(CLI::App& app, ExecOptions& options);
int ExecCommand(const ExecOptions& options);

}  // namespace clonevm::cli

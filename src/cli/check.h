// `clone check`: can Clone run on this host, and what does each missing piece cost (host/check.h).
#pragma once

#include <CLI/CLI.hpp>

namespace clonevm::cli {

struct CheckOptions {
  bool json = false;
  bool quiet = false;  // print nothing; the exit status alone answers "do stock guests run here?"
};

void AddCheckCommand(CLI::App& app, CheckOptions& options);
// 0 when stock Linux guests can run here, 1 when they cannot.
int CheckCommand(const CheckOptions& options);

}  // namespace clonevm::cli

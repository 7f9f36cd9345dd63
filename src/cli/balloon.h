// `clone balloon`: set a running VM's balloon target through its control API (PUT /vm/balloon), and
// the balloon flags `clone run` takes (docs/density.md).
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "spec/vm_spec.h"

namespace clonevm::cli {

struct BalloonOptions {
  std::string vm_id;
  std::string target;  // memory the guest keeps: 64M, 1G, 256 (a bare number is MiB)
  bool json = false;
};

// --balloon MODE, --no-balloon, --no-free-page-reporting, --balloon-stats-interval, --balloon-floor,
// --balloon-times on `run`.
// Also --no-ksm (spec.ksm): the memory-density flags live together.
void AddBalloonFlags(CLI::App* run, spec::VmSpec& spec);
void AddBalloonCommand(CLI::App& app, BalloonOptions& options);
int BalloonCommand(const BalloonOptions& options);

}  // namespace clonevm::cli

// `clone run`: boot a kernel in a new VM in the foreground, console on stdin/stdout.
//
// The flags fill a spec::VmSpec (spec/vm_spec.h); the VM process is runtime/launch.h's. This file
// only parses, validates (in flag spelling) and maps how the VM ended to an exit status.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "spec/vm_spec.h"
#include "vmm/boot_timer.h"
#include "vmm/vm.h"

namespace clonevm::cli {

struct RunOptions {
  spec::VmSpec spec;  // the scalar flags bind straight to its fields
  // The list flags in their flag forms, parsed into spec by SpecFromRunOptions.
  std::vector<std::string> blocks;       // --block PATH[,ro][,format=raw|qcow2]
  std::vector<std::string> taps;         // --tap NAME[,mac=XX:XX:XX:XX:XX:XX][,vhost=on|off]
  std::vector<std::string> shared_dirs;  // --shared-dir HOST:TAG[:ro] (virtio-fs)
  bool boot_timing = false;
  bool detach = false;  // --detach: run in the background, print the id
};

void AddRunCommand(CLI::App& app, RunOptions& options);
// The flags that make up a VM spec (every `clone run` flag but --detach and --boot-timing), shared
// with `clone create`.
void AddSpecFlags(CLI::App* command, RunOptions& options);

// The spec the flags describe, validated (errors name the flag).
[[nodiscard]] Result<spec::VmSpec> SpecFromRunOptions(const RunOptions& options);

// Runs the VM; returns the process exit status.
int RunCommand(const RunOptions& options, BootTimer& timer);

// The exit status of `clone run` (and `clone restore`, `clone fork`) for how the VM ended (see
// exit_codes.h).
int ExitStatusFor(const VmExit& exit);
// A VM process's result as an exit status, logged: how the VM ended, or why it did not start.
int ExitStatusOf(const Result<VmExit>& result);

// --detach for commands that start a VM process: forks before KVM is touched; returns the parent's
// exit status in the parent (after the child reported "ok <id>" or failed) and nullopt in the
// child, whose pipe is *ready (runtime/launch.h: ReportDetachedReady tells the parent once the VM
// runs, then stdio goes to /dev/null and stderr to the VM's vmm.log).
std::optional<int> ForkDetached(Fd* ready);
// The parent's side: reads the pipe to EOF; "<id>\n" when the child reported "ok <id>\n", nullopt
// when it ended without (it failed and logged why).
std::optional<std::string> AwaitReady(const Fd& pipe);

}  // namespace clonevm::cli

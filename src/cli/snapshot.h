// `clone snapshot` (take, list, rm) and `clone restore`: templates on disk (snapshot/format.h).
//
//   clone snapshot --name N [--parent P] [--vm-id ID] [--dir D] [--no-resume]
//                                                                    PUT /vm/snapshot on the VM
//                                                                    (--parent: incremental over P)
//   clone snapshot merge N [--dir D]                                 N rewritten as a full snapshot
//   clone snapshot list [--dir D]                                    what is under D
//   clone snapshot rm N [--dir D]
//   clone restore --snapshot N [--name ID] [-d] [--dir D]            a new VM process continuing it
//
// D defaults to snapshot::DefaultTemplatesDir() ($CLONE_TEMPLATES_DIR or ~/.clone/templates) of
// the CLI (it is sent to the VM as an absolute path). restore reads and checks the whole snapshot
// before it forks or touches KVM, so a damaged snapshot leaves no process behind.
#pragma once

#include <CLI/CLI.hpp>
#include <chrono>
#include <string>
#include <vector>

#include "vmm/boot_timer.h"

namespace clonevm::cli {

struct SnapshotOptions {
  std::string name;
  std::string vm_id;
  std::string dir;
  bool no_resume = false;
  std::string rm_name;
  std::string parent;      // --parent: an incremental snapshot over this one
  std::string merge_name;  // snapshot merge N
  CLI::App* list = nullptr;
  CLI::App* rm = nullptr;
  CLI::App* merge = nullptr;
};

struct RestoreOptions {
  std::string snapshot;
  std::string name;  // the new VM's id
  std::string dir;
  bool detach = false;
  uint64_t cid = 0;  // 0: the snapshot's
  bool net = false;
  std::vector<std::string> taps;
  std::vector<std::string> shared_dirs;  // --shared-dir HOST:TAG[:ro]: a new directory for TAG
  std::vector<std::string> blocks;
  bool seccomp = false;  // --seccomp (also implied by a snapshot of a confined VM)
};

// The templates directory: `dir`, or the default, made absolute.
std::string TemplatesDir(const std::string& dir);
// A snapshot's memory can take minutes to write on big guests; the VM answers when it is on disk.
inline constexpr std::chrono::milliseconds kSnapshotCallTimeout{10 * 60 * 1000};

void AddSnapshotCommands(CLI::App& app, SnapshotOptions& snapshot, RestoreOptions& restore);
int SnapshotCommand(const SnapshotOptions& options);
int RestoreCommand(const RestoreOptions& options, BootTimer& timer);

}  // namespace clonevm::cli

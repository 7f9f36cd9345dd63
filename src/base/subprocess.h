// Running host tools (nft, mkfs.ext4, debootstrap, qemu-img, ...): one way, for every library.
//
// RunTool spawns argv[0] (looked up with FindTool) without a shell through posix_spawn. The child
// gets default signal dispositions, an empty signal mask and no fds but 0-2 (everything Clone
// opens is close-on-exec); stdin is `input` (from a memfd: no deadlock against the output pipe, no
// SIGPIPE when the tool does not read) or /dev/null. Output is captured (stdout and stderr
// interleaved, the last MiB kept) or passed to our stderr. While `*interrupted` is set the tool gets
// SIGTERM and the call ends with ToolResult::interrupted. Blocks until the tool exits. Fails only if
// the tool cannot be found or started; its exit status is the caller's to judge.
// Threads: any (no global state is touched).
#pragma once

#include <atomic>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace clonevm {

// The full path of `name`: `name` itself if it has a '/', else the first executable in $PATH and
// then /usr/sbin and /sbin (administration tools live there and a user's PATH often lacks them);
// "" when it is not installed. `root` prefixes every directory looked in (host/check.h's fake
// trees).
std::string FindTool(std::string_view name, std::string_view root = "");

enum class ToolOutput { kCapture, kToStderr };

struct ToolOptions {
  std::string_view input;        // stdin; empty with input_from_null: /dev/null
  bool input_from_null = false;  // stdin is /dev/null (instead of `input`)
  ToolOutput output = ToolOutput::kCapture;
  const std::atomic<bool>* interrupted = nullptr;
};

struct ToolResult {
  int exit_code = -1;  // -1 when the tool died from a signal
  int signal = 0;      // the signal that ended it, if one did
  bool interrupted = false;
  std::string output;  // kCapture: stdout and stderr, interleaved (at most the last MiB)

  bool ok() const { return exit_code == 0 && !interrupted; }
  // "exit status N" / "killed by signal N"
  std::string How() const;
  // The last non-empty line of the output (what a tool's error usually is).
  std::string LastLine() const;
};

[[nodiscard]] Result<ToolResult> RunTool(const std::vector<std::string>& argv, const ToolOptions& options = {});

}  // namespace clonevm

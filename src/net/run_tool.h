// RunTool: runs a host tool (here: `nft`) without a shell, feeds it `input` on stdin and collects
// its stdout and stderr together.
//
// argv[0] is looked up in PATH and then in /usr/sbin and /sbin (administration tools live there
// and a non-root PATH often lacks them). The child gets default signal dispositions, an empty
// signal mask and no fds but 0-2 (everything Clone opens is close-on-exec). The call blocks until
// the tool exits. Fails if the tool cannot be found or started; a non-zero exit is reported in
// ToolResult, not as an error, so the caller can phrase the message.
// Threads: any (posix_spawn; no global state is touched).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace clonevm::net {

struct ToolResult {
  int exit_code = -1;  // -1 when the tool died from a signal
  std::string output;  // stdout and stderr, interleaved
};

// The full path of `name`, or "" when it is not installed.
std::string FindTool(std::string_view name);

[[nodiscard]] Result<ToolResult> RunTool(const std::vector<std::string>& argv, std::string_view input);

}  // namespace clonevm::net

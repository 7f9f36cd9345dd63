#include "net/run_tool.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "base/fd.h"

extern char** environ;

namespace clonevm::net {

std::string FindTool(std::string_view name) {
  if (name.find('/') != std::string_view::npos)
    return ::access(std::string(name).c_str(), X_OK) == 0 ? std::string(name) : "";
  const char* env_path = std::getenv("PATH");
  std::string search = env_path != nullptr ? env_path : "/usr/bin:/bin";
  search += ":/usr/sbin:/sbin";
  size_t start = 0;
  while (start <= search.size()) {
    size_t end = search.find(':', start);
    if (end == std::string::npos) end = search.size();
    std::string dir = search.substr(start, end - start);
    if (!dir.empty()) {
      std::string candidate = dir + "/" + std::string(name);
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    start = end + 1;
  }
  return "";
}

Result<ToolResult> RunTool(const std::vector<std::string>& argv, std::string_view input) {
  if (argv.empty()) return Fail("RunTool: empty argv");
  const std::string path = FindTool(argv[0]);
  if (path.empty()) return Fail("{} not found: install it", argv[0]);

  // stdin is a memfd holding `input`, not a pipe: no deadlock with the output pipe and no
  // SIGPIPE if the tool exits without reading.
  Fd in(::memfd_create("clone-tool-input", MFD_CLOEXEC));
  if (!in) return FailErrno("memfd_create");
  CLONE_TRY_VOID(WriteAll(in.get(), input.data(), input.size()));
  if (::lseek(in.get(), 0, SEEK_SET) != 0) return FailErrno("lseek");
  int out_fds[2] = {-1, -1};
  if (::pipe2(out_fds, O_CLOEXEC) != 0) return FailErrno("pipe2");
  Fd out_read(out_fds[0]), out_write(out_fds[1]);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in.get(), STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out_write.get(), STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, out_write.get(), STDERR_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  const int err = ::posix_spawn(&pid, path.c_str(), &actions, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  out_write.reset();
  if (err != 0) return Fail(Error::FromErrno("running " + argv[0], err));

  ToolResult result;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(out_read.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    result.output.append(buf, static_cast<size_t>(n));
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return FailErrno("waitpid", argv[0]);
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

}  // namespace clonevm::net

#include "base/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "base/fd.h"

extern char** environ;

namespace clonevm {

std::string FindTool(std::string_view name, std::string_view root) {
  std::string prefix(root == "/" ? std::string_view() : root);
  if (name.find('/') != std::string_view::npos) {
    return ::access((prefix + std::string(name)).c_str(), X_OK) == 0 ? std::string(name) : "";
  }
  const char* env_path = std::getenv("PATH");
  std::string search = env_path != nullptr && *env_path != '\0' ? env_path : "/usr/bin:/bin";
  search += ":/usr/sbin:/sbin";
  size_t start = 0;
  while (start <= search.size()) {
    size_t end = search.find(':', start);
    if (end == std::string::npos) end = search.size();
    std::string dir = search.substr(start, end - start);
    if (!dir.empty() && dir[0] == '/') {
      std::string candidate = dir + "/" + std::string(name);
      if (::access((prefix + candidate).c_str(), X_OK) == 0) return candidate;
    }
    start = end + 1;
  }
  return "";
}

std::string ToolResult::How() const {
  if (interrupted) return "interrupted";
  if (exit_code >= 0) return fmt::format("exit status {}", exit_code);
  return fmt::format("killed by signal {}", signal);
}

std::string ToolResult::LastLine() const {
  std::string_view text = output;
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.remove_suffix(1);
  size_t nl = text.find_last_of('\n');
  if (nl != std::string_view::npos) text.remove_prefix(nl + 1);
  return std::string(text);
}

Result<ToolResult> RunTool(const std::vector<std::string>& argv, const ToolOptions& options) {
  if (argv.empty()) return Fail("RunTool: empty argv");
  const std::string path = FindTool(argv[0]);
  if (path.empty()) return Fail("{} not found: install it", argv[0]);
  auto interrupted = [&] { return options.interrupted != nullptr && options.interrupted->load(); };
  if (interrupted()) return ToolResult{.interrupted = true};

  Fd in;
  if (!options.input_from_null) {
    in = Fd(::memfd_create("clone-tool-input", MFD_CLOEXEC));
    if (!in) return FailErrno("memfd_create");
    CLONE_TRY_VOID(WriteAll(in.get(), options.input.data(), options.input.size()));
    if (::lseek(in.get(), 0, SEEK_SET) != 0) return FailErrno("lseek");
  }
  Fd out_read, out_write;
  if (options.output == ToolOutput::kCapture) {
    PipeFds pipe = CLONE_TRY(Pipe());
    out_read = std::move(pipe.read);
    out_write = std::move(pipe.write);
  }

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (in) {
    posix_spawn_file_actions_adddup2(&actions, in.get(), STDIN_FILENO);
  } else {
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  }
  if (out_write) {
    posix_spawn_file_actions_adddup2(&actions, out_write.get(), STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, out_write.get(), STDERR_FILENO);
  } else {
    posix_spawn_file_actions_adddup2(&actions, STDERR_FILENO, STDOUT_FILENO);
  }
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
  bool signalled = false;
  auto stop_if_interrupted = [&] {
    if (!signalled && interrupted()) {
      ::kill(pid, SIGTERM);
      signalled = true;
    }
  };
  if (out_read) {
    char buf[4096];
    for (;;) {
      stop_if_interrupted();
      pollfd p{out_read.get(), POLLIN, 0};
      int r = ::poll(&p, 1, options.interrupted != nullptr ? 200 : -1);
      if (r < 0 && errno != EINTR) break;
      if (r <= 0) continue;
      ssize_t n = ::read(out_read.get(), buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      result.output.append(buf, static_cast<size_t>(n));
      if (result.output.size() > (1 << 20)) result.output.erase(0, result.output.size() - (1 << 19));
    }
  }
  int status = 0;
  for (;;) {
    stop_if_interrupted();
    bool poll_wait = options.interrupted != nullptr && !signalled;
    pid_t r = ::waitpid(pid, &status, poll_wait ? WNOHANG : 0);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) return FailErrno("waitpid", argv[0]);
    if (r == 0) ::usleep(50 * 1000);
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  result.interrupted = signalled || interrupted();
  return result;
}

}  // namespace clonevm

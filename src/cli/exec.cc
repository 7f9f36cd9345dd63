#include "cli/exec.h"

#include <signal.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "agent/client.h"
#include "base/log.h"
#include "base/terminal.h"
#include "cli/exit_codes.h"
#include "control/client.h"
#include "runtime/vm_dir.h"

namespace clonevm::cli {
namespace {

constexpr std::chrono::milliseconds kSessionTimeout{15'000};

std::pair<uint16_t, uint16_t> WindowSize() {
  winsize ws{};
  if (::ioctl(STDIN_FILENO, TIOCGWINSZ, &ws) != 0) return {0, 0};
  return {ws.ws_row, ws.ws_col};
}

// A signalfd for `signals` (blocked in this thread so they arrive only through it).
Fd SignalFd(std::initializer_list<int> signals) {
  sigset_t set;
  sigemptyset(&set);
  for (int s : signals) sigaddset(&set, s);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return Fd(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
}

Result<int> Exec(const ExecOptions& o) {
  VmEntry vm = CLONE_TRY(FindVm(o.vm_id));
  std::vector<Fd> fds;
  auto response = CLONE_TRY(
      control::Call(vm.control_socket(), "POST", "/vm/exec/session", nlohmann::json::object(), kSessionTimeout, &fds));
  auto body = control::ResponseJson(response);
  if (!body) return Fail(body.error().Wrap(vm.id));
  if (fds.size() != 1) return Fail("{}: the VM answered without an agent connection", vm.id);
  Fd conn = std::move(fds[0]);

  agent::ExecRequest request;
  request.argv = o.command;
  request.env = o.env;
  request.cwd = o.cwd;
  request.tty = o.tty;
  request.forward_stdin = o.interactive || o.tty;
  agent::ExecIo io;
  io.stdin_fd = STDIN_FILENO;
  if (o.timeout_s > 0) io.timeout = std::chrono::seconds(o.timeout_s);
  Fd winch;
  Fd signals;
  if (o.tty) {
    auto [rows, cols] = WindowSize();
    request.rows = rows;
    request.cols = cols;
    winch = SignalFd({SIGWINCH});
    io.resize_fd = winch.get();
    io.window_size = WindowSize;
  } else {
    // Ctrl-C and kill reach the program in the guest, like a local one.
    signals = SignalFd({SIGINT, SIGTERM, SIGHUP, SIGQUIT});
    io.signal_fd = signals.get();
  }
  RawTerminal terminal(o.tty ? STDIN_FILENO : -1);
  return agent::RunExec(conn, request, io);
}

}  // namespace

void AddExecCommand(CLI::App& app, ExecOptions& o) {
  auto* exec = app.add_subcommand("exec", "Run a command in a running VM through its guest agent");
  exec->add_option("--vm-id", o.vm_id, "The VM (default: the only running VM)");
  exec->add_flag("-i,--interactive", o.interactive, "Forward this process's stdin to the command");
  exec->add_flag("-t,--tty", o.tty, "Run the command on a pseudo-terminal (implies -i; for shells, editors)");
  exec->add_option("-e,--env", o.env, "Set an environment variable NAME=value (repeatable)");
  exec->add_option("-w,--workdir", o.cwd, "Working directory in the guest (default /)");
  exec->add_option("--timeout", o.timeout_s, "Give up after this many seconds (default: none)");
  exec->add_option("command", o.command, "The command and its arguments (after --)")->required()->expected(-1);
  exec->footer(
      "Examples:\n"
      "  clone exec -- uname -a\n"
      "  echo hi | clone exec -i -- cat\n"
      "  clone exec -t --vm-id web1 -- /bin/sh\n"
      "stdout and stderr go to this process's stdout and stderr; the exit status is the command's\n"
      "(128+N if a signal N killed it, 127 if it does not exist). Clone's own failures exit 1.");
}

int ExecCommand(const ExecOptions& o) {
  for (const auto& e : o.env) {
    if (e.find('=') == std::string::npos || e.front() == '=') {
      Log(LogLevel::kError, "--env '{}': expected NAME=value", e);
      return kExitUsage;
    }
  }
  auto status = Exec(o);
  if (!status) {
    Log(LogLevel::kError, "exec: {}", status.error().message());
    return kExitError;
  }
  return *status;
}

}  // namespace clonevm::cli

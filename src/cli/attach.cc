#include "cli/attach.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "base/fd.h"
#include "base/log.h"
#include "base/terminal.h"
#include "cli/exit_codes.h"
#include "runtime/vm_dir.h"

namespace clonevm::cli {
namespace {

constexpr uint8_t kDetachByte = 0x11;  // Ctrl-Q

Result<Fd> ConnectUnixStream(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) return Fail("socket path too long: {}", path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return FailErrno("socket");
  Fd sock(fd);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
    return FailErrno("cannot connect to {}", path);
  return sock;
}

// Copies stdin -> socket and socket -> stdout until Ctrl-Q on stdin, EOF on stdin, or the VM
// closing the console. Returns true when the user detached.
Result<bool> Pump(int sock) {
  pollfd fds[2] = {{STDIN_FILENO, POLLIN, 0}, {sock, POLLIN, 0}};
  uint8_t buf[4096];
  bool stdin_open = true;
  for (;;) {
    fds[0].fd = stdin_open ? STDIN_FILENO : -1;
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return FailErrno("poll");
    }
    if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = ::read(sock, buf, sizeof(buf));
      if (n <= 0) return false;  // the VM went away
      CLONE_TRY_VOID(WriteAll(STDOUT_FILENO, buf, static_cast<size_t>(n)));
    }
    if (stdin_open && (fds[0].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t n = ::read(STDIN_FILENO, buf, sizeof(buf));
      if (n <= 0) {
        stdin_open = false;  // keep showing output until the VM or the user ends it
        continue;
      }
      auto* detach = static_cast<uint8_t*>(std::memchr(buf, kDetachByte, static_cast<size_t>(n)));
      size_t len = detach != nullptr ? static_cast<size_t>(detach - buf) : static_cast<size_t>(n);
      if (len > 0) CLONE_TRY_VOID(WriteAll(sock, buf, len));
      if (detach != nullptr) return true;
    }
  }
}

}  // namespace

void AddAttachCommand(CLI::App& app, AttachOptions& o) {
  auto* attach = app.add_subcommand("attach", "Connect this terminal to a running VM's serial console");
  attach->add_option("--vm-id", o.vm_id, "The VM (default: the only running VM)");
  attach->footer("Ctrl-Q detaches; the VM keeps running. Several clients may attach at once.");
}

int AttachCommand(const AttachOptions& o) {
  auto vm = FindVm(o.vm_id);
  if (!vm) {
    Log(LogLevel::kError, "{}", vm.error().message());
    return kExitError;
  }
  auto sock = ConnectUnixStream(vm->console_socket());
  if (!sock) {
    Log(LogLevel::kError, "{}", sock.error().message());
    return kExitError;
  }
  bool tty = ::isatty(STDIN_FILENO) == 1;
  if (tty) {
    std::string hello = fmt::format("[attached to {}; Ctrl-Q detaches]\r\n", vm->id);
    [[maybe_unused]] auto r = WriteAll(STDERR_FILENO, hello.data(), hello.size());
  }
  Result<bool> detached = false;
  {
    RawTerminal terminal(STDIN_FILENO);
    detached = Pump(sock->get());
  }
  if (!detached) {
    Log(LogLevel::kError, "{}", detached.error().message());
    return kExitError;
  }
  std::string bye = *detached ? fmt::format("\n[detached from {}; it keeps running]\n", vm->id)
                              : fmt::format("\n[{}: the console closed (the VM stopped)]\n", vm->id);
  [[maybe_unused]] auto r = WriteAll(STDERR_FILENO, bye.data(), bye.size());
  return kExitOk;
}

}  // namespace clonevm::cli

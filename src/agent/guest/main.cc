// clone-agent: the guest agent. Usage in agent.h / docs/agent.md; `clone-agent --help`.
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string_view>

#include "agent/guest/agent.h"

namespace clonevm::agent {
namespace {

constexpr const char* kUsage =
    "usage: clone-agent [--listen vsock[:PORT] | --listen unix:PATH] [--identity-file PATH]\n"
    "                   [--daemon] [--dry-run-log PATH] [--version]\n"
    "The Clone guest agent: serves exec, monitor and control connections from the host.\n"
    "  --listen vsock[:PORT]   AF_VSOCK, any CID, port 1024 by default\n"
    "  --listen unix:PATH      a Unix socket instead (tests)\n"
    "  --identity-file PATH    read the identity page from PATH (offset 0), not /dev/mem at 0x6000\n"
    "  --daemon                fork to the background once listening\n"
    "  --dry-run-log PATH      do not change the system (hostname, network, clock, entropy, power);\n"
    "                          append what would be done to PATH instead\n"
    "example: clone-agent --daemon\n";

struct Options {
  std::string listen = "vsock";
  bool daemon = false;
  AgentConfig config;
};

Result<Options> ParseOptions(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    auto value = [&]() -> Result<std::string> {
      if (i + 1 >= argc) return Fail("{} needs a value", arg);
      return std::string(argv[++i]);
    };
    if (arg == "--listen") {
      o.listen = CLONE_TRY(value());
    } else if (arg == "--identity-file") {
      o.config.identity_path = CLONE_TRY(value());
      o.config.identity_offset = 0;
    } else if (arg == "--dry-run-log") {
      o.config.dry_run_log = CLONE_TRY(value());
    } else if (arg == "--daemon") {
      o.daemon = true;
    } else if (arg == "--version") {
      std::printf("clone-agent %s (protocol %u)\n", kAgentVersion, kProtocolVersion);
      std::exit(0);
    } else if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else {
      return Fail("unknown argument {}\n{}", arg, kUsage);
    }
  }
  return o;
}

Result<Fd> ListenUnix(const std::string& path) {
  // Bound under a temporary name and renamed once listening, so that the path appearing means
  // the agent accepts connections.
  std::string tmp = path + ".tmp";
  sockaddr_un addr{};
  if (tmp.size() >= sizeof(addr.sun_path)) return Fail("socket path too long: {}", path);
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, tmp.c_str(), tmp.size());
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return FailErrno("socket(AF_UNIX)");
  ::unlink(tmp.c_str());
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return FailErrno("bind", tmp);
  if (::listen(fd.get(), 64) != 0) return FailErrno("listen", tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return FailErrno("rename", path);
  return fd;
}

// The vsock transport may still be loading when the agent starts: retry for a while.
Result<Fd> ListenVsock(uint32_t port) {
  for (int attempt = 0;; ++attempt) {
    Fd fd(::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (fd) {
      sockaddr_vm addr{};
      addr.svm_family = AF_VSOCK;
      addr.svm_port = port;
      addr.svm_cid = VMADDR_CID_ANY;
      if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        return FailErrno("bind vsock", fmt::format("port {}", port));
      }
      if (::listen(fd.get(), 64) != 0) return FailErrno("listen vsock");
      return fd;
    }
    if (errno != EAFNOSUPPORT || attempt >= 60) return FailErrno("socket(AF_VSOCK)");
    if (attempt == 0) std::fputs("clone-agent: waiting for vsock support\n", stderr);
    ::sleep(1);
  }
}

Result<Fd> Listen(const std::string& spec) {
  if (spec.starts_with("unix:")) return ListenUnix(spec.substr(5));
  if (spec == "vsock") return ListenVsock(kAgentPort);
  if (spec.starts_with("vsock:")) {
    char* end = nullptr;
    unsigned long port = std::strtoul(spec.c_str() + 6, &end, 10);
    if (*end != '\0' || port == 0 || port > UINT32_MAX) return Fail("bad vsock port in {}", spec);
    return ListenVsock(static_cast<uint32_t>(port));
  }
  return Fail("--listen wants vsock[:PORT] or unix:PATH, not {}", spec);
}

// Mounts devpts when the guest's init has not (PTY sessions need /dev/pts/ptmx).
void EnsureDevPts() {
  if (::access("/dev/pts/ptmx", F_OK) == 0) return;
  ::mkdir("/dev/pts", 0755);
  ::mount("devpts", "/dev/pts", "devpts", 0, "ptmxmode=0666,mode=0620");
  if (::access("/dev/ptmx", F_OK) != 0) ::symlink("pts/ptmx", "/dev/ptmx");
}

void Daemonize() {
  pid_t pid = ::fork();
  if (pid < 0) return;  // keep running in the foreground
  if (pid > 0) ::_exit(0);
  ::setsid();
  Fd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
  if (null) {
    ::dup2(null.get(), 0);
    ::dup2(null.get(), 1);
    if (null.get() <= 2) (void)null.release();  // it became stdin/stdout itself
  }
  // stderr stays: the initrd points it at the console, where agent errors belong.
}

int Main(int argc, char** argv) {
  auto options = ParseOptions(argc, argv);
  if (!options) {
    std::fprintf(stderr, "clone-agent: %s\n", options.error().message().c_str());
    return 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  ::signal(SIGCHLD, SIG_IGN);  // session processes are reaped by the kernel
  if (!options->listen.starts_with("unix:")) EnsureDevPts();
  auto listener = Listen(options->listen);
  if (!listener) {
    std::fprintf(stderr, "clone-agent: %s\n", listener.error().message().c_str());
    return 1;
  }
  // The exec-session counter is shared by all session processes.
  void* shared =
      ::mmap(nullptr, sizeof(std::atomic<uint32_t>), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shared != MAP_FAILED) options->config.exec_sessions = new (shared) std::atomic<uint32_t>(0);
  if (options->daemon) Daemonize();

  for (;;) {
    Fd conn(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE || errno == ENOMEM) {
        if (errno != EINTR && errno != ECONNABORTED) ::usleep(100'000);
        continue;
      }
      std::fprintf(stderr, "clone-agent: accept: %s\n", std::strerror(errno));
      return 1;
    }
    pid_t pid = ::fork();
    if (pid == 0) {
      listener->reset();
      ::signal(SIGCHLD, SIG_DFL);  // sessions wait for their programs
      auto served = ServeConnection(std::move(conn), options->config);
      if (!served) std::fprintf(stderr, "clone-agent: %s\n", served.error().message().c_str());
      ::_exit(served ? 0 : 1);
    }
    if (pid < 0) std::fprintf(stderr, "clone-agent: fork: %s\n", std::strerror(errno));
  }
}

}  // namespace
}  // namespace clonevm::agent

int main(int argc, char** argv) { return clonevm::agent::Main(argc, argv); }

// Exec sessions: spawn one program and stream its stdio over the connection until it exits.
//
// The program runs in its own session and process group (setsid), with PR_SET_PDEATHSIG=SIGKILL,
// default signal dispositions and an empty signal mask. Without a tty it gets pipes for stdout and
// stderr (and stdin when requested, /dev/null otherwise); with a tty all three are the slave side
// of a fresh pty that is also its controlling terminal. The session is one poll loop over
// non-blocking fds: it reads program output only while fewer than kHighWater bytes wait to be sent
// to the host, and reads the connection only while fewer than kHighWater stdin bytes wait for the
// program, so a slow side stalls the other instead of filling memory. When the program exits the
// session drains what is left in its pipes, sends Exited and returns; when the connection drops
// it kills the program's process group.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <cstring>
#include <map>

#include "agent/guest/agent.h"

namespace clonevm::agent {

namespace {

constexpr size_t kHighWater = 1 << 20;
constexpr size_t kMaxDrainChunks = 64;  // 4 MiB, well above a pipe's or pty's buffer
constexpr auto kFinalFlushTimeout = std::chrono::seconds(60);

struct Child {
  pid_t pid = -1;
  Fd pidfd;     // invalid on kernels without pidfd_open: then the loop polls waitpid
  Fd stdin_w;   // pipe, or a dup of the pty master; invalid when stdin is not forwarded
  Fd stdout_r;  // pipe, or the pty master
  Fd stderr_r;  // pipe; invalid with a tty
  bool tty = false;
};

Result<void> SetNonBlocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return FailErrno("fcntl O_NONBLOCK");
  return {};
}

// The environment: fixed defaults, overridden by the request's NAME=value entries.
std::vector<std::string> BuildEnvironment(const ExecRequest& request) {
  std::map<std::string, std::string> env = {
      {"PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
      {"HOME", ::access("/root", X_OK) == 0 ? "/root" : "/"},
  };
  if (request.tty) env["TERM"] = "xterm-256color";
  for (const std::string& entry : request.env) {
    size_t eq = entry.find('=');
    env[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  std::vector<std::string> out;
  for (auto& [name, value] : env) out.push_back(name + "=" + value);
  return out;
}

std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// Async-signal-safe error exit for the forked child: "clone-agent: <what>: <error>\n".
[[noreturn]] void ChildFail(const char* what, int err, int status) {
  const char* text = ::strerror(err);
  struct iovec parts[] = {{const_cast<char*>("clone-agent: "), 13},
                          {const_cast<char*>(what), ::strlen(what)},
                          {const_cast<char*>(": "), 2},
                          {const_cast<char*>(text), ::strlen(text)},
                          {const_cast<char*>("\n"), 1}};
  [[maybe_unused]] ssize_t n = ::writev(STDERR_FILENO, parts, 5);
  ::_exit(status);
}

// Runs in the forked child: set up stdio and the session, then exec. Never returns.
[[noreturn]] void ExecChild(const ExecRequest& request, int in, int out, int err, const char* pty_slave, char** argv,
                            char** envp) {
  sigset_t all;
  ::sigemptyset(&all);
  ::sigprocmask(SIG_SETMASK, &all, nullptr);
  for (int sig = 1; sig < NSIG; ++sig) ::signal(sig, SIG_DFL);
  ::setsid();
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (pty_slave) {
    int slave = ::open(pty_slave, O_RDWR);
    if (slave < 0) ::_exit(126);
    ::ioctl(slave, TIOCSCTTY, 0);
    in = out = err = slave;
  }
  if (::dup2(in, 0) < 0 || ::dup2(out, 1) < 0 || ::dup2(err, 2) < 0) ::_exit(126);
  const char* cwd = request.cwd.empty() ? "/" : request.cwd.c_str();
  if (::chdir(cwd) != 0) ChildFail(cwd, errno, 126);
  ::execvpe(argv[0], argv, envp);
  // Like a shell: 127 when the command is not found, 126 when it cannot be executed.
  int e = errno;
  ChildFail(argv[0], e, e == ENOENT || e == ENOTDIR ? 127 : 126);
}

Result<Child> Spawn(const ExecRequest& request) {
  std::vector<std::string> args = request.argv;
  std::vector<std::string> env = BuildEnvironment(request);
  std::vector<char*> argv = CStrings(args);
  std::vector<char*> envp = CStrings(env);

  Child child;
  child.tty = request.tty;
  Fd child_in, child_out, child_err, master;
  std::string slave_path;
  if (request.tty) {
    master = Fd(::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!master) return FailErrno("posix_openpt");
    char name[128];
    if (::grantpt(master.get()) != 0 || ::unlockpt(master.get()) != 0 ||
        ::ptsname_r(master.get(), name, sizeof(name)) != 0) {
      return FailErrno("pty setup");
    }
    slave_path = name;
    if (request.rows > 0 && request.cols > 0) {
      winsize ws{request.rows, request.cols, 0, 0};
      ::ioctl(master.get(), TIOCSWINSZ, &ws);
    }
  } else {
    auto [out_r, out_w] = CLONE_TRY(Pipe());
    auto [err_r, err_w] = CLONE_TRY(Pipe());
    child.stdout_r = std::move(out_r);
    child.stderr_r = std::move(err_r);
    child_out = std::move(out_w);
    child_err = std::move(err_w);
    if (request.forward_stdin) {
      auto [in_r, in_w] = CLONE_TRY(Pipe());
      child_in = std::move(in_r);
      child.stdin_w = std::move(in_w);
    } else {
      child_in = CLONE_TRY(OpenFile("/dev/null", O_RDONLY));
    }
  }

  pid_t pid = ::fork();
  if (pid < 0) return FailErrno("fork");
  if (pid == 0) {
    ExecChild(request, child_in.get(), child_out.get(), child_err.get(), request.tty ? slave_path.c_str() : nullptr,
              argv.data(), envp.data());
  }
  child.pid = pid;
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd >= 0) child.pidfd = Fd(pidfd);
  if (request.tty) {
    if (request.forward_stdin) child.stdin_w = Fd(::fcntl(master.get(), F_DUPFD_CLOEXEC, 0));
    child.stdout_r = std::move(master);
  }
  for (const Fd* fd : {&child.stdin_w, &child.stdout_r, &child.stderr_r}) {
    if (fd->valid()) CLONE_TRY_VOID(SetNonBlocking(fd->get()));
  }
  return child;
}

Exited ExitedFromStatus(int status) {
  Exited exited;
  if (WIFSIGNALED(status)) {
    exited.signal = WTERMSIG(status);
  } else {
    exited.code = WEXITSTATUS(status);
  }
  return exited;
}

// The poll loop of one exec session.
class ExecLoop {
 public:
  ExecLoop(int conn, Child child) : conn_(conn), child_(std::move(child)) {}

  ~ExecLoop() {
    if (!exited_) {
      // The connection dropped or the session failed: the program must not outlive it.
      ::kill(-child_.pid, SIGKILL);
      ::kill(child_.pid, SIGKILL);
      ::waitpid(child_.pid, nullptr, 0);
    }
  }

  Result<void> Run() {
    Queue(MessageType::kStarted, EncodePayload(Started{child_.pid}));
    while (!exited_) CLONE_TRY_VOID(Step());
    // Program gone: send what is left, then Exited.
    DrainOutput(child_.stdout_r, MessageType::kStdout);
    DrainOutput(child_.stderr_r, MessageType::kStderr);
    Queue(MessageType::kExited, EncodePayload(ExitedFromStatus(status_)));
    return FlushBlocking();
  }

 private:
  Result<void> Step() {
    std::vector<pollfd> fds;
    auto add = [&](int fd, short events) {
      fds.push_back({fd, events, 0});
      return fds.size() - 1;
    };
    size_t conn_i = add(
        conn_, static_cast<short>((stdin_.size() < kHighWater ? POLLIN : 0) | (out_.size() > out_pos_ ? POLLOUT : 0)));
    bool room = out_.size() - out_pos_ < kHighWater;
    size_t out_i = child_.stdout_r && room ? add(child_.stdout_r.get(), POLLIN) : SIZE_MAX;
    size_t err_i = child_.stderr_r && room ? add(child_.stderr_r.get(), POLLIN) : SIZE_MAX;
    size_t in_i = child_.stdin_w && !stdin_.empty() ? add(child_.stdin_w.get(), POLLOUT) : SIZE_MAX;
    size_t pid_i = child_.pidfd ? add(child_.pidfd.get(), POLLIN) : SIZE_MAX;
    int n = ::poll(fds.data(), fds.size(), child_.pidfd ? -1 : 100);
    if (n < 0) {
      if (errno == EINTR) return {};
      return FailErrno("poll");
    }
    if (fds[conn_i].revents & POLLOUT) CLONE_TRY_VOID(FlushSome());
    if (fds[conn_i].revents & (POLLIN | POLLHUP | POLLERR)) CLONE_TRY_VOID(ReadConnection());
    if (out_i != SIZE_MAX && fds[out_i].revents) ReadOutput(child_.stdout_r, MessageType::kStdout);
    if (err_i != SIZE_MAX && fds[err_i].revents) ReadOutput(child_.stderr_r, MessageType::kStderr);
    if (in_i != SIZE_MAX && fds[in_i].revents) WriteStdin();
    if (pid_i == SIZE_MAX || fds[pid_i].revents) CheckExited();
    return {};
  }

  void Queue(MessageType type, std::string_view payload) { out_ += EncodeFrame(type, payload); }

  Result<void> FlushSome() {
    ssize_t n = ::send(conn_, out_.data() + out_pos_, out_.size() - out_pos_, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return {};
      return FailErrno("send to host");
    }
    out_pos_ += static_cast<size_t>(n);
    if (out_pos_ == out_.size()) {
      out_.clear();
      out_pos_ = 0;
    } else if (out_pos_ > kHighWater) {
      out_.erase(0, out_pos_);
      out_pos_ = 0;
    }
    return {};
  }

  Result<void> FlushBlocking() {
    Deadline deadline = DeadlineAfter(kFinalFlushTimeout);
    while (out_pos_ < out_.size()) {
      if (Clock::now() > *deadline) return Fail("host stopped reading");
      pollfd p{conn_, POLLOUT, 0};
      if (::poll(&p, 1, 1000) < 0 && errno != EINTR) return FailErrno("poll");
      CLONE_TRY_VOID(FlushSome());
    }
    return {};
  }

  Result<void> ReadConnection() {
    char buf[64 * 1024];
    ssize_t n = ::recv(conn_, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return {};
      return FailErrno("recv from host");
    }
    if (n == 0) return Fail("host closed the connection");
    decoder_.Feed(std::string_view(buf, static_cast<size_t>(n)));
    for (;;) {
      std::optional<Frame> frame = CLONE_TRY(decoder_.Next());
      if (!frame) return {};
      CLONE_TRY_VOID(HandleFrame(*frame));
    }
  }

  Result<void> HandleFrame(const Frame& frame) {
    switch (frame.type) {
      case MessageType::kStdin:
        if (child_.stdin_w && !stdin_closing_) stdin_ += frame.payload;
        return {};
      case MessageType::kStdinClose:
        stdin_closing_ = true;
        if (stdin_.empty()) CloseStdin();
        return {};
      case MessageType::kResize: {
        Resize r = CLONE_TRY(FrameAs<Resize>(frame));
        winsize ws{r.rows, r.cols, 0, 0};
        if (child_.tty) ::ioctl(child_.stdout_r.get(), TIOCSWINSZ, &ws);
        return {};
      }
      case MessageType::kSignal: {
        SignalMessage s = CLONE_TRY(FrameAs<SignalMessage>(frame));
        if (::kill(-child_.pid, s.signo) != 0) ::kill(child_.pid, s.signo);
        return {};
      }
      default:
        return Fail("unexpected {} during exec", TypeName(frame.type));
    }
  }

  void CloseStdin() {
    if (child_.tty && child_.stdin_w) {
      // A pty has no half-close: send the terminal's end-of-file character instead.
      termios t{};
      char eof = ::tcgetattr(child_.stdin_w.get(), &t) == 0 ? static_cast<char>(t.c_cc[VEOF]) : '\x04';
      [[maybe_unused]] ssize_t n = ::write(child_.stdin_w.get(), &eof, 1);
    }
    child_.stdin_w.reset();
  }

  void WriteStdin() {
    ssize_t n = ::write(child_.stdin_w.get(), stdin_.data(), stdin_.size());
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      // The program closed its stdin (EPIPE): drop what it will never read.
      stdin_.clear();
      child_.stdin_w.reset();
      return;
    }
    stdin_.erase(0, static_cast<size_t>(n));
    if (stdin_.empty() && stdin_closing_) CloseStdin();
  }

  // Reads one chunk; closes `fd` at EOF (a pty master reports EIO once the slave is gone).
  // Returns false when nothing more is readable now.
  bool ReadOutput(Fd& fd, MessageType type) {
    char buf[kStreamChunk];
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return false;
    if (n <= 0) {
      fd.reset();
      return false;
    }
    Queue(type, std::string_view(buf, static_cast<size_t>(n)));
    return true;
  }

  // Bounded: a background process that inherited the pipe may keep writing after the program exited.
  void DrainOutput(Fd& fd, MessageType type) {
    for (size_t chunks = 0; fd && chunks < kMaxDrainChunks && ReadOutput(fd, type); ++chunks) {
    }
  }

  void CheckExited() {
    int status = 0;
    pid_t r = ::waitpid(child_.pid, &status, WNOHANG);
    if (r == child_.pid) {
      status_ = status;
      exited_ = true;
    }
  }

  int conn_;
  Child child_;
  FrameDecoder decoder_;
  std::string out_;  // encoded frames for the host, from out_pos_ on
  size_t out_pos_ = 0;
  std::string stdin_;  // bytes for the program
  bool stdin_closing_ = false;
  bool exited_ = false;
  int status_ = 0;
};

// Counts this session in the shared exec_sessions counter while it lives.
class SessionCount {
 public:
  explicit SessionCount(std::atomic<uint32_t>* counter) : counter_(counter) {
    if (counter_) counter_->fetch_add(1);
  }
  ~SessionCount() {
    if (counter_) counter_->fetch_sub(1);
  }
  SessionCount(const SessionCount&) = delete;
  SessionCount& operator=(const SessionCount&) = delete;

 private:
  std::atomic<uint32_t>* counter_;
};

}  // namespace

Result<void> RunExecSession(int conn, const ExecRequest& request, const AgentConfig& config) {
  SessionCount count(config.exec_sessions);
  CLONE_TRY_VOID(SetNonBlocking(conn));
  Child child = CLONE_TRY(Spawn(request));
  ExecLoop loop(conn, std::move(child));
  return loop.Run();
}

}  // namespace clonevm::agent

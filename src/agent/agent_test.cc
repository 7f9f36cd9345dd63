// Runs the real clone-agent binary (--listen unix:, --identity-file, --dry-run-log) and talks to
// it through the client library: exec semantics, streaming, PTYs, auth, monitor, control and
// timeouts.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/vm_sockets.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <random>
#include <thread>

#include "agent/client.h"
#include "agent/identity_page.h"
#include "base/testing/host_tools.h"

namespace clonevm::agent {
namespace {

using namespace std::chrono_literals;
using host_tools::TempDir;

Token MakeToken(uint8_t seed) {
  Token t{};
  for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<uint8_t>(seed + i);
  return t;
}

void WriteIdentity(const std::string& path, const Token& token, uint64_t generation) {
  Identity id;
  id.generation = generation;
  id.hostname = "agent-test";
  id.token = token;
  IdentityPageBytes page = *EncodeIdentityPage(id);
  std::string tmp = path + ".tmp";
  std::ofstream(tmp, std::ios::binary).write(reinterpret_cast<const char*>(page.data()), page.size());
  ASSERT_EQ(::rename(tmp.c_str(), path.c_str()), 0);
}

std::string Slurp(const std::string& path) {
  auto data = ReadFile(path);
  return data ? *data : std::string();
}

class AgentTest : public ::testing::Test {
 protected:
  void SetUp() override { StartAgent("unix:" + dir_.File("agent.sock"), /*dry_run=*/true); }

  // Starts clone-agent listening on `listen`; the test talks to endpoint_.
  void StartAgent(const std::string& listen, bool dry_run) {
    ASSERT_TRUE(dir_.ok());
    WriteIdentity(dir_.File("identity"), token_, 1);
    socket_ = listen.starts_with("unix:") ? listen.substr(5) : "";
    endpoint_.unix_path = socket_;
    pid_ = ::fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      std::string identity = dir_.File("identity"), dry = dir_.File("dry.log");
      std::vector<const char*> argv = {CLONE_AGENT_BIN, "--listen", listen.c_str(), "--identity-file",
                                       identity.c_str()};
      if (dry_run) argv.insert(argv.end(), {"--dry-run-log", dry.c_str()});
      argv.push_back(nullptr);
      ::execv(CLONE_AGENT_BIN, const_cast<char**>(argv.data()));
      ::_exit(127);
    }
    if (socket_.empty()) {
      std::this_thread::sleep_for(300ms);  // vsock: no path to wait for; Connect retries below
      return;
    }
    for (int i = 0; i < 500 && ::access(socket_.c_str(), F_OK) != 0; ++i) std::this_thread::sleep_for(10ms);
    ASSERT_EQ(::access(socket_.c_str(), F_OK), 0) << "clone-agent did not start";
  }

  void TearDown() override {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  Fd Open(Role role, const Token& token) {
    auto c = Connect(endpoint_, token, role, 5s);
    EXPECT_TRUE(c) << c.error().message();
    return c ? std::move(c->fd) : Fd();
  }
  Fd Open(Role role) { return Open(role, token_); }

  ExecResult Capture(ExecRequest request, std::string stdin_data = {}) {
    Fd conn = Open(Role::kExec);
    ExecCaptureOptions options;
    options.stdin_data = std::move(stdin_data);
    request.forward_stdin = request.forward_stdin || !options.stdin_data.empty();
    auto r = ExecCapture(conn, request, options);
    EXPECT_TRUE(r) << r.error().message();
    return r ? *r : ExecResult{-1};
  }

  TempDir dir_{"agent-test"};
  Token token_ = MakeToken(0x40);
  std::string socket_;
  AgentEndpoint endpoint_;
  pid_t pid_ = -1;
};

ExecRequest Argv(std::vector<std::string> argv) {
  ExecRequest r;
  r.argv = std::move(argv);
  return r;
}

TEST_F(AgentTest, ExitStatusesLikeAShell) {
  auto echo = Capture(Argv({"echo", "hi"}));
  EXPECT_EQ(echo.status, 0);
  EXPECT_EQ(echo.stdout_data, "hi\n");
  EXPECT_EQ(Capture(Argv({"true"})).status, 0);
  EXPECT_EQ(Capture(Argv({"false"})).status, 1);
  EXPECT_EQ(Capture(Argv({"sh", "-c", "exit 3"})).status, 3);
  EXPECT_EQ(Capture(Argv({"sh", "-c", "kill -9 $$"})).status, 137);
  EXPECT_EQ(Capture(Argv({"sh", "-c", "kill -TERM $$"})).status, 143);

  auto missing = Capture(Argv({"no-such-command-xyz"}));
  EXPECT_EQ(missing.status, 127);
  EXPECT_NE(missing.stderr_data.find("no-such-command-xyz: No such file or directory"), std::string::npos)
      << missing.stderr_data;

  std::string not_exec = dir_.File("not-executable");
  std::ofstream(not_exec) << "#!/bin/sh\necho no\n";
  ::chmod(not_exec.c_str(), 0644);
  auto denied = Capture(Argv({not_exec}));
  EXPECT_EQ(denied.status, 126);
  EXPECT_NE(denied.stderr_data.find("Permission denied"), std::string::npos) << denied.stderr_data;
}

TEST_F(AgentTest, StdoutAndStderrAreSeparateAndEnvAndCwdApply) {
  ExecRequest r = Argv({"sh", "-c", "echo out; echo err >&2; pwd; echo \"$FOO\"; echo \"$HOME\""});
  r.env = {"FOO=bar=baz", "HOME=/nowhere"};
  r.cwd = dir_.path().string();
  auto result = Capture(r);
  EXPECT_EQ(result.status, 0);
  EXPECT_EQ(result.stdout_data, "out\n" + r.cwd + "\nbar=baz\n/nowhere\n");
  EXPECT_EQ(result.stderr_data, "err\n");

  auto bad_cwd = Argv({"true"});
  bad_cwd.cwd = "/no/such/dir";
  auto failed = Capture(bad_cwd);
  EXPECT_EQ(failed.status, 126);
  EXPECT_NE(failed.stderr_data.find("/no/such/dir"), std::string::npos);
}

TEST_F(AgentTest, StdinIsForwardedAndClosed) {
  std::string input;
  for (int i = 0; i < 100000; ++i) input += std::to_string(i) + "\n";
  auto cat = Capture(Argv({"cat"}), input);
  EXPECT_EQ(cat.status, 0);
  EXPECT_EQ(cat.stdout_data, input);

  // Without forward_stdin the program reads /dev/null.
  auto nothing = Capture(Argv({"wc", "-c"}));
  EXPECT_EQ(nothing.stdout_data, "0\n");

  // RunExec from an fd: `echo hi | clone exec -i -- cat`.
  int in[2], out[2];
  ASSERT_EQ(::pipe(in), 0);
  ASSERT_EQ(::pipe(out), 0);
  Fd in_r(in[0]), in_w(in[1]), out_r(out[0]), out_w(out[1]);
  ASSERT_TRUE(WriteAll(in_w.get(), "hi\n", 3));
  in_w.reset();
  Fd conn = Open(Role::kExec);
  ExecRequest r = Argv({"cat"});
  r.forward_stdin = true;
  ExecIo io;
  io.stdin_fd = in_r.get();
  io.stdout_fd = out_w.get();
  auto status = RunExec(conn, r, io);
  ASSERT_TRUE(status) << status.error().message();
  EXPECT_EQ(*status, 0);
  out_w.reset();
  char buf[16] = {};
  EXPECT_EQ(::read(out_r.get(), buf, sizeof(buf)), 3);
  EXPECT_STREQ(buf, "hi\n");
}

TEST_F(AgentTest, TenMebibytesOfStdoutArriveByteExact) {
  std::string data(10 << 20, '\0');
  std::mt19937_64 rng(7);
  for (size_t i = 0; i < data.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(data.data() + i, &v, 8);
  }
  std::string path = dir_.File("random.bin");
  std::ofstream(path, std::ios::binary).write(data.data(), static_cast<std::streamsize>(data.size()));

  // Into memory.
  auto captured = Capture(Argv({"cat", path}));
  EXPECT_EQ(captured.status, 0);
  EXPECT_FALSE(captured.stdout_truncated);
  EXPECT_TRUE(captured.stdout_data == data) << "size " << captured.stdout_data.size();

  // Into a file, with stderr interleaved on the other stream.
  std::string out_path = dir_.File("out.bin"), err_path = dir_.File("err.txt");
  auto out = OpenFile(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  auto err = OpenFile(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_TRUE(out && err);
  Fd conn = Open(Role::kExec);
  ExecIo io;
  io.stdout_fd = out->get();
  io.stderr_fd = err->get();
  auto status = RunExec(conn, Argv({"sh", "-c", "echo before >&2; cat \"$0\"; echo after >&2", path}), io);
  ASSERT_TRUE(status) << status.error().message();
  EXPECT_EQ(*status, 0);
  EXPECT_TRUE(Slurp(out_path) == data);
  EXPECT_EQ(Slurp(err_path), "before\nafter\n");

  // Limits: the rest is read and dropped.
  Fd limited = Open(Role::kExec);
  ExecCaptureOptions options;
  options.max_stdout = 1000;
  auto truncated = ExecCapture(limited, Argv({"cat", path}), options);
  ASSERT_TRUE(truncated);
  EXPECT_EQ(truncated->status, 0);
  EXPECT_TRUE(truncated->stdout_truncated);
  EXPECT_EQ(truncated->stdout_data, data.substr(0, 1000));
}

TEST_F(AgentTest, PtyHasTheWindowSizeAndFollowsResize) {
  ExecRequest r = Argv({"stty", "size"});
  r.tty = true;
  r.rows = 33;
  r.cols = 101;
  auto size = Capture(r);
  EXPECT_EQ(size.status, 0);
  EXPECT_EQ(size.stdout_data, "33 101\r\n");
  EXPECT_EQ(size.stderr_data, "");

  auto tty = Capture([] {
    ExecRequest t = Argv({"sh", "-c", "test -t 0 && test -t 1 && test -t 2 && echo \"$TERM\""});
    t.tty = true;
    return t;
  }());
  EXPECT_EQ(tty.stdout_data, "xterm-256color\r\n");

  // Resize: the program waits for a line, then prints its size.
  auto resize = EventFd::Create();
  ASSERT_TRUE(resize);
  int in[2], out[2];
  ASSERT_EQ(::pipe(in), 0);
  ASSERT_EQ(::pipe(out), 0);
  Fd in_r(in[0]), in_w(in[1]), out_r(out[0]), out_w(out[1]);
  Fd conn = Open(Role::kExec);
  ExecRequest interactive = Argv({"sh", "-c", "read line; stty size"});
  interactive.tty = true;
  interactive.rows = 24;
  interactive.cols = 80;
  interactive.forward_stdin = true;
  ExecIo io;
  io.stdin_fd = in_r.get();
  io.stdout_fd = out_w.get();
  io.resize_fd = resize->fd();
  io.window_size = [] { return std::pair<uint16_t, uint16_t>(50, 160); };
  std::thread typist([&] {
    std::this_thread::sleep_for(200ms);
    resize->Signal();
    std::this_thread::sleep_for(200ms);
    (void)WriteAll(in_w.get(), "go\n", 3);
  });
  auto status = RunExec(conn, interactive, io);
  typist.join();
  ASSERT_TRUE(status) << status.error().message();
  EXPECT_EQ(*status, 0);
  out_w.reset();
  std::string printed;
  char buf[256];
  ssize_t n;
  while ((n = ::read(out_r.get(), buf, sizeof(buf))) > 0) printed.append(buf, static_cast<size_t>(n));
  EXPECT_NE(printed.find("50 160\r\n"), std::string::npos) << printed;
}

TEST_F(AgentTest, SignalsAreForwardedAndADroppedConnectionKillsTheProgram) {
  // Raw protocol: Exec, Started, Signal, Exited.
  Fd conn = Open(Role::kExec);
  ASSERT_TRUE(WriteMessage(conn.get(), Argv({"sleep", "100"}), DeadlineAfter(5s)));
  auto started = ReadMessage<Started>(conn.get(), DeadlineAfter(5s));
  ASSERT_TRUE(started) << started.error().message();
  ASSERT_TRUE(WriteMessage(conn.get(), SignalMessage{SIGTERM}, DeadlineAfter(5s)));
  auto exited = ReadMessage<Exited>(conn.get(), DeadlineAfter(5s));
  ASSERT_TRUE(exited) << exited.error().message();
  EXPECT_EQ(exited->signal, SIGTERM);
  EXPECT_EQ(exited->ShellStatus(), 143);

  Fd dropped = Open(Role::kExec);
  ASSERT_TRUE(WriteMessage(dropped.get(), Argv({"sh", "-c", "sleep 100 & sleep 100"}), DeadlineAfter(5s)));
  auto pid = ReadMessage<Started>(dropped.get(), DeadlineAfter(5s));
  ASSERT_TRUE(pid);
  EXPECT_EQ(::kill(static_cast<pid_t>(pid->pid), 0), 0);
  dropped.reset();
  bool gone = false;
  for (int i = 0; i < 500 && !gone; ++i) {
    gone = ::kill(static_cast<pid_t>(pid->pid), 0) != 0 && ::kill(-static_cast<pid_t>(pid->pid), 0) != 0;
    if (!gone) std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(gone) << "the program's process group outlived the connection";
}

TEST_F(AgentTest, WrongOrMissingTokenIsRefusedAndIdentityIsReread) {
  auto conn = ConnectUnix(socket_, 5s);
  ASSERT_TRUE(conn);
  auto refused = Handshake(*conn, MakeToken(0x99), Role::kExec, 5s);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message().find("wrong token"), std::string::npos) << refused.error().message();

  // A fork: new token and generation. The old token stops working at once.
  Token fresh = MakeToken(0x10);
  WriteIdentity(dir_.File("identity"), fresh, 2);
  auto old_conn = ConnectUnix(socket_, 5s);
  ASSERT_TRUE(old_conn);
  EXPECT_FALSE(Handshake(*old_conn, token_, Role::kControl, 5s));
  auto c = Connect(AgentEndpoint{.unix_path = socket_}, fresh, Role::kControl, 5s);
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->hello.generation, 2u);
  EXPECT_EQ(c->hello.agent_version, std::string(kAgentVersion));

  // An identity page without a token refuses everyone.
  WriteIdentity(dir_.File("identity"), Token{}, 3);
  auto none = ConnectUnix(socket_, 5s);
  ASSERT_TRUE(none);
  auto no_token = Handshake(*none, Token{}, Role::kExec, 5s);
  ASSERT_FALSE(no_token);
  EXPECT_NE(no_token.error().message().find("not set a token"), std::string::npos);
}

TEST_F(AgentTest, MonitorPushesReports) {
  auto conn = ConnectUnix(socket_, 5s);
  ASSERT_TRUE(conn);
  auto monitor = AgentMonitor::Start(std::move(*conn), token_, 50ms, 5s);
  ASSERT_TRUE(monitor) << monitor.error().message();
  for (int i = 0; i < 3; ++i) {
    auto report = monitor->Next(5s);
    ASSERT_TRUE(report) << report.error().message();
    EXPECT_GT(report->mem_total_kb, 0u);
    EXPECT_GT(report->mem_available_kb, 0u);
    EXPECT_GT(report->procs, 0u);
    EXPECT_GT(report->uptime_s, 0);
    EXPECT_GE(report->load1, 0);
    EXPECT_EQ(report->psi_some_avg10.has_value(), ::access("/proc/pressure/memory", R_OK) == 0);
  }
  std::this_thread::sleep_for(120ms);
  auto polled = monitor->Poll();
  ASSERT_TRUE(polled) << polled.error().message();
  EXPECT_GE(polled->size(), 1u);

  // A running exec session makes the guest active.
  Fd busy = Open(Role::kExec);
  ASSERT_TRUE(WriteMessage(busy.get(), Argv({"sleep", "100"}), DeadlineAfter(5s)));
  ASSERT_TRUE(ReadMessage<Started>(busy.get(), DeadlineAfter(5s)));
  bool active = false;
  for (int i = 0; i < 20 && !active; ++i) {
    auto report = monitor->Next(5s);
    ASSERT_TRUE(report);
    active = report->active && report->exec_sessions == 1;
  }
  EXPECT_TRUE(active);
}

TEST_F(AgentTest, ControlAppliesIdentityAndPowerInDryRun) {
  Fd conn = Open(Role::kControl);
  SetIdentity id;
  id.hostname = "fork-2";
  id.machine_id = std::string(32, 'a');
  id.ipv4 = "10.1.2.3/24";
  id.gateway = "10.1.2.1";
  id.mac = "02:00:0a:01:02:03";
  id.unix_time_ns = 1'700'000'000'000'000'000ull;
  id.entropy_seed = std::string(128, '5');
  id.generation = 9;
  auto ok = SendIdentity(conn, id, 5s);
  ASSERT_TRUE(ok) << ok.error().message();
  EXPECT_EQ(ok->generation, 9u);
  EXPECT_EQ(ok->applied,
            (std::vector<std::string>{"hostname", "machine_id", "mac", "ipv4", "gateway", "time", "entropy"}));
  ASSERT_TRUE(SendReboot(conn, 5s));
  ASSERT_TRUE(SendShutdown(conn, 5s));
  EXPECT_EQ(Slurp(dir_.File("dry.log")),
            "hostname fork-2\nmachine_id aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\nmac <default> 02:00:0a:01:02:03\n"
            "ipv4 <default> 10.1.2.3/24\ngateway <default> 10.1.2.1\ntime 1700000000000000000\n"
            "entropy 64 bytes\nreboot\npoweroff\n");

  // A request of the wrong role is answered with an Error.
  Fd wrong = Open(Role::kControl);
  ASSERT_TRUE(WriteMessage(wrong.get(), Monitor{100}, DeadlineAfter(5s)));
  auto reply = ReadFrame(wrong.get(), DeadlineAfter(5s));
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->type, MessageType::kError);
}

TEST_F(AgentTest, GarbageFromTheHostEndsOnlyThatSession) {
  auto conn = ConnectUnix(socket_, 5s);
  ASSERT_TRUE(conn);
  std::string garbage = "GET / HTTP/1.1\r\n\r\n";
  ASSERT_TRUE(WriteAll(conn->get(), garbage.data(), garbage.size()));
  auto reply = ReadFrame(conn->get(), DeadlineAfter(5s));
  EXPECT_FALSE(reply && reply->type != MessageType::kError);
  // The agent still serves others.
  EXPECT_EQ(Capture(Argv({"true"})).status, 0);
}

// ---- Timeouts: an absent or hung agent gives an error, never a hang. ----

TEST(AgentTimeoutTest, AbsentAgentFailsFast) {
  TempDir dir("agent-absent");
  auto conn = ConnectUnix(dir.File("nobody.sock"), 1s);
  ASSERT_FALSE(conn);
  auto vsock = ConnectVsock(/*cid=*/0x7fffffff, kAgentPort, 500ms);
  EXPECT_FALSE(vsock);
}

TEST(AgentTimeoutTest, SilentPeerTimesOut) {
  // A listener that accepts (the kernel does, via the backlog) but never answers.
  TempDir dir("agent-hung");
  std::string path = dir.File("hung.sock");
  Fd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(listener.get(), 8), 0);

  auto start = Clock::now();
  auto c = Connect(AgentEndpoint{.unix_path = path}, MakeToken(1), Role::kExec, 200ms);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().error_number(), ETIMEDOUT) << c.error().message();
  EXPECT_LT(Clock::now() - start, 3s);

  // A peer that never sends Started.
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Fd ours(sv[0]), theirs(sv[1]);
  ExecIo io;
  io.start_timeout = 200ms;
  start = Clock::now();
  auto status = RunExec(ours, Argv({"true"}), io);
  ASSERT_FALSE(status);
  EXPECT_EQ(status.error().error_number(), ETIMEDOUT);
  EXPECT_LT(Clock::now() - start, 3s);

  // A monitor that never reports.
  Fd mine(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(::connect(mine.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  auto monitor = AgentMonitor::Start(std::move(mine), MakeToken(1), 100ms, 200ms);
  ASSERT_FALSE(monitor);
  EXPECT_EQ(monitor.error().error_number(), ETIMEDOUT);
}

// ---- In the lab (tools/lab/run-in-lab; L1 loads vsock_loopback and is disposable) ----

// The real transport: AF_VSOCK over the loopback transport (CID 1). Skipped where the kernel has
// no vsock loopback (most build hosts and containers).
class AgentVsockTest : public AgentTest {
 protected:
  void SetUp() override {
    Fd probe(::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!probe || ::access("/sys/module/vsock_loopback", F_OK) != 0) GTEST_SKIP() << "no vsock loopback here";
    uint32_t port = 20000 + static_cast<uint32_t>(::getpid() % 20000);
    StartAgent(fmt::format("vsock:{}", port), /*dry_run=*/std::getenv("CLONE_LAB_INSIDE") == nullptr);
    endpoint_ = AgentEndpoint{.cid = VMADDR_CID_LOCAL, .port = port};
  }
};

TEST_F(AgentVsockTest, ExecAndMonitorOverVsock) {
  auto echo = Capture(Argv({"sh", "-c", "echo hi; echo err >&2; exit 3"}));
  EXPECT_EQ(echo.status, 3);
  EXPECT_EQ(echo.stdout_data, "hi\n");
  EXPECT_EQ(echo.stderr_data, "err\n");
  auto big = Capture(Argv({"head", "-c", "10485760", "/dev/zero"}));
  EXPECT_EQ(big.stdout_data, std::string(10 << 20, '\0'));
  ExecRequest tty = Argv({"stty", "size"});
  tty.tty = true;
  tty.rows = 12;
  tty.cols = 34;
  EXPECT_EQ(Capture(tty).stdout_data, "12 34\r\n");
  auto conn = ConnectVsock(endpoint_.cid, endpoint_.port, 5s);
  ASSERT_TRUE(conn) << conn.error().message();
  auto monitor = AgentMonitor::Start(std::move(*conn), token_, 50ms, 5s);
  ASSERT_TRUE(monitor) << monitor.error().message();
  auto report = monitor->Next(5s);
  ASSERT_TRUE(report) << report.error().message();
  EXPECT_GT(report->mem_total_kb, 0u);
}

// Real system changes (hostname, address, MAC, route, clock, entropy): only inside the lab's L1,
// which is thrown away after the run.
TEST_F(AgentVsockTest, SetIdentityChangesTheSystem) {
  if (std::getenv("CLONE_LAB_INSIDE") == nullptr) GTEST_SKIP() << "changes the system: lab only";
  auto made = host_tools::RunCommand("ip link add agt0 type veth peer name agt1 && ip link set agt1 up");
  if (made.exit_code != 0) GTEST_SKIP() << "no veth: " << made.output;
  Fd conn = Open(Role::kControl);
  SetIdentity id;
  id.hostname = "lab-fork-1";
  id.interface = "agt0";
  id.mac = "02:00:0a:4d:00:02";
  id.ipv4 = "10.77.0.2/24";
  id.gateway = "10.77.0.1";
  id.unix_time_ns = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
  id.entropy_seed = std::string(128, 'a');
  id.generation = 4;
  auto ok = SendIdentity(conn, id, 10s);
  ASSERT_TRUE(ok) << ok.error().message();
  EXPECT_EQ(ok->applied, (std::vector<std::string>{"hostname", "mac", "ipv4", "gateway", "time", "entropy"}));
  char name[65] = {};
  ::gethostname(name, sizeof(name) - 1);
  EXPECT_STREQ(name, "lab-fork-1");
  auto link = host_tools::RunCommand("ip -o link show agt0; ip -o -4 addr show agt0; ip route show default");
  EXPECT_NE(link.output.find("02:00:0a:4d:00:02"), std::string::npos) << link.output;
  EXPECT_NE(link.output.find("10.77.0.2/24"), std::string::npos) << link.output;
  EXPECT_NE(link.output.find("default via 10.77.0.1 dev agt0"), std::string::npos) << link.output;
  EXPECT_NE(link.output.find("UP"), std::string::npos) << link.output;

  // A second identity (the next fork) replaces the default route.
  id.ipv4 = "10.78.0.2/24";
  id.gateway = "10.78.0.1";
  id.mac.reset();
  id.hostname.reset();
  ASSERT_TRUE(SendIdentity(conn, id, 10s));
  auto route = host_tools::RunCommand("ip route show default");
  EXPECT_EQ(route.output, "default via 10.78.0.1 dev agt0 \n");
}

}  // namespace
}  // namespace clonevm::agent

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "base/bytes.h"
#include "base/event_loop.h"
#include "base/testing/host_tools.h"
#include "runtime/console_hub.h"
#include "runtime/vm_dir.h"

namespace clonevm {
namespace {

class RuntimeDirTest : public ::testing::Test {
 protected:
  void SetUp() override { ::setenv("CLONE_RUNTIME_DIR", root_.c_str(), 1); }
  void TearDown() override { ::unsetenv("CLONE_RUNTIME_DIR"); }
  host_tools::TempDir dir_;
  std::string root_ = dir_.path().string();
};

TEST_F(RuntimeDirTest, CreateListFindAndRemove) {
  EXPECT_EQ(RuntimeDir(), root_);
  EXPECT_FALSE(FindVm("").has_value());
  {
    auto a = VmDir::Create("alpha");
    ASSERT_TRUE(a) << a.error().message();
    ASSERT_TRUE(a->WriteInfo({{"pid", 42}}));
    auto again = VmDir::Create("alpha");
    ASSERT_FALSE(again);
    EXPECT_NE(again.error().message().find("already running"), std::string::npos);
    auto only = FindVm("");
    ASSERT_TRUE(only) << only.error().message();
    EXPECT_EQ(only->id, "alpha");
    EXPECT_EQ(only->info["pid"], 42);
    auto b = VmDir::Create("beta");
    ASSERT_TRUE(b);
    auto ambiguous = FindVm("");
    ASSERT_FALSE(ambiguous);
    EXPECT_NE(ambiguous.error().message().find("alpha, beta"), std::string::npos);
    EXPECT_EQ(FindVm("beta")->id, "beta");
    EXPECT_FALSE(FindVm("gamma"));
    EXPECT_EQ(FindVm("42")->id, "alpha");  // a VM process's PID (info.json "pid") finds it too
    EXPECT_FALSE(FindVm("43"));
    EXPECT_EQ(ListVms().size(), 2u);
  }
  EXPECT_TRUE(ListVms().empty());
  EXPECT_FALSE(std::filesystem::exists(root_ + "/vms/alpha"));
}

TEST_F(RuntimeDirTest, StaleDirectoriesAreReclaimed) {
  std::filesystem::create_directories(root_ + "/vms/dead");
  EXPECT_TRUE(ListVms().empty());  // nobody holds its lock
  EXPECT_FALSE(std::filesystem::exists(root_ + "/vms/dead"));
  std::filesystem::create_directories(root_ + "/vms/dead2");
  std::ofstream(root_ + "/vms/dead2/console.log") << "old";
  auto d = VmDir::Create("dead2");
  ASSERT_TRUE(d);
  EXPECT_FALSE(std::filesystem::exists(root_ + "/vms/dead2/console.log"));
}

TEST(VmIdTest, Validation) {
  EXPECT_TRUE(IsValidVmId("vm-1"));
  EXPECT_TRUE(IsValidVmId(NewVmId()));
  EXPECT_FALSE(IsValidVmId(""));
  EXPECT_FALSE(IsValidVmId("-x"));
  EXPECT_FALSE(IsValidVmId("a/b"));
  EXPECT_FALSE(IsValidVmId("UPPER"));
  EXPECT_FALSE(IsValidVmId(std::string(33, 'a')));
  EXPECT_FALSE(VmDir::Create("../escape"));
}

Fd Connect(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, path.c_str());
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << std::strerror(errno);
  return Fd(fd);
}

std::string ReadSome(int fd, size_t want) {
  std::string out;
  char buf[256];
  while (out.size() < want) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

TEST(ConsoleHubTest, ReplaysFansOutAndForwardsInput) {
  host_tools::TempDir dir;
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop);
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  Fd log_read(pipefd[0]);
  ConsoleHub hub(-1, Fd(pipefd[1]));
  std::string input;
  std::string path = dir.path().string() + "/console.sock";
  ASSERT_TRUE(hub.Listen(**loop, path, [&](std::span<const uint8_t> b) { input.append(b.begin(), b.end()); }));
  std::string early = "booting\n";
  hub.Output(AsBytes(early));
  EXPECT_EQ(ReadSome(log_read.get(), early.size()), early);

  Fd client = Connect(path);
  while (hub.client_count() == 0) ASSERT_TRUE((*loop)->RunOnce(1000));
  EXPECT_EQ(ReadSome(client.get(), early.size()), early);  // the replay
  std::string late = "login: ";
  hub.Output(AsBytes(late));
  EXPECT_EQ(ReadSome(client.get(), late.size()), late);

  ASSERT_EQ(::write(client.get(), "root\n", 5), 5);
  while (input.size() < 5) ASSERT_TRUE((*loop)->RunOnce(1000));
  EXPECT_EQ(input, "root\n");
  client.reset();
  while (hub.client_count() != 0) ASSERT_TRUE((*loop)->RunOnce(1000));
}

TEST(ConsoleHubTest, ReplayIsBounded) {
  host_tools::TempDir dir;
  auto loop = EventLoop::Create();  // outlives the hub
  ASSERT_TRUE(loop);
  ConsoleHub hub(-1, Fd());
  std::vector<uint8_t> big(ConsoleHub::kReplayBytes * 2, 'x');
  hub.Output(big);
  std::string path = dir.path().string() + "/c.sock";
  ASSERT_TRUE(hub.Listen(**loop, path, nullptr));
  Fd client = Connect(path);
  while (hub.client_count() == 0) ASSERT_TRUE((*loop)->RunOnce(1000));
  ::shutdown(client.get(), SHUT_WR);
  std::string got;
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(client.get(), buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
      got.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (got.size() >= ConsoleHub::kReplayBytes) break;
    ASSERT_TRUE((*loop)->RunOnce(100));
  }
  EXPECT_EQ(got.size(), ConsoleHub::kReplayBytes);
}

}  // namespace
}  // namespace clonevm

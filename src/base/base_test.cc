#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#include <thread>

#include "base/bytes.h"
#include "base/event_loop.h"
#include "base/fd.h"
#include "base/log.h"
#include "base/result.h"
#include "base/subprocess.h"

namespace clonevm {
namespace {

Result<int> Half(int x) {
  if (x % 2 != 0) return Fail("{} is odd", x);
  return x / 2;
}

Result<int> Quarter(int x) {
  int h = CLONE_TRY(Half(x));
  return CLONE_TRY(Half(h));
}

TEST(ResultTest, TryPropagatesErrors) {
  EXPECT_EQ(*Quarter(8), 2);
  auto r = Quarter(6);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message(), "3 is odd");
}

TEST(ResultTest, ErrnoErrorsNameTheCallAndContext) {
  Error e = Error::FromErrno("open", ENOENT, "/nope");
  EXPECT_EQ(e.message(), "open: No such file or directory (/nope)");
  EXPECT_EQ(e.error_number(), ENOENT);
  EXPECT_EQ(e.Wrap("kernel").message(), "kernel: open: No such file or directory (/nope)");
}

TEST(FdTest, ReadFileReportsMissingFilesAndDirectories) {
  auto missing = ReadFile("/nonexistent/file");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message().find("/nonexistent/file"), std::string::npos);
  auto dir = ReadFile("/");
  ASSERT_FALSE(dir);
  EXPECT_NE(dir.error().message().find("is a directory"), std::string::npos);
}

TEST(FdTest, ReadFileReadsProcFilesWithZeroSize) {
  auto data = ReadFile("/proc/self/status");
  ASSERT_TRUE(data);
  EXPECT_NE(data->find("Name:"), std::string::npos);
}

TEST(FdTest, MoveTransfersOwnership) {
  auto fd = OpenFile("/dev/null", O_RDONLY);
  ASSERT_TRUE(fd);
  Fd a = std::move(*fd);
  EXPECT_TRUE(a.valid());
  Fd b = std::move(a);
  EXPECT_FALSE(a.valid());  // NOLINT(bugprone-use-after-move): checking the moved-from state
  EXPECT_TRUE(b.valid());
}

TEST(EventLoopTest, DispatchesAndStopsFromAnotherThread) {
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop);
  auto efd = EventFd::Create(EFD_NONBLOCK);
  ASSERT_TRUE(efd);
  int fired = 0;
  ASSERT_TRUE((*loop)->Add(efd->fd(), EPOLLIN, [&](uint32_t) {
    efd->Drain();
    if (++fired == 2) (*loop)->Stop();
  }));
  std::thread t([&] {
    efd->Signal();
    while (fired < 1) std::this_thread::yield();
    efd->Signal();
  });
  ASSERT_TRUE((*loop)->Run());
  t.join();
  EXPECT_EQ(fired, 2);
}

TEST(EventLoopTest, PostRunsOnTheLoop) {
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop);
  bool ran = false;
  std::thread t([&] {
    (*loop)->Post([&] {
      ran = true;
      (*loop)->Stop();
    });
  });
  ASSERT_TRUE((*loop)->Run());
  t.join();
  EXPECT_TRUE(ran);
}

TEST(RateLimiterTest, AllowsABurstThenThrottles) {
  RateLimiter limiter;
  int allowed = 0;
  for (int i = 0; i < 100; ++i) allowed += limiter.Allow() ? 1 : 0;
  EXPECT_GE(allowed, 10);
  EXPECT_LE(allowed, 11);
}

}  // namespace
}  // namespace clonevm

#include "base/sha256.h"

namespace clonevm {
namespace {

TEST(Sha256Test, KnownVector) {
  const std::string abc = "abc";
  EXPECT_EQ(Sha256Hex(AsBytes(abc)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_TRUE(IsSha256Hex("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"));
  EXPECT_FALSE(IsSha256Hex("ba78"));
  EXPECT_FALSE(IsSha256Hex(std::string(64, 'g')));
}

}  // namespace
TEST(RunToolTest, FeedsStdinAndReportsExitCodes) {
  auto cat = RunTool({"cat"}, {.input = "hello\n"});
  ASSERT_TRUE(cat) << cat.error().message();
  EXPECT_EQ(cat->exit_code, 0);
  EXPECT_EQ(cat->output, "hello\n");
  auto failing = RunTool({"sh", "-c", "echo oops >&2; exit 3"});
  ASSERT_TRUE(failing);
  EXPECT_EQ(failing->exit_code, 3);
  EXPECT_EQ(failing->output, "oops\n");
  std::string big(1 << 20, 'x');
  // A tool that exits without reading a large stdin must not hang or kill us (no SIGPIPE).
  auto early = RunTool({"true"}, {.input = big});
  ASSERT_TRUE(early);
  EXPECT_EQ(early->exit_code, 0);
  auto missing = RunTool({"clone-no-such-tool"});
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message().find("not found"), std::string::npos);
  EXPECT_EQ(failing->How(), "exit status 3");
  EXPECT_EQ(failing->LastLine(), "oops");
}

TEST(RunToolTest, StdinFromNullAndInterruption) {
  auto null_in = RunTool({"cat"}, {.input_from_null = true});
  ASSERT_TRUE(null_in);
  EXPECT_EQ(null_in->output, "");
  std::atomic<bool> stop{true};
  auto stopped = RunTool({"sleep", "30"}, {.interrupted = &stop});
  ASSERT_TRUE(stopped);
  EXPECT_TRUE(stopped->interrupted);
  EXPECT_FALSE(stopped->ok());
  auto killed = RunTool({"sh", "-c", "kill -9 $$"});
  ASSERT_TRUE(killed);
  EXPECT_EQ(killed->signal, 9);
  EXPECT_EQ(killed->How(), "killed by signal 9");
}

TEST(RunToolTest, FindToolLooksInSbinAndUnderARoot) {
  EXPECT_NE(FindTool("sh"), "");
  EXPECT_EQ(FindTool("clone-no-such-tool"), "");
  EXPECT_EQ(FindTool("sh", "/nonexistent-root"), "");
}

TEST(PipeTest, BothEndsAreCloseOnExec) {
  auto p = Pipe();
  ASSERT_TRUE(p);
  EXPECT_TRUE(::fcntl(p->read.get(), F_GETFD) & FD_CLOEXEC);
  EXPECT_TRUE(::fcntl(p->write.get(), F_GETFD) & FD_CLOEXEC);
  ASSERT_EQ(::write(p->write.get(), "x", 1), 1);
  char c = 0;
  EXPECT_EQ(::read(p->read.get(), &c, 1), 1);
  EXPECT_EQ(c, 'x');
}

}  // namespace clonevm

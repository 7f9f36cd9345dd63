// virtio-fs device tests: FUSE requests through real virtqueues in guest memory, served by the
// device's worker thread and completed through its eventfd, as the VMM's event loop does.
#include "devices/virtio/fs.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fuse.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "base/fd.h"
#include "base/testing/host_tools.h"
#include "devices/virtio/mmio_transport.h"
#include "devices/virtio/testing/mmio_driver.h"
#include "devices/virtio/testing/queue_driver.h"
#include "devices/virtio/virtio_spec.h"
#include "fs/testing/fuse_args.h"
#include "sandbox/seccomp.h"

namespace clonevm::virtio {
namespace {

using testing::MmioDriver;
using testing::QueueDriver;

constexpr uint64_t kMiB = 1 << 20;

std::unique_ptr<Fs> MakeDevice(const std::string& root, const std::string& tag = "myfs") {
  auto server = fs::PassthroughFs::Create(root, {});
  EXPECT_TRUE(server);
  auto device = Fs::Create(tag, std::move(*server));
  EXPECT_TRUE(device) << (device ? "" : device.error().message());
  return std::move(*device);
}

class FsDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    std::ofstream(dir_.File("hello.txt")) << "hello";
    Start(MakeDevice(dir_.path().string()));
  }

  void Start(std::unique_ptr<Fs> device) {
    device_ = device.get();
    transport_ = MmioTransport::Create(memory_, std::move(device)).value();
    driver_ = std::make_unique<MmioDriver>(*transport_);
    ASSERT_TRUE(driver_->Negotiate(kFeatureVersion1 | kFeatureEventIdx | kFeatureIndirectDesc));
    driver_->SetUpQueue(0, hiprio_);
    driver_->SetUpQueue(1, requests_);
    driver_->DriverOk();
    ASSERT_EQ(driver_->Status() & kStatusDriverOk, kStatusDriverOk);
  }

  std::vector<uint8_t> Request(uint32_t opcode, uint64_t nodeid, std::vector<uint8_t> args, uint32_t len_delta = 0) {
    fuse_in_header h{};
    h.len = static_cast<uint32_t>(sizeof(h) + args.size()) + len_delta;
    h.opcode = opcode;
    h.unique = ++unique_;
    h.nodeid = nodeid;
    std::vector<uint8_t> req(sizeof(h) + args.size());  // sized once (GCC 12 -O3 false positive on insert)
    std::memcpy(req.data(), &h, sizeof(h));
    std::copy(args.begin(), args.end(), req.begin() + sizeof(h));
    return req;
  }

  // Puts `request` (readable) and a `reply_size` writable buffer on `q`, notifies, and waits for
  // the worker's completion (when `wait`). Returns the reply buffer's gpa.
  uint64_t Submit(QueueDriver& q, uint32_t index, const std::vector<uint8_t>& request, uint32_t reply_size,
                  bool wait = true) {
    uint64_t in = q.Alloc(static_cast<uint32_t>(request.size()));
    EXPECT_TRUE(memory_.WriteBytes(in, request));
    std::vector<testing::BufferSpec> chain = {{in, static_cast<uint32_t>(request.size()), false}};
    uint64_t out = 0;
    if (reply_size > 0) {
      out = q.Alloc(reply_size);
      chain.push_back({out, reply_size, true});
    }
    q.AddChain(chain);
    driver_->Notify(index);
    if (wait) WaitCompletion();
    return out;
  }

  void WaitCompletion() {
    pollfd p{device_->completion_fd(), POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, 5000), 1);
    transport_->HandleDeviceFd(0, EPOLLIN);
  }

  fuse_out_header Header(uint64_t gpa) {
    fuse_out_header h;
    std::memcpy(&h, memory_.Span(gpa, sizeof(h)).data(), sizeof(h));
    return h;
  }

  void Init() {
    fuse_init_in in{};
    in.major = 7;
    in.minor = 38;
    in.flags = FUSE_MAX_PAGES;
    std::vector<uint8_t> args(sizeof(in));
    std::memcpy(args.data(), &in, sizeof(in));
    uint64_t out = Submit(requests_, 1, Request(FUSE_INIT, 0, args), 4096);
    EXPECT_EQ(Header(out).error, 0);
    EXPECT_EQ(Header(out).len, sizeof(fuse_out_header) + sizeof(fuse_init_out));
  }

  host_tools::TempDir dir_{"clone-virtiofs-test"};
  GuestMemory memory_ = std::move(GuestMemory::Create(16 * kMiB, 3ull << 30, 4ull << 30).value());
  QueueDriver hiprio_{memory_, Fs::kHiprioQueueSize, 0x10000, 0x200000};
  QueueDriver requests_{memory_, Fs::kRequestQueueSize, 0x40000, 0x600000};
  std::shared_ptr<MmioTransport> transport_;
  std::unique_ptr<MmioDriver> driver_;
  Fs* device_ = nullptr;
  uint64_t unique_ = 0;
};

TEST_F(FsDeviceTest, IsAFsDeviceWithTagAndTwoQueues) {
  EXPECT_EQ(driver_->Read32(0x008), kDeviceTypeFs);
  EXPECT_EQ(transport_->num_queues(), 2u);
  char tag[37] = {};
  for (int i = 0; i < 36; i += 4) {
    uint32_t v = driver_->Read32(0x100 + static_cast<uint64_t>(i));
    std::memcpy(tag + i, &v, 4);
  }
  EXPECT_STREQ(tag, "myfs");
  EXPECT_EQ(driver_->Read32(0x100 + 36), 1u);  // num_request_queues

  auto server = [&] { return std::move(fs::PassthroughFs::Create(dir_.path().string(), {}).value()); };
  EXPECT_FALSE(Fs::Create("", server()));
  EXPECT_FALSE(Fs::Create(std::string(37, 't'), server()));
  EXPECT_TRUE(Fs::Create(std::string(36, 't'), server()));
  EXPECT_FALSE(Fs::Create(std::string("a\0b", 3), server()));
  EXPECT_FALSE(Fs::Create("x", nullptr));
}

TEST_F(FsDeviceTest, ServesRequestsOnTheWorkerAndCompletesThroughTheEventfd) {
  Init();
  std::vector<uint8_t> name = {'h', 'e', 'l', 'l', 'o', '.', 't', 'x', 't', 0};
  uint64_t out = Submit(requests_, 1, Request(FUSE_LOOKUP, 1, name), 4096);
  ASSERT_EQ(requests_.UsedIdx(), 2);
  EXPECT_EQ(requests_.UsedElem(1).second, sizeof(fuse_out_header) + sizeof(fuse_entry_out));
  EXPECT_EQ(Header(out).error, 0);
  EXPECT_EQ(Header(out).unique, unique_);
  fuse_entry_out entry;
  std::memcpy(&entry, memory_.Span(out + sizeof(fuse_out_header), sizeof(entry)).data(), sizeof(entry));
  EXPECT_EQ(entry.attr.size, 5u);
  EXPECT_EQ(driver_->InterruptStatus() & kInterruptUsedBuffer, kInterruptUsedBuffer);

  // Unknown opcode: an errno reply, the device keeps working.
  out = Submit(requests_, 1, Request(4242, 1, {}), 4096);
  EXPECT_EQ(Header(out).error, -ENOSYS);
  EXPECT_EQ(driver_->Status() & kStatusNeedsReset, 0u);

  // FORGET on the hiprio queue: no writable part, no reply, used length 0.
  fuse_forget_in f{};
  f.nlookup = 1;
  std::vector<uint8_t> fargs(sizeof(f));
  std::memcpy(fargs.data(), &f, sizeof(f));
  Submit(hiprio_, 0, Request(FUSE_FORGET, entry.nodeid, fargs), 0);
  ASSERT_EQ(hiprio_.UsedIdx(), 1);
  EXPECT_EQ(hiprio_.UsedElem(0).second, 0u);
  EXPECT_EQ(driver_->Status() & kStatusNeedsReset, 0u);
}

TEST_F(FsDeviceTest, HeaderLengthLargerThanTheChainIsAGuestError) {
  Init();
  Submit(requests_, 1, Request(FUSE_GETATTR, 1, {}, 100), 4096, false);
  EXPECT_EQ(driver_->Status() & kStatusNeedsReset, kStatusNeedsReset);
}

TEST_F(FsDeviceTest, ShortHeaderIsAGuestError) {
  Submit(requests_, 1, std::vector<uint8_t>(8, 0), 4096, false);
  EXPECT_EQ(driver_->Status() & kStatusNeedsReset, kStatusNeedsReset);
}

TEST_F(FsDeviceTest, RequestWithoutRoomForAReplyIsAGuestError) {
  Init();
  Submit(requests_, 1, Request(FUSE_GETATTR, 1, {}), 8, false);
  EXPECT_EQ(driver_->Status() & kStatusNeedsReset, kStatusNeedsReset);
}

TEST_F(FsDeviceTest, PauseCompletesEverythingAndStateRestoresOnAFreshDevice) {
  Init();
  std::vector<uint8_t> name = {'h', 'e', 'l', 'l', 'o', '.', 't', 'x', 't', 0};
  // Several requests without waiting: Pause() must wait for all of them and answer them.
  for (int i = 0; i < 8; ++i) Submit(requests_, 1, Request(FUSE_LOOKUP, 1, name), 4096, false);
  ASSERT_TRUE(transport_->PauseDevice());
  EXPECT_EQ(device_->requests_in_flight(), 0u);
  EXPECT_EQ(requests_.UsedIdx(), 9);
  nlohmann::json state = transport_->SaveState();
  ASSERT_TRUE(transport_->ResumeDevice());

  // The restored device knows the session (no INIT) and the nodeid.
  auto restored = MakeDevice(dir_.path().string());
  Fs* raw = restored.get();
  auto transport = MmioTransport::Create(memory_, std::move(restored)).value();
  ASSERT_TRUE(transport->RestoreState(state)) << transport->RestoreState(state).error().message();
  nlohmann::json device_state = state["device"];
  EXPECT_EQ(device_state["server"]["inodes"].size(), 2u);
  EXPECT_EQ(device_state["tag"], "myfs");
  (void)raw;

  // A different tag is refused: the guest already read the config space.
  auto other = MakeDevice(dir_.path().string(), "other");
  EXPECT_FALSE(other->RestoreState(device_state));
}

TEST_F(FsDeviceTest, ResetEndsTheSessionAndAbandonsNothingOwed) {
  Init();
  for (int i = 0; i < 4; ++i) Submit(requests_, 1, Request(FUSE_GETATTR, 1, {}), 4096, false);
  driver_->SetStatus(0);  // reset while requests may be queued or in flight
  EXPECT_EQ(device_->requests_in_flight(), 0u);
  EXPECT_EQ(driver_->Status(), 0u);
}

// Lock waits (FUSE_SETLKW) are parked, not run on the worker: other requests go on, the wait is
// answered when the lock is free (a guest unlock at once, a host unlock by the retry timer), and
// pause or reset never wait for it.
class FsLockTest : public FsDeviceTest {
 protected:
  void SetUp() override {
    FsDeviceTest::SetUp();
    Init();
    std::vector<uint8_t> name = {'h', 'e', 'l', 'l', 'o', '.', 't', 'x', 't', 0};
    uint64_t out = Submit(requests_, 1, Request(FUSE_LOOKUP, 1, name), 4096);
    ASSERT_EQ(Header(out).error, 0);
    fuse_entry_out entry;
    std::memcpy(&entry, memory_.Span(out + sizeof(fuse_out_header), sizeof(entry)).data(), sizeof(entry));
    node_ = entry.nodeid;
    fuse_open_in open{};
    open.flags = O_RDWR;
    out = Submit(requests_, 1, Request(FUSE_OPEN, node_, fs::testing::FuseArgs(open)), 4096);
    ASSERT_EQ(Header(out).error, 0);
    fuse_open_out open_out;
    std::memcpy(&open_out, memory_.Span(out + sizeof(fuse_out_header), sizeof(open_out)).data(), sizeof(open_out));
    fh_ = open_out.fh;
  }
  std::vector<uint8_t> Lk(uint32_t opcode, uint64_t owner, uint32_t type, uint32_t flags = 0) {
    fuse_lk_in in{};
    in.fh = fh_;
    in.owner = owner;
    in.lk.type = type;
    in.lk.end = INT64_MAX;
    in.lk.pid = static_cast<uint32_t>(owner);
    in.lk_flags = flags;
    return Request(opcode, node_, fs::testing::FuseArgs(in));
  }
  // Whether the device returns a chain to the used ring within `ms`, serving completion_fd() as
  // the event loop does. A readable completion_fd() alone is no answer: it only says "look at the
  // done chains", and a signal can be left over from requests already returned.
  bool AnsweredWithin(int ms) {
    const uint16_t used = requests_.UsedIdx();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    for (;;) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      pollfd p{device_->completion_fd(), POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(std::max<int64_t>(left.count(), 0))) == 1) {
        transport_->HandleDeviceFd(0, EPOLLIN);
      }
      if (requests_.UsedIdx() != used) return true;
      if (left.count() <= 0) return false;
    }
  }
  uint64_t node_ = 0;
  uint64_t fh_ = 0;
};

TEST_F(FsLockTest, ASetlkwWaitsParkedWhileTheWorkerServesOthers) {
  uint64_t out = Submit(requests_, 1, Lk(FUSE_SETLK, 1, F_WRLCK), 4096);
  ASSERT_EQ(Header(out).error, 0);
  const uint16_t used = requests_.UsedIdx();
  uint64_t wait = Submit(requests_, 1, Lk(FUSE_SETLKW, 2, F_WRLCK), 4096, false);
  const uint64_t wait_unique = unique_;
  EXPECT_FALSE(AnsweredWithin(50));
  EXPECT_EQ(device_->parked_requests(), 1u);
  EXPECT_EQ(device_->requests_in_flight(), 1u);
  out = Submit(requests_, 1, Request(FUSE_GETATTR, 1, {}), 4096);  // served meanwhile
  EXPECT_EQ(Header(out).error, 0);
  EXPECT_EQ(requests_.UsedIdx(), used + 1);
  // The guest unlocks: the waiter is answered right after that request.
  Submit(requests_, 1, Lk(FUSE_SETLK, 1, F_UNLCK), 4096, false);
  for (int i = 0; i < 100 && requests_.UsedIdx() < used + 3; ++i) WaitCompletion();
  EXPECT_EQ(requests_.UsedIdx(), used + 3);
  EXPECT_EQ(Header(wait).error, 0);
  EXPECT_EQ(Header(wait).unique, wait_unique);
  EXPECT_EQ(device_->parked_requests(), 0u);

  // A host process holds it: the retry timer grants the wait after the host lets go. The wait
  // counts as answered only when its chain is used and its reply written (a zeroed buffer reads
  // as error 0).
  Fd host(::open(dir_.File("hello.txt").c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_EQ(::flock(host.get(), LOCK_EX), 0);
  const uint16_t before_flock = requests_.UsedIdx();
  wait = Submit(requests_, 1, Lk(FUSE_SETLKW, 3, F_RDLCK, FUSE_LK_FLOCK), 4096, false);
  const uint64_t flock_unique = unique_;
  EXPECT_FALSE(AnsweredWithin(30));  // several retries find the host's lock
  EXPECT_EQ(device_->parked_requests(), 1u);
  ASSERT_EQ(::flock(host.get(), LOCK_UN), 0);
  ASSERT_TRUE(AnsweredWithin(2000));
  EXPECT_EQ(requests_.UsedIdx(), before_flock + 1);
  EXPECT_EQ(Header(wait).unique, flock_unique);
  EXPECT_EQ(Header(wait).error, 0);
  EXPECT_EQ(device_->parked_requests(), 0u);
  EXPECT_EQ(::flock(host.get(), LOCK_EX | LOCK_NB), -1);  // the guest's shared flock now
  EXPECT_EQ(errno, EWOULDBLOCK);
}

TEST_F(FsLockTest, PauseAnswersAWaitEnolckAndResetAbandonsIt) {
  ASSERT_EQ(Header(Submit(requests_, 1, Lk(FUSE_SETLK, 1, F_WRLCK), 4096)).error, 0);
  uint64_t wait = Submit(requests_, 1, Lk(FUSE_SETLKW, 2, F_WRLCK), 4096, false);
  EXPECT_FALSE(AnsweredWithin(20));
  const uint16_t used = requests_.UsedIdx();
  ASSERT_TRUE(transport_->PauseDevice());
  EXPECT_EQ(device_->requests_in_flight(), 0u);
  EXPECT_EQ(requests_.UsedIdx(), used + 1);
  EXPECT_EQ(Header(wait).error, -ENOLCK);
  ASSERT_TRUE(transport_->ResumeDevice());
  Submit(requests_, 1, Lk(FUSE_SETLKW, 2, F_WRLCK), 4096, false);
  EXPECT_FALSE(AnsweredWithin(20));
  EXPECT_EQ(device_->parked_requests(), 1u);
  driver_->SetStatus(0);  // reset: nothing is owed, and the host locks are gone
  EXPECT_EQ(device_->requests_in_flight(), 0u);
  Fd host(::open(dir_.File("hello.txt").c_str(), O_RDWR | O_CLOEXEC));
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  EXPECT_EQ(::fcntl(host.get(), F_OFD_SETLK, &fl), 0);
}

// With --seccomp the VMM confines the device's worker to the fs role (vmm/vm.cc): every request
// kind and the snapshot path must run under it. In a death-test child: a forbidden syscall kills
// the process by SIGSYS instead of exiting 0.
TEST_F(FsDeviceTest, WorkerServesEveryRequestKindUnderTheFsSeccompRole) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  auto flow = [&] {
    auto filters = sandbox::SeccompFilters::Compile();
    if (!filters) std::_Exit(10);
    auto server = fs::PassthroughFs::Create(dir_.path().string(), {});
    bool confined = false;
    auto device = Fs::Create("myfs", std::move(*server), false, [&] {
      confined = static_cast<bool>(filters->InstallForThisThread(sandbox::ThreadRole::kFs));
    });
    Start(std::move(*device));
    Init();
    if (!confined) std::_Exit(11);
    auto args = [](const auto& value, std::vector<std::string> strings = {}, std::string tail = {}) {
      return fs::testing::FuseArgs(value, strings, tail);
    };
    auto error = [&](uint32_t op, uint64_t node, std::vector<uint8_t> a) {
      uint64_t out = Submit(requests_, 1, Request(op, node, std::move(a)), 8192);
      return std::make_pair(Header(out).error, out + sizeof(fuse_out_header));
    };
    fuse_create_in create{};
    create.flags = O_RDWR | O_CREAT;
    create.mode = S_IFREG | 0644;
    auto [created, entry_gpa] = error(FUSE_CREATE, 1, args(create, {"new"}));
    if (created != 0) std::_Exit(12);
    fuse_entry_out entry;
    fuse_open_out open_out;
    std::memcpy(&entry, memory_.Span(entry_gpa, sizeof(entry)).data(), sizeof(entry));
    std::memcpy(&open_out, memory_.Span(entry_gpa + sizeof(entry), sizeof(open_out)).data(), sizeof(open_out));
    fuse_write_in write{};
    write.fh = open_out.fh;
    write.size = 5;
    fuse_read_in read{};
    read.fh = open_out.fh;
    read.size = 100;
    fuse_setattr_in setattr{};
    setattr.valid = FATTR_MODE | FATTR_SIZE | FATTR_ATIME | FATTR_ATIME_NOW | FATTR_MTIME;
    setattr.mode = 0600;
    setattr.size = 2;
    fuse_mkdir_in mkdir{};
    mkdir.mode = 0755;
    fuse_rename_in rename{};
    rename.newdir = 1;
    fuse_fsync_in fsync{};
    fsync.fh = open_out.fh;
    fuse_open_in opendir{};
    std::vector<std::pair<int, const char*>> results = {
        {error(FUSE_WRITE, entry.nodeid, args(write, {}, "hello")).first, "write"},
        {error(FUSE_READ, entry.nodeid, args(read)).first, "read"},
        {error(FUSE_FSYNC, entry.nodeid, args(fsync)).first, "fsync"},
        {error(FUSE_SETATTR, entry.nodeid, args(setattr)).first, "setattr"},
        {error(FUSE_MKDIR, 1, args(mkdir, {"dir"})).first, "mkdir"},
        {error(FUSE_RENAME, 1, args(rename, {"new", "renamed"})).first, "rename"},
        {error(FUSE_STATFS, 1, {}).first, "statfs"},
    };
    auto [opened, dir_gpa] = error(FUSE_OPENDIR, 1, args(opendir));
    fuse_open_out dir_out;
    std::memcpy(&dir_out, memory_.Span(dir_gpa, sizeof(dir_out)).data(), sizeof(dir_out));
    fuse_read_in readdir{};
    readdir.fh = dir_out.fh;
    readdir.size = 4096;
    results.push_back({opened, "opendir"});
    results.push_back({error(FUSE_READDIRPLUS, 1, args(readdir)).first, "readdirplus"});
    results.push_back({error(FUSE_RMDIR, 1, {'d', 'i', 'r', 0}).first, "rmdir"});
    results.push_back({error(FUSE_UNLINK, 1, {'r', 'e', 'n', 'a', 'm', 'e', 'd', 0}).first, "unlink"});
    fuse_lk_in lk{};
    lk.fh = open_out.fh;
    lk.owner = 1;
    lk.lk.type = F_WRLCK;
    lk.lk.end = 9;
    lk.lk.pid = 1;
    results.push_back({error(FUSE_SETLK, entry.nodeid, args(lk)).first, "setlk"});  // reopen + F_OFD_SETLK
    results.push_back({error(FUSE_GETLK, entry.nodeid, args(lk)).first, "getlk"});  // F_OFD_GETLK
    fuse_lk_in other = lk;
    other.owner = 2;
    Submit(requests_, 1, Request(FUSE_SETLKW, entry.nodeid, args(other)), 4096, false);  // parks
    fuse_lk_in unlock = lk;
    unlock.lk.type = F_UNLCK;
    results.push_back({error(FUSE_SETLK, entry.nodeid, args(unlock)).first, "unlock"});  // grants the wait
    fuse_lk_in flock_lk = lk;
    flock_lk.lk_flags = FUSE_LK_FLOCK;
    results.push_back({error(FUSE_SETLK, entry.nodeid, args(flock_lk)).first, "flock"});
    fuse_flush_in flush{};
    flush.fh = open_out.fh;
    flush.lock_owner = 2;
    results.push_back({error(FUSE_FLUSH, entry.nodeid, args(flush)).first, "flush"});  // closes a description
    for (const auto& [err, what] : results) {
      if (err != 0) {
        std::fprintf(stderr, "%s: %d\n", what, err);
        std::_Exit(13);
      }
    }
    if (!transport_->PauseDevice()) std::_Exit(14);
    nlohmann::json state = transport_->SaveState();  // readlink/fstatat on the confined worker
    if (state["device"]["server"]["inodes"].size() < 1) std::_Exit(15);
    std::_Exit(0);
  };
  EXPECT_EXIT(flow(), ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace clonevm::virtio

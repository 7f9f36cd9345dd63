#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <thread>

#include "base/event_loop.h"
#include "base/testing/host_tools.h"
#include "control/client.h"
#include "control/server.h"
#include "daemon/access.h"
#include "daemon/api.h"
#include "daemon/events.h"
#include "daemon/record.h"
#include "daemon/requests.h"
#include "daemon/supervisor.h"

namespace clonevm::daemon {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

// --- request bodies: every field's error names it ---

std::string CreateError(const json& body) {
  auto parsed = ParseCreateRequest(body);
  return parsed ? "" : parsed.error().message();
}

TEST(DaemonRequestsTest, CreateReadsTheSpecAndTheDaemonsFields) {
  auto r = ParseCreateRequest({{"kernel", "/boot/vmlinuz"}, {"mem_mib", 256}, {"start", false}, {"restart", "always"}});
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->spec.kernel, "/boot/vmlinuz");
  EXPECT_EQ(r->spec.mem_mib, 256u);
  EXPECT_FALSE(r->start);
  EXPECT_EQ(r->restart, RestartPolicy::kAlways);
  auto defaults = ParseCreateRequest({{"kernel", "/k"}});
  ASSERT_TRUE(defaults);
  EXPECT_TRUE(defaults->start);
  EXPECT_EQ(defaults->restart, RestartPolicy::kNo);
}

TEST(DaemonRequestsTest, CreateRefusesEveryBadField) {
  EXPECT_EQ(CreateError(json::array()), "expected a JSON object");
  EXPECT_EQ(CreateError({{"mem_mib", 256}}).rfind("kernel", 0), 0u) << CreateError({{"mem_mib", 256}});
  EXPECT_NE(CreateError({{"kernel", "/k"}, {"start", "yes"}}).find("start"), std::string::npos);
  EXPECT_NE(CreateError({{"kernel", "/k"}, {"restart", "sometimes"}}).find("restart: 'sometimes'"), std::string::npos);
  EXPECT_NE(CreateError({{"kernel", "/k"}, {"restart", 1}}).find("restart"), std::string::npos);
  EXPECT_NE(CreateError({{"kernel", "/k"}, {"mem_mib", 8}}).find("mem_mib 8"), std::string::npos);
  EXPECT_NE(CreateError({{"kernel", "/k"}, {"vcpus", -1}}).find("vcpus"), std::string::npos);
  EXPECT_NE(CreateError({{"kernel", "/k"}, {"colour", "red"}}).find("colour"), std::string::npos);
  EXPECT_NE(CreateError({{"kernel", "/k"}, {"name", "Bad_Name"}}).find("name"), std::string::npos);
  EXPECT_NE(CreateError({{"kernel", "vmlinuz"}}).find("kernel 'vmlinuz': must be an absolute path"), std::string::npos);
  EXPECT_NE(CreateError({{"kernel", "/k"}, {"initrd", "i.img"}}).find("initrd 'i.img'"), std::string::npos);
  EXPECT_NE(CreateError({{"kernel", "/k"}, {"rootfs", {{"image", "r.img"}}}}).find("rootfs.image"), std::string::npos);
  EXPECT_NE(CreateError({{"kernel", "/k"}, {"rootfs", {{"image", "/r.img"}, {"overlay", "o.qcow2"}}}})
                .find("rootfs.overlay 'o.qcow2'"),
            std::string::npos);
  EXPECT_EQ(CreateError({{"kernel", "/k"}, {"rootfs", {{"image", "/r.img"}, {"overlay", "auto"}}}}), "");
  EXPECT_NE(CreateError({{"kernel", "/k"}, {"disks", {{{"path", "d.img"}}}}}).find("disks[0].path 'd.img'"),
            std::string::npos);
  EXPECT_NE(CreateError({{"kernel", "/k"}, {"disks", {{{"path", "/d.img"}, {"format", "vmdk"}}}}}).find("disks[0]"),
            std::string::npos);
}

TEST(DaemonRequestsTest, ForkReadsCountOverridesAndRestart) {
  auto r = ParseForkRequest({{"count", 3}, {"name", "f"}, {"net", true}, {"restart", "on-failure"}});
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->count, 3u);
  EXPECT_EQ(r->overrides.name, "f");
  EXPECT_TRUE(r->overrides.net);
  EXPECT_EQ(r->restart, RestartPolicy::kOnFailure);
  auto empty = ParseForkRequest(json::object());
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->count, 1u);
}

TEST(DaemonRequestsTest, ForkRefusesEveryBadField) {
  auto error = [](const json& body) {
    auto parsed = ParseForkRequest(body);
    return parsed ? std::string() : parsed.error().message();
  };
  EXPECT_NE(error({{"count", 0}}).find("count"), std::string::npos);
  EXPECT_NE(error({{"count", 65}}).find("count"), std::string::npos);
  EXPECT_NE(error({{"count", "2"}}).find("count"), std::string::npos);
  EXPECT_NE(error({{"count", 2}, {"taps", {{{"name", "tap0"}}}}}).find("taps: a TAP can serve one fork only"),
            std::string::npos);
  EXPECT_NE(error({{"count", 2}, {"cid", 7}}).find("cid"), std::string::npos);
  EXPECT_NE(error({{"cid", 1}}).find("cid 1"), std::string::npos);
  EXPECT_NE(error({{"name", std::string(31, 'a')}, {"count", 10}}).find("too long for 10 forks"), std::string::npos);
  EXPECT_NE(error({{"speed", "fast"}}).find("speed"), std::string::npos);
  EXPECT_NE(error({{"restart", "never"}}).find("restart"), std::string::npos);
}

TEST(DaemonRequestsTest, StopAndSnapshotBodies) {
  auto stop = ParseStopRequest({{"mode", "force"}});
  ASSERT_TRUE(stop);
  EXPECT_EQ(stop->mode, StopMode::kForce);
  EXPECT_FALSE(ParseStopRequest({{"mode", "gentle"}}));
  EXPECT_NE(ParseStopRequest({{"timeout_ms", -5}}).error().message().find("timeout_ms"), std::string::npos);
  EXPECT_NE(ParseStopRequest({{"now", true}}).error().message().find("now"), std::string::npos);
  auto snap = ParseSnapshotRequest({{"template", "warm"}});
  ASSERT_TRUE(snap);
  EXPECT_EQ(snap->template_name, "warm");
  EXPECT_NE(ParseSnapshotRequest(json::object()).error().message().find("template"), std::string::npos);
  EXPECT_NE(ParseSnapshotRequest({{"template", "../etc"}}).error().message().find("template"), std::string::npos);
}

// --- records ---

VmRecord SampleRecord() {
  VmRecord r;
  r.id = "dev-1";
  r.owner = 1000;
  r.spec.kernel = "/boot/vmlinuz";
  r.spec.name = "dev-1";
  r.spec.mem_mib = 256;
  r.restart = RestartPolicy::kOnFailure;
  r.want_running = true;
  r.pid = 4242;
  r.pid_start = 777;
  r.created_unix = 1700000000;
  r.restarts = 2;
  r.last_exit = ExitInfo{137, "killed by signal 9", 1700000100};
  return r;
}

TEST(DaemonRecordTest, RoundTripsBootAndForkRecords) {
  VmRecord boot = SampleRecord();
  auto back = RecordFromJson(RecordToJson(boot));
  ASSERT_TRUE(back) << back.error().message();
  EXPECT_EQ(*back, boot);

  VmRecord fork;
  fork.id = "f-3";
  fork.template_name = "warm";
  fork.overrides.name = "f-3";
  fork.overrides.net = true;
  fork.last_exit = ExitInfo{std::nullopt, "died while the daemon was down", 5};
  auto fork_back = RecordFromJson(RecordToJson(fork));
  ASSERT_TRUE(fork_back) << fork_back.error().message();
  EXPECT_EQ(*fork_back, fork);
}

TEST(DaemonRecordTest, RefusesBadRecordsNamingTheField) {
  auto error = [](json j) {
    auto r = RecordFromJson(j);
    return r ? std::string() : r.error().message();
  };
  json good = RecordToJson(SampleRecord());
  json j = good;
  j["owner"] = -1;
  EXPECT_NE(error(j).find("owner"), std::string::npos);
  j = good;
  j["restart"] = "maybe";
  EXPECT_NE(error(j).find("restart"), std::string::npos);
  j = good;
  j["id"] = "Not An Id";
  EXPECT_NE(error(j).find("id"), std::string::npos);
  j = good;
  j["version"] = 99;
  EXPECT_NE(error(j).find("version"), std::string::npos);
  j = good;
  j.erase("spec");
  EXPECT_NE(error(j).find("spec: required"), std::string::npos);
  j = good;
  j["spec"]["mem_mib"] = 1;
  EXPECT_NE(error(j).find("spec.mem_mib"), std::string::npos);
  j = good;
  j["last_exit"]["status"] = 300;
  EXPECT_NE(error(j).find("last_exit.status"), std::string::npos);
  j = good;
  j["extra"] = 1;
  EXPECT_NE(error(j).find("extra"), std::string::npos);
}

TEST(DaemonRecordTest, StoreSavesLoadsAndSkipsBrokenRecords) {
  host_tools::TempDir dir;
  RecordStore store(dir.path().string() + "/state");
  ASSERT_TRUE(store.Init());
  VmRecord a = SampleRecord();
  ASSERT_TRUE(store.Save(a));
  fs::create_directories(store.VmDir("broken"));
  std::ofstream(store.VmDir("broken") + "/vm.json") << "{ not json";
  VmRecord moved = SampleRecord();
  moved.id = "other";
  fs::create_directories(store.VmDir("misplaced"));
  std::ofstream(store.VmDir("misplaced") + "/vm.json") << RecordToJson(moved).dump();
  std::vector<std::string> errors;
  auto records = store.LoadAll(&errors);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0], a);
  ASSERT_EQ(errors.size(), 2u);
  store.Remove(a.id);
  EXPECT_FALSE(fs::exists(store.VmDir(a.id)));
}

TEST(DaemonRecordTest, ProcessAliveNeedsTheSamePidAndStartTime) {
  VmRecord self;
  self.pid = ::getpid();
  self.pid_start = ProcessStartTime(::getpid()).value_or(0);
  EXPECT_NE(self.pid_start, 0u);
  EXPECT_TRUE(ProcessAlive(self));
  self.pid_start += 1;  // a reused PID: another process
  EXPECT_FALSE(ProcessAlive(self));
  pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ::waitpid(child, nullptr, 0);
  VmRecord gone;
  gone.pid = child;
  EXPECT_FALSE(ProcessAlive(gone));
}

// --- the supervisor, with a stand-in VM command (a shell script speaking the ready protocol) ---

class SupervisorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    loop_ = std::move(*EventLoop::Create());
    state_ = dir_.path().string() + "/state";
    runtime_ = dir_.path().string() + "/rt";
    fs::create_directories(runtime_ + "/vms");
  }
  // The VM command: `script` runs with $4 = the VM id (argv: --state-dir S --id ID).
  std::unique_ptr<Supervisor> Make(const std::string& script) {
    SupervisorOptions o;
    o.state_dir = state_;
    o.runtime_dir = runtime_;
    o.vm_command = {"/bin/sh", "-c", script, "sh"};
    o.restart_delay = std::chrono::milliseconds(20);
    o.kill_grace = std::chrono::milliseconds(500);
    auto s = std::make_unique<Supervisor>(*loop_, o, [this](const std::string& type, const VmRecord& r, json extra) {
      extra["type"] = type;
      extra["id"] = r.id;
      events_.push_back(extra);
      if (bus_) bus_->Publish(extra, r.owner);
    });
    EXPECT_TRUE(s->Recover());
    return s;
  }
  // Runs the loop until `done` or 10 s.
  bool RunUntil(const std::function<bool()>& done) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      EXPECT_TRUE(loop_->RunOnce(20));
    }
    return true;
  }
  VmRecord Boot(const std::string& id, RestartPolicy restart = RestartPolicy::kNo) {
    VmRecord r;
    r.id = id;
    r.spec.kernel = "/k";
    r.spec.name = id;
    r.restart = restart;
    return r;
  }
  bool Saw(const std::string& type, const std::string& id) const {
    for (const auto& e : events_) {
      if (e["type"] == type && e["id"] == id) return true;
    }
    return false;
  }
  // Starts `id` and runs the loop until it answered.
  std::optional<StartError> StartAndWait(Supervisor& s, const std::string& id) {
    bool answered = false;
    std::optional<StartError> error;
    s.Start(id, [&](tl::expected<void, StartError> r) {
      answered = true;
      if (!r) error = r.error();
    });
    EXPECT_TRUE(RunUntil([&] { return answered; }));
    return error;
  }

  static constexpr const char* kSleeper = "echo \"ok $4\" >&3; exec sleep 30";
  host_tools::TempDir dir_;
  std::unique_ptr<EventLoop> loop_;
  std::string state_, runtime_;
  std::vector<json> events_;
  std::unique_ptr<EventBus> bus_;  // when set, events are published on it too
};

TEST_F(SupervisorTest, StartsReapsAndCleansUp) {
  auto s = Make(kSleeper);
  ASSERT_TRUE(s->Create(Boot("vm-a")));
  EXPECT_FALSE(s->Create(Boot("vm-a")));  // taken
  auto error = StartAndWait(*s, "vm-a");
  ASSERT_FALSE(error) << error->message;
  EXPECT_EQ(s->state("vm-a"), VmState::kRunning);
  const VmRecord* r = s->Find("vm-a");
  ASSERT_NE(r->pid, 0);
  EXPECT_TRUE(ProcessAlive(*r));
  EXPECT_EQ(::getpgid(r->pid), r->pid);  // a process group (and session) of its own
  EXPECT_TRUE(Saw("started", "vm-a"));
  // What a VM process that dies leaves: its runtime directory (lock free) and a lease file.
  fs::create_directories(runtime_ + "/vms/vm-a");
  std::ofstream(runtime_ + "/vms/vm-a/lock");
  std::ofstream(runtime_ + "/vms/vm-a/control.sock");
  fs::create_directories(runtime_ + "/net/clonebr0");
  std::ofstream(runtime_ + "/net/clonebr0/172.30.0.7") << "pid=1 owner=vm-a\n";
  std::ofstream(runtime_ + "/net/clonebr0/172.30.0.8") << "pid=1 owner=someone-else\n";
  std::ofstream(state_ + "/vms/vm-a/overlay.qcow2") << "x";
  ::kill(r->pid, SIGKILL);
  ASSERT_TRUE(RunUntil([&] { return s->state("vm-a") == VmState::kExited; }));
  r = s->Find("vm-a");
  EXPECT_EQ(r->pid, 0);
  ASSERT_TRUE(r->last_exit);
  EXPECT_EQ(r->last_exit->status, 137);
  EXPECT_NE(r->last_exit->how.find("signal 9"), std::string::npos);
  EXPECT_TRUE(Saw("exited", "vm-a"));
  EXPECT_FALSE(fs::exists(runtime_ + "/vms/vm-a"));
  EXPECT_FALSE(fs::exists(runtime_ + "/net/clonebr0/172.30.0.7"));
  EXPECT_TRUE(fs::exists(runtime_ + "/net/clonebr0/172.30.0.8"));
  EXPECT_FALSE(fs::exists(state_ + "/vms/vm-a/overlay.qcow2"));
  EXPECT_FALSE(r->want_running);  // restart "no": it stays exited
  // Destroy forgets it and its files.
  bool gone = false;
  s->Destroy("vm-a", [&] { gone = true; });
  ASSERT_TRUE(RunUntil([&] { return gone; }));
  EXPECT_EQ(s->Find("vm-a"), nullptr);
  EXPECT_FALSE(fs::exists(state_ + "/vms/vm-a"));
  EXPECT_TRUE(Saw("destroyed", "vm-a"));
}

TEST_F(SupervisorTest, ARuntimeDirectoryHeldByALiveProcessIsKept) {
  auto s = Make(kSleeper);
  ASSERT_TRUE(s->Create(Boot("vm-h")));
  ASSERT_FALSE(StartAndWait(*s, "vm-h"));
  fs::create_directories(runtime_ + "/vms/vm-h");
  Fd lock(::open((runtime_ + "/vms/vm-h/lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  ASSERT_EQ(::flock(lock.get(), LOCK_EX), 0);  // as a (new) VM process would hold it
  ::kill(s->Find("vm-h")->pid, SIGKILL);
  ASSERT_TRUE(RunUntil([&] { return s->state("vm-h") == VmState::kExited; }));
  EXPECT_TRUE(fs::exists(runtime_ + "/vms/vm-h"));
}

TEST_F(SupervisorTest, AFailedStartSaysWhyFromTheVmmLog) {
  auto s = Make("echo 'clone: error: mem_mib: too big for this host' >&2; exit 2");
  ASSERT_TRUE(s->Create(Boot("vm-f")));
  auto error = StartAndWait(*s, "vm-f");
  ASSERT_TRUE(error);
  EXPECT_EQ(error->http_status, 400);
  EXPECT_EQ(error->message, "mem_mib: too big for this host");
  EXPECT_EQ(s->state("vm-f"), VmState::kExited);
  auto vmm = s->store().VmmLog("vm-f");
  EXPECT_TRUE(fs::exists(vmm));
  auto crash = Make("exit 1");  // a second supervisor on the same state dir (loaded vm-f too)
  ASSERT_TRUE(crash->Create(Boot("vm-g")));
  auto other = StartAndWait(*crash, "vm-g");
  ASSERT_TRUE(other);
  EXPECT_EQ(other->http_status, 500);
}

TEST_F(SupervisorTest, RestartPoliciesApplyToUnaskedEndsOnly) {
  // Runs, then fails once: "on-failure" starts it again; the second run stays up.
  std::string script = std::string("echo \"ok $4\" >&3; if [ ! -e ") + state_ + "/failed-once ]; then touch " + state_ +
                       "/failed-once; exit 1; fi; exec sleep 30";
  auto s = Make(script);
  ASSERT_TRUE(s->Create(Boot("vm-r", RestartPolicy::kOnFailure)));
  ASSERT_FALSE(StartAndWait(*s, "vm-r"));
  ASSERT_TRUE(RunUntil([&] { return s->Find("vm-r")->restarts == 1 && s->state("vm-r") == VmState::kRunning; }));
  EXPECT_TRUE(Saw("restarting", "vm-r"));
  // A stop is not a failure: no restart, state "stopped".
  bool stopped = false;
  s->Stop("vm-r", std::chrono::milliseconds(0), [&] { stopped = true; });
  ASSERT_TRUE(RunUntil([&] { return stopped; }));
  EXPECT_EQ(s->state("vm-r"), VmState::kStopped);
  EXPECT_FALSE(s->Find("vm-r")->want_running);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(loop_->RunOnce(10));
  EXPECT_EQ(s->Find("vm-r")->restarts, 1u);
  EXPECT_EQ(s->state("vm-r"), VmState::kStopped);
}

TEST_F(SupervisorTest, StopKillsAVmProcessThatIgnoresSigterm) {
  auto s = Make("trap '' TERM; echo \"ok $4\" >&3; while :; do sleep 0.05; done");
  ASSERT_TRUE(s->Create(Boot("vm-t")));
  ASSERT_FALSE(StartAndWait(*s, "vm-t"));
  bool stopped = false;
  auto t0 = std::chrono::steady_clock::now();
  s->Stop("vm-t", std::chrono::milliseconds(0), [&] { stopped = true; });
  ASSERT_TRUE(RunUntil([&] { return stopped; }));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(400));  // after kill_grace
  EXPECT_EQ(s->Find("vm-t")->last_exit->status, 137);
}

TEST_F(SupervisorTest, ARestartedDaemonAdoptsLiveVmsAndReportsDeadOnes) {
  pid_t live_pid = 0, dead_pid = 0;
  {
    auto first = Make(kSleeper);
    ASSERT_TRUE(first->Create(Boot("live")));
    ASSERT_TRUE(first->Create(Boot("dead", RestartPolicy::kNo)));
    ASSERT_TRUE(first->Create(Boot("stopped")));
    ASSERT_FALSE(StartAndWait(*first, "live"));
    ASSERT_FALSE(StartAndWait(*first, "dead"));
    live_pid = first->Find("live")->pid;
    dead_pid = first->Find("dead")->pid;
  }  // the daemon "dies": its VM processes keep running
  ::kill(dead_pid, SIGKILL);
  ::waitpid(dead_pid, nullptr, 0);  // (our child here; for a real daemon, init reaps it)
  fs::create_directories(runtime_ + "/vms/dead");
  std::ofstream(runtime_ + "/vms/dead/lock");
  events_.clear();
  auto second = Make(kSleeper);
  EXPECT_EQ(second->state("live"), VmState::kRunning);
  EXPECT_EQ(second->Find("live")->pid, live_pid);
  EXPECT_TRUE(Saw("adopted", "live"));
  EXPECT_EQ(second->state("dead"), VmState::kExited);
  ASSERT_TRUE(second->Find("dead")->last_exit);
  EXPECT_EQ(second->Find("dead")->last_exit->how, "died while the daemon was down");
  EXPECT_FALSE(second->Find("dead")->last_exit->status);
  EXPECT_TRUE(Saw("exited", "dead"));
  EXPECT_FALSE(fs::exists(runtime_ + "/vms/dead"));
  EXPECT_EQ(second->state("stopped"), VmState::kStopped);
  // The adopted VM's end is noticed through its pidfd (not our child: status from nobody).
  ::kill(live_pid, SIGKILL);
  ::waitpid(live_pid, nullptr, 0);
  ASSERT_TRUE(RunUntil([&] { return second->state("live") == VmState::kExited; }));
  EXPECT_FALSE(second->Find("live")->last_exit->status);
}

TEST_F(SupervisorTest, ADeadVmWithRestartAlwaysIsStartedAgainAtRecovery) {
  pid_t pid = 0;
  {
    auto first = Make(kSleeper);
    ASSERT_TRUE(first->Create(Boot("again", RestartPolicy::kAlways)));
    ASSERT_FALSE(StartAndWait(*first, "again"));
    pid = first->Find("again")->pid;
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  auto second = Make(kSleeper);
  ASSERT_TRUE(RunUntil([&] { return second->state("again") == VmState::kRunning; }));
  EXPECT_NE(second->Find("again")->pid, pid);
  EXPECT_EQ(second->Find("again")->restarts, 1u);
  bool gone = false;
  second->Destroy("again", [&] { gone = true; });
  ASSERT_TRUE(RunUntil([&] { return gone; }));
}

// --- the route table, through Router::Dispatch with a chosen peer uid ---

class ApiTest : public SupervisorTest {
 protected:
  void SetUp() override {
    SupervisorTest::SetUp();
    bus_ = std::make_unique<EventBus>(*loop_);
    supervisor_ = Make(kSleeper);
    api_ = std::make_unique<Api>(*loop_, *supervisor_, *bus_);
    router_ = std::make_unique<control::Router>(api_->Routes());
  }
  void TearDown() override {
    for (const auto& id : supervisor_->Ids()) {
      bool gone = false;
      supervisor_->Destroy(id, [&] { gone = true; });
      RunUntil([&] { return gone; });
    }
  }
  control::Response Call(const std::string& method, const std::string& path, const std::string& body = "",
                         uid_t uid = 0) {
    control::Request request;
    request.method = method;
    request.target = path;
    request.path = path.substr(0, path.find('?'));
    if (path.find('?') != std::string::npos) request.query = path.substr(path.find('?') + 1);
    request.body = body;
    request.peer_uid = uid;
    std::optional<control::Response> got;
    router_->Dispatch(std::move(request),
                      control::Responder([&](control::Completion c) { got = std::move(c.response); }));
    EXPECT_TRUE(RunUntil([&] { return got.has_value(); }));
    return got ? std::move(*got) : control::Response{};
  }
  static json Body(const control::Response& r) { return json::parse(r.body, nullptr, false); }

  std::unique_ptr<Supervisor> supervisor_;
  std::unique_ptr<Api> api_;
  std::unique_ptr<control::Router> router_;
};

TEST_F(ApiTest, CreateListGetStartStopDestroy) {
  auto created = Call("POST", "/vms", R"({"name": "web", "kernel": "/k", "start": false})", 1000);
  ASSERT_EQ(created.status, 201) << created.body;
  EXPECT_EQ(Body(created)["state"], "stopped");
  EXPECT_EQ(Body(created)["owner"], 1000);
  EXPECT_EQ(Call("POST", "/vms", R"({"name": "web", "kernel": "/k"})").status, 409);
  auto started = Call("POST", "/vms/web/start", "", 1000);
  ASSERT_EQ(started.status, 200) << started.body;
  EXPECT_EQ(Body(started)["state"], "running");
  EXPECT_GT(Body(started)["pid"].get<int>(), 0);
  auto list = Call("GET", "/vms", "", 1000);
  ASSERT_EQ(Body(list).size(), 1u);
  auto stopped = Call("POST", "/vms/web/stop", R"({"mode": "force"})", 1000);
  ASSERT_EQ(stopped.status, 200) << stopped.body;
  EXPECT_EQ(Body(stopped)["state"], "stopped");
  EXPECT_EQ(Call("POST", "/vms/web/exec", R"({"argv": ["true"]})", 1000).status, 409);  // not running
  auto destroyed = Call("DELETE", "/vms/web", "", 1000);
  EXPECT_EQ(destroyed.status, 200);
  EXPECT_EQ(Call("GET", "/vms/web").status, 404);
  EXPECT_TRUE(Body(Call("GET", "/vms")).empty());
}

TEST_F(ApiTest, ACreateWhoseVmFailsLeavesNothing) {
  auto failing = std::make_unique<Supervisor>(
      *loop_,
      SupervisorOptions{state_, {"/bin/sh", "-c", "echo 'clone: error: no kernel' >&2; exit 1", "sh"}, runtime_},
      [](const std::string&, const VmRecord&, json) {});
  ASSERT_TRUE(failing->Recover());
  Api api(*loop_, *failing, *bus_);
  auto router = api.Routes();
  std::optional<control::Response> got;
  control::Request request;
  request.method = "POST";
  request.path = request.target = "/vms";
  request.body = R"({"name": "bad", "kernel": "/k"})";
  router.Dispatch(std::move(request), control::Responder([&](control::Completion c) { got = std::move(c.response); }));
  ASSERT_TRUE(RunUntil([&] { return got.has_value(); }));
  EXPECT_EQ(got->status, 500);
  EXPECT_NE(got->body.find("VM not started: no kernel"), std::string::npos) << got->body;
  EXPECT_EQ(failing->Find("bad"), nullptr);
  EXPECT_FALSE(fs::exists(state_ + "/vms/bad"));
}

TEST_F(ApiTest, BadRequestsName4xxFields) {
  auto bad = Call("POST", "/vms", R"({"kernel": "/k", "vcpus": 0})");
  EXPECT_EQ(bad.status, 400);
  EXPECT_NE(Body(bad)["error"].get<std::string>().find("vcpus"), std::string::npos);
  EXPECT_EQ(Call("POST", "/vms", "{not json").status, 400);
  EXPECT_EQ(Call("POST", "/vms", "[1]").status, 400);
  EXPECT_EQ(Call("POST", "/templates/warm/fork", R"({"count": 2})").status, 404);  // no such template
  EXPECT_EQ(Call("POST", "/templates/..bad/fork", "{}").status, 400);
  EXPECT_EQ(Call("GET", "/events?since=x").status, 400);
  EXPECT_EQ(Call("GET", "/nothing").status, 404);
  EXPECT_EQ(Call("PUT", "/vms").status, 405);
  ASSERT_EQ(Call("POST", "/vms", R"({"name": "s", "kernel": "/k", "start": false})").status, 201);
  auto stop = Call("POST", "/vms/s/stop", R"({"mode": "sideways"})");
  EXPECT_EQ(stop.status, 400);
  EXPECT_NE(stop.body.find("mode"), std::string::npos);
  EXPECT_EQ(Call("PUT", "/vms/s/snapshot", R"({"template": "warm"})").status, 409);  // not running
  EXPECT_EQ(Call("PUT", "/vms/s/snapshot", R"({})").status, 400);
}

TEST_F(ApiTest, ACallerSeesAndControlsOnlyItsOwnVms) {
  ASSERT_EQ(Call("POST", "/vms", R"({"name": "mine", "kernel": "/k", "start": false})", 1000).status, 201);
  ASSERT_EQ(Call("POST", "/vms", R"({"name": "theirs", "kernel": "/k", "start": false})", 2000).status, 201);
  auto mine = Body(Call("GET", "/vms", "", 1000));
  ASSERT_EQ(mine.size(), 1u);
  EXPECT_EQ(mine[0]["id"], "mine");
  EXPECT_EQ(Body(Call("GET", "/vms", "", 0)).size(), 2u);  // root sees all
  EXPECT_EQ(Call("GET", "/vms/theirs", "", 1000).status, 403);
  EXPECT_EQ(Call("POST", "/vms/theirs/start", "", 1000).status, 403);
  EXPECT_EQ(Call("DELETE", "/vms/theirs", "", 1000).status, 403);
  EXPECT_EQ(Call("POST", "/vms/theirs/exec", "{}", 1000).status, 403);
  EXPECT_NE(supervisor_->Find("theirs"), nullptr);
  EXPECT_EQ(Call("DELETE", "/vms/theirs", "", 0).status, 200);
}

TEST_F(ApiTest, HostCountsTheCallersVmsAndJudgesKvm) {
  ASSERT_EQ(Call("POST", "/vms", R"({"name": "h1", "kernel": "/k", "start": false})", 1000).status, 201);
  ASSERT_EQ(Call("POST", "/vms", R"({"name": "h2", "kernel": "/k"})", 2000).status, 201);
  auto mine = Body(Call("GET", "/host", "", 1000));
  EXPECT_EQ(mine["vms"], 1);
  EXPECT_EQ(mine["running"], 0);
  auto all = Body(Call("GET", "/host", "", 0));
  EXPECT_EQ(all["vms"], 2);
  EXPECT_EQ(all["running"], 1);
  ASSERT_TRUE(all["kvm"]["kind"].is_string());
  EXPECT_EQ(all["kvm"]["stock_guests"].get<bool>(), !all["kvm"].contains("why"));
}

TEST_F(ApiTest, TheEventStreamReplaysAndFilters) {
  ASSERT_EQ(Call("POST", "/vms", R"({"name": "e1", "kernel": "/k", "start": false})", 1000).status, 201);
  ASSERT_EQ(Call("POST", "/vms", R"({"name": "e2", "kernel": "/k", "start": false})", 2000).status, 201);
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  Fd ours(fds[0]);
  bus_->Subscribe(Fd(fds[1]), 1000, 0);
  ASSERT_EQ(Call("DELETE", "/vms/e1", "", 1000).status, 200);
  char buf[4096];
  ssize_t n = ::recv(ours.get(), buf, sizeof(buf), MSG_DONTWAIT);
  ASSERT_GT(n, 0);
  std::string text(buf, static_cast<size_t>(n));
  EXPECT_NE(text.find(R"("id":"e1","seq":1)"), std::string::npos) << text;
  EXPECT_NE(text.find(R"("type":"destroyed")"), std::string::npos) << text;
  EXPECT_EQ(text.find("e2"), std::string::npos) << text;  // uid 2000's VM
  ours.reset();                                           // the subscriber hangs up: dropped
  ASSERT_TRUE(RunUntil([&] { return bus_->subscriber_count() == 0; }));
}

}  // namespace
}  // namespace clonevm::daemon

namespace clonevm::daemon {
namespace {

// 50 concurrent requests (create, fork of a missing template, bad bodies, destroy) over the real
// socket: each gets its answer (2xx or a 4xx JSON error), the loop never blocks on a start, and
// nothing is left afterwards.
TEST(DaemonConcurrencyTest, FiftyConcurrentRequestsAllGetAnAnswerAndLeaveNothing) {
  host_tools::TempDir dir;
  std::string state = dir.path().string() + "/state", runtime = dir.path().string() + "/rt";
  std::string socket = dir.path().string() + "/d.sock";
  fs::create_directories(runtime + "/vms");
  auto loop = std::move(*EventLoop::Create());
  SupervisorOptions o;
  o.state_dir = state;
  o.runtime_dir = runtime;
  // A VM process that takes a while to "boot": no request may wait for another VM's boot.
  o.vm_command = {"/bin/sh", "-c", "sleep 0.3; echo \"ok $4\" >&3; exec sleep 30", "sh"};
  EventBus bus(*loop);
  Supervisor supervisor(*loop, o, [&bus](const std::string& type, const VmRecord& r, json extra) {
    extra["type"] = type;
    extra["id"] = r.id;
    bus.Publish(std::move(extra), r.owner);
  });
  ASSERT_TRUE(supervisor.Recover());
  Api api(*loop, supervisor, bus);
  control::Limits limits;
  limits.peers = control::PeerPolicy::kAnyPeer;
  limits.max_connections = 128;
  auto server = control::Server::Create(*loop, socket, api.Routes(), limits);
  ASSERT_TRUE(server) << server.error().message();
  std::thread loop_thread([&] { ASSERT_TRUE(loop->Run()); });

  constexpr int kRequests = 50;
  std::vector<int> statuses(kRequests, 0);
  std::vector<std::string> bodies(kRequests);
  std::vector<std::thread> clients;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kRequests; ++i) {
    clients.emplace_back([&, i] {
      std::optional<json> body;
      std::string method = "POST", path = "/vms";
      switch (i % 5) {
        case 0:
        case 1:
        case 2:
          body = json{{"name", fmt::format("c-{}", i)}, {"kernel", "/k"}};
          break;
        case 3:
          path = "/templates/missing/fork";
          body = json{{"count", 2}};
          break;
        case 4:
          body = json{{"kernel", "/k"}, {"mem_mib", 1}};
          break;
      }
      auto r = control::Call(socket, method, path, body, std::chrono::seconds(30));
      if (!r) return;
      statuses[i] = r->status;
      bodies[i] = r->body;
    });
  }
  for (auto& c : clients) c.join();
  auto elapsed = std::chrono::steady_clock::now() - t0;
  int created = 0;
  for (int i = 0; i < kRequests; ++i) {
    int want = i % 5 <= 2 ? 201 : i % 5 == 3 ? 404 : 400;
    EXPECT_EQ(statuses[i], want) << i << ": " << bodies[i];
    EXPECT_TRUE(json::parse(bodies[i], nullptr, false).is_object()) << bodies[i];
    if (statuses[i] == 201) ++created;
  }
  EXPECT_EQ(created, 30);
  // 30 boots of 0.3 s each, answered concurrently, not one after another (9 s).
  EXPECT_LT(elapsed, std::chrono::seconds(5));
  // Destroy them all at once.
  std::vector<std::thread> destroyers;
  std::atomic<int> destroyed{0};
  for (int i = 0; i < kRequests; ++i) {
    if (i % 5 > 2) continue;
    destroyers.emplace_back([&, i] {
      auto r = control::Call(socket, "DELETE", fmt::format("/vms/c-{}", i), std::nullopt, std::chrono::seconds(30));
      if (r && r->status == 200) ++destroyed;
    });
  }
  for (auto& d : destroyers) d.join();
  EXPECT_EQ(destroyed.load(), 30);
  auto list = control::Call(socket, "GET", "/vms", std::nullopt, std::chrono::seconds(5));
  ASSERT_TRUE(list);
  EXPECT_EQ(json::parse(list->body, nullptr, false), json::array());
  loop->Post([&] {
    server->reset();
    loop->Stop();
  });
  loop_thread.join();
  EXPECT_TRUE(fs::is_empty(state + "/vms"));
  EXPECT_TRUE(fs::is_empty(runtime + "/vms"));
}

}  // namespace
}  // namespace clonevm::daemon

namespace clonevm::daemon {
namespace {

// A root daemon opens a VM's files only for callers who could open them themselves.
TEST(DaemonAccessTest, ACallerMayNameOnlyFilesItCouldOpenItself) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (the check takes another uid's credentials)";
  char tmpl[] = "/tmp/clone-access-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  std::string dir = tmpl;
  ASSERT_EQ(::chmod(dir.c_str(), 0755), 0);
  auto file = [&](const std::string& name, mode_t mode) {
    std::string path = dir + "/" + name;
    std::ofstream(path) << "x";
    EXPECT_EQ(::chmod(path.c_str(), mode), 0);
    return path;
  };
  std::string secret = file("secret", 0600);
  std::string public_file = file("public", 0644);
  std::string private_dir = dir + "/private";
  ASSERT_EQ(::mkdir(private_dir.c_str(), 0700), 0);
  const uid_t caller = 1000;
  auto check = [&](const spec::VmSpec& spec) { return CheckCallerAccess(PathsOf(spec), caller, caller); };

  spec::VmSpec vm;
  vm.kernel = secret;
  auto refused = check(vm);
  ASSERT_FALSE(refused);
  EXPECT_EQ(
      refused.error().message(),
      fmt::format("kernel {}: uid 1000 may not read it (the daemon opens the VM's files only for callers who may)",
                  secret));
  EXPECT_TRUE(CheckCallerAccess(PathsOf(vm), 0, 0));  // root may
  vm.kernel = public_file;
  EXPECT_TRUE(check(vm));
  vm.kernel = dir + "/missing";  // left for the VM process to report
  EXPECT_TRUE(check(vm));

  vm.disks = {{public_file, /*read_only=*/true}};
  EXPECT_TRUE(check(vm));
  vm.disks = {{public_file, /*read_only=*/false}};
  auto rw = check(vm);
  ASSERT_FALSE(rw);
  EXPECT_NE(rw.error().message().find("disks[0] " + public_file + ": uid 1000 may not read and write it"),
            std::string::npos)
      << rw.error().message();
  vm.disks.clear();
  vm.shares = {{private_dir, "tag", /*read_only=*/true}};
  EXPECT_FALSE(check(vm));
  vm.shares.clear();
  vm.rootfs.image = public_file;  // without an overlay the image is written
  EXPECT_FALSE(check(vm));
  vm.rootfs.overlay = "tmpfs";
  EXPECT_TRUE(check(vm));
  vm.rootfs.overlay = private_dir + "/overlay.qcow2";  // a new file in a directory the caller cannot write
  EXPECT_FALSE(check(vm));

  spec::ForkOverrides fork;
  fork.disk_rewrites = {"/recorded.img=" + secret};
  auto rewrite = CheckCallerAccess(PathsOf(fork), caller, caller);
  ASSERT_FALSE(rewrite);
  EXPECT_NE(rewrite.error().message().find("disk_rewrites[0] " + secret), std::string::npos);
  fork.disk_rewrites.clear();
  fork.shares = {{private_dir, "tag", false}};
  EXPECT_FALSE(CheckCallerAccess(PathsOf(fork), caller, caller));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace clonevm::daemon

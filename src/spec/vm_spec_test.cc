// VmSpec: flag forms, validation (one line naming the field), JSON round trips and every bad
// field, and the fork/restore overrides on top of a recorded spec.
#include "spec/vm_spec.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace clonevm::spec {
namespace {

using nlohmann::json;

VmSpec FullSpec() {
  VmSpec s;
  s.name = "dev-1";
  s.kernel = "/boot/vmlinuz";
  s.kernel_sha256 = std::string(64, 'a');
  s.cmdline = "console=ttyS0 quiet loglevel=3";
  s.rootfs = {"/img/root.img", "/img/dev.qcow2", "/lib/modules/6.1"};
  s.disks = {{"/d/a.raw", false, Format::kAuto}, {"/d/b.qcow2", true, Format::kQcow2}};
  s.net = true;
  s.taps = {*ParseTapSpec("tap0,mac=52:54:00:12:34:56,vhost=off")};
  s.shares = {{"/srv/data", "data", false}, {"/srv/ref", "ref", true}};
  s.cid = 42;
  s.vcpus = 2;
  s.mem_mib = 256;
  s.seccomp = true;
  s.ksm = false;
  s.balloon = {"auto", "64M", "10s,60s", false, 30};
  return s;
}

// Fails the test when `r` succeeds or its message lacks `text`.
template <typename T>
void ExpectError(const Result<T>& r, const std::string& text) {
  ASSERT_FALSE(r) << "expected an error containing '" << text << "'";
  EXPECT_NE(r.error().message().find(text), std::string::npos) << r.error().message();
  EXPECT_EQ(r.error().message().find('\n'), std::string::npos) << "one line: " << r.error().message();
}

TEST(VmSpecFlags, DiskTapAndShareFormsRoundTrip) {
  for (std::string v : {"/x/disk.qcow2,ro,format=qcow2", "disk.img", "/a b/c.raw,format=raw"}) {
    auto d = ParseDiskSpec(v);
    ASSERT_TRUE(d) << v;
    EXPECT_EQ(*ParseDiskSpec(FormatDiskSpec(*d)), *d);
  }
  EXPECT_EQ(ParseDiskSpec("/x/d.img,ro")->read_only, true);
  ExpectError(ParseDiskSpec("/x/d.img,rw"), "unknown option 'rw'");
  ExpectError(ParseDiskSpec("/x/d.img,format=vmdk"), "unknown format 'vmdk'");
  ExpectError(ParseDiskSpec(",ro"), "missing the image path");

  auto t = ParseTapSpec("tap0,mac=52:54:00:12:34:56,vhost=on");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->name, "tap0");
  EXPECT_EQ(t->vhost, virtio::VhostMode::kOn);
  EXPECT_EQ(*ParseTapSpec(FormatTapSpec(*t)), *t);
  EXPECT_EQ(ParseTapSpec("tap1")->vhost, virtio::VhostMode::kAuto);
  ExpectError(ParseTapSpec("tap0,mac=zz"), "--tap 'tap0,mac=zz'");
  ExpectError(ParseTapSpec(",vhost=on"), "missing the TAP interface name");
  ExpectError(ParseTapSpec("tap0,queues=2"), "unknown option 'queues=2'");

  auto sh = ParseShareSpec("/srv/a:b/:my.fs-1:ro");  // HOST may contain ':'
  ASSERT_TRUE(sh);
  EXPECT_EQ(sh->host_path, "/srv/a:b");
  EXPECT_EQ(sh->tag, "my.fs-1");
  EXPECT_TRUE(sh->read_only);
  EXPECT_EQ(*ParseShareSpec(FormatShareSpec(*sh)), *sh);
  EXPECT_TRUE(ParseShareSpec("relative/dir:t")->host_path.starts_with("/"));
  EXPECT_FALSE(sh->squash_root);
  for (const char* spec : {"/srv/x:t:ro:squash-root", "/srv/x:t:squash-root:ro"}) {
    auto sq = ParseShareSpec(spec);
    ASSERT_TRUE(sq) << spec;
    EXPECT_EQ(sq->host_path, "/srv/x");
    EXPECT_EQ(sq->tag, "t");
    EXPECT_TRUE(sq->read_only && sq->squash_root) << spec;
    EXPECT_EQ(*ParseShareSpec(FormatShareSpec(*sq)), *sq);
  }
  EXPECT_TRUE(ParseShareSpec("/srv/x:t:squash-root")->squash_root);
  ExpectError(ParseShareSpec("/srv/x:squash-root"), "expected HOST:TAG");  // an option is not a tag
  ExpectError(ParseShareSpec("/srv/data"), "expected HOST:TAG[:ro][:squash-root]");
  ExpectError(ParseShareSpec(":tag"), "missing the host directory");
  ExpectError(ParseShareSpec("/srv/data:"), "1 to 36 characters");
  ExpectError(ParseShareSpec("/srv/data:bad tag"), "may only use");
  EXPECT_TRUE(ParseShareSpec("/srv:" + std::string(36, 't')));
  ExpectError(ParseShareSpec("/srv:" + std::string(37, 't')), "1 to 36");
}

TEST(VmSpecValidate, EveryBadFieldIsOneLineInTheCallersSpelling) {
  VmSpec good = FullSpec();
  good.taps.clear();
  ASSERT_TRUE(ValidateSpec(good, Spelling::kFlags));
  struct Case {
    void (*change)(VmSpec&);
    const char* flag_text;
    const char* json_text;
  };
  const Case cases[] = {
      {[](VmSpec& s) { s.kernel.clear(); }, "--kernel: required", "kernel: required"},
      {[](VmSpec& s) { s.mem_mib = 8; }, "--mem-mb 8: too small", "mem_mib 8: too small"},
      {[](VmSpec& s) { s.mem_mib = 1000000; }, "--mem-mb 1000000: too large", "mem_mib 1000000: too large"},
      {[](VmSpec& s) { s.vcpus = 0; }, "--vcpus 0", "vcpus 0"},
      {[](VmSpec& s) { s.vcpus = 1000; }, "--vcpus 1000: too many", "vcpus 1000: too many"},
      {[](VmSpec& s) { s.cid = 2; }, "--cid 2: use 3..", "cid 2: use 3.."},
      {[](VmSpec& s) { s.initrd = "/i.img"; }, "--rootfs and --initrd cannot", "rootfs.image and initrd cannot"},
      {[](VmSpec& s) { s.rootfs.image.clear(); }, "need --rootfs", "need rootfs.image"},
      {[](VmSpec& s) { s.name = "Bad_Name"; }, "--name 'Bad_Name'", "name 'Bad_Name'"},
      {[](VmSpec& s) { s.name = std::string(33, 'a'); }, "--name", "name"},
      {[](VmSpec& s) { s.kernel_sha256 = "xyz"; }, "--kernel-sha256: expected 64", "kernel_sha256: expected 64"},
      {[](VmSpec& s) { s.disks[1].path.clear(); }, "--block #1: missing the image path", "missing the image path"},
      {[](VmSpec& s) { s.taps = {TapSpec{}}; }, "--tap #0: missing the TAP", "missing the TAP interface name"},
      {[](VmSpec& s) { s.shares[1].tag = "data"; }, "the tag 'data' is used twice", "the tag 'data' is used twice"},
      {[](VmSpec& s) { s.shares[0].tag = "a/b"; }, "may only use", "may only use"},
      {[](VmSpec& s) { s.balloon.mode = "sometimes"; }, "--balloon 'sometimes'", "balloon.mode 'sometimes'"},
  };
  for (const auto& c : cases) {
    VmSpec s = good;
    c.change(s);
    ExpectError(ValidateSpec(s, Spelling::kFlags), c.flag_text);
    ExpectError(ValidateSpec(s, Spelling::kJson), c.json_text);
    ExpectError(SpecFromJson(SpecToJson(s)), c.json_text);  // the API refuses the same
  }
}

TEST(VmSpecJson, RoundTripsEveryField) {
  VmSpec s = FullSpec();
  json j = SpecToJson(s);
  EXPECT_EQ(j["version"], kSpecVersion);
  EXPECT_EQ(j["taps"][0]["mac"], "52:54:00:12:34:56");
  EXPECT_EQ(j["disks"][0]["format"], "auto");
  auto back = SpecFromJson(j);
  ASSERT_TRUE(back) << back.error().message();
  EXPECT_EQ(*back, s);
  // Through text, as the API and a snapshot's config carry it.
  EXPECT_EQ(*SpecFromJson(json::parse(j.dump())), s);
  // A minimal body takes the defaults.
  auto minimal = SpecFromJson(json{{"kernel", "/k"}});
  ASSERT_TRUE(minimal);
  EXPECT_EQ(minimal->mem_mib, 512u);
  EXPECT_EQ(minimal->vcpus, 1u);
  EXPECT_EQ(minimal->cmdline, kDefaultCmdline);
  EXPECT_EQ(minimal->balloon.mode, "manual");
  EXPECT_TRUE(minimal->balloon.free_page_reporting);
}

TEST(VmSpecJson, EveryBadFieldIsNamed) {
  struct Case {
    json body;
    const char* text;
  };
  const Case cases[] = {
      {json::array(), "expected a JSON object"},
      {{{"kernel", "/k"}, {"memory", 5}}, "memory: unknown field"},
      {{{"kernel", 5}}, "kernel: expected a string"},
      {{{"kernel", "/k"}, {"version", 2}}, "version 2: this Clone reads VM specs up to version 1"},
      {{{"kernel", "/k"}, {"vcpus", -1}}, "vcpus: expected a non-negative integer"},
      {{{"kernel", "/k"}, {"vcpus", 1.5}}, "vcpus: expected a non-negative integer"},
      {{{"kernel", "/k"}, {"vcpus", 5000000000}}, "vcpus: expected a non-negative integer up to 4294967295"},
      {{{"kernel", "/k"}, {"mem_mib", "512"}}, "mem_mib: expected a non-negative integer"},
      {{{"kernel", "/k"}, {"net", "yes"}}, "net: expected true or false"},
      {{{"kernel", "/k"}, {"rootfs", {{"img", "/r"}}}}, "rootfs.img: unknown field"},
      {{{"kernel", "/k"}, {"disks", json::array({"/d"})}}, "disks[0]: expected an object"},
      {{{"kernel", "/k"}, {"disks", "/d"}}, "disks: expected an array"},
      {{{"kernel", "/k"}, {"disks", {{{"path", ""}}}}}, "disks[0].path: missing the image path"},
      {{{"kernel", "/k"}, {"disks", {{{"path", "/d"}, {"format", "vmdk"}}}}}, "disks[0].format: unknown format 'vmdk'"},
      {{{"kernel", "/k"}, {"disks", {{{"path", "/d"}, {"ro", true}}}}}, "disks[0].ro: unknown field"},
      {{{"kernel", "/k"}, {"taps", {{{"name", "t"}, {"mac", "zz"}}}}}, "taps[0].mac:"},
      {{{"kernel", "/k"}, {"taps", {{{"name", "t"}, {"vhost", "maybe"}}}}}, "taps[0].vhost: 'maybe'"},
      {{{"kernel", "/k"}, {"taps", {{{"mac", "52:54:00:12:34:56"}}}}}, "taps[0].name: missing"},
      {{{"kernel", "/k"}, {"shares", {{{"host_path", "/s"}, {"tag", "a b"}}}}}, "shares[0].tag: the tag 'a b'"},
      {{{"kernel", "/k"}, {"shares", {{{"tag", "t"}}}}}, "shares[0].host_path: missing"},
      {{{"kernel", "/k"}, {"balloon", {{"mode", 1}}}}, "balloon.mode: expected a string"},
      {{{"kernel", "/k"}, {"balloon", {{"mode", "on"}}}}, "balloon.mode 'on': expected off, manual or auto"},
      {{{"kernel", "/k"}, {"balloon", {{"target", "1G"}}}}, "balloon.target: unknown field"},
  };
  for (const auto& c : cases) ExpectError(SpecFromJson(c.body), c.text);
}

class OverridesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/clone-spec-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    for (const char* d : {"/share", "/ref", "/new"}) ASSERT_EQ(::mkdir((dir_ + d).c_str(), 0700), 0);
    recorded_ = FullSpec();
    recorded_.taps.clear();
    recorded_.shares = {{dir_ + "/share", "myfs", false}, {dir_ + "/ref", "ref", true}};
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string dir_;
  VmSpec recorded_;
};

TEST_F(OverridesTest, RestoreKeepsTheMachineAndItsDirectories) {
  ForkOverrides o;
  auto s = ApplyOverrides(recorded_, o, SnapshotUse::kRestore);
  ASSERT_TRUE(s) << s.error().message();
  EXPECT_EQ(s->shares, recorded_.shares);
  EXPECT_EQ(s->cid, 42u);  // a restore keeps the recorded CID unless told otherwise
  EXPECT_TRUE(s->seccomp);
  EXPECT_TRUE(CheckShares(s->shares));
  o.cid = 7;
  EXPECT_EQ(ApplyOverrides(recorded_, o, SnapshotUse::kRestore)->cid, 7u);
}

TEST_F(OverridesTest, AForkNeverSharesAWritableDirectoryWithItsTemplate) {
  ForkOverrides o;
  o.name = "f1";
  ExpectError(ApplyOverrides(recorded_, o, SnapshotUse::kFork), "never shares a writable directory");
  // Its own directory for the writable tag: accepted; the ro share stays the template's.
  o.shares = {*ParseShareSpec(dir_ + "/new:myfs")};
  auto own = ApplyOverrides(recorded_, o, SnapshotUse::kFork);
  ASSERT_TRUE(own) << own.error().message();
  EXPECT_EQ(own->shares[0].host_path, dir_ + "/new");
  EXPECT_EQ(own->shares[1], recorded_.shares[1]);
  EXPECT_EQ(own->cid, 0u);  // never the template's CID
  EXPECT_EQ(own->name, "f1");
  // Or the recorded directory, read-only.
  o.shares = {*ParseShareSpec(dir_ + "/share:myfs:ro")};
  auto ro = ApplyOverrides(recorded_, o, SnapshotUse::kFork);
  ASSERT_TRUE(ro) << ro.error().message();
  EXPECT_TRUE(ro->shares[0].read_only);
  // A template without writable shares forks without --shared-dir.
  VmSpec read_only = recorded_;
  read_only.shares[0].read_only = true;
  EXPECT_TRUE(ApplyOverrides(read_only, ForkOverrides{}, SnapshotUse::kFork));
}

TEST_F(OverridesTest, CheckSharesNeedsExistingDirectories) {
  EXPECT_TRUE(CheckShares(recorded_.shares));
  std::string file = dir_ + "/file";
  ASSERT_EQ(::close(::creat(file.c_str(), 0600)), 0);
  ExpectError(CheckShares({{dir_ + "/missing", "a", false}}), "does not exist");
  ExpectError(CheckShares({{file, "a", false}}), "is not a directory");
}

TEST_F(OverridesTest, BadOverridesAreOneLine) {
  ForkOverrides o;
  o.shares = {*ParseShareSpec(dir_ + "/new:other")};
  ExpectError(ApplyOverrides(recorded_, o, SnapshotUse::kRestore), "no shared directory tagged 'other'");
  o.shares = {*ParseShareSpec(dir_ + "/new:myfs"), *ParseShareSpec(dir_ + ":myfs")};
  ExpectError(ApplyOverrides(recorded_, o, SnapshotUse::kFork), "the tag 'myfs' is given twice");
  o.shares = {*ParseShareSpec(dir_ + "/missing:myfs")};
  auto missing = ApplyOverrides(recorded_, o, SnapshotUse::kFork);
  ASSERT_TRUE(missing);  // no file access here; CheckShares finds it
  ExpectError(CheckShares(missing->shares), "does not exist");
  o = {};
  o.name = "Bad";
  ExpectError(ApplyOverrides(recorded_, o, SnapshotUse::kRestore), "--name 'Bad'");
  ExpectError(AddDiskOverride("extra.img", &o), "cannot get a new disk");
  ExpectError(AddDiskOverride("rel=/abs", &o), "absolute");
  ASSERT_TRUE(AddDiskOverride("/old/d.raw=/new/d.raw", &o));
  EXPECT_EQ(o.disk_rewrites, std::vector<std::string>{"/old/d.raw=/new/d.raw"});
}

TEST_F(OverridesTest, OverridesJsonRoundTripsAndNamesBadFields) {
  ForkOverrides o;
  o.name = "f-2";
  o.cid = 9;
  o.net = true;
  o.taps = {*ParseTapSpec("tap3,vhost=off")};
  o.shares = {*ParseShareSpec(dir_ + "/new:myfs:ro")};
  o.disk_rewrites = {"/a=/b"};
  o.seccomp = true;
  auto back = OverridesFromJson(json::parse(OverridesToJson(o).dump()));
  ASSERT_TRUE(back) << back.error().message();
  EXPECT_EQ(*back, o);
  EXPECT_EQ(OverridesFromJson(json::object())->cid, std::nullopt);
  ExpectError(OverridesFromJson({{"count", 3}}), "count: unknown field");
  ExpectError(OverridesFromJson({{"cid", 1}}), "cid 1: use 3..");
  ExpectError(OverridesFromJson({{"name", "X"}}), "name 'X'");
  ExpectError(OverridesFromJson({{"disk_rewrites", {"x"}}}), "disk_rewrites[0]:");
  ExpectError(OverridesFromJson({{"disk_rewrites", {1}}}), "disk_rewrites[0]: expected a string");
  ExpectError(OverridesFromJson({{"shares", {{{"host_path", "/x"}, {"tag", ""}}}}}), "shares[0].tag");
}

TEST(RecordedSpecTest, TheSnapshotsFactsWinOverItsRecordedSpec) {
  snapshot::SnapshotConfig config;
  config.mem_bytes = 128ull << 20;
  config.vcpus = 2;
  config.cmdline = "console=ttyS0 reboot=acpi";
  config.vsock_cid = 5;
  config.shared_dirs = {{"fs", "/srv/fs", false}};
  config.info = {{"kernel", "/boot/old"}, {"seccomp", true}};
  auto old = RecordedSpec(config);  // a snapshot from before specs were recorded
  ASSERT_TRUE(old) << old.error().message();
  EXPECT_EQ(old->kernel, "/boot/old");
  EXPECT_EQ(old->mem_mib, 128u);
  EXPECT_EQ(old->vcpus, 2u);
  EXPECT_EQ(old->cid, 5u);
  EXPECT_TRUE(old->seccomp);
  ASSERT_EQ(old->shares.size(), 1u);
  EXPECT_EQ(old->shares[0], (ShareSpec{"/srv/fs", "fs", false}));

  VmSpec s = FullSpec();
  config.info["spec"] = SpecToJson(s);
  auto recorded = RecordedSpec(config);
  ASSERT_TRUE(recorded) << recorded.error().message();
  EXPECT_EQ(recorded->rootfs, s.rootfs);
  EXPECT_EQ(recorded->balloon, s.balloon);
  EXPECT_EQ(recorded->mem_mib, 128u);  // the snapshot's
  EXPECT_EQ(recorded->shares.size(), 1u);

  config.info["spec"]["vcpus"] = "many";
  ExpectError(RecordedSpec(config), "the snapshot's recorded spec: vcpus: expected");
}

}  // namespace
}  // namespace clonevm::spec

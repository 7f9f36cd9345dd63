// The command line's handling of bad input: each case is one clear line and a non-zero status,
// decided before KVM is touched (so these run on hosts without /dev/kvm).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "cli/exit_codes.h"
#include "cli/main_cli.h"
#include "cli/rootfs.h"
#include "cli/run.h"
#include "runtime/launch.h"

namespace clonevm::cli {
namespace {

struct Outcome {
  int status;
  std::string stderr_text;
};

Outcome RunClone(std::vector<std::string> args) {
  args.insert(args.begin(), "clone");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  testing::internal::CaptureStderr();
  int status = Main(static_cast<int>(args.size()), argv.data());
  return {status, testing::internal::GetCapturedStderr()};
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/clone-cli-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    not_a_kernel_ = dir_ + "/notakernel";
    std::ofstream(not_a_kernel_) << std::string(8192, 'x');
    // The argument checks run as on a hardware-assisted host whatever this machine's KVM is (a PVM
    // host refuses `run` before looking at its arguments): host/check.h's fake tree says AMD SVM.
    std::string hw = dir_ + "/svm-host";
    ASSERT_EQ(std::system(("mkdir -p " + hw + "/proc " + hw + "/dev " + hw + "/sys/module/kvm_amd").c_str()), 0);
    std::ofstream(hw + "/proc/cpuinfo") << "processor\t: 0\nflags\t\t: fpu lm svm npt\n";
    std::ofstream(hw + "/dev/kvm") << "";
    ::setenv("CLONE_HOST_ROOT", hw.c_str(), 1);
  }
  void TearDown() override {
    ::unsetenv("CLONE_HOST_ROOT");
    std::system(("rm -rf " + dir_).c_str());
  }
  // A file with just enough of a bzImage header to pass the format check (it would not boot).
  std::string FakeBzImage() {
    std::string path = dir_ + "/fake-bzimage";
    std::string bytes(8192, '\0');
    bytes[0x1fe] = 0x55;
    bytes[0x1ff] = static_cast<char>(0xaa);
    bytes.replace(0x202, 4, "HdrS");
    std::ofstream(path) << bytes;
    return path;
  }
  std::string dir_;
  std::string not_a_kernel_;
};

TEST_F(CliTest, UnknownFlagIsAUsageError) {
  auto r = RunClone({"run", "--kernel", not_a_kernel_, "--bogus"});
  EXPECT_EQ(r.status, kExitUsage);
  EXPECT_NE(r.stderr_text.find("--bogus"), std::string::npos) << r.stderr_text;
}

TEST_F(CliTest, MissingSubcommandOrKernelIsAUsageError) {
  EXPECT_EQ(RunClone({}).status, kExitUsage);
  auto r = RunClone({"run"});
  EXPECT_EQ(r.status, kExitUsage);
  EXPECT_NE(r.stderr_text.find("--kernel"), std::string::npos) << r.stderr_text;
}

TEST_F(CliTest, NonNumericValuesAreUsageErrors) {
  EXPECT_EQ(RunClone({"run", "--kernel", not_a_kernel_, "--vcpus", "two"}).status, kExitUsage);
  EXPECT_EQ(RunClone({"run", "--kernel", not_a_kernel_, "--mem-mb", "-5"}).status, kExitUsage);
}

TEST_F(CliTest, VcpuAndMemoryBounds) {
  auto zero = RunClone({"run", "--kernel", not_a_kernel_, "--vcpus", "0"});
  EXPECT_EQ(zero.status, kExitUsage);
  EXPECT_NE(zero.stderr_text.find("--vcpus 0"), std::string::npos);
  auto many = RunClone({"run", "--kernel", not_a_kernel_, "--vcpus", "1000"});
  EXPECT_EQ(many.status, kExitUsage);
  EXPECT_NE(many.stderr_text.find("too many"), std::string::npos);
  auto small = RunClone({"run", "--kernel", not_a_kernel_, "--mem-mb", "8"});
  EXPECT_EQ(small.status, kExitUsage);
  EXPECT_NE(small.stderr_text.find("too small"), std::string::npos);
  auto large = RunClone({"run", "--kernel", not_a_kernel_, "--mem-mb", "1000000"});
  EXPECT_EQ(large.status, kExitUsage);
  EXPECT_NE(large.stderr_text.find("too large"), std::string::npos);
}

TEST_F(CliTest, MissingKernel) {
  auto r = RunClone({"run", "--kernel", dir_ + "/nope"});
  EXPECT_EQ(r.status, kExitError);
  EXPECT_NE(r.stderr_text.find("cannot read kernel: open: No such file or directory"), std::string::npos)
      << r.stderr_text;
}

TEST_F(CliTest, UnreadableKernel) {
  if (geteuid() == 0) {
    // root reads anything; a directory is unreadable as a kernel for everyone.
    auto r = RunClone({"run", "--kernel", dir_});
    EXPECT_EQ(r.status, kExitError);
    EXPECT_NE(r.stderr_text.find("is a directory"), std::string::npos) << r.stderr_text;
    return;
  }
  std::string path = dir_ + "/noperm";
  std::ofstream(path) << "x";
  chmod(path.c_str(), 0);
  auto r = RunClone({"run", "--kernel", path});
  EXPECT_EQ(r.status, kExitError);
  EXPECT_NE(r.stderr_text.find("Permission denied"), std::string::npos);
}

TEST_F(CliTest, FileThatIsNotAKernel) {
  auto r = RunClone({"run", "--kernel", not_a_kernel_});
  EXPECT_EQ(r.status, kExitError);
  EXPECT_NE(r.stderr_text.find("not a Linux kernel"), std::string::npos) << r.stderr_text;
}

TEST_F(CliTest, MalformedAndWrongSha256) {
  auto bad = RunClone({"run", "--kernel", not_a_kernel_, "--kernel-sha256", "xyz"});
  EXPECT_EQ(bad.status, kExitUsage);
  EXPECT_NE(bad.stderr_text.find("64 hexadecimal digits"), std::string::npos);
  // A bzImage header so the format check passes and the hash check decides.
  std::string kernel = FakeBzImage();
  auto wrong = RunClone({"run", "--kernel", kernel, "--kernel-sha256", std::string(64, '0')});
  EXPECT_EQ(wrong.status, kExitError);
  EXPECT_NE(wrong.stderr_text.find("refusing to boot"), std::string::npos) << wrong.stderr_text;
}

TEST_F(CliTest, MissingInitrd) {
  std::string kernel = FakeBzImage();
  auto r = RunClone({"run", "--kernel", kernel, "--initrd", dir_ + "/missing.img"});
  EXPECT_EQ(r.status, kExitError);
  EXPECT_NE(r.stderr_text.find("cannot read initrd"), std::string::npos) << r.stderr_text;
}

// A PVM host (a /dev/kvm without SVM/VMX, the kvm_pvm module): `clone run` of a stock kernel is
// refused at once with the reason, before KVM is opened (CLONE_HOST_ROOT: host/check.h's fake tree).
TEST_F(CliTest, RunRefusesAPvmKvmInUnderASecond) {
  std::string root = dir_ + "/pvm-host";
  ASSERT_EQ(std::system(("mkdir -p " + root + "/proc " + root + "/dev " + root + "/sys/module/kvm_pvm").c_str()), 0);
  std::ofstream(root + "/proc/cpuinfo") << "processor\t: 0\nflags\t\t: fpu lm hypervisor\n";
  std::ofstream(root + "/dev/kvm") << "";
  std::string kernel = FakeBzImage();
  std::string initrd = dir_ + "/initrd.img";
  std::ofstream(initrd) << std::string(512, 'i');
  ::setenv("CLONE_HOST_ROOT", root.c_str(), 1);
  auto start = std::chrono::steady_clock::now();
  auto r = RunClone({"run", "--kernel", kernel, "--initrd", initrd});
  auto elapsed = std::chrono::steady_clock::now() - start;
  auto check = RunClone({"check", "-q"});
  ::unsetenv("CLONE_HOST_ROOT");
  EXPECT_EQ(r.status, kExitError);
  EXPECT_NE(r.stderr_text.find("this host's KVM is PVM (no AMD SVM or Intel VMX): it runs only PVM-enabled guest "
                               "kernels; see 'clone check'"),
            std::string::npos)
      << r.stderr_text;
  EXPECT_LT(elapsed, std::chrono::seconds(1));
  EXPECT_EQ(check.status, kExitError);
}

TEST_F(CliTest, BadBlockOptionsAreUsageErrors) {
  auto r = RunClone({"run", "--kernel", not_a_kernel_, "--block", dir_ + "/d.img,rw"});
  EXPECT_EQ(r.status, kExitUsage);
  EXPECT_NE(r.stderr_text.find("unknown option 'rw'"), std::string::npos) << r.stderr_text;
  auto f = RunClone({"run", "--kernel", not_a_kernel_, "--block", dir_ + "/d.img,format=vmdk"});
  EXPECT_EQ(f.status, kExitUsage);
  EXPECT_NE(f.stderr_text.find("unknown format"), std::string::npos) << f.stderr_text;
  EXPECT_EQ(RunClone({"run", "--kernel", not_a_kernel_, "--block", ",ro"}).status, kExitUsage);
}

TEST_F(CliTest, MissingOrCorruptDiskImages) {
  std::string kernel = FakeBzImage();
  auto missing = RunClone({"run", "--kernel", kernel, "--block", dir_ + "/none.img"});
  EXPECT_EQ(missing.status, kExitError);
  EXPECT_NE(missing.stderr_text.find("cannot open disk"), std::string::npos) << missing.stderr_text;
  std::string corrupt = dir_ + "/corrupt.qcow2";
  std::ofstream(corrupt) << std::string("QFI\xfb", 4) << std::string(100, '\x07');
  auto bad = RunClone({"run", "--kernel", kernel, "--block", corrupt});
  EXPECT_EQ(bad.status, kExitError);
  EXPECT_NE(bad.stderr_text.find("cannot open disk"), std::string::npos) << bad.stderr_text;
}

TEST_F(CliTest, RootfsOptionConflicts) {
  auto both = RunClone({"run", "--kernel", not_a_kernel_, "--rootfs", "a.img", "--initrd", "i.img"});
  EXPECT_EQ(both.status, kExitUsage);
  EXPECT_NE(both.stderr_text.find("cannot be used together"), std::string::npos) << both.stderr_text;
  auto lone = RunClone({"run", "--kernel", not_a_kernel_, "--overlay"});
  EXPECT_EQ(lone.status, kExitUsage);
  EXPECT_NE(lone.stderr_text.find("need --rootfs"), std::string::npos) << lone.stderr_text;
}

TEST_F(CliTest, RootfsWithAMissingModulesDirectory) {
  std::string kernel = FakeBzImage();
  auto r = RunClone({"run", "--kernel", kernel, "--rootfs", dir_ + "/root.img", "--modules", dir_ + "/nomods"});
  EXPECT_EQ(r.status, kExitError);
  EXPECT_NE(r.stderr_text.find("nomods"), std::string::npos) << r.stderr_text;  // names the missing directory
}

// The flags of `clone run` → VmSpec → JSON → VmSpec: every flag lands in its field and survives.
RunOptions ParseRun(std::vector<std::string> args) {
  CLI::App app("test");
  RunOptions options;
  AddRunCommand(app, options);
  args.insert(args.begin(), "run");
  std::reverse(args.begin(), args.end());  // CLI11 takes a reversed vector
  app.parse(args);
  return options;
}

TEST(RunSpecTest, FlagsToSpecToJsonAndBack) {
  auto o = ParseRun({"--kernel",
                     "/k",
                     "--initrd",
                     "/i",
                     "--cmdline",
                     "console=ttyS0",
                     "--mem-mb",
                     "256",
                     "--vcpus",
                     "2",
                     "--kernel-sha256",
                     std::string(64, 'f'),
                     "--block",
                     "/d/a.img,ro",
                     "--block",
                     "/d/b.qcow2,format=qcow2",
                     "--cid",
                     "9",
                     "--tap",
                     "tap0,mac=52:54:00:00:00:01,vhost=off",
                     "--shared-dir",
                     "/srv/x:x:ro",
                     "--net",
                     "--name",
                     "dev",
                     "--seccomp"});
  auto s = SpecFromRunOptions(o);
  ASSERT_TRUE(s) << s.error().message();
  EXPECT_EQ(s->kernel, "/k");
  EXPECT_EQ(s->initrd, "/i");
  EXPECT_EQ(s->cmdline, "console=ttyS0");
  EXPECT_EQ(s->mem_mib, 256u);
  EXPECT_EQ(s->vcpus, 2u);
  ASSERT_EQ(s->disks.size(), 2u);
  EXPECT_TRUE(s->disks[0].read_only);
  EXPECT_EQ(s->disks[1].format, Format::kQcow2);
  EXPECT_EQ(s->cid, 9u);
  ASSERT_EQ(s->taps.size(), 1u);
  EXPECT_EQ(s->taps[0].vhost, virtio::VhostMode::kOff);
  ASSERT_EQ(s->shares.size(), 1u);
  EXPECT_TRUE(s->shares[0].read_only);
  EXPECT_TRUE(s->net);
  EXPECT_EQ(s->name, "dev");
  EXPECT_TRUE(s->seccomp);
  auto back = spec::SpecFromJson(nlohmann::json::parse(spec::SpecToJson(*s).dump()));
  ASSERT_TRUE(back) << back.error().message();
  EXPECT_EQ(*back, *s);
}

TEST(RunSpecTest, OverlayTakesItsPathWithASpaceOrAnEqualsSign) {
  EXPECT_EQ(ParseRun({"--kernel", "/k", "--rootfs", "/r.img", "--overlay"}).spec.rootfs.overlay, "tmpfs");
  EXPECT_EQ(ParseRun({"--kernel", "/k", "--rootfs", "/r.img", "--overlay", "--net"}).spec.rootfs.overlay, "tmpfs");
  EXPECT_EQ(ParseRun({"--kernel", "/k", "--rootfs", "/r.img", "--overlay", "/o.qcow2"}).spec.rootfs.overlay,
            "/o.qcow2");
  EXPECT_EQ(ParseRun({"--kernel", "/k", "--rootfs", "/r.img", "--overlay=auto"}).spec.rootfs.overlay, "auto");
  EXPECT_EQ(ParseRun({"--kernel", "/k", "--rootfs", "/r.img"}).spec.rootfs.overlay, "");
}

TEST_F(CliTest, HelpExplainsRun) {
  testing::internal::CaptureStdout();
  auto r = RunClone({"run", "--help"});
  std::string out = testing::internal::GetCapturedStdout();
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(out.find("--kernel-sha256"), std::string::npos);
  EXPECT_NE(out.find("Examples"), std::string::npos);
}

TEST_F(CliTest, RootfsCreateUsageErrors) {
  const std::string out = dir_ + "/out.img";
  EXPECT_EQ(RunClone({"rootfs"}).status, kExitUsage);
  EXPECT_EQ(RunClone({"rootfs", "create", "--from-dir", dir_, "-o", out}).status, kExitUsage);       // no --size
  EXPECT_EQ(RunClone({"rootfs", "create", "--from-dir", dir_, "--size", "1G"}).status, kExitUsage);  // no -o
  auto none = RunClone({"rootfs", "create", "--size", "1G", "-o", out});
  EXPECT_EQ(none.status, kExitUsage);
  EXPECT_NE(none.stderr_text.find("exactly one of --from-dir, --from-tar, --from-oci, --distro"), std::string::npos);
  EXPECT_EQ(RunClone({"rootfs", "create", "--from-dir", dir_, "--from-tar", "x", "--size", "1G", "-o", out}).status,
            kExitUsage);
  EXPECT_EQ(RunClone({"rootfs", "create", "--from-oci", dir_, "--from-tar", "x", "--size", "1G", "-o", out}).status,
            kExitUsage);
  EXPECT_EQ(RunClone({"rootfs", "create", "--from-oci", dir_, "--distro", "ubuntu", "--size", "1G", "-o", out}).status,
            kExitUsage);
  auto small = RunClone({"rootfs", "create", "--from-dir", dir_, "--size", "8M", "-o", out});
  EXPECT_EQ(small.status, kExitUsage);
  EXPECT_NE(small.stderr_text.find("too small"), std::string::npos) << small.stderr_text;
  EXPECT_EQ(RunClone({"rootfs", "create", "--from-dir", dir_, "--size", "1G", "-o", out, "--format", "vmdk"}).status,
            kExitUsage);
  EXPECT_EQ(RunClone({"rootfs", "create", "--distro", "gentoo", "--size", "1G", "-o", out}).status, kExitUsage);
  EXPECT_EQ(RunClone({"rootfs", "create", "--from-dir", dir_, "--size", "1G", "-o", out, "--hostname", "a b"}).status,
            kExitUsage);
  EXPECT_EQ(access(out.c_str(), F_OK), -1);
}

TEST_F(CliTest, RootfsCreateErrorsAreOneLineAndStatusOne) {
  auto missing = RunClone({"rootfs", "create", "--from-dir", dir_ + "/nope", "--size", "64M", "-o", dir_ + "/o.img"});
  EXPECT_EQ(missing.status, kExitError);
  EXPECT_EQ(missing.stderr_text, "clone: error: rootfs create: source directory " + dir_ + "/nope does not exist\r\n");
  auto exists = RunClone({"rootfs", "create", "--from-dir", dir_, "--size", "64M", "-o", not_a_kernel_});
  EXPECT_EQ(exists.status, kExitError);
  EXPECT_NE(exists.stderr_text.find("exists (use --force to replace it)"), std::string::npos) << exists.stderr_text;
}

// `clone fork`: every bad combination is a usage error decided before a template is read or a
// process forked; a template that does not exist (or is damaged) is one line naming it.
TEST_F(CliTest, ForkUsageErrors) {
  auto r = RunClone({"fork"});
  EXPECT_EQ(r.status, kExitUsage);
  EXPECT_NE(r.stderr_text.find("--template"), std::string::npos) << r.stderr_text;
  EXPECT_EQ(RunClone({"fork", "--template", "t", "--count", "0"}).status, kExitUsage);
  EXPECT_EQ(RunClone({"fork", "--template", "t", "--count", "5000"}).status, kExitUsage);
  EXPECT_EQ(RunClone({"fork", "--template", "t", "--count", "many"}).status, kExitUsage);
  EXPECT_EQ(RunClone({"fork", "--template", "../etc"}).status, kExitUsage);
  r = RunClone({"fork", "--template", "t", "--count", "2", "--tap", "tap0"});
  EXPECT_EQ(r.status, kExitUsage);
  EXPECT_NE(r.stderr_text.find("--net"), std::string::npos) << r.stderr_text;
  EXPECT_EQ(RunClone({"fork", "--template", "t", "--count", "2", "--cid", "9"}).status, kExitUsage);
  // --name with --count: NAME-K must still be a valid VM id (at most 32 characters).
  EXPECT_EQ(RunClone({"fork", "--template", "t", "--name", std::string(31, 'a'), "--count", "10"}).status, kExitUsage);
  EXPECT_EQ(RunClone({"fork", "--template", "t", "--name", std::string(33, 'a')}).status, kExitUsage);
  EXPECT_EQ(RunClone({"fork", "--template", "t", "--name", "Bad_Name"}).status, kExitUsage);
  EXPECT_EQ(RunClone({"fork", "--template", "t", "--tap", "bad,mac=zz"}).status, kExitUsage);
  r = RunClone({"fork", "--template", "t", "--block", "extra.img"});  // the guest's devices are fixed
  EXPECT_EQ(r.status, kExitUsage);
  EXPECT_NE(r.stderr_text.find("cannot get a new disk"), std::string::npos) << r.stderr_text;
  EXPECT_EQ(RunClone({"fork", "--template", "t", "--shared-dir", "/x:bad tag"}).status, kExitUsage);
}

TEST_F(CliTest, ForkOfAMissingOrDamagedTemplate) {
  auto r = RunClone({"fork", "--template", "nope", "--dir", dir_});
  EXPECT_EQ(r.status, kExitError);
  EXPECT_NE(r.stderr_text.find("nope"), std::string::npos) << r.stderr_text;
  ASSERT_EQ(::mkdir((dir_ + "/junk").c_str(), 0700), 0);
  std::ofstream(dir_ + "/junk/state") << "not a snapshot";
  std::ofstream(dir_ + "/junk/config") << "{}";
  std::ofstream(dir_ + "/junk/memory") << "";
  r = RunClone({"fork", "--template", "junk", "--dir", dir_, "-d"});
  EXPECT_EQ(r.status, kExitError);
  EXPECT_NE(r.stderr_text.find("junk"), std::string::npos) << r.stderr_text;
}

TEST(RootfsOptionsTest, DistroDefaults) {
  RootfsOptions o;
  o.distro = "debian";
  o.size = "2G";
  o.output = "debian.qcow2";
  o.format = "qcow2";
  auto c = ToRootfsCreateOptions(o);
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->source, RootfsSource::kDebian);
  EXPECT_EQ(c->size_bytes, 2ull << 30);
  EXPECT_EQ(c->format, Format::kQcow2);
  EXPECT_EQ(c->hostname, "clone");
  EXPECT_EQ(DebootstrapArgv(c->suite, "/stage", c->mirror),
            (std::vector<std::string>{"debootstrap", "--variant=minbase", "--include=systemd-sysv,udev", "bookworm",
                                      "/stage", "http://deb.debian.org/debian"}));
  auto password = RootPasswordField(c->source, "");
  ASSERT_TRUE(password);
  EXPECT_EQ(*password, std::optional<std::string>("*"));
}

TEST(RootfsOptionsTest, UbuntuDefaultsAndMirror) {
  RootfsOptions o;
  o.distro = "ubuntu";
  o.size = "2G";
  o.output = "ubuntu.img";
  auto c = ToRootfsCreateOptions(o);
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->source, RootfsSource::kUbuntu);
  EXPECT_EQ(c->suite, "jammy");
  EXPECT_EQ(c->mirror, "http://archive.ubuntu.com/ubuntu");
  auto password = RootPasswordField(c->source, "");
  ASSERT_TRUE(password);
  EXPECT_EQ(*password, std::optional<std::string>("*"));  // locked, like --distro debian

  o.suite = "noble";
  o.mirror = "http://mirror.example/ubuntu";
  c = ToRootfsCreateOptions(o);
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(DebootstrapArgv(c->suite, "/stage", c->mirror, kUbuntuKeyring),
            (std::vector<std::string>{"debootstrap", "--variant=minbase", "--include=systemd-sysv,udev",
                                      "--keyring=/usr/share/keyrings/ubuntu-archive-keyring.gpg", "--components=main",
                                      "noble", "/stage", "http://mirror.example/ubuntu"}));
  o.suite = "jammy updates";
  EXPECT_FALSE(ToRootfsCreateOptions(o));
}

TEST(RootfsOptionsTest, FromOci) {
  RootfsOptions o;
  o.from_oci = "/images/alpine-oci";
  o.size = "256M";
  o.output = "alpine.img";
  auto c = ToRootfsCreateOptions(o);
  ASSERT_TRUE(c) << c.error().message();
  EXPECT_EQ(c->source, RootfsSource::kOci);
  EXPECT_EQ(c->source_path, "/images/alpine-oci");
  auto password = RootPasswordField(c->source, "");
  ASSERT_TRUE(password);
  EXPECT_EQ(*password, std::nullopt);  // the image's own
  o.from_dir = "/x";
  EXPECT_FALSE(ToRootfsCreateOptions(o));
}

// A detached VM process keeps its stderr in the VM directory's vmm.log: a warning or a seccomp
// report written after the parent let go must still be readable.
TEST_F(CliTest, DetachedChildSendsStderrToItsLog) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  std::string log = dir_ + "/vmm.log";
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(fds[0]);
    Fd ready(fds[1]);
    ReportDetachedReady(ready, "vm-1", log);
    constexpr char kLine[] = "clone: seccomp: thread vcpu called forbidden syscall openat (257)\n";
    ssize_t n = ::write(STDERR_FILENO, kLine, sizeof(kLine) - 1);
    ::_exit(n == static_cast<ssize_t>(sizeof(kLine) - 1) ? 0 : 1);
  }
  ::close(fds[1]);
  Fd parent_end(fds[0]);
  EXPECT_EQ(AwaitReady(parent_end), std::optional<std::string>("vm-1\n"));
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  std::ifstream in(log);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "clone: seccomp: thread vcpu called forbidden syscall openat (257)\n");
}

}  // namespace
}  // namespace clonevm::cli

#include "vmm/vm.h"

namespace clonevm {
namespace {

TEST(PlatformCmdlineTest, AppendsTheRebootMethodUnlessChosen) {
  EXPECT_EQ(PlatformCmdline("console=ttyS0"), "console=ttyS0 reboot=acpi");
  EXPECT_EQ(PlatformCmdline(""), "reboot=acpi");
  EXPECT_EQ(PlatformCmdline("console=ttyS0 reboot=k"), "console=ttyS0 reboot=k");
  EXPECT_EQ(PlatformCmdline("reboot=t quiet"), "reboot=t quiet");
  EXPECT_EQ(PlatformCmdline("noreboot=x"), "noreboot=x reboot=acpi");
}

}  // namespace
}  // namespace clonevm

namespace clonevm::cli {
namespace {}  // namespace
}  // namespace clonevm::cli

namespace clonevm::cli {
namespace {

// The daemon's client commands when no daemon serves the socket: a clear one-line error; bad flags
// are usage errors before anything is asked; `clone list` falls back to scanning.
TEST_F(CliTest, DaemonCommandsWithoutADaemon) {
  std::string socket = dir_ + "/none.sock";
  ::setenv("CLONE_DAEMON_SOCKET", socket.c_str(), 1);
  ::setenv("CLONE_RUNTIME_DIR", (dir_ + "/rt").c_str(), 1);
  auto create = RunClone({"create", "--kernel", not_a_kernel_});
  EXPECT_EQ(create.status, kExitError);
  EXPECT_NE(create.stderr_text.find("is 'clone daemon' running?"), std::string::npos) << create.stderr_text;
  auto small = RunClone({"create", "--kernel", not_a_kernel_, "--mem-mb", "8"});
  EXPECT_EQ(small.status, kExitUsage);
  EXPECT_NE(small.stderr_text.find("--mem-mb 8"), std::string::npos) << small.stderr_text;
  EXPECT_EQ(RunClone({"start"}).status, kExitUsage);  // --vm-id is required
  EXPECT_EQ(RunClone({"stop", "--vm-id", "a"}).status, kExitError);
  EXPECT_EQ(RunClone({"events"}).status, kExitError);
  EXPECT_EQ(RunClone({"list"}).status, kExitOk);  // no daemon: the runtime directory is scanned
  ::unsetenv("CLONE_DAEMON_SOCKET");
  ::unsetenv("CLONE_RUNTIME_DIR");
}

}  // namespace
}  // namespace clonevm::cli

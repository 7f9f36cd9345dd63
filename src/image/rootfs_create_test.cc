#include "image/rootfs_create.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "base/testing/host_tools.h"

namespace clonevm {
namespace {

namespace fs = std::filesystem;
using host_tools::RunCommand;
using host_tools::TempDir;

void WriteText(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path) << text;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A tiny root tree: a few directories, a file, a symlink.
void MakeTree(const std::string& root) {
  fs::create_directories(root + "/bin");
  fs::create_directories(root + "/sbin");
  fs::create_directories(root + "/etc");
  WriteText(root + "/bin/hello", "#!/bin/sh\necho hello\n");
  ::chmod((root + "/bin/hello").c_str(), 0755);
  fs::create_symlink("../bin/hello", root + "/sbin/init");
  WriteText(root + "/etc/motd", "welcome to clone\n");
}

std::string Debugfs(const std::string& image, const std::string& request) {
  auto r = RunCommand("debugfs -R '" + request + "' " + image);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return r.output;
}

// The files in `dir` (names only), to check that temporaries are cleaned up.
std::vector<std::string> Entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

RootfsCreateOptions Options(RootfsSource source, const std::string& path, const std::string& out, uint64_t mib = 64) {
  RootfsCreateOptions o;
  o.source = source;
  o.source_path = path;
  o.output = out;
  o.size_bytes = mib << 20;
  return o;
}

TEST(RootfsSizeTest, ParsesUnitsAndRejectsBadSizes) {
  EXPECT_EQ(*ParseRootfsSize("512M"), 512ull << 20);
  EXPECT_EQ(*ParseRootfsSize("1G"), 1ull << 30);
  EXPECT_EQ(*ParseRootfsSize("1GiB"), 1ull << 30);
  EXPECT_EQ(*ParseRootfsSize("2g"), 2ull << 30);
  EXPECT_EQ(*ParseRootfsSize("2048"), 2048ull << 20);
  EXPECT_EQ(*ParseRootfsSize("16M"), 16ull << 20);
  EXPECT_EQ(*ParseRootfsSize("65536K"), 64ull << 20);
  EXPECT_EQ(*ParseRootfsSize("1T"), 1ull << 40);
  EXPECT_FALSE(ParseRootfsSize("8M"));
  EXPECT_FALSE(ParseRootfsSize("15"));
  EXPECT_FALSE(ParseRootfsSize("100K"));
  EXPECT_FALSE(ParseRootfsSize("1000001K"));
  EXPECT_FALSE(ParseRootfsSize(""));
  EXPECT_FALSE(ParseRootfsSize("G"));
  EXPECT_FALSE(ParseRootfsSize("1X"));
  EXPECT_FALSE(ParseRootfsSize("-1G"));
  EXPECT_FALSE(ParseRootfsSize("17T"));
  EXPECT_FALSE(ParseRootfsSize("99999999999999999999"));
}

TEST(RootfsCreateTest, ToolCommandLines) {
  EXPECT_EQ(DebootstrapArgv("bookworm", "/x/stage", "http://deb.debian.org/debian"),
            (std::vector<std::string>{"debootstrap", "--variant=minbase", "--include=systemd-sysv,udev", "bookworm",
                                      "/x/stage", "http://deb.debian.org/debian"}));
  EXPECT_EQ(DebootstrapArgv("jammy", "/x/stage", "http://archive.ubuntu.com/ubuntu", kUbuntuKeyring),
            (std::vector<std::string>{"debootstrap", "--variant=minbase", "--include=systemd-sysv,udev",
                                      "--keyring=/usr/share/keyrings/ubuntu-archive-keyring.gpg", "--components=main",
                                      "jammy", "/x/stage", "http://archive.ubuntu.com/ubuntu"}));
  EXPECT_EQ(TarExtractArgv("a.tar.gz", "/x/stage"),
            (std::vector<std::string>{"tar", "-x", "--numeric-owner", "-f", "a.tar.gz", "-C", "/x/stage"}));
  EXPECT_EQ(
      MkfsExt4Argv("/x/stage", "/x/img", 1ull << 30),
      (std::vector<std::string>{"mkfs.ext4", "-q", "-F", "-d", "/x/stage", "-L", "rootfs", "/x/img", "1048576k"}));
  EXPECT_TRUE(ValidateHostname("clone-vm1"));
  EXPECT_FALSE(ValidateHostname(""));
  EXPECT_FALSE(ValidateHostname("-a"));
  EXPECT_FALSE(ValidateHostname("a b"));
  EXPECT_FALSE(ValidateHostname("a/b"));
}

TEST(RootfsCreateTest, FromDirMakesASparseRawExt4Image) {
  TempDir dir("clone-rootfs");
  ASSERT_TRUE(dir.ok());
  MakeTree(dir.File("tree"));
  std::vector<std::string> lines;
  auto o = Options(RootfsSource::kDirectory, dir.File("tree"), dir.File("out.img"));
  o.hostname = "vm7";
  o.progress = [&](std::string_view l) { lines.emplace_back(l); };
  auto r = CreateRootfs(o);
  ASSERT_TRUE(r) << r.error().message();

  struct stat st;
  ASSERT_EQ(::stat(dir.File("out.img").c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), 64ull << 20);
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, (64ull << 20) / 4) << "the image is not sparse";
  auto fsck = RunCommand("e2fsck -fn " + dir.File("out.img"));
  EXPECT_EQ(fsck.exit_code, 0) << fsck.output;

  EXPECT_NE(Debugfs(dir.File("out.img"), "cat /etc/hostname").find("vm7\n"), std::string::npos);
  std::string root = Debugfs(dir.File("out.img"), "ls /");
  for (const char* name : {"bin", "sbin", "etc"}) EXPECT_NE(root.find(name), std::string::npos) << root;
  EXPECT_NE(Debugfs(dir.File("out.img"), "cat /bin/hello").find("echo hello"), std::string::npos);
  EXPECT_NE(Debugfs(dir.File("out.img"), "cat /etc/fstab").find("/dev/vda / ext4 defaults 0 1"), std::string::npos);
  EXPECT_NE(Debugfs(dir.File("out.img"), "stat /sbin/init").find("Fast link dest: \"../bin/hello\""),
            std::string::npos);
  EXPECT_NE(Debugfs(dir.File("out.img"), "cat /etc/network/interfaces").find("eth0"), std::string::npos);

  // The user's directory is untouched, and only the output is left beside it.
  EXPECT_FALSE(fs::exists(dir.File("tree/etc/hostname")));
  EXPECT_FALSE(fs::exists(dir.File("tree/etc/fstab")));
  EXPECT_EQ(Entries(dir.path()), (std::vector<std::string>{"out.img", "tree"}));
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_NE(lines.front().find("staging"), std::string::npos);
  EXPECT_EQ(lines[2], "formatting ext4 (64 MiB) ...");
  EXPECT_EQ(lines.back(), "wrote " + dir.File("out.img"));
}

TEST(RootfsCreateTest, Qcow2OutputPassesQemuImgCheckAndHoldsTheFiles) {
  TempDir dir("clone-rootfs");
  ASSERT_TRUE(dir.ok());
  MakeTree(dir.File("tree"));
  auto o = Options(RootfsSource::kDirectory, dir.File("tree"), dir.File("out.qcow2"), 256);
  o.format = Format::kQcow2;
  auto r = CreateRootfs(o);
  ASSERT_TRUE(r) << r.error().message();

  auto check = RunCommand("qemu-img check " + dir.File("out.qcow2"));
  EXPECT_EQ(check.exit_code, 0) << check.output;
  auto info = RunCommand("qemu-img info " + dir.File("out.qcow2"));
  EXPECT_NE(info.output.find("virtual size: 256 MiB"), std::string::npos) << info.output;
  // Holes are skipped: the qcow2 file is a small fraction of the virtual size.
  EXPECT_LT(fs::file_size(dir.File("out.qcow2")), 32ull << 20);

  auto convert = RunCommand("qemu-img convert -O raw " + dir.File("out.qcow2") + " " + dir.File("back.raw"));
  ASSERT_EQ(convert.exit_code, 0) << convert.output;
  auto fsck = RunCommand("e2fsck -fn " + dir.File("back.raw"));
  EXPECT_EQ(fsck.exit_code, 0) << fsck.output;
  EXPECT_NE(Debugfs(dir.File("back.raw"), "cat /etc/hostname").find("clone\n"), std::string::npos);
  EXPECT_NE(Debugfs(dir.File("back.raw"), "cat /etc/motd").find("welcome to clone"), std::string::npos);
  EXPECT_EQ(Entries(dir.path()), (std::vector<std::string>{"back.raw", "out.qcow2", "tree"}));
}

TEST(RootfsCreateTest, ConvertRawToQcow2SkipsHolesAndZeroChunks) {
  TempDir dir("clone-rootfs");
  ASSERT_TRUE(dir.ok());
  const std::string raw = dir.File("disk.raw");
  {
    std::ofstream f(raw, std::ios::binary);
    f.seekp((1 << 30) - 1);
    f.put('\0');
  }
  auto w = RunCommand("printf 'HEAD' | dd of=" + raw +
                      " bs=1 seek=0 conv=notrunc status=none && "
                      "printf 'MIDDLE' | dd of=" +
                      raw +
                      " bs=1 seek=536870912 conv=notrunc status=none && "
                      "dd if=/dev/zero of=" +
                      raw + " bs=64k seek=100 count=16 conv=notrunc status=none");
  ASSERT_EQ(w.exit_code, 0) << w.output;
  auto r = ConvertRawToQcow2(raw, dir.File("disk.qcow2"));
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_LT(fs::file_size(dir.File("disk.qcow2")), 1ull << 20);
  auto cmp = RunCommand("qemu-img compare -f raw -F qcow2 " + raw + " " + dir.File("disk.qcow2"));
  EXPECT_EQ(cmp.exit_code, 0) << cmp.output;
  auto check = RunCommand("qemu-img check " + dir.File("disk.qcow2"));
  EXPECT_EQ(check.exit_code, 0) << check.output;
}

TEST(RootfsCreateTest, FromTarExtractsCompressedArchives) {
  TempDir dir("clone-rootfs");
  ASSERT_TRUE(dir.ok());
  MakeTree(dir.File("tree"));
  auto tar = RunCommand("tar -C " + dir.File("tree") + " -czf " + dir.File("root.tar.gz") + " .");
  ASSERT_EQ(tar.exit_code, 0) << tar.output;
  auto r = CreateRootfs(Options(RootfsSource::kTar, dir.File("root.tar.gz"), dir.File("out.img")));
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_NE(Debugfs(dir.File("out.img"), "cat /etc/motd").find("welcome to clone"), std::string::npos);
  EXPECT_NE(Debugfs(dir.File("out.img"), "cat /etc/hostname").find("clone\n"), std::string::npos);
}

TEST(RootfsCreateTest, BadTarFails) {
  TempDir dir("clone-rootfs");
  ASSERT_TRUE(dir.ok());
  WriteText(dir.File("junk.tar"), "this is not a tar archive\n");
  auto r = CreateRootfs(Options(RootfsSource::kTar, dir.File("junk.tar"), dir.File("out.img")));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("tar failed"), std::string::npos) << r.error().message();
  EXPECT_EQ(Entries(dir.path()), (std::vector<std::string>{"junk.tar"}));
}

TEST(RootfsCreateTest, RefusesToOverwriteWithoutForce) {
  TempDir dir("clone-rootfs");
  ASSERT_TRUE(dir.ok());
  MakeTree(dir.File("tree"));
  WriteText(dir.File("out.img"), "precious");
  auto o = Options(RootfsSource::kDirectory, dir.File("tree"), dir.File("out.img"));
  auto r = CreateRootfs(o);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("exists (use --force"), std::string::npos) << r.error().message();
  EXPECT_EQ(ReadText(dir.File("out.img")), "precious");
  EXPECT_EQ(Entries(dir.path()), (std::vector<std::string>{"out.img", "tree"}));

  o.force = true;
  auto forced = CreateRootfs(o);
  ASSERT_TRUE(forced) << forced.error().message();
  EXPECT_EQ(fs::file_size(dir.File("out.img")), 64ull << 20);
}

TEST(RootfsCreateTest, MissingSourceFails) {
  TempDir dir("clone-rootfs");
  ASSERT_TRUE(dir.ok());
  auto r = CreateRootfs(Options(RootfsSource::kDirectory, dir.File("nope"), dir.File("out.img")));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("does not exist"), std::string::npos) << r.error().message();
  auto t = CreateRootfs(Options(RootfsSource::kTar, dir.File("nope.tar"), dir.File("out.img")));
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().message().find("nope.tar"), std::string::npos) << t.error().message();
  auto d = CreateRootfs(Options(RootfsSource::kDirectory, dir.path().string(), dir.File("missing/out.img")));
  ASSERT_FALSE(d);
  EXPECT_NE(d.error().message().find("does not exist"), std::string::npos) << d.error().message();
  EXPECT_TRUE(Entries(dir.path()).empty());
}

TEST(RootfsCreateTest, TooSmallFailsAndLeavesNothingBehind) {
  TempDir dir("clone-rootfs");
  ASSERT_TRUE(dir.ok());
  MakeTree(dir.File("tree"));
  auto big = RunCommand("head -c 24M /dev/urandom > " + dir.File("tree/big"));
  ASSERT_EQ(big.exit_code, 0) << big.output;
  auto r = CreateRootfs(Options(RootfsSource::kDirectory, dir.File("tree"), dir.File("out.img"), 16));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("mkfs.ext4 failed"), std::string::npos) << r.error().message();
  EXPECT_NE(r.error().message().find("large enough"), std::string::npos) << r.error().message();
  EXPECT_EQ(Entries(dir.path()), (std::vector<std::string>{"tree"}));
}

TEST(RootfsCreateTest, InterruptedRunLeavesNothingBehind) {
  TempDir dir("clone-rootfs");
  ASSERT_TRUE(dir.ok());
  MakeTree(dir.File("tree"));
  std::atomic<bool> interrupted{false};
  auto o = Options(RootfsSource::kDirectory, dir.File("tree"), dir.File("out.img"));
  o.interrupted = &interrupted;
  o.progress = [&](std::string_view line) {
    if (line.starts_with("formatting")) interrupted = true;
  };
  auto r = CreateRootfs(o);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message(), "interrupted");
  EXPECT_EQ(Entries(dir.path()), (std::vector<std::string>{"tree"}));
}

TEST(RootfsCustomizeTest, SystemdTreeGetsSerialGettyAndNetworkd) {
  TempDir dir("clone-rootfs");
  ASSERT_TRUE(dir.ok());
  const std::string root = dir.File("root");
  fs::create_directories(root + "/usr/lib/systemd/system");
  fs::create_symlink("usr/lib", root + "/lib");  // merged /usr
  WriteText(root + "/usr/lib/systemd/systemd", "");
  WriteText(root + "/usr/lib/systemd/system/serial-getty@.service", "");
  WriteText(root + "/usr/lib/systemd/system/systemd-networkd.service", "");
  WriteText(root + "/etc/fstab", "# mine\n");
  ASSERT_TRUE(CustomizeRootfs(root, {"box", ""}));
  EXPECT_EQ(fs::read_symlink(root + "/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"),
            "/usr/lib/systemd/system/serial-getty@.service");
  EXPECT_EQ(fs::read_symlink(root + "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"),
            "/usr/lib/systemd/system/systemd-networkd.service");
  EXPECT_NE(ReadText(root + "/etc/systemd/network/20-clone-eth0.network").find("Name=eth0"), std::string::npos);
  EXPECT_FALSE(fs::exists(root + "/etc/network/interfaces"));
  EXPECT_EQ(ReadText(root + "/etc/fstab"), "# mine\n");  // kept
  EXPECT_EQ(ReadText(root + "/etc/hostname"), "box\n");
  ASSERT_TRUE(CustomizeRootfs(root, {"box", ""}));  // idempotent
}

TEST(RootfsCustomizeTest, InittabGetsOneSerialGettyLineInItsSyntax) {
  TempDir dir("clone-rootfs");
  ASSERT_TRUE(dir.ok());
  const std::string busybox = dir.File("bb");
  WriteText(busybox + "/etc/inittab", "::sysinit:/etc/init.d/rcS\ntty1::respawn:/sbin/getty 38400 tty1");
  ASSERT_TRUE(CustomizeRootfs(busybox, {}));
  ASSERT_TRUE(CustomizeRootfs(busybox, {}));
  std::string text = ReadText(busybox + "/etc/inittab");
  EXPECT_NE(text.find("tty1\n# Serial console"), std::string::npos) << text;
  EXPECT_NE(text.find("\nttyS0::respawn:/sbin/getty -L 115200 ttyS0 vt100\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("ttyS0::respawn"), text.rfind("ttyS0::respawn")) << "added twice: " << text;

  const std::string sysv = dir.File("sysv");
  WriteText(sysv + "/etc/inittab", "id:2:initdefault:\n1:2345:respawn:/sbin/getty 38400 tty1\n");
  ASSERT_TRUE(CustomizeRootfs(sysv, {}));
  EXPECT_NE(ReadText(sysv + "/etc/inittab").find("\nT0:2345:respawn:/sbin/getty -L ttyS0 115200 vt100\n"),
            std::string::npos);
}

TEST(RootfsCustomizeTest, NeverWritesThroughSymlinksOutOfTheTree) {
  TempDir dir("clone-rootfs");
  ASSERT_TRUE(dir.ok());
  const std::string root = dir.File("root");
  WriteText(dir.File("host-file"), "host\n");
  fs::create_directories(root + "/etc");
  fs::create_symlink(dir.File("host-file"), root + "/etc/hostname");
  fs::create_symlink(dir.File("host-file"), root + "/etc/inittab");
  auto r = CustomizeRootfs(root, {"guest", ""});
  EXPECT_FALSE(r);  // the symlinked inittab cannot be appended to
  EXPECT_EQ(ReadText(dir.File("host-file")), "host\n");
  EXPECT_EQ(ReadText(root + "/etc/hostname"), "guest\n");  // the link was replaced by a file

  const std::string root2 = dir.File("root2");
  fs::create_directories(dir.File("elsewhere"));
  fs::create_directories(root2);
  fs::create_symlink(dir.File("elsewhere"), root2 + "/etc");
  EXPECT_FALSE(CustomizeRootfs(root2, {}));
  EXPECT_TRUE(fs::is_empty(dir.File("elsewhere")));
}

TEST(RootfsCustomizeTest, InstallsTheAgentAndItsSystemdUnit) {
  TempDir dir("clone-rootfs");
  ASSERT_TRUE(dir.ok());
  WriteText(dir.File("clone-agent"),
            "\x7f"
            "ELF fake agent");
  fs::create_directories(dir.File("root"));
  ASSERT_TRUE(CustomizeRootfs(dir.File("root"), {"clone", dir.File("clone-agent")}));
  EXPECT_EQ(ReadText(dir.File("root/usr/bin/clone-agent")),
            "\x7f"
            "ELF fake agent");
  EXPECT_EQ(fs::status(dir.File("root/usr/bin/clone-agent")).permissions(), fs::perms(0755));
  EXPECT_FALSE(fs::exists(dir.File("root/etc/systemd/system/clone-agent.service")));  // no systemd here

  const std::string root = dir.File("systemd");
  fs::create_directories(root + "/usr/lib/systemd/system");
  WriteText(root + "/usr/lib/systemd/systemd", "");
  ASSERT_TRUE(CustomizeRootfs(root, {"clone", dir.File("clone-agent")}));
  ASSERT_TRUE(CustomizeRootfs(root, {"clone", dir.File("clone-agent")}));  // idempotent
  std::string unit = ReadText(root + "/etc/systemd/system/clone-agent.service");
  EXPECT_NE(unit.find("ExecStart=/usr/bin/clone-agent\n"), std::string::npos) << unit;
  EXPECT_NE(unit.find("WantedBy=multi-user.target"), std::string::npos) << unit;
  EXPECT_EQ(fs::read_symlink(root + "/etc/systemd/system/multi-user.target.wants/clone-agent.service"),
            "/etc/systemd/system/clone-agent.service");

  fs::create_directories(dir.File("root2"));
  auto missing = CustomizeRootfs(dir.File("root2"), {"clone", dir.File("no-agent")});
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message().find("no-agent: not found"), std::string::npos) << missing.error().message();
  ASSERT_TRUE(CustomizeRootfs(dir.File("root2"), {"clone", ""}));
  EXPECT_FALSE(fs::exists(dir.File("root2/usr/bin/clone-agent")));
}

TEST(RootfsCustomizeTest, RootPasswordIsLockedForDebianAndSetOnRequest) {
  EXPECT_EQ(*RootPasswordField(RootfsSource::kDebian, ""), std::optional<std::string>("*"));
  EXPECT_EQ(*RootPasswordField(RootfsSource::kDirectory, ""), std::nullopt);
  EXPECT_EQ(*RootPasswordField(RootfsSource::kTar, "locked"), std::optional<std::string>("*"));
  EXPECT_EQ(*RootPasswordField(RootfsSource::kDebian, "none"), std::optional<std::string>(""));
  EXPECT_EQ(*RootPasswordField(RootfsSource::kDebian, "$6$salt$hash"), std::optional<std::string>("$6$salt$hash"));
  EXPECT_FALSE(RootPasswordField(RootfsSource::kDebian, "hunter2"));
  EXPECT_FALSE(RootPasswordField(RootfsSource::kDebian, "$6$a:b"));

  TempDir dir("clone-rootfs");
  ASSERT_TRUE(dir.ok());
  const std::string root = dir.File("root");
  WriteText(root + "/etc/shadow", "daemon:*:19000:0:99999:7:::\nroot:$1$old$x:19000:0:99999:7:::\nbin:*:19000::::::\n");
  fs::permissions(root + "/etc/shadow", fs::perms(0640));
  ASSERT_TRUE(CustomizeRootfs(root, {"clone", "", std::string("*")}));
  EXPECT_EQ(ReadText(root + "/etc/shadow"),
            "daemon:*:19000:0:99999:7:::\nroot:*:19000:0:99999:7:::\nbin:*:19000::::::\n");
  EXPECT_EQ(fs::status(root + "/etc/shadow").permissions(), fs::perms(0640));
  ASSERT_TRUE(CustomizeRootfs(root, {"clone", "", std::string("")}));
  EXPECT_EQ(ReadText(root + "/etc/shadow"),
            "daemon:*:19000:0:99999:7:::\nroot::19000:0:99999:7:::\nbin:*:19000::::::\n");
  ASSERT_TRUE(CustomizeRootfs(root, {"clone", "", std::nullopt}));  // unchanged
  EXPECT_NE(ReadText(root + "/etc/shadow").find("\nroot::19000"), std::string::npos);
  WriteText(root + "/etc/shadow", "daemon:*:19000:0:99999:7:::\n");
  EXPECT_FALSE(CustomizeRootfs(root, {"clone", "", std::string("*")}));  // no root entry
}

}  // namespace
}  // namespace clonevm

#include "cli/rootfs.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <utility>

#include "base/log.h"
#include "cli/exit_codes.h"

namespace clonevm::cli {
namespace {

std::atomic<bool> g_interrupted{false};
volatile sig_atomic_t g_signal = 0;

void OnSignal(int sig) {
  g_signal = sig;
  g_interrupted.store(true);
}

// The agent binary shipped next to the clone binary, if any.
std::string AgentNextToClone() {
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  return (self.parent_path() / "clone-agent").string();
}

void Progress(std::string_view line) {
  std::string text = fmt::format("clone: {}\n", line);
  [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, text.data(), text.size());
}

}  // namespace

void AddRootfsCommand(CLI::App& app, RootfsOptions& o) {
  auto* rootfs = app.add_subcommand("rootfs", "Build root filesystem disk images");
  rootfs->require_subcommand(1);
  auto* create = rootfs->add_subcommand("create", "Make a bootable ext4 disk image for 'clone run --rootfs'");
  create->footer(
      "Examples:\n"
      "  clone rootfs create --from-dir ./rootfs --size 1G -o rootfs.img\n"
      "  clone rootfs create --from-tar alpine-minirootfs.tar.gz --size 256M -o alpine.qcow2 --format qcow2\n"
      "  clone rootfs create --from-oci ./alpine-oci --size 256M -o alpine.img   (skopeo copy docker://alpine "
      "oci:alpine-oci)\n"
      "  sudo clone rootfs create --distro debian --suite bookworm --size 2G -o debian.img\n"
      "  sudo clone rootfs create --distro ubuntu --suite jammy --size 2G -o ubuntu.img\n"
      "The tree is copied (the source is never modified) and configured: /etc/hostname, a serial getty on\n"
      "ttyS0, /etc/fstab, an eth0 placeholder, and the guest agent as /usr/bin/clone-agent (from --agent,\n"
      "or clone-agent next to the clone binary; a systemd image also gets clone-agent.service). With\n"
      "--distro root's password is locked unless --root-password says otherwise.\n"
      "--from-oci verifies every blob's sha256 and applies the layers in order with whiteouts.\n"
      "--distro ubuntu needs the Ubuntu archive keyring (apt-get install ubuntu-keyring).\n"
      "No loop mounts or mount privileges are needed (mkfs.ext4 -d); --distro needs root.\n"
      "Exit status: 0 done, 1 error, 2 usage error, 128+N stopped by signal N (nothing is left behind).");
  auto* dir = create->add_option("--from-dir", o.from_dir, "Root tree to copy into the image");
  auto* tar = create->add_option("--from-tar", o.from_tar, "Tar archive of a root tree (gzip/xz/zstd/bzip2 detected)");
  auto* oci = create->add_option("--from-oci", o.from_oci,
                                 "OCI image layout directory (oci-layout, index.json, blobs/); linux/amd64 if several");
  auto* distro = create->add_option("--distro", o.distro, "Bootstrap a distribution with debootstrap (root only)")
                     ->check(CLI::IsMember({"debian", "ubuntu"}));
  dir->excludes(tar, oci, distro);
  tar->excludes(dir, oci, distro);
  oci->excludes(dir, tar, distro);
  distro->excludes(dir, tar, oci);
  create->add_option("--suite", o.suite,
                     fmt::format("With --distro: the release (default: {} for debian, {} for ubuntu)",
                                 kDefaultDebianSuite, kDefaultUbuntuSuite));
  create->add_option("--mirror", o.mirror,
                     fmt::format("With --distro: the package mirror (default: {} for debian, {} for ubuntu)",
                                 kDefaultDebianMirror, kDefaultUbuntuMirror));
  create->add_option("--size", o.size, "Image size: 512M, 1G, 2048 (a bare number is MiB); at least 16M")->required();
  create->add_option("-o,--output", o.output, "The image file to write")->required();
  create->add_option("--format", o.format, "Image format")
      ->check(CLI::IsMember({"raw", "qcow2"}))
      ->capture_default_str();
  create->add_option("--hostname", o.hostname, "Written to /etc/hostname")->capture_default_str();
  create->add_flag("--force", o.force, "Replace the output file if it exists");
  create->add_option("--agent", o.agent, "The guest agent binary to install (default: clone-agent next to clone)");
  create->add_option("--root-password", o.root_password,
                     "root's password: locked, none (no password on the console) or a crypt(3) hash "
                     "(mkpasswd -m sha-512). Default: locked for --distro, unchanged for --from-*");
}

Result<RootfsCreateOptions> ToRootfsCreateOptions(const RootfsOptions& o) {
  RootfsCreateOptions c;
  int sources = !o.from_dir.empty() + !o.from_tar.empty() + !o.from_oci.empty() + !o.distro.empty();
  if (sources != 1) return Fail("rootfs create: give exactly one of --from-dir, --from-tar, --from-oci, --distro");
  if (!o.from_dir.empty()) {
    c.source = RootfsSource::kDirectory;
    c.source_path = o.from_dir;
  } else if (!o.from_tar.empty()) {
    c.source = RootfsSource::kTar;
    c.source_path = o.from_tar;
  } else if (!o.from_oci.empty()) {
    c.source = RootfsSource::kOci;
    c.source_path = o.from_oci;
  } else if (o.distro == "debian") {
    c.source = RootfsSource::kDebian;
  } else if (o.distro == "ubuntu") {
    c.source = RootfsSource::kUbuntu;
  } else {
    return Fail("rootfs create: unsupported --distro '{}' (supported: debian, ubuntu)", o.distro);
  }
  const bool ubuntu = c.source == RootfsSource::kUbuntu;
  c.suite = o.suite.empty() ? (ubuntu ? kDefaultUbuntuSuite : kDefaultDebianSuite) : o.suite;
  c.mirror = o.mirror.empty() ? (ubuntu ? kDefaultUbuntuMirror : kDefaultDebianMirror) : o.mirror;
  if (c.suite.find_first_of("/ ") != std::string::npos) return Fail("rootfs create: invalid --suite '{}'", o.suite);
  c.size_bytes = CLONE_TRY(ParseRootfsSize(o.size).map_error([](const Error& e) { return e.Wrap("--size"); }));
  if (o.output.empty()) return Fail("rootfs create: --output is empty");
  c.output = o.output;
  c.format = CLONE_TRY(ParseFormatName(o.format));
  if (c.format != Format::kRaw && c.format != Format::kQcow2) return Fail("--format must be raw or qcow2");
  CLONE_TRY_VOID(ValidateHostname(o.hostname).map_error([](const Error& e) { return e.Wrap("--hostname"); }));
  c.hostname = o.hostname;
  c.force = o.force;
  c.agent_path = o.agent;
  if (auto field = RootPasswordField(c.source, o.root_password); !field) return Fail(field.error());
  c.root_password = o.root_password;
  return c;
}

int RootfsCreateCommand(const RootfsOptions& options) {
  auto parsed = ToRootfsCreateOptions(options);
  if (!parsed) {
    Log(LogLevel::kError, "{} (see 'clone rootfs create --help')", parsed.error().message());
    return kExitUsage;
  }
  RootfsCreateOptions c = std::move(*parsed);
  std::string missing_agent;  // warned about once the image exists
  if (c.agent_path.empty()) {
    c.agent_path = AgentNextToClone();
    if (::access(c.agent_path.c_str(), F_OK) != 0) missing_agent = std::exchange(c.agent_path, {});
  }
  c.progress = Progress;
  c.interrupted = &g_interrupted;

  // SIGINT/SIGTERM/SIGHUP: stop the running tool, remove the temporaries, exit 128+N.
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: blocking calls return EINTR
  struct sigaction old_int, old_term, old_hup;
  ::sigaction(SIGINT, &sa, &old_int);
  ::sigaction(SIGTERM, &sa, &old_term);
  ::sigaction(SIGHUP, &sa, &old_hup);
  auto result = CreateRootfs(c);
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  ::sigaction(SIGHUP, &old_hup, nullptr);

  if (g_signal != 0) {
    Log(LogLevel::kError, "rootfs create: interrupted; {} was not written", c.output);
    return kExitSignalBase + g_signal;
  }
  if (!result) {
    Log(LogLevel::kError, "rootfs create: {}", result.error().message());
    return kExitError;
  }
  if (!missing_agent.empty()) {
    Log(LogLevel::kWarn,
        "rootfs create: no guest agent at {} (use --agent PATH): the image has none, so "
        "'clone exec' cannot reach it",
        missing_agent);
  }
  return kExitOk;
}

}  // namespace clonevm::cli

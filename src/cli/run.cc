#include "cli/run.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>

#include "arch/x86/kernel_loader.h"
#include "arch/x86/layout.h"
#include "base/fd.h"
#include "base/log.h"
#include "base/sha256.h"
#include "base/terminal.h"
#include "block/qcow2.h"
#include "cli/exit_codes.h"
#include "devices/virtio/fs.h"
#include "devices/virtio/tap.h"
#include "devices/virtio/vsock.h"
#include "image/rootfs_initrd.h"
#include "net/address.h"
#include "net/vm_network.h"
#include "runtime/vm_service.h"

namespace clonevm::cli {
namespace {

constexpr uint32_t kMaxVcpus = 254;
constexpr uint64_t kOverlayDiskBytes =
    2 * x86::kGiB;  // virtual size; qcow2 allocates on write  // xAPIC IDs 0..253; the IOAPIC takes the next ID

std::vector<uint8_t> ToBytes(std::string s) { return std::vector<uint8_t>(s.begin(), s.end()); }

}  // namespace

int ExitStatusFor(const VmExit& exit) {
  switch (exit.reason) {
    case VmExitReason::kPowerOff:
      return kExitOk;
    case VmExitReason::kReset:
      return kExitGuestReboot;
    case VmExitReason::kCrash:
      return kExitGuestCrash;
    case VmExitReason::kSignal:
      return kExitSignalBase + exit.signal;
    case VmExitReason::kError:
      return kExitError;
  }
  return kExitError;
}

void AddRunCommand(CLI::App& app, RunOptions& o) {
  auto* run = app.add_subcommand("run", "Boot a Linux kernel in a new VM, console on this terminal");
  run->footer(
      "Examples:\n"
      "  clone run --kernel /boot/vmlinuz --initrd initrd.img\n"
      "  clone run --kernel vmlinuz --initrd initrd.img --vcpus 2 --mem-mb 1024 --cmdline 'console=ttyS0'\n"
      "  clone run --kernel vmlinuz --initrd initrd.img --shared-dir /srv/data:data --shared-dir /srv/ref:ref:ro\n"
      "    (guest: mount -t virtiofs data /mnt)\n"
      "On a terminal, Ctrl-A x stops the VM.\n"
      "Exit status: 0 guest powered off, 1 VMM error, 2 usage error, 3 guest rebooted,\n"
      "4 guest crashed, 128+N stopped by signal N.");
  run->add_option("--kernel", o.kernel, "Kernel image: bzImage or ELF vmlinux (PVH entry used if present)")->required();
  run->add_option("--initrd", o.initrd, "Initial ramdisk (cpio, optionally compressed)");
  run->add_option("--cmdline", o.cmdline, "Kernel command line ('reboot=acpi' is appended unless it sets reboot=)")
      ->capture_default_str();
  run->add_option("--mem-mb", o.mem_mb, "Guest RAM in MiB (committed on first touch)")->capture_default_str();
  run->add_option("--vcpus", o.vcpus, "Number of vCPUs")->capture_default_str();
  run->add_option("--kernel-sha256", o.kernel_sha256, "Refuse to boot unless the kernel's SHA-256 is this (hex)");
  run->add_option("--block", o.blocks,
                  "Attach a disk image as virtio-blk (repeatable; the first is /dev/vda): "
                  "PATH[,ro][,format=raw|qcow2]; the format is probed when not given");
  run->add_option("--cid", o.cid,
                  "The guest's vsock CID (3..4294967294); without it, a free CID is chosen when "
                  "/dev/vhost-vsock exists");
  run->add_option("--tap", o.taps,
                  "Attach an existing TAP interface as virtio-net (repeatable; the first is eth0): "
                  "NAME[,mac=52:54:00:12:34:56][,vhost=on|off] (vhost-net when available by default)");
  run->add_option("--shared-dir", o.shared_dirs,
                  "Share a host directory as virtio-fs (repeatable): HOST:TAG[:ro][:squash-root]; the guest "
                  "mounts it with 'mount -t virtiofs TAG /mnt'. TAG: 1-36 of A-Z a-z 0-9 . _ -; ro refuses "
                  "every change (EROFS). Served in-process; the guest cannot reach outside HOST. As root, "
                  "new files belong to the guest caller and guest root is root on the share; squash-root "
                  "runs every request as its caller with guest root as nobody (docs/virtiofs.md)");
  run->add_option("--rootfs", o.rootfs,
                  "Boot from this disk image (ext4; becomes /dev/vda): Clone generates an initrd that "
                  "mounts it and runs its /sbin/init");
  run->add_flag("--overlay{tmpfs}", o.overlay,
                "With --rootfs: open the image read-only (shareable by many VMs) and keep this VM's "
                "changes in an overlay: --overlay (=tmpfs, discarded at exit), --overlay=PATH.qcow2 "
                "(persistent; created if missing), --overlay=auto (a temporary qcow2 under "
                "~/.clone/overlays, removed at exit)");
  run->add_option("--modules", o.modules,
                  "With --rootfs: the kernel's modules directory (default /lib/modules/<kernel release>)");
  run->add_flag("--boot-timing", o.boot_timing, "Print VMM phase timings and the time to the first guest output");
  run->add_flag("--net", o.net,
                "Automatic networking: a TAP on the bridge clonebr0 (created if missing, 172.30.0.1/24) "
                "with NAT to the host's uplink; the guest's address (leased per VM) and MAC are applied "
                "by the guest agent. Removed when the VM exits (the bridge stays for other VMs)");
  run->add_option("--name", o.name, "The VM id used by attach/exec/list (a-z, 0-9, '-'; default: a random vm-xxxxxx)");
  run->add_flag("-d,--detach", o.detach,
                "Run in the background: print the VM id once it runs and return; the console goes to "
                "the VM's console socket ('clone attach') and console.log");
  run->add_flag("--seccomp", o.seccomp,
                "Confine the VM process with seccomp: the event loop, each vCPU and the agent/request workers may "
                "make only the syscalls their role needs (no exec, no new processes, no executable memory); "
                "a forbidden call stops the VM with one line on stderr naming the thread role and syscall");
}

Result<void> ValidateRunOptions(const RunOptions& o) {
  uint64_t min_mb = x86::kMinRamBytes / x86::kMiB;
  uint64_t max_mb = x86::kMaxRamBytes / x86::kMiB;
  if (o.mem_mb < min_mb) return Fail("--mem-mb {}: too small (minimum {})", o.mem_mb, min_mb);
  if (o.mem_mb > max_mb) return Fail("--mem-mb {}: too large (maximum {})", o.mem_mb, max_mb);
  if (o.vcpus == 0) return Fail("--vcpus 0: a VM needs at least one vCPU");
  if (o.vcpus > kMaxVcpus) return Fail("--vcpus {}: too many (maximum {})", o.vcpus, kMaxVcpus);
  for (const auto& block : o.blocks) CLONE_TRY(ParseBlockSpec(block));
  if (o.cid != 0 && (o.cid < virtio::Vsock::kFirstGuestCid || o.cid > virtio::Vsock::kMaxGuestCid)) {
    return Fail("--cid {}: use {}..{}", o.cid, virtio::Vsock::kFirstGuestCid, virtio::Vsock::kMaxGuestCid);
  }
  for (const auto& tap : o.taps) CLONE_TRY(ParseTapSpec(tap));
  for (const auto& dir : o.shared_dirs) CLONE_TRY(ParseSharedDirSpec(dir));
  if (!o.rootfs.empty() && !o.initrd.empty()) return Fail("--rootfs and --initrd cannot be used together");
  if (o.rootfs.empty() && (!o.overlay.empty() || !o.modules.empty())) {
    return Fail("--overlay and --modules need --rootfs");
  }
  if (!o.name.empty() && !IsValidVmId(o.name)) {
    return Fail("--name '{}': use up to 32 characters a-z, 0-9 and '-', not starting with '-'", o.name);
  }
  if (!o.kernel_sha256.empty() && !IsSha256Hex(o.kernel_sha256)) {
    return Fail("--kernel-sha256: expected 64 hexadecimal digits, got '{}'", o.kernel_sha256);
  }
  return {};
}

Result<BlockSpec> ParseBlockSpec(const std::string& value) {
  BlockSpec spec;
  size_t comma = value.find(',');
  spec.path = value.substr(0, comma);
  if (spec.path.empty()) return Fail("--block '{}': missing the image path", value);
  while (comma != std::string::npos) {
    size_t next = value.find(',', comma + 1);
    std::string option = value.substr(comma + 1, next == std::string::npos ? std::string::npos : next - comma - 1);
    if (option == "ro") {
      spec.read_only = true;
    } else if (option.starts_with("format=")) {
      auto format = ParseFormatName(option.substr(7));
      if (!format || *format == Format::kAuto)
        return Fail("--block '{}': unknown format '{}' (raw or qcow2)", value, option.substr(7));
      spec.format = *format;
    } else {
      return Fail("--block '{}': unknown option '{}' (expected ro or format=raw|qcow2)", value, option);
    }
    comma = next;
  }
  return spec;
}

Result<TapSpec> ParseTapSpec(const std::string& value) {
  TapSpec spec;
  size_t comma = value.find(',');
  spec.name = value.substr(0, comma);
  if (spec.name.empty()) return Fail("--tap '{}': missing the TAP interface name", value);
  while (comma != std::string::npos) {
    size_t next = value.find(',', comma + 1);
    std::string option = value.substr(comma + 1, next == std::string::npos ? std::string::npos : next - comma - 1);
    if (option.starts_with("mac=")) {
      auto mac = virtio::ParseMac(option.substr(4));
      if (!mac) return Fail("--tap '{}': {}", value, mac.error().message());
      spec.mac = *mac;
    } else if (option == "vhost=on" || option == "vhost=off") {
      spec.vhost = option == "vhost=on" ? virtio::VhostMode::kOn : virtio::VhostMode::kOff;
    } else {
      return Fail("--tap '{}': unknown option '{}' (expected mac=XX:XX:XX:XX:XX:XX or vhost=on|off)", value, option);
    }
    comma = next;
  }
  return spec;
}

Result<SharedDirConfig> ParseSharedDirSpec(const std::string& value) {
  SharedDirConfig dir;
  std::string rest = value;
  // Trailing options, in either order (HOST may contain ':', TAG may not).
  for (bool more = true; more;) {
    more = false;
    for (auto [suffix, flag] : {std::pair{":ro", &dir.read_only}, std::pair{":squash-root", &dir.squash_root}}) {
      if (rest.ends_with(suffix) && !*flag) {
        *flag = true;
        rest.resize(rest.size() - std::strlen(suffix));
        more = true;
      }
    }
  }
  size_t colon = rest.rfind(':');
  if (colon == std::string::npos) return Fail("--shared-dir '{}': expected HOST:TAG[:ro][:squash-root]", value);
  std::string host = rest.substr(0, colon);
  dir.tag = rest.substr(colon + 1);
  if (host.empty()) return Fail("--shared-dir '{}': missing the host directory", value);
  if (dir.tag.empty() || dir.tag.size() > virtio::Fs::kMaxTagLength) {
    return Fail("--shared-dir '{}': the tag must be 1 to {} characters", value, virtio::Fs::kMaxTagLength);
  }
  for (char c : dir.tag) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return Fail("--shared-dir '{}': the tag '{}' may only use A-Z a-z 0-9 . _ -", value, dir.tag);
    }
  }
  std::error_code ec;
  std::filesystem::path absolute = std::filesystem::absolute(host, ec);
  dir.host_path = ec ? host : absolute.lexically_normal().string();
  if (dir.host_path.size() > 1 && dir.host_path.ends_with('/')) dir.host_path.pop_back();
  return dir;
}

Result<void> CheckSharedDirs(const std::vector<SharedDirConfig>& dirs) {
  for (size_t i = 0; i < dirs.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (dirs[j].tag == dirs[i].tag) return Fail("--shared-dir: the tag '{}' is used twice", dirs[i].tag);
    }
    std::error_code ec;
    auto status = std::filesystem::status(dirs[i].host_path, ec);
    if (ec || !std::filesystem::exists(status)) {
      return Fail("--shared-dir {}:{}: {} does not exist", dirs[i].host_path, dirs[i].tag, dirs[i].host_path);
    }
    if (!std::filesystem::is_directory(status)) {
      return Fail("--shared-dir {}:{}: {} is not a directory", dirs[i].host_path, dirs[i].tag, dirs[i].host_path);
    }
  }
  return {};
}

Result<std::vector<SharedDirConfig>> ResolveSharedDirs(const std::vector<SharedDirConfig>& recorded,
                                                       const std::vector<std::string>& specs) {
  std::vector<SharedDirConfig> dirs = recorded;
  std::vector<std::string> overridden;
  for (const auto& value : specs) {
    SharedDirConfig spec = CLONE_TRY(ParseSharedDirSpec(value));
    auto it = std::find_if(dirs.begin(), dirs.end(), [&](const SharedDirConfig& d) { return d.tag == spec.tag; });
    if (it == dirs.end()) {
      std::string known;
      for (const auto& d : recorded) known += (known.empty() ? "" : ", ") + d.tag;
      return Fail(
          "--shared-dir '{}': the snapshot has no shared directory tagged '{}' ({}); a restored guest's "
          "devices are fixed, so only a recorded tag can be given a new directory",
          value, spec.tag, known.empty() ? "it has none" : "it has: " + known);
    }
    if (std::find(overridden.begin(), overridden.end(), spec.tag) != overridden.end()) {
      return Fail("--shared-dir: the tag '{}' is given twice", spec.tag);
    }
    overridden.push_back(spec.tag);
    it->host_path = spec.host_path;
    it->read_only = spec.read_only;
    it->squash_root = spec.squash_root;
  }
  CLONE_TRY_VOID(CheckSharedDirs(dirs));
  return dirs;
}

// --cid / --tap: vsock (on by default where /dev/vhost-vsock exists) and the TAPs, opened now so a
// missing TAP or a permission problem is reported before KVM is set up.
Result<void> AddVsockAndTaps(const RunOptions& o, VmConfig* config) {
  if (o.cid != 0 || ::access(virtio::Vsock::kDefaultDevice, R_OK | W_OK) == 0) config->vsock = VsockConfig{o.cid};
  return AddTaps(o.taps, &config->nets);
}

// Opens a disk image and records what it was opened from (absolute path, the format actually
// used), which is what a snapshot of the VM needs. `what` names the disk in errors.
Result<DiskConfig> OpenDisk(const std::string& path, bool read_only, Format format, std::string serial,
                            std::string_view what) {
  auto backend = OpenImage(path, OpenMode{.read_only = read_only}, format);
  if (!backend) return Fail(backend.error().Wrap(fmt::format("cannot open {} {}", what, path)));
  Format opened = dynamic_cast<const Qcow2Backend*>(backend->get()) != nullptr ? Format::kQcow2 : Format::kRaw;
  std::error_code ec;
  std::filesystem::path absolute = std::filesystem::absolute(path, ec);
  std::string recorded = ec ? path : absolute.lexically_normal().string();
  return DiskConfig{std::move(*backend), DiskImage{recorded, read_only, opened, std::move(serial)}};
}

// The upper layer of --overlay=PATH: a qcow2 image, created (sparse, kOverlayDiskBytes) when missing.
Result<DiskConfig> OpenOverlayDisk(const std::string& path) {
  if (::access(path.c_str(), F_OK) != 0) {
    auto created = Qcow2Create(path, kOverlayDiskBytes);
    if (!created) return Fail(created.error().Wrap(fmt::format("cannot create overlay {}", path)));
  }
  return OpenDisk(path, false, Format::kQcow2, "clone-overlay", "overlay");
}

// --rootfs: the image becomes the first disk and a generated initrd switches root into it.
Result<void> AddRootfs(const RunOptions& o, VmConfig* config) {
  bool overlay = !o.overlay.empty();
  std::string modules = o.modules;
  if (modules.empty()) {
    auto release = KernelRelease(config->kernel);
    if (!release) return Fail(release.error().Wrap(o.kernel));
    modules = "/lib/modules/" + *release;
  }
  auto initrd = CachedRootfsInitrd(modules, DefaultInitrdCacheDir());
  if (!initrd) return Fail(initrd.error().Wrap("generating the rootfs initrd"));
  config->initrd = std::move(initrd->bytes);
  config->disks.push_back(CLONE_TRY(OpenDisk(o.rootfs, overlay, Format::kAuto, "clone-rootfs", "rootfs")));
  RootMode mode = RootMode::kReadWrite;
  if (overlay && o.overlay == "tmpfs") {
    mode = RootMode::kOverlayTmpfs;
  } else if (overlay) {
    mode = RootMode::kOverlayDisk;
    config->disks.push_back(CLONE_TRY(OpenOverlayDisk(o.overlay)));
  }
  config->cmdline += " " + RootfsCmdline(mode);
  return {};
}

// A temporary overlay path for --overlay=auto: ~/.clone/overlays/vm-<pid>-<time>.qcow2.
Result<std::string> AutoOverlayPath() {
  const char* home = std::getenv("HOME");
  std::filesystem::path dir = std::filesystem::path(home != nullptr ? home : "/tmp") / ".clone" / "overlays";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Fail("cannot create {}: {}", dir.string(), ec.message());
  auto now = std::chrono::steady_clock::now().time_since_epoch().count();
  return (dir / fmt::format("vm-{}-{}.qcow2", ::getpid(), now)).string();
}

Result<VmConfig> PrepareVmConfig(const RunOptions& o) {
  VmConfig config;
  auto kernel = ReadFile(o.kernel);
  if (!kernel) return Fail(kernel.error().Wrap("cannot read kernel"));
  config.kernel = ToBytes(std::move(*kernel));
  if (x86::DetectKernelFormat(config.kernel) == x86::KernelFormat::kUnknown) {
    return Fail("{}: not a Linux kernel (neither a bzImage nor an ELF vmlinux)", o.kernel);
  }
  if (!o.kernel_sha256.empty()) {
    std::string actual = Sha256Hex(config.kernel);
    std::string expected = o.kernel_sha256;
    std::transform(expected.begin(), expected.end(), expected.begin(), ::tolower);
    if (actual != expected) return Fail("{}: SHA-256 is {}, expected {}; refusing to boot", o.kernel, actual, expected);
  }
  if (!o.initrd.empty()) {
    auto initrd = ReadFile(o.initrd);
    if (!initrd) return Fail(initrd.error().Wrap("cannot read initrd"));
    config.initrd = ToBytes(std::move(*initrd));
  }
  config.cmdline = PlatformCmdline(o.cmdline);
  if (!o.rootfs.empty()) CLONE_TRY_VOID(AddRootfs(o, &config));
  for (size_t i = 0; i < o.blocks.size(); ++i) {
    BlockSpec spec = CLONE_TRY(ParseBlockSpec(o.blocks[i]));
    std::string serial = fmt::format("clone-disk{}", config.disks.size());
    config.disks.push_back(CLONE_TRY(OpenDisk(spec.path, spec.read_only, spec.format, std::move(serial), "disk")));
  }
  CLONE_TRY_VOID(AddVsockAndTaps(o, &config));
  for (const auto& value : o.shared_dirs) config.shared_dirs.push_back(CLONE_TRY(ParseSharedDirSpec(value)));
  CLONE_TRY_VOID(CheckSharedDirs(config.shared_dirs));
  config.mem_bytes = o.mem_mb * x86::kMiB;
  config.vcpus = o.vcpus;
  config.console_in = STDIN_FILENO;
  config.console_out = STDOUT_FILENO;
  return config;
}

Result<void> AddTaps(const std::vector<std::string>& taps, std::vector<NetConfig>* nets) {
  for (const auto& value : taps) {
    TapSpec spec = CLONE_TRY(ParseTapSpec(value));
    auto tap = virtio::OpenTap(spec.name);
    if (!tap) return Fail(tap.error().Wrap(fmt::format("--tap {}", spec.name)));
    nets->push_back({std::move(*tap), spec.mac.value_or(virtio::RandomMac()), spec.vhost});
  }
  return {};
}

Result<net::VmNetwork> AttachAutoNetwork(const std::string& id, std::vector<NetConfig>* nets, ServiceOptions* service) {
  net::AutoNetOptions options;
  options.owner = id;
  auto network = CLONE_TRY(net::SetUpAutoNetwork(options));
  Fd tap = network.TakeTapFd();
  CLONE_TRY(virtio::PrepareTap(tap));
  nets->push_back({std::move(tap), network.guest().mac, virtio::VhostMode::kAuto});
  const auto& guest = network.guest();
  agent::SetIdentity identity;
  identity.ipv4 = fmt::format("{}/{}", net::FormatIpv4(guest.ip), guest.prefix_len);
  identity.gateway = net::FormatIpv4(guest.gateway);
  identity.mac = net::FormatMac(guest.mac);
  service->network = identity;
  ServiceOptions::PageNetwork page;
  std::copy(guest.mac.begin(), guest.mac.end(), page.mac.begin());
  auto be = [](uint32_t host_order) {
    return std::array<uint8_t, 4>{static_cast<uint8_t>(host_order >> 24), static_cast<uint8_t>(host_order >> 16),
                                  static_cast<uint8_t>(host_order >> 8), static_cast<uint8_t>(host_order)};
  };
  page.ipv4 = be(guest.ip);
  page.prefix = static_cast<uint8_t>(guest.prefix_len);
  page.gateway = be(guest.gateway);
  service->page_network = page;
  service->info["ip"] = net::FormatIpv4(guest.ip);
  service->info["mac"] = net::FormatMac(guest.mac);
  service->info["tap"] = network.tap_name();
  return network;
}

// Removes a file when it goes out of scope (the --overlay=auto image, on every exit path).
class RemoveOnExit {
 public:
  explicit RemoveOnExit(std::string path) : path_(std::move(path)) {}
  ~RemoveOnExit() { ::unlink(path_.c_str()); }
  RemoveOnExit(const RemoveOnExit&) = delete;
  RemoveOnExit& operator=(const RemoveOnExit&) = delete;

 private:
  std::string path_;
};

// --detach: forks before anything else (KVM binds a VM to the process that created it). The parent
// waits until the child reports the VM running ("ok <id>" on a pipe) and prints the id, or returns
// the child's exit status when it failed (the child has printed why on the inherited stderr).
// Returns nullopt in the child, with the pipe's write end in *ready.
std::optional<int> ForkDetached(Fd* ready) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) {
    Log(LogLevel::kError, "pipe: {}", std::strerror(errno));
    return kExitError;
  }
  pid_t pid = ::fork();
  if (pid < 0) {
    Log(LogLevel::kError, "fork: {}", std::strerror(errno));
    return kExitError;
  }
  if (pid == 0) {
    ::close(p[0]);
    ::setsid();
    *ready = Fd(p[1]);
    return std::nullopt;
  }
  ::close(p[1]);
  Fd read_end(p[0]);
  if (auto id = AwaitReady(read_end)) {
    [[maybe_unused]] auto r = WriteAll(STDOUT_FILENO, id->data(), id->size());
    return kExitOk;
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status) == 0 ? kExitError : WEXITSTATUS(status);
  return kExitError;
}

std::optional<std::string> AwaitReady(const Fd& pipe) {
  std::string message;
  char buf[256];
  for (;;) {
    ssize_t n = ::read(pipe.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    message.append(buf, static_cast<size_t>(n));
  }
  if (!message.starts_with("ok ")) return std::nullopt;
  return message.substr(3);
}

// In the detached child once the VM is up: tells the parent, then lets go of its terminal.
void ReportDetachedReady(Fd& ready, const std::string& id, const std::string& log_path) {
  std::string line = "ok " + id + "\n";
  [[maybe_unused]] auto r = WriteAll(ready.get(), line.data(), line.size());
  ready.reset();
  Fd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
  Fd log(::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  if (null) {
    ::dup2(null.get(), STDIN_FILENO);
    ::dup2(null.get(), STDOUT_FILENO);
    ::dup2(log ? log.get() : null.get(), STDERR_FILENO);
  }
}

int ServeAndRun(std::unique_ptr<VmService> service, std::unique_ptr<Vm> vm, Fd& ready) {
  if (auto served = service->Serve(*vm); !served) {
    Log(LogLevel::kError, "{}", served.error().message());
    return kExitError;
  }
  if (ready) ReportDetachedReady(ready, service->dir().id(), service->dir().vmm_log());
  VmExit exit;
  {
    RawTerminal terminal(STDIN_FILENO);
    auto result = vm->Run();
    exit = result ? *result : VmExit{VmExitReason::kError, result.error().message(), 0};
  }
  service.reset();  // workers joined, sockets and directory removed, before the VM goes
  vm.reset();
  int status = ExitStatusFor(exit);
  LogLevel level = status == kExitOk ? LogLevel::kInfo : LogLevel::kWarn;
  if (exit.reason == VmExitReason::kError) level = LogLevel::kError;
  Log(level, "{} (exit status {})", exit.detail, status);
  return status;
}

int RunCommand(const RunOptions& options, BootTimer& timer) {
  if (auto valid = ValidateRunOptions(options); !valid) {
    Log(LogLevel::kError, "{}", valid.error().message());
    return kExitUsage;
  }
  Fd ready;
  if (options.detach) {
    if (auto parent_status = ForkDetached(&ready)) return *parent_status;
  }
  RunOptions o = options;
  std::optional<RemoveOnExit> auto_overlay;
  if (o.overlay == "auto") {
    auto path = AutoOverlayPath();
    if (!path) {
      Log(LogLevel::kError, "{}", path.error().message());
      return kExitError;
    }
    o.overlay = *path;
    auto_overlay.emplace(*path);
  }
  auto config = PrepareVmConfig(o);
  if (!config) {
    Log(LogLevel::kError, "{}", config.error().message());
    return kExitError;
  }
  timer.Mark("images read");
  config->seccomp = o.seccomp ? sandbox::SeccompMode::kOn : sandbox::SeccompMode::kOff;
  std::string id = o.name.empty() ? NewVmId() : o.name;
  ServiceOptions service_options{id, o.detach, {{"kernel", o.kernel}, {"mem_mib", o.mem_mb}, {"rootfs", o.rootfs}}};
  service_options.set_hostname = !o.name.empty();
  // --net: leased address + TAP on the bridge, before KVM so a permission problem is reported first.
  std::optional<net::VmNetwork> network;
  if (o.net) {
    auto made = AttachAutoNetwork(id, &config->nets, &service_options);
    if (!made) {
      Log(LogLevel::kError, "--net: {}", made.error().message());
      return kExitError;
    }
    network.emplace(std::move(*made));
  }
  auto service = VmService::Create(std::move(service_options));
  if (!service) {
    Log(LogLevel::kError, "{}", service.error().message());
    return kExitError;
  }
  (*service)->ConnectConsole(*config);
  auto vm = Vm::Create(std::move(*config), &timer);
  if (!vm) {
    Log(LogLevel::kError, "{}", vm.error().message());
    return kExitError;
  }
  int status = ServeAndRun(std::move(*service), std::move(*vm), ready);
  if (o.boot_timing) {
    std::string line = fmt::format("clone: boot timing: {}\n", timer.Summary());
    [[maybe_unused]] auto r = WriteAll(STDERR_FILENO, line.data(), line.size());
  }
  return status;
}

}  // namespace clonevm::cli

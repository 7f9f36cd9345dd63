#include "runtime/launch.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <optional>

#include "arch/x86/kernel_loader.h"
#include "arch/x86/layout.h"
#include "base/check.h"
#include "base/log.h"
#include "base/sha256.h"
#include "base/terminal.h"
#include "block/qcow2.h"
#include "devices/virtio/tap.h"
#include "devices/virtio/virtio_spec.h"
#include "devices/virtio/vsock.h"
#include "image/rootfs_initrd.h"
#include "net/address.h"
#include "net/vm_network.h"
#include "runtime/vm_service.h"
#include "snapshot/disks.h"
#include "snapshot/take.h"

namespace clonevm {
namespace {

constexpr uint64_t kOverlayDiskBytes = 2 * x86::kGiB;  // virtual size; qcow2 allocates on write

std::vector<uint8_t> ToBytes(std::string s) { return std::vector<uint8_t>(s.begin(), s.end()); }

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

// The spec's TAPs, each opened (IFF_VNET_HDR) and appended to *nets.
Result<void> AddTaps(const std::vector<spec::TapSpec>& taps, std::vector<NetConfig>* nets) {
  for (const auto& spec : taps) {
    auto tap = virtio::OpenTap(spec.name);
    if (!tap) return Fail(tap.error().Wrap(fmt::format("--tap {}", spec.name)));
    nets->push_back({std::move(*tap), spec.mac.value_or(virtio::RandomMac()), spec.vhost});
  }
  return {};
}

// --net: a lease, the shared bridge + NAT and a TAP of the VM's own (net/vm_network.h), appended
// to *nets; the guest's address goes into service->network (applied by the agent) and info.
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

// The VM's networks: --net first (its address goes into the service's identity), then the TAPs.
Result<std::optional<net::VmNetwork>> AttachNetworks(const spec::VmSpec& spec, const std::string& id,
                                                     std::vector<NetConfig>* nets, ServiceOptions* service) {
  std::optional<net::VmNetwork> network;
  if (spec.net) {
    auto made = AttachAutoNetwork(id, nets, service);
    if (!made) return Fail(made.error().Wrap("--net"));
    network.emplace(std::move(*made));
  }
  CLONE_TRY_VOID(AddTaps(spec.taps, nets));
  return network;
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

// The upper layer of --overlay PATH: a qcow2 image, created (sparse, kOverlayDiskBytes) when missing.
Result<DiskConfig> OpenOverlayDisk(const std::string& path) {
  if (::access(path.c_str(), F_OK) != 0) {
    auto created = Qcow2Create(path, kOverlayDiskBytes);
    if (!created) return Fail(created.error().Wrap(fmt::format("cannot create overlay {}", path)));
  }
  return OpenDisk(path, false, Format::kQcow2, "clone-overlay", "overlay");
}

// --rootfs: the image becomes the first disk and a generated initrd switches root into it.
// `overlay` is the spec's with "auto" already replaced by a path.
Result<void> AddRootfs(const spec::RootfsSpec& rootfs, const std::string& overlay, const std::string& kernel_path,
                       VmConfig* config) {
  bool overlaid = !overlay.empty();
  std::string modules = rootfs.modules;
  if (modules.empty()) {
    auto release = KernelRelease(config->kernel);
    if (!release) return Fail(release.error().Wrap(kernel_path));
    modules = "/lib/modules/" + *release;
  }
  auto initrd = CachedRootfsInitrd(modules, DefaultInitrdCacheDir());
  if (!initrd) return Fail(initrd.error().Wrap("generating the rootfs initrd"));
  config->initrd = std::move(initrd->bytes);
  config->disks.push_back(CLONE_TRY(OpenDisk(rootfs.image, overlaid, Format::kAuto, "clone-rootfs", "rootfs")));
  RootMode mode = RootMode::kReadWrite;
  if (overlaid && overlay == "tmpfs") {
    mode = RootMode::kOverlayTmpfs;
  } else if (overlaid) {
    mode = RootMode::kOverlayDisk;
    config->disks.push_back(CLONE_TRY(OpenOverlayDisk(overlay)));
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

Result<void> ReadKernel(const spec::VmSpec& s, VmConfig* config) {
  auto kernel = ReadFile(s.kernel);
  if (!kernel) return Fail(kernel.error().Wrap("cannot read kernel"));
  config->kernel = ToBytes(std::move(*kernel));
  if (x86::DetectKernelFormat(config->kernel) == x86::KernelFormat::kUnknown) {
    return Fail("{}: not a Linux kernel (neither a bzImage nor an ELF vmlinux)", s.kernel);
  }
  if (!s.kernel_sha256.empty()) {
    std::string actual = Sha256Hex(config->kernel);
    std::string expected = s.kernel_sha256;
    std::transform(expected.begin(), expected.end(), expected.begin(), ::tolower);
    if (actual != expected) return Fail("{}: SHA-256 is {}, expected {}; refusing to boot", s.kernel, actual, expected);
  }
  return {};
}

// The balloon device for --balloon (docs/density.md); none for off.
std::optional<virtio::BalloonOptions> BalloonOptionsOf(const spec::BalloonSpec& b) {
  if (b.mode == "off") return std::nullopt;
  return virtio::BalloonOptions{.free_page_reporting = b.free_page_reporting, .stats_interval_s = b.stats_interval_s};
}

// --balloon auto: the policy for a VM of `ram_bytes` (floor and times from the flags).
Result<std::optional<BalloonPolicyConfig>> BalloonPolicyOf(const spec::BalloonSpec& b, uint64_t ram_bytes) {
  if (b.mode != "auto") return std::nullopt;
  BalloonPolicyConfig policy;
  policy.ram_bytes = ram_bytes;
  if (!b.floor.empty()) {
    auto mib = ParseMemoryMib(b.floor);
    if (!mib) return Fail(mib.error().Wrap("--balloon-floor"));
    policy.floor_bytes = *mib * x86::kMiB;
  }
  if (!b.times.empty()) policy.times = CLONE_TRY(ParseBalloonTimes(b.times));
  return policy;
}

// Boot: reads and verifies the kernel and initrd and opens every disk, before KVM is opened.
Result<VmConfig> BootConfig(const spec::VmSpec& s, const std::string& overlay) {
  VmConfig config;
  CLONE_TRY_VOID(ReadKernel(s, &config));
  if (!s.initrd.empty()) {
    auto initrd = ReadFile(s.initrd);
    if (!initrd) return Fail(initrd.error().Wrap("cannot read initrd"));
    config.initrd = ToBytes(std::move(*initrd));
  }
  config.cmdline = PlatformCmdline(s.cmdline);
  if (!s.rootfs.image.empty()) CLONE_TRY_VOID(AddRootfs(s.rootfs, overlay, s.kernel, &config));
  for (const auto& disk : s.disks) {
    std::string serial = fmt::format("clone-disk{}", config.disks.size());
    config.disks.push_back(CLONE_TRY(OpenDisk(disk.path, disk.read_only, disk.format, std::move(serial), "disk")));
  }
  // vsock: on by default where /dev/vhost-vsock exists.
  if (s.cid != 0 || ::access(virtio::Vsock::kDefaultDevice, R_OK | W_OK) == 0) config.vsock = VsockConfig{s.cid};
  CLONE_TRY_VOID(spec::CheckShares(s.shares));
  config.shared_dirs = spec::ToSharedDirs(s.shares);
  config.balloon = BalloonOptionsOf(s.balloon);
  config.ksm = s.ksm ? Ksm::kMergeable : Ksm::kOff;
  config.mem_bytes = s.mem_mib * x86::kMiB;
  config.vcpus = s.vcpus;
  return config;
}

// The identity of a VM made from a snapshot, decided in one place and in order (see the header):
// the vsock CID, the TAPs and MACs (attached here: --net leases its own), then what VmService applies
// from *service — identity page and VMGenID (from_snapshot), the agent's machine-id and hostname.
// A restore keeps the recorded CID (unless the spec names one) and the machine-id.
struct SnapshotIdentity {
  uint64_t cid = 0;  // 0: the first free one
  std::vector<NetConfig> nets;
  std::optional<net::VmNetwork> network;  // --net: lease + TAP, released with it
};
Result<SnapshotIdentity> ApplyIdentity(const Launch& launch, const std::string& id, ServiceOptions* service) {
  bool fork = launch.kind == LaunchKind::kFork;
  SnapshotIdentity identity;
  identity.cid = launch.spec.cid;  // a fork's spec has 0 here unless --cid (spec::ApplyOverrides)
  identity.network = CLONE_TRY(AttachNetworks(launch.spec, id, &identity.nets, service));
  service->from_snapshot = true;  // identity page: generation + 1, new token and seed; VMGenID changed
  service->fresh_machine_id = fork;
  service->set_hostname = fork || launch.set_hostname;
  return identity;
}

// Serves the built VM, tells a detached parent, runs it to its end with the terminal raw, tears down.
Result<VmExit> ServeAndRun(std::unique_ptr<VmService> service, std::unique_ptr<Vm> vm, Fd& ready,
                           const std::string& vmm_log) {
  CLONE_TRY_VOID(service->Serve(*vm));
  if (ready) ReportDetachedReady(ready, service->dir().id(), vmm_log.empty() ? service->dir().vmm_log() : vmm_log);
  VmExit exit;
  {
    RawTerminal terminal(STDIN_FILENO);
    auto result = vm->Run();
    exit = result ? *result : VmExit{VmExitReason::kError, result.error().message(), 0};
  }
  service.reset();  // workers joined, sockets and directory removed, before the VM goes
  vm.reset();
  return exit;
}

nlohmann::json RecordedSpecJson(const spec::VmSpec& s, const std::string& id) {
  spec::VmSpec named = s;
  named.name = id;
  return spec::SpecToJson(named);
}

Result<VmExit> Boot(const Launch& launch, Fd& ready, BootTimer& timer) {
  const spec::VmSpec& s = launch.spec;
  std::string overlay = s.rootfs.overlay;
  std::optional<RemoveOnExit> auto_overlay;
  if (overlay == "auto") {
    overlay = CLONE_TRY(AutoOverlayPath());
    auto_overlay.emplace(overlay);
  }
  VmConfig config = CLONE_TRY(BootConfig(s, overlay));
  timer.Mark("images read");
  config.seccomp = s.seccomp ? sandbox::SeccompMode::kOn : sandbox::SeccompMode::kOff;
  std::string id = s.name.empty() ? NewVmId() : s.name;
  nlohmann::json info = {
      {"kernel", s.kernel}, {"mem_mib", s.mem_mib}, {"rootfs", s.rootfs.image}, {"spec", RecordedSpecJson(s, id)}};
  ServiceOptions service_options{id, launch.detached, std::move(info), std::nullopt};
  service_options.set_hostname = launch.set_hostname;
  service_options.launched = launch.launched;
  service_options.balloon_policy = CLONE_TRY(BalloonPolicyOf(s.balloon, config.mem_bytes));
  // Networks before KVM, so a permission problem is reported first.
  auto network = CLONE_TRY(AttachNetworks(s, id, &config.nets, &service_options));
  auto service = CLONE_TRY(VmService::Create(std::move(service_options)));
  config.console_in = STDIN_FILENO;
  config.console_out = STDOUT_FILENO;
  service->ConnectConsole(config);
  auto vm = CLONE_TRY(Vm::Create(std::move(config), &timer));
  return ServeAndRun(std::move(service), std::move(vm), ready, launch.vmm_log);
}

Result<VmExit> FromSnapshot(const Launch& launch, Fd& ready, BootTimer& timer) {
  snapshot::Loaded& loaded = *launch.loaded;
  const spec::VmSpec& s = launch.spec;
  bool fork = launch.kind == LaunchKind::kFork;
  // Disks: the rewrites and every base the disks need, checked before anything is created.
  auto rewrites = CLONE_TRY(snapshot::ParsePathRewrites(launch.disk_rewrites));
  if (auto disks = snapshot::CheckDisks(loaded.config, loaded.path, rewrites); !disks) {
    return Fail(disks.error().Wrap(loaded.path));
  }
  if (auto shares = spec::CheckShares(s.shares); !shares) return Fail(shares.error().Wrap(loaded.path));
  CLONE_TRY_VOID(CheckNetworks(loaded.config, s));
  std::string id = s.name.empty() ? NewVmId() : s.name;
  nlohmann::json info = loaded.config.info;
  info["snapshot"] = loaded.path;
  info["mem_mib"] = loaded.config.mem_bytes >> 20;
  info["spec"] = RecordedSpecJson(s, id);
  if (fork) info["forked_from"] = loaded.path;
  ServiceOptions service_options{id, launch.detached, std::move(info), std::nullopt};
  service_options.launched = launch.launched;
  service_options.balloon_policy = CLONE_TRY(BalloonPolicyOf(s.balloon, loaded.config.mem_bytes));
  // Identity first (its network address goes into the service), then the VM directory; every step
  // undoes itself on failure (VmNetwork: lease + TAP; VmService: the directory).
  SnapshotIdentity identity = CLONE_TRY(ApplyIdentity(launch, id, &service_options));
  auto service = CLONE_TRY(VmService::Create(std::move(service_options)));
  // Writable disks get qcow2 overlays in the VM's runtime directory (removed with the VM).
  auto config = CLONE_TRY(
      snapshot::RestoreVmConfig(loaded.config, loaded.path, snapshot::DiskPlan{service->dir().path(), rewrites}));
  config.shared_dirs = spec::ToSharedDirs(s.shares);
  config.ksm = s.ksm ? Ksm::kMergeable : Ksm::kOff;
  if (config.vsock) config.vsock->cid = identity.cid;
  config.nets = std::move(identity.nets);
  config.console_in = STDIN_FILENO;
  config.console_out = STDOUT_FILENO;
  config.seccomp = s.seccomp ? sandbox::SeccompMode::kOn : sandbox::SeccompMode::kOff;
  service->ConnectConsole(config);
  auto vm = Vm::Restore(std::move(config), loaded.state, loaded.memory, &timer);
  if (!vm) return Fail(vm.error().Wrap(fmt::format("{} from {}", fork ? "forking" : "restoring", loaded.path)));
  loaded.memory.reset();  // the mappings keep the file
  return ServeAndRun(std::move(service), std::move(*vm), ready, launch.vmm_log);
}

}  // namespace

Result<void> CheckNetworks(const snapshot::SnapshotConfig& config, const spec::VmSpec& s) {
  size_t wanted = std::count(config.virtio_types.begin(), config.virtio_types.end(), virtio::kDeviceTypeNet);
  size_t given = (s.net ? 1 : 0) + s.taps.size();
  if (given != wanted) {
    return Fail("the snapshot has {} network device(s) and {} were given: use --net or one --tap per device", wanted,
                given);
  }
  return {};
}

Result<VmExit> RunVmProcess(const Launch& launch, Fd ready, BootTimer& timer) {
  if (launch.kind == LaunchKind::kBoot) return Boot(launch, ready, timer);
  CLONE_CHECK(launch.loaded != nullptr);
  return FromSnapshot(launch, ready, timer);
}

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

}  // namespace clonevm

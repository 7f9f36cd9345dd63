// Vm: one virtual machine — KVM VM fd, guest memory, buses and devices, vCPU threads and the event
// loop that serves the console and signals.
//
// Lifecycle: Create() builds everything and loads the kernel (nothing runs yet); Run() starts one
// thread per vCPU, runs the event loop on the calling thread until the guest powers off, resets,
// crashes, or a SIGINT/SIGTERM arrives, then stops and joins the vCPUs and returns why it ended.
// The first exit reason wins; later ones are ignored.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "arch/x86/kernel_loader.h"
#include "base/event_loop.h"
#include "base/result.h"
#include "block/block_backend.h"
#include "block/image.h"
#include "devices/bus.h"
#include "devices/legacy/serial.h"
#include "devices/virtio/balloon.h"
#include "devices/virtio/mmio_transport.h"
#include "devices/virtio/net.h"
#include "kvm/kvm.h"
#include "memory/guest_memory.h"
#include "sandbox/seccomp.h"
#include "vmm/boot_timer.h"
#include "vmm/vm_state.h"

namespace clonevm {

// What a disk was opened from: what a snapshot records about it (snapshot/disks.h) and the Vm
// keeps after the backend has moved into the device.
struct DiskImage {
  std::string path;  // the image file as opened (absolute, or relative to the cwd)
  bool read_only = false;
  Format format = Format::kRaw;  // the format it was opened as (resolved: never kAuto)
  std::string serial;            // VIRTIO_BLK_T_GET_ID, at most 20 bytes
};

// A disk attached as a virtio-blk device, in order (the first is the guest's /dev/vda).
struct DiskConfig {
  std::unique_ptr<BlockBackend> backend;  // opened (and locked) before the VM is built
  DiskImage image;                        // where `backend` came from; image.serial is the device's
};

// The virtio-vsock device (data path in /dev/vhost-vsock).
struct VsockConfig {
  uint64_t cid = 0;  // the guest's CID (3 .. 2^32-2); 0: the first free one from 3 up
};

// A virtio-net device on an open TAP, in order (the first is the guest's eth0).
struct NetConfig {
  Fd tap;                    // a TAP opened with IFF_VNET_HDR (virtio::OpenTap, or net/ for --net)
  virtio::MacAddress mac{};  // the guest's MAC (config space)
  virtio::VhostMode vhost = virtio::VhostMode::kAuto;  // vhost-net, else the userspace data path
};

// A host directory shared with the guest as virtio-fs (guest: mount -t virtiofs TAG /mnt), served
// by an in-process FUSE server (fs/passthrough.h).
struct SharedDirConfig {
  std::string host_path;  // an existing directory (absolute)
  std::string tag;        // 1..36 bytes, [A-Za-z0-9._-]
  bool read_only = false;
  bool squash_root = false;  // every request as its caller, guest root as nobody (fs/passthrough.h)
};

struct VmConfig {
  std::vector<uint8_t> kernel;  // the image bytes, already read and verified
  std::vector<uint8_t> initrd;
  std::string cmdline;
  uint64_t mem_bytes = 0;
  Ksm ksm = Ksm::kMergeable;  // guest RAM offered to KSM (--no-ksm: not)
  uint32_t vcpus = 1;
  int console_in = 0;   // fd the serial console reads from (-1: none); Ctrl-A x on a terminal stops the VM
  int console_out = 1;  // fd guest serial output goes to (-1: none), unless console_sink is set
  // When set, receives all guest serial output instead of console_out. Called on vCPU threads with
  // the serial device's lock held: it must not block for long or call back into the VM.
  std::function<void(std::span<const uint8_t>)> console_sink;
  bool rng = true;  // virtio-rng entropy device
  std::vector<DiskConfig> disks;
  std::optional<VsockConfig> vsock;               // virtio-vsock, when set
  std::vector<NetConfig> nets;                    // virtio-net devices
  std::optional<virtio::BalloonOptions> balloon;  // virtio-balloon after the nets, when set
  std::vector<SharedDirConfig> shared_dirs;       // virtio-fs devices, after every other virtio device
  // kOn: every thread confined to its role's syscalls (sandbox/seccomp.h) from Run() on.
  sandbox::SeccompMode seccomp = sandbox::SeccompMode::kOff;
};

// The kernel command line the guest gets: the user's, plus what Clone's platform needs unless the
// user chose otherwise. Today that is "reboot=acpi": on hardware-reduced ACPI without EFI, Linux
// otherwise picks the EFI reboot method, falls back to a BIOS real-mode jump and hangs.
std::string PlatformCmdline(const std::string& user_cmdline);

enum class VmExitReason { kPowerOff, kReset, kCrash, kSignal, kError };

struct VmExit {
  VmExitReason reason = VmExitReason::kError;
  std::string detail;  // human-readable: what happened
  int signal = 0;      // for kSignal
};

class Vm {
 public:
  // Takes the config by value: the VM owns the disks' backends from here on.
  [[nodiscard]] static Result<std::unique_ptr<Vm>> Create(VmConfig config, BootTimer* timer);
  ~Vm();
  Vm(const Vm&) = delete;
  Vm& operator=(const Vm&) = delete;

  // Runs the VM to its end. Blocks SIGINT/SIGTERM in the calling thread (and so in the vCPU
  // threads it starts) and receives them through a signalfd.
  [[nodiscard]] Result<VmExit> Run();

  // Ends the VM with `exit` unless it is already ending. Any thread.
  void RequestExit(VmExit exit);

  // The guest's vsock CID (0 without a vsock device). Any thread.
  uint64_t vsock_cid() const;

  // The memory balloon, when the VM has one (VmConfig::balloon). Any thread (the device's lock).
  // SetBalloonTarget asks the guest to hand `balloon_bytes` (rounded down to 4 KiB pages, capped at
  // its RAM) to the balloon; 0 deflates it completely.
  bool has_balloon() const { return balloon_transport_ != nullptr; }
  [[nodiscard]] Result<void> SetBalloonTarget(uint64_t balloon_bytes);
  std::optional<virtio::BalloonStatus> balloon_status() const;
  std::optional<virtio::BalloonOptions> balloon_options() const;

  // Stops every vCPU outside KVM_RUN (pending MMIO/PIO completed, so vCPU state is consistent) and
  // keeps them there until Resume(). Idempotent. Any thread but a vCPU's; fails if the vCPUs do not
  // stop within a few seconds. Devices keep serving their queues (the event loop keeps running).
  [[nodiscard]] Result<void> Pause();
  void Resume();
  bool paused() const { return pause_requested_.load(std::memory_order_acquire); }

  // Serial console input from any thread (console socket clients); returns the bytes accepted.
  size_t EnqueueConsoleInput(std::span<const uint8_t> bytes);

  // Tells the guest that its VM Generation ID changed: pulses the ACPI Generic Event Device's GSI
  // (x86::kGedGsi, edge), whose _EVT notifies the VGEN device, and the guest's vmgenid driver
  // rereads the id at x86::kVmGenIdAddr (write the new id there first) and reseeds its RNG. Any
  // thread, once the VM is built: before Run() (a restored guest then takes the interrupt on its
  // first instruction; the in-kernel IOAPIC latches the edge on an unmasked pin) or while it runs.
  // A guest that has not set the pin up yet (a fresh boot, a kernel without evged) drops the edge,
  // which is harmless: it reads the id when its driver binds. Failures are logged, not returned —
  // the guest then simply keeps its previous generation.
  void NotifyVmGenerationChanged();

  // When a vCPU first entered KVM_RUN (the guest's first instruction of this process), if yet.
  // Any thread.
  std::optional<std::chrono::steady_clock::time_point> first_run() const;

  // The compiled seccomp filters when the VM runs confined, else null. Run() installs the vmm and
  // vcpu roles; threads the VM's owner starts install theirs (worker, fs) from these. Any thread.
  const sandbox::SeccompFilters* seccomp() const { return seccomp_ ? &*seccomp_ : nullptr; }

  EventLoop& loop() { return *loop_; }
  const GuestMemory& memory() const { return *memory_; }
  uint32_t vcpu_count() const { return static_cast<uint32_t>(vcpus_.size()); }

  // --- Snapshots (vmm/vm_snapshot.cc) ---
  // Taking one, on the event-loop thread (which is what serves the queues, so no queue is processed
  // meanwhile): Pause(); PauseDevices(); SaveState() and copy memory(); ResumeDevices(); Resume().
  // PauseDevices() stops data paths that run outside the VMM (vhost) and completes in-flight block
  // I/O, so guest memory and queue positions stop changing; on failure the devices already paused
  // are resumed. SaveState() needs both pauses.
  [[nodiscard]] Result<void> PauseDevices();
  void ResumeDevices();
  [[nodiscard]] Result<VmState> SaveState() const;
  // The device types in MMIO slot order (virtio::kDeviceType*), what a restore must recreate.
  std::vector<uint32_t> virtio_device_types() const;
  // The disks in attach order (the i-th block device in virtio_device_types() is disk i).
  const std::vector<DiskImage>& disk_images() const { return disk_images_; }
  // The shared directories in attach order (the i-th fs device in virtio_device_types()).
  const std::vector<SharedDirConfig>& shared_dirs() const { return shared_dirs_; }

  // --- Dirty page tracking for incremental snapshots (vmm/vm_dirty.cc) ---
  // Event-loop thread, with the vCPUs and devices paused (snapshot::Take does both). Tracking, once
  // started, lasts for the VM's life.
  // StartDirtyTracking(): every memory slot re-registered with KVM_MEM_LOG_DIRTY_PAGES and the
  // memory's DirtyLog enabled (virtqueues mark device writes; vhost devices start logging into it
  // when ResumeDevices() restarts them). Idempotent.
  // CollectDirtyPages(): the memory-file pages written since tracking started or since the previous
  // collection — KVM's log (vCPU writes) ∪ the DirtyLog (userspace devices and vhost) — with both
  // logs re-armed. ReturnDirtyPages() hands a collection back (a snapshot that failed to write), so
  // the next collection still reports those pages.
  [[nodiscard]] Result<void> StartDirtyTracking();
  bool dirty_tracking() const { return dirty_tracking_; }
  [[nodiscard]] Result<PageBitmap> CollectDirtyPages();
  void ReturnDirtyPages(const PageBitmap& file_pages);
  // The snapshot the current tracking period started at: an incremental snapshot of this VM may
  // only name it as its parent. Set by snapshot::Take, event-loop thread.
  struct SnapshotBase {
    std::string name;
    std::string dir;
    std::string id;  // the random id recorded in that snapshot's config
  };
  const std::optional<SnapshotBase>& snapshot_base() const { return snapshot_base_; }
  void set_snapshot_base(std::optional<SnapshotBase> base) { snapshot_base_ = std::move(base); }

  // Builds a VM from a snapshot instead of a kernel: guest RAM is `memory` mapped MAP_PRIVATE
  // (GuestMemory::CreateFromImage: the full memory file, then incremental layers over it; laid out
  // as GuestMemory::CreateFromFile says), the devices are recreated from `config` (which
  // must describe the same devices in the same order as the snapshotted VM; its kernel and initrd
  // are ignored) and given their saved state, then the irqchip, PIT, vCPUs and kvmclock are
  // restored. Run() then continues the guest where it was paused. A mismatch between config and
  // state, or a state KVM refuses, is an error and no VM is left behind.
  [[nodiscard]] static Result<std::unique_ptr<Vm>> Restore(VmConfig config, const VmState& state,
                                                           const MemoryImage& memory, BootTimer* timer);

 private:
  struct Vcpu;
  Vm() = default;
  // The start shared by Create and Restore: KVM opened, the VM created with its TSS and identity
  // map; `what` names the vCPU count in the error when KVM allows fewer.
  [[nodiscard]] static Result<std::unique_ptr<Vm>> OpenKvm(const VmConfig& config, BootTimer* timer,
                                                           std::string_view what);
  // Takes guest RAM (anonymous or snapshot-backed) and registers its regions with KVM.
  [[nodiscard]] Result<void> SetUpMemory(GuestMemory memory);
  [[nodiscard]] Result<void> SetUpDevices(VmConfig& config);
  // Places a virtio device in the next MMIO slot with the next GSI and wires its irqfd and
  // per-queue ioeventfds (served on the event loop).
  [[nodiscard]] Result<void> AddVirtioDevice(std::unique_ptr<virtio::VirtioDevice> device);
  [[nodiscard]] Result<void> LoadGuest(const VmConfig& config);
  [[nodiscard]] Result<void> CreateVcpus(uint32_t count);
  // Snapshot restore steps (vm_snapshot.cc).
  [[nodiscard]] Result<void> RestoreDevices(const VmState& state);
  // `elapsed_ns`: wall-clock time since the snapshot; every vCPU's TSC moves on by it (vm_state.h).
  [[nodiscard]] Result<void> RestoreVcpus(const VmState& state, uint64_t elapsed_ns);
  // KVM_KVMCLOCK_CTRL on every vCPU, none of them in KVM_RUN: the guest's soft-lockup and RCU-stall
  // detectors then ignore the time its vCPUs were stopped (a restore, a snapshot's pause).
  void MarkGuestPaused();
  [[nodiscard]] Result<void> WatchConsoleInput();
  // Warns (once) about a booting vCPU that makes no exit to Clone for CLONE_STALL_WARN_SECONDS
  // (default 20; 0: off) while it is not halted and the guest has printed nothing: a kernel this
  // KVM cannot run spins like that. Loop thread; the vCPU thread itself reports its registers (ReportStall).
  [[nodiscard]] Result<void> WatchStalls();
  void CheckStalls();
  void ReportStall(Vcpu& vcpu);
  std::vector<uint8_t> FilterConsoleEscape(std::span<const uint8_t> input);
  void VcpuLoop(Vcpu& vcpu);
  bool HandleExit(Vcpu& vcpu, uint32_t reason);
  void StopVcpus();

  BootTimer* timer_ = nullptr;
  std::optional<sandbox::SeccompFilters> seccomp_;  // compiled in OpenKvm with --seccomp
  std::optional<kvm::Kvm> kvm_;
  std::optional<kvm::VmFd> vm_fd_;
  std::optional<GuestMemory> memory_;
  Bus pio_bus_;
  Bus mmio_bus_;
  std::shared_ptr<Serial> serial_;
  struct VirtioSlot {
    std::shared_ptr<virtio::MmioTransport> transport;
    uint64_t base;
    uint32_t gsi;
  };
  std::vector<VirtioSlot> virtio_;
  bool dirty_tracking_ = false;                         // event-loop thread (vm_dirty.cc)
  std::optional<SnapshotBase> snapshot_base_;           // event-loop thread
  std::vector<DiskImage> disk_images_;                  // set by SetUpDevices
  std::vector<SharedDirConfig> shared_dirs_;            // set by SetUpDevices
  virtio::MmioTransport* vsock_transport_ = nullptr;    // in virtio_, when there is a vsock device
  virtio::MmioTransport* balloon_transport_ = nullptr;  // in virtio_, when there is a balloon
  std::vector<std::unique_ptr<Vcpu>> vcpus_;
  std::unique_ptr<EventLoop> loop_;
  x86::BootSetup boot_setup_;
  int console_in_ = -1;
  int console_out_ = 1;
  Fd stall_timer_;
  std::chrono::seconds stall_after_{20};
  std::chrono::steady_clock::time_point stall_watch_start_;
  std::atomic<bool> first_output_seen_{false};
  std::atomic<int64_t> first_run_ns_{0};  // steady_clock nanoseconds since its epoch; 0: not yet
  bool escape_pending_ = false;           // event-loop thread only
  std::atomic<bool> exiting_{false};
  std::mutex exit_mu_;
  VmExit exit_;

  // Pause: Pause() raises pause_requested_ and kicks; each vCPU thread parks in PauseSelf().
  std::mutex pause_mu_;
  std::condition_variable pause_cv_;
  std::atomic<bool> pause_requested_{false};
  uint32_t parked_vcpus_ = 0;   // guarded by pause_mu_
  uint32_t running_vcpus_ = 0;  // threads inside VcpuLoop, guarded by pause_mu_
  void PauseSelf(Vcpu& vcpu);
  void KickVcpus();
};

// One vCPU: its fd and, while Run() runs, its thread (vm.cc; vm_snapshot.cc saves and restores it).
struct Vm::Vcpu {
  explicit Vcpu(kvm::VcpuFd fd) : vcpu(std::move(fd)) {}
  kvm::VcpuFd vcpu;
  std::thread thread;
  // Stall watch (vm.cc WatchStalls): exits to Clone counted by the vCPU thread, KVM's own counters
  // when it has them, and the last time either moved (event-loop thread).
  std::atomic<uint64_t> exits{0};
  std::atomic<bool> stall_report{false};  // set by the loop: report state at the next kick
  std::optional<kvm::Stats> stats;
  uint64_t seen_exits = 0;
  std::chrono::steady_clock::time_point moved;
  std::atomic<bool> stall_warned{false};  // written by the vCPU thread
};

}  // namespace clonevm

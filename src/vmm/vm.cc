#include "vmm/vm.h"

#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cstring>

#include "acpi/tables.h"
#include "arch/x86/cpu_setup.h"
#include "arch/x86/layout.h"
#include "base/log.h"
#include "devices/legacy/cmos.h"
#include "devices/legacy/power.h"
#include "devices/pci/pci_root.h"
#include "devices/virtio/block.h"
#include "devices/virtio/fs.h"
#include "devices/virtio/rng.h"
#include "devices/virtio/vsock.h"
#include "host/check.h"

namespace clonevm {
namespace {

// The signal that kicks a vCPU thread out of KVM_RUN. Its handler does nothing: the point is the
// EINTR, together with kvm_run::immediate_exit for a kick that lands outside KVM_RUN.
constexpr int kKickSignal = SIGUSR1;

void InstallKickHandler() {
  struct sigaction sa {};
  sa.sa_handler = [](int) {};
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
  sigaction(kKickSignal, &sa, nullptr);
}

constexpr uint32_t kLapicLvtLint0 = 0x350;
constexpr uint32_t kLapicLvtLint1 = 0x360;
constexpr uint32_t kDeliveryModeExtInt = 7;
constexpr uint32_t kDeliveryModeNmi = 4;

void SetLvt(kvm_lapic_state* lapic, uint32_t reg, uint32_t mode) {
  uint32_t value;
  std::memcpy(&value, lapic->regs + reg, 4);
  value = (value & ~0x700u) | (mode << 8);
  std::memcpy(lapic->regs + reg, &value, 4);
}

}  // namespace

std::string PlatformCmdline(const std::string& user_cmdline) {
  bool has_reboot = user_cmdline.starts_with("reboot=") || user_cmdline.find(" reboot=") != std::string::npos;
  if (has_reboot) return user_cmdline;
  return user_cmdline.empty() ? "reboot=acpi" : user_cmdline + " reboot=acpi";
}

Result<std::unique_ptr<Vm>> Vm::OpenKvm(const VmConfig& config, BootTimer* timer, std::string_view what) {
  std::unique_ptr<Vm> vm(new Vm());
  vm->timer_ = timer;
  vm->console_in_ = config.console_in;
  vm->console_out_ = config.console_out;
  if (config.seccomp == sandbox::SeccompMode::kOn) vm->seccomp_ = CLONE_TRY(sandbox::SeccompFilters::Compile());
  // A KVM without SVM/VMX (PVM, ...) would run a stock kernel's first instruction and then spin
  // forever without a single exit: refuse it before anything runs (host/check.h).
  if (auto why = host::RefuseNonHardwareKvm(host::System())) return Fail("{}", *why);
  vm->kvm_ = CLONE_TRY(kvm::Kvm::Open());
  if (config.vcpus > static_cast<uint32_t>(vm->kvm_->MaxVcpus())) {
    return Fail("{} {}: this host's KVM supports at most {}", what, config.vcpus, vm->kvm_->MaxVcpus());
  }
  vm->vm_fd_ = CLONE_TRY(vm->kvm_->CreateVm());
  timer->Mark("kvm");
  CLONE_TRY_VOID(vm->vm_fd_->SetTssAddress(x86::kKvmTssAddr));
  CLONE_TRY_VOID(vm->vm_fd_->SetIdentityMapAddress(x86::kKvmIdentityMapAddr));
  return vm;
}

Result<std::unique_ptr<Vm>> Vm::Create(VmConfig config, BootTimer* timer) {
  std::unique_ptr<Vm> vm = CLONE_TRY(OpenKvm(config, timer, "--vcpus"));
  GuestMemory memory =
      CLONE_TRY(GuestMemory::Create(config.mem_bytes, x86::kMmioHoleStart, x86::kHighRamStart, config.ksm));
  CLONE_TRY_VOID(vm->SetUpMemory(std::move(memory)));
  timer->Mark("memory");
  CLONE_TRY_VOID(vm->vm_fd_->CreateIrqchip());
  CLONE_TRY_VOID(vm->vm_fd_->CreatePit());
  timer->Mark("irqchip");
  vm->loop_ = CLONE_TRY(EventLoop::Create());
  CLONE_TRY_VOID(vm->SetUpDevices(config));
  timer->Mark("devices");
  CLONE_TRY_VOID(vm->LoadGuest(config));
  timer->Mark("kernel loaded");
  CLONE_TRY_VOID(vm->CreateVcpus(config.vcpus));
  timer->Mark("vcpus");
  return vm;
}

Vm::~Vm() { StopVcpus(); }

Result<void> Vm::SetUpMemory(GuestMemory memory) {
  memory_.emplace(std::move(memory));
  uint32_t slot = 0;
  for (const auto& region : memory_->regions()) {
    CLONE_TRY_VOID(vm_fd_->SetUserMemoryRegion(slot++, region.gpa, region.size, region.host()));
  }
  return {};
}

Result<void> Vm::SetUpDevices(VmConfig& config) {
  auto power = [this](PowerEvent event) {
    if (event == PowerEvent::kPowerOff) {
      RequestExit({VmExitReason::kPowerOff, "the guest powered off", 0});
    } else {
      RequestExit({VmExitReason::kReset, "the guest requested a reboot", 0});
    }
  };
  int out = console_out_;
  serial_ = std::make_shared<Serial>(
      [this, out, sink = std::move(config.console_sink)](std::span<const uint8_t> bytes) {
        if (!first_output_seen_.exchange(true)) timer_->Mark("first guest output");
        if (sink) {
          sink(bytes);
        } else if (out >= 0) {
          // A closed or broken console must not stop the guest; its output is then dropped.
          [[maybe_unused]] auto r = WriteAll(out, bytes.data(), bytes.size());
        }
      },
      [this](bool level) {
        if (auto r = vm_fd_->SetIrqLine(x86::kCom1Irq, level); !r) {
          CLONE_LOG_RATELIMITED(LogLevel::kError, "serial interrupt: {}", r.error().message());
        }
      });
  CLONE_TRY_VOID(pio_bus_.Insert(x86::kCom1Port, 8, serial_));
  CLONE_TRY_VOID(pio_bus_.Insert(x86::kCmosPort, 2, std::make_shared<Cmos>()));
  // One device over 0x60-0x64; 0x61 (PIT speaker) is served inside KVM and never reaches it.
  CLONE_TRY_VOID(pio_bus_.Insert(x86::kI8042DataPort, x86::kI8042CommandPort - x86::kI8042DataPort + 1,
                                 std::make_shared<I8042>(power)));
  CLONE_TRY_VOID(pio_bus_.Insert(PciRoot::kConfigAddressPort, PciRoot::kPortCount, std::make_shared<PciRoot>()));
  CLONE_TRY_VOID(pio_bus_.Insert(x86::kAcpiPmPort, x86::kAcpiPmPortLen, std::make_shared<AcpiPm>(power)));
  if (config.rng) CLONE_TRY_VOID(AddVirtioDevice(std::make_unique<virtio::Rng>()));
  for (auto& disk : config.disks) {
    auto block = CLONE_TRY(virtio::Block::Create(std::move(disk.backend), disk.image.serial));
    CLONE_TRY_VOID(AddVirtioDevice(std::move(block)));
    disk_images_.push_back(disk.image);
  }
  if (config.vsock) {
    auto vsock = CLONE_TRY(virtio::Vsock::Create(config.vsock->cid));
    CLONE_TRY_VOID(AddVirtioDevice(std::move(vsock)));
    vsock_transport_ = virtio_.back().transport.get();
  }
  for (auto& net : config.nets) {
    auto device = CLONE_TRY(virtio::Net::Create(std::move(net.tap), net.mac, net.vhost));
    CLONE_TRY_VOID(AddVirtioDevice(std::move(device)));
  }
  if (config.balloon) {
    virtio::BalloonOptions options = *config.balloon;
    // Below 1 MiB live the GDT, page tables, zero page, ACPI tables and the identity page: the guest
    // (which reserves that MiB itself) never has a reason to give them away.
    options.protected_below = x86::kHighMemoryStart;
    auto balloon = CLONE_TRY(virtio::Balloon::Create(options, memory_->ram_bytes(), memory_->regions().back().end()));
    CLONE_TRY_VOID(AddVirtioDevice(std::move(balloon)));
    balloon_transport_ = virtio_.back().transport.get();
  }
  for (const auto& dir : config.shared_dirs) {
    auto server = CLONE_TRY(
        fs::PassthroughFs::Create(dir.host_path, {.read_only = dir.read_only, .root_squash = dir.squash_root}));
    // With --seccomp the device's worker confines itself to the fs role before serving anything.
    std::function<void()> confine;
    if (seccomp_) {
      confine = [this] {
        if (auto confined = seccomp_->InstallForThisThread(sandbox::ThreadRole::kFs); !confined) {
          // Never serve the guest unconfined; the same program is installed on the other threads,
          // so this is a bug, not a state (as VmService::ConfineThisThread).
          Log(LogLevel::kError, "virtio-fs worker: {}", confined.error().message());
          std::abort();
        }
      };
    }
    auto device = CLONE_TRY(virtio::Fs::Create(dir.tag, std::move(server), dir.read_only, std::move(confine)));
    CLONE_TRY_VOID(AddVirtioDevice(std::move(device)));
    shared_dirs_.push_back(dir);
  }
  return {};
}

Result<void> Vm::AddVirtioDevice(std::unique_ptr<virtio::VirtioDevice> device) {
  uint32_t index = static_cast<uint32_t>(virtio_.size());
  uint32_t gsi = x86::kFirstDeviceGsi + index;
  if (gsi >= x86::kIoapicPins)
    return Fail("too many virtio devices (at most {})", x86::kIoapicPins - x86::kFirstDeviceGsi);
  uint64_t base = x86::kVirtioMmioBase + index * x86::kVirtioMmioSlotSize;
  auto transport = CLONE_TRY(virtio::MmioTransport::Create(*memory_, std::move(device)));
  CLONE_TRY_VOID(mmio_bus_.Insert(base, virtio::MmioTransport::kMmioSize, transport));
  CLONE_TRY_VOID(vm_fd_->RegisterIrqfd(transport->irq_eventfd().fd(), gsi));
  uint64_t notify = base + *transport->QueueNotifyOffset();
  virtio::MmioTransport* t = transport.get();
  for (size_t q = 0; q < transport->num_queues(); ++q) {
    int fd = transport->queue_eventfd(q).fd();
    CLONE_TRY_VOID(vm_fd_->RegisterIoeventfd(fd, notify, 4, q));
    if (transport->device().kicks_go_to_backend(q)) continue;  // vhost reads this eventfd itself
    CLONE_TRY_VOID(loop_->Add(fd, EPOLLIN, [t, q](uint32_t) { t->HandleQueueNotify(q); }));
  }
  // The device's own fds (vhost call eventfds, a TAP), served under the transport's lock.
  std::vector<virtio::WatchedFd> watched = transport->device().watched_fds();
  for (size_t k = 0; k < watched.size(); ++k) {
    CLONE_TRY_VOID(
        loop_->Add(watched[k].fd, watched[k].events, [t, k](uint32_t events) { t->HandleDeviceFd(k, events); }));
  }
  virtio_.push_back({std::move(transport), base, gsi});
  return {};
}

uint64_t Vm::vsock_cid() const {
  if (vsock_transport_ == nullptr) return 0;
  return static_cast<const virtio::Vsock&>(vsock_transport_->device()).guest_cid();
}

Result<void> Vm::SetBalloonTarget(uint64_t balloon_bytes) {
  if (balloon_transport_ == nullptr) return Fail("this VM has no balloon (started with --balloon off)");
  return balloon_transport_->WithDevice([balloon_bytes](virtio::VirtioDevice& device) -> Result<void> {
    static_cast<virtio::Balloon&>(device).SetTarget(balloon_bytes / virtio::Balloon::kPageSize);
    return {};
  });
}

std::optional<virtio::BalloonStatus> Vm::balloon_status() const {
  if (balloon_transport_ == nullptr) return std::nullopt;
  virtio::BalloonStatus status;
  [[maybe_unused]] auto r = balloon_transport_->WithDevice([&status](virtio::VirtioDevice& device) -> Result<void> {
    status = static_cast<const virtio::Balloon&>(device).status();
    return {};
  });
  return status;
}

std::optional<virtio::BalloonOptions> Vm::balloon_options() const {
  if (balloon_transport_ == nullptr) return std::nullopt;
  return static_cast<const virtio::Balloon&>(balloon_transport_->device()).options();
}

Result<void> Vm::LoadGuest(const VmConfig& config) {
  acpi::AcpiConfig acpi_config;
  acpi_config.num_cpus = config.vcpus;
  acpi_config.ioapic_id = static_cast<uint8_t>(config.vcpus);
  acpi_config.lapic_addr = static_cast<uint32_t>(x86::kLapicAddr);
  acpi_config.ioapic_addr = static_cast<uint32_t>(x86::kIoapicAddr);
  acpi_config.pm_io_base = x86::kAcpiPmPort;
  for (const auto& slot : virtio_) {
    acpi_config.virtio_mmio.push_back({slot.base, static_cast<uint32_t>(virtio::MmioTransport::kMmioSize), slot.gsi});
  }
  // VM Generation ID + the GED that announces a new one. Both are fixed (layout.h), not allocated:
  // a snapshot keeps these tables in guest RAM, so a restored or forked VM, which never rebuilds
  // them, must pulse the same GSI and write the id at the same address as the template's tables say.
  acpi_config.vmgenid_gpa = x86::kVmGenIdAddr;
  acpi_config.ged_gsi = x86::kGedGsi;
  auto tables = CLONE_TRY(acpi::BuildAcpiTables(acpi_config, x86::kAcpiAddr, x86::kAcpiMax));
  CLONE_TRY_VOID(memory_->WriteBytes(tables.base_gpa, tables.bytes));
  x86::BootInputs inputs{config.kernel, config.initrd, config.cmdline, tables.rsdp_gpa};
  boot_setup_ = CLONE_TRY(x86::LoadKernel(*memory_, inputs));
  CLONE_TRY_VOID(x86::WritePageTables(*memory_));
  CLONE_TRY_VOID(x86::WriteGdt(*memory_));
  return {};
}

Result<void> Vm::CreateVcpus(uint32_t count) {
  auto supported = CLONE_TRY(kvm_->SupportedCpuid());
  for (uint32_t i = 0; i < count; ++i) {
    auto fd = CLONE_TRY(vm_fd_->CreateVcpu(i, kvm_->vcpu_mmap_size()));
    auto vcpu = std::make_unique<Vcpu>(std::move(fd));
    CLONE_TRY_VOID(vcpu->vcpu.SetCpuid(x86::VcpuCpuid(supported, i, count)));
    CLONE_TRY_VOID(vcpu->vcpu.SetMsrs(x86::BootMsrs()));
    auto lapic = CLONE_TRY(vcpu->vcpu.GetLapic());
    SetLvt(&lapic, kLapicLvtLint0, kDeliveryModeExtInt);
    SetLvt(&lapic, kLapicLvtLint1, kDeliveryModeNmi);
    CLONE_TRY_VOID(vcpu->vcpu.SetLapic(lapic));
    if (i == 0) {
      // The BSP starts at the kernel entry; APs wait in the LAPIC for INIT/SIPI from the guest.
      auto sregs = CLONE_TRY(vcpu->vcpu.GetSregs());
      CLONE_TRY_VOID(vcpu->vcpu.SetSregs(x86::BootSregs(sregs, boot_setup_.protocol)));
      CLONE_TRY_VOID(vcpu->vcpu.SetRegs(x86::BootRegs(boot_setup_)));
      CLONE_TRY_VOID(vcpu->vcpu.SetFpu(x86::BootFpu()));
    }
    vcpus_.push_back(std::move(vcpu));
  }
  return {};
}

// Console escape on a terminal: Ctrl-A x stops the VM, Ctrl-A Ctrl-A sends one Ctrl-A.
constexpr uint8_t kEscapeByte = 0x01;

Result<void> Vm::WatchConsoleInput() {
  if (console_in_ < 0) return {};
  int fd = console_in_;
  bool tty = ::isatty(fd) == 1;
  auto added = loop_->Add(fd, EPOLLIN, [this, fd, tty](uint32_t) {
    uint8_t buf[256];
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n <= 0) {
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
      loop_->Remove(fd);  // EOF: the guest keeps running without input
      return;
    }
    std::span<const uint8_t> input(buf, static_cast<size_t>(n));
    std::vector<uint8_t> filtered;
    if (tty) {
      filtered = FilterConsoleEscape(input);
      input = filtered;
    }
    size_t accepted = serial_->EnqueueInput(input);
    if (accepted < input.size()) CLONE_LOG_RATELIMITED(LogLevel::kWarn, "console input dropped: guest is not reading");
  });
  // A regular file or /dev/null cannot be polled (EPERM): the guest then simply gets no input.
  if (!added && added.error().error_number() == EPERM) return {};
  return added;
}

std::vector<uint8_t> Vm::FilterConsoleEscape(std::span<const uint8_t> input) {
  std::vector<uint8_t> out;
  for (uint8_t byte : input) {
    if (!escape_pending_) {
      if (byte == kEscapeByte) {
        escape_pending_ = true;
      } else {
        out.push_back(byte);
      }
      continue;
    }
    escape_pending_ = false;
    if (byte == 'x' || byte == 'X') {
      RequestExit({VmExitReason::kSignal, "stopped from the console (Ctrl-A x)", SIGINT});
    } else if (byte == kEscapeByte) {
      out.push_back(kEscapeByte);
    }
  }
  return out;
}

Result<VmExit> Vm::Run() {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  int sfd = ::signalfd(-1, &stop_signals, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) return FailErrno("signalfd");
  Fd signal_fd(sfd);
  CLONE_TRY_VOID(loop_->Add(sfd, EPOLLIN, [this, sfd](uint32_t) {
    signalfd_siginfo info{};
    if (::read(sfd, &info, sizeof(info)) != sizeof(info)) return;
    int sig = static_cast<int>(info.ssi_signo);
    RequestExit({VmExitReason::kSignal, fmt::format("stopped by {}", sig == SIGINT ? "SIGINT" : "SIGTERM"), sig});
  }));
  CLONE_TRY_VOID(WatchConsoleInput());
  CLONE_TRY_VOID(WatchStalls());
  InstallKickHandler();
  // Setup is done: confine this (event-loop) thread before any vCPU exists. vCPU threads inherit
  // this filter and narrow it to their role in VcpuLoop, before their first KVM_RUN.
  if (seccomp_) CLONE_TRY_VOID(seccomp_->InstallForThisThread(sandbox::ThreadRole::kVmm));
  for (auto& vcpu : vcpus_) {
    Vcpu* v = vcpu.get();
    v->thread = std::thread([this, v] { VcpuLoop(*v); });
  }
  timer_->Mark("vcpus running");
  auto loop_result = loop_->Run();
  StopVcpus();
  if (!loop_result) return Fail(loop_result.error());
  std::lock_guard lock(exit_mu_);
  return exit_;
}

void Vm::RequestExit(VmExit exit) {
  {
    std::lock_guard lock(exit_mu_);
    if (exiting_) return;
    exiting_ = true;
    exit_ = std::move(exit);
  }
  if (loop_) loop_->Stop();
}

size_t Vm::EnqueueConsoleInput(std::span<const uint8_t> bytes) { return serial_->EnqueueInput(bytes); }

// The GED has no device model in the VMM: its state is the IOAPIC pin (saved with the irqchip) and
// its AML (in guest RAM), so there is nothing else to snapshot. Raising and lowering the line at
// once is an edge to the IOAPIC (and leaves no level behind, which a later pulse would need).
void Vm::NotifyVmGenerationChanged() {
  for (bool level : {true, false}) {
    if (auto r = vm_fd_->SetIrqLine(x86::kGedGsi, level); !r) {
      Log(LogLevel::kError, "VM generation notification (GED GSI {}): {}", x86::kGedGsi, r.error().message());
      return;
    }
  }
}

void Vm::KickVcpus() {
  for (auto& v : vcpus_) {
    if (!v->thread.joinable()) continue;
    v->vcpu.run()->immediate_exit = 1;
    pthread_kill(v->thread.native_handle(), kKickSignal);
  }
}

Result<void> Vm::Pause() {
  std::unique_lock lock(pause_mu_);
  pause_requested_.store(true, std::memory_order_release);
  KickVcpus();
  bool parked =
      pause_cv_.wait_for(lock, std::chrono::seconds(5), [this] { return parked_vcpus_ == running_vcpus_ || exiting_; });
  if (!parked) {
    pause_requested_.store(false, std::memory_order_release);
    pause_cv_.notify_all();
    return Fail("pause: {} of {} vCPUs did not stop within 5 s", running_vcpus_ - parked_vcpus_, running_vcpus_);
  }
  return {};
}

void Vm::Resume() {
  std::lock_guard lock(pause_mu_);
  // Parked vCPUs are outside KVM_RUN (the ioctl would wait for one inside it).
  if (pause_requested_.load(std::memory_order_acquire) && parked_vcpus_ == running_vcpus_) MarkGuestPaused();
  pause_requested_.store(false, std::memory_order_release);
  pause_cv_.notify_all();
}

// On a vCPU thread: completes the instruction KVM_RUN left pending (an MMIO/PIO read's data is
// consumed on the next entry; immediate_exit makes that entry return at once), then parks.
void Vm::PauseSelf(Vcpu& v) {
  v.vcpu.run()->immediate_exit = 1;
  [[maybe_unused]] auto r = v.vcpu.Run();  // EINTR expected
  std::unique_lock lock(pause_mu_);
  ++parked_vcpus_;
  pause_cv_.notify_all();
  pause_cv_.wait(lock, [this] { return !pause_requested_.load(std::memory_order_acquire) || exiting_; });
  --parked_vcpus_;
  v.vcpu.run()->immediate_exit = 0;
}

void Vm::StopVcpus() {
  {
    std::lock_guard lock(pause_mu_);
    exiting_ = true;
    pause_cv_.notify_all();
  }
  KickVcpus();
  for (auto& v : vcpus_) {
    if (!v->thread.joinable()) continue;
    v->thread.join();
    if (CurrentLogLevel() >= LogLevel::kDebug) {
      if (auto regs = v->vcpu.GetRegs()) {
        Log(LogLevel::kDebug, "vcpu {} stopped at rip {:#x} rsp {:#x}", v->vcpu.id(), regs->rip, regs->rsp);
      }
    }
  }
}

std::optional<std::chrono::steady_clock::time_point> Vm::first_run() const {
  int64_t ns = first_run_ns_.load(std::memory_order_relaxed);
  if (ns == 0) return std::nullopt;
  return std::chrono::steady_clock::time_point(
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::nanoseconds(ns)));
}

void Vm::VcpuLoop(Vcpu& v) {
  {
    std::lock_guard lock(pause_mu_);
    ++running_vcpus_;
  }
  struct Leave {
    Vm* vm;
    ~Leave() {
      std::lock_guard lock(vm->pause_mu_);
      --vm->running_vcpus_;
      vm->pause_cv_.notify_all();
    }
  } leave{this};
  if (seccomp_) {
    if (auto confined = seccomp_->InstallForThisThread(sandbox::ThreadRole::kVcpu); !confined) {
      RequestExit({VmExitReason::kError, fmt::format("vcpu {}: {}", v.vcpu.id(), confined.error().message()), 0});
      return;
    }
  }
  while (!exiting_) {
    if (pause_requested_.load(std::memory_order_acquire)) {
      PauseSelf(v);
      continue;
    }
    if (first_run_ns_.load(std::memory_order_relaxed) == 0) {
      int64_t now =
          std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
              .count();
      int64_t expected = 0;
      first_run_ns_.compare_exchange_strong(expected, now, std::memory_order_relaxed);
    }
    auto reason = v.vcpu.Run();
    v.exits.fetch_add(1, std::memory_order_relaxed);
    if (!reason) {
      int err = reason.error().error_number();
      if (err == EINTR || err == EAGAIN) {
        v.vcpu.run()->immediate_exit = 0;
        if (v.stall_report.exchange(false, std::memory_order_acq_rel)) ReportStall(v);
        continue;
      }
      RequestExit({VmExitReason::kError, reason.error().message(), 0});
      return;
    }
    if (!HandleExit(v, *reason)) return;
  }
}

Result<void> Vm::WatchStalls() {
  if (const char* env = std::getenv("CLONE_STALL_WARN_SECONDS")) {
    char* end = nullptr;
    long n = std::strtol(env, &end, 10);
    if (*env == '\0' || *end != '\0' || n < 0) return Fail("CLONE_STALL_WARN_SECONDS={}: not a number of seconds", env);
    stall_after_ = std::chrono::seconds(n);
  }
  if (stall_after_.count() == 0) return {};
  auto now = std::chrono::steady_clock::now();
  stall_watch_start_ = now;
  for (auto& v : vcpus_) {
    if (auto stats = v->vcpu.OpenStats()) v->stats.emplace(std::move(*stats));  // for the report only
    v->moved = now;
  }
  int fd = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (fd < 0) return FailErrno("timerfd_create");
  stall_timer_ = Fd(fd);
  // Checked a few times per stall period; each check is one pread per vCPU.
  auto period = std::max<int64_t>(1, stall_after_.count() / 2);
  itimerspec spec{};
  spec.it_interval.tv_sec = period;
  spec.it_value.tv_sec = period;
  if (::timerfd_settime(fd, 0, &spec, nullptr) != 0) return FailErrno("timerfd_settime");
  return loop_->Add(fd, EPOLLIN, [this, fd](uint32_t) {
    uint64_t ticks;
    if (::read(fd, &ticks, sizeof(ticks)) != sizeof(ticks)) return;
    CheckStalls();
  });
}

void Vm::CheckStalls() {
  auto now = std::chrono::steady_clock::now();
  // Only a boot is judged: once the guest has printed something (or two minutes passed), a vCPU
  // without exits to Clone is a busy or idle guest, not a stuck one. The host's own interrupts make
  // KVM exits even for a spinning vCPU, so only exits that reach Clone (I/O, MMIO, ...) count.
  bool done = first_output_seen_.load() || now - stall_watch_start_ > std::chrono::minutes(2);
  for (auto& vp : vcpus_) {
    Vcpu& v = *vp;
    done = done || v.stall_warned.load();
    uint64_t exits = v.exits.load(std::memory_order_relaxed);
    bool moved = exits != v.seen_exits;
    v.seen_exits = exits;
    if (done || moved || paused() || v.stall_warned.load()) {
      v.moved = now;
      continue;
    }
    if (now - v.moved < stall_after_) continue;
    // The vCPU thread looks at itself (halted or running, where) at the kick's EINTR.
    v.moved = now;
    v.stall_report.store(true, std::memory_order_release);
    if (v.thread.joinable()) pthread_kill(v.thread.native_handle(), kKickSignal);
  }
  if (done && stall_timer_) {
    loop_->Remove(stall_timer_.get());
    stall_timer_.reset();
  }
}

// On the vCPU thread, outside KVM_RUN (kicked by CheckStalls).
void Vm::ReportStall(Vcpu& v) {
  auto mp = v.vcpu.GetMpState();
  if (mp && mp->mp_state == KVM_MP_STATE_HALTED) return;  // idle, not stuck: checked again later
  v.stall_warned = true;
  std::string where = "its registers could not be read";
  auto regs = v.vcpu.GetRegs();
  auto sregs = v.vcpu.GetSregs();
  if (regs && sregs) {
    const char* mode = (sregs->efer & (1u << 10)) ? "64-bit long mode"
                       : (sregs->cr0 & 1)         ? "protected mode"
                                                  : "real mode";
    where =
        fmt::format("it is running at rip {:#x} in {} (cr0 {:#x}, cr3 {:#x})", regs->rip, mode, sregs->cr0, sregs->cr3);
  }
  Log(LogLevel::kWarn,
      "vCPU {} has made no VM exit to Clone for {} s{}: {}; a guest kernel this KVM cannot run spins like this (see "
      "'clone "
      "check'), CLONE_STALL_WARN_SECONDS=0 silences this",
      v.vcpu.id(), stall_after_.count(), first_output_seen_.load() ? "" : " and the guest has printed nothing", where);
}

// Serves one KVM exit. Returns false when this vCPU must stop.
bool Vm::HandleExit(Vcpu& v, uint32_t reason) {
  kvm_run* run = v.vcpu.run();
  switch (reason) {
    case KVM_EXIT_IO: {
      // SAFETY: KVM places io.count items of io.size bytes at io.data_offset inside the run page.
      uint8_t* data = reinterpret_cast<uint8_t*>(run) + run->io.data_offset;
      for (uint32_t i = 0; i < run->io.count; ++i) {
        std::span<uint8_t> item(data + i * run->io.size, run->io.size);
        bool claimed = run->io.direction == KVM_EXIT_IO_OUT ? pio_bus_.Write(run->io.port, item)
                                                            : pio_bus_.Read(run->io.port, item);
        if (!claimed) {
          CLONE_LOG_RATELIMITED(LogLevel::kDebug, "unclaimed port {} {:#x} ({} bytes)",
                                run->io.direction == KVM_EXIT_IO_OUT ? "write" : "read", run->io.port, run->io.size);
        }
      }
      return true;
    }
    case KVM_EXIT_MMIO: {
      std::span<uint8_t> data(run->mmio.data, std::min<uint32_t>(run->mmio.len, sizeof(run->mmio.data)));
      bool claimed =
          run->mmio.is_write ? mmio_bus_.Write(run->mmio.phys_addr, data) : mmio_bus_.Read(run->mmio.phys_addr, data);
      if (!claimed) {
        CLONE_LOG_RATELIMITED(LogLevel::kDebug, "unclaimed MMIO {} {:#x} ({} bytes)",
                              run->mmio.is_write ? "write" : "read", run->mmio.phys_addr, data.size());
      }
      return true;
    }
    case KVM_EXIT_HLT:
      return true;  // with the in-kernel LAPIC, HLT is handled by KVM; spurious exits are harmless
    case KVM_EXIT_SHUTDOWN:
      RequestExit({VmExitReason::kCrash, fmt::format("vcpu {}: triple fault (KVM_EXIT_SHUTDOWN)", v.vcpu.id()), 0});
      return false;
    case KVM_EXIT_SYSTEM_EVENT:
      switch (run->system_event.type) {
        case KVM_SYSTEM_EVENT_SHUTDOWN:
          RequestExit({VmExitReason::kPowerOff, "the guest powered off", 0});
          break;
        case KVM_SYSTEM_EVENT_RESET:
          RequestExit({VmExitReason::kReset, "the guest requested a reboot", 0});
          break;
        default:
          RequestExit(
              {VmExitReason::kCrash, fmt::format("vcpu {}: system event {}", v.vcpu.id(), run->system_event.type), 0});
      }
      return false;
    case KVM_EXIT_FAIL_ENTRY:
      RequestExit({VmExitReason::kCrash,
                   fmt::format("vcpu {}: VM entry failed (reason {:#x})", v.vcpu.id(),
                               run->fail_entry.hardware_entry_failure_reason),
                   0});
      return false;
    case KVM_EXIT_INTERNAL_ERROR:
      RequestExit({VmExitReason::kCrash,
                   fmt::format("vcpu {}: KVM internal error (suberror {})", v.vcpu.id(), run->internal.suberror), 0});
      return false;
    default:
      RequestExit({VmExitReason::kCrash, fmt::format("vcpu {}: unhandled KVM exit {}", v.vcpu.id(), reason), 0});
      return false;
  }
}

}  // namespace clonevm

// Vm snapshot support: saving a paused VM's state and building a VM from a saved state and memory
// file (declarations and the calling protocol in vm.h; the state's encoding in vm_state.h).
//
// Restore order (Documentation/virt/kvm/api.rst; Firecracker's vstate/vcpu.rs and QEMU agree):
//   1. memory, irqchip and PIT created, devices recreated from the config (same slots and GSIs);
//   2. in-kernel irqchip state (PIC master/slave, IOAPIC) and PIT;
//   3. per vCPU: TSC frequency, CPUID (MSRs and XSAVE are validated against it), MP state, sregs
//      (CR0/CR4/EFER and the APIC base), regs, XSAVE, XCRs, debug registers, LAPIC (after the APIC
//      base), MSRs (after the LAPIC: TSC deadline), vCPU events last (pending exceptions, NMIs,
//      interrupt shadow, SIPI vector);
//   4. devices and transports (a transport re-signals a pending interrupt: the irqchip and LAPICs
//      must already hold their final state or the edge would be overwritten);
//   5. kvmclock (KVM_SET_CLOCK), once every vCPU's TSC is set.
// IA32_TSC (3.) and the kvmclock (5.) both move on by the wall-clock time since the snapshot.
//
// MSRs: every index of KVM_GET_MSR_INDEX_LIST that KVM_GET_MSRS reads (MSRs the host CPU lacks are
// skipped). On restore an MSR KVM refuses is skipped with a warning rather than failing the whole
// restore: the index list contains MSRs whose writes depend on host features (e.g. perf counters).
#include <time.h>

#include <cstring>

#include "arch/x86/layout.h"
#include "base/clock.h"
#include "base/log.h"
#include "devices/legacy/cmos.h"
#include "devices/pci/pci_root.h"
#include "vmm/vm.h"

namespace clonevm {

Result<void> Vm::PauseDevices() {
  for (size_t i = 0; i < virtio_.size(); ++i) {
    auto paused = virtio_[i].transport->PauseDevice();
    if (!paused) {
      for (size_t j = 0; j < i; ++j) [[maybe_unused]] auto r = virtio_[j].transport->ResumeDevice();
      return Fail(paused.error().Wrap(fmt::format("pausing virtio device {}", i)));
    }
  }
  return {};
}

void Vm::ResumeDevices() {
  for (size_t i = 0; i < virtio_.size(); ++i) {
    if (auto resumed = virtio_[i].transport->ResumeDevice(); !resumed) {
      Log(LogLevel::kError, "resuming virtio device {}: {}", i, resumed.error().message());
    }
  }
}

std::vector<uint32_t> Vm::virtio_device_types() const {
  std::vector<uint32_t> types;
  for (const auto& slot : virtio_) types.push_back(slot.transport->device().device_type());
  return types;
}

Result<VmState> Vm::SaveState() const {
  VmState state;
  std::vector<uint32_t> msr_indices = CLONE_TRY(kvm_->MsrIndexList());
  size_t xsave_size = static_cast<size_t>(vm_fd_->CheckExtension(KVM_CAP_XSAVE2));
  for (const auto& v : vcpus_) {
    const kvm::VcpuFd& fd = v->vcpu;
    VcpuState s;
    s.cpuid = CLONE_TRY(fd.GetCpuid());
    s.msrs = CLONE_TRY(fd.GetMsrs(msr_indices));
    s.regs = CLONE_TRY(fd.GetRegs());
    s.sregs = CLONE_TRY(fd.GetSregs());
    s.xsave = CLONE_TRY(fd.GetXsave(xsave_size));
    s.xcrs = CLONE_TRY(fd.GetXcrs());
    s.lapic = CLONE_TRY(fd.GetLapic());
    s.events = CLONE_TRY(fd.GetVcpuEvents());
    s.mp_state = CLONE_TRY(fd.GetMpState());
    s.debugregs = CLONE_TRY(fd.GetDebugRegs());
    s.tsc_khz = CLONE_TRY(fd.GetTscKhz());
    state.vcpus.push_back(std::move(s));
  }
  state.pic_master = CLONE_TRY(vm_fd_->GetIrqchip(KVM_IRQCHIP_PIC_MASTER));
  state.pic_slave = CLONE_TRY(vm_fd_->GetIrqchip(KVM_IRQCHIP_PIC_SLAVE));
  state.ioapic = CLONE_TRY(vm_fd_->GetIrqchip(KVM_IRQCHIP_IOAPIC));
  state.pit = CLONE_TRY(vm_fd_->GetPit2());
  state.clock = CLONE_TRY(vm_fd_->GetClock());
  if ((state.clock.flags & KVM_CLOCK_REALTIME) == 0) {
    // KVM reports the host's wall clock with the kvmclock only on TSC-clocksource hosts; take it
    // here (the vCPUs are stopped, so the two readings are microseconds apart).
    state.clock.realtime = RealtimeNs();
  }
  state.serial = serial_->SaveState();
  auto cmos = std::dynamic_pointer_cast<Cmos>(pio_bus_.DeviceAt(x86::kCmosPort));
  auto pci = std::dynamic_pointer_cast<PciRoot>(pio_bus_.DeviceAt(PciRoot::kConfigAddressPort));
  if (!cmos || !pci) return Fail("snapshot: the CMOS or PCI device is missing");
  state.cmos = cmos->SaveState();
  state.pci = pci->SaveState();
  for (const auto& slot : virtio_) {
    state.virtio.push_back({slot.transport->device().device_type(), slot.transport->SaveState()});
  }
  return state;
}

Result<std::unique_ptr<Vm>> Vm::Restore(VmConfig config, const VmState& state, const MemoryImage& memory_image,
                                        BootTimer* timer) {
  if (state.vcpus.size() != config.vcpus) {
    return Fail("the snapshot has {} vCPUs, the configuration {}", state.vcpus.size(), config.vcpus);
  }
  std::unique_ptr<Vm> vm = CLONE_TRY(OpenKvm(config, timer, "the snapshot's vCPU count"));
  GuestMemory memory = CLONE_TRY(GuestMemory::CreateFromImage(memory_image, config.mem_bytes, x86::kMmioHoleStart,
                                                              x86::kHighRamStart, config.ksm));
  CLONE_TRY_VOID(vm->SetUpMemory(std::move(memory)));
  timer->Mark("memory");
  CLONE_TRY_VOID(vm->vm_fd_->CreateIrqchip());
  CLONE_TRY_VOID(vm->vm_fd_->CreatePit());
  vm->loop_ = CLONE_TRY(EventLoop::Create());
  CLONE_TRY_VOID(vm->SetUpDevices(config));
  timer->Mark("devices");
  // The guest's time moves on by the wall-clock time since the snapshot (vm_state.h): forks of a
  // template taken hours ago must not start hours behind. Computed here rather than with
  // KVM_CLOCK_REALTIME because KVM offers that flag only on TSC-clocksource hosts.
  uint64_t elapsed_ns = ElapsedSinceSnapshot(state.clock, RealtimeNs());
  CLONE_TRY_VOID(vm->RestoreVcpus(state, elapsed_ns));
  timer->Mark("vcpus");
  CLONE_TRY_VOID(vm->RestoreDevices(state));
  CLONE_TRY_VOID(vm->vm_fd_->SetClock(AdvanceClock(state.clock, elapsed_ns)));
  // The guest's clocks jumped by `elapsed_ns` while its vCPUs did not run: without this every
  // fork of an old template reports "soft lockup - CPU#0 stuck for ...s" on its console.
  vm->MarkGuestPaused();
  timer->Mark("restored");
  return vm;
}

namespace {

Result<void> RestoreVcpu(kvm::VcpuFd& fd, const VcpuState& s, size_t xsave_size, uint64_t elapsed_ns) {
  if (s.tsc_khz != 0) {
    auto khz = fd.GetTscKhz();
    if (khz && *khz != s.tsc_khz) {
      // Without TSC scaling the guest's clocks run at this host's rate; kvmclock stays monotonic.
      if (auto set = fd.SetTscKhz(s.tsc_khz); !set) {
        Log(LogLevel::kWarn, "vcpu {}: TSC {} kHz in the snapshot, {} kHz here: {}", fd.id(), s.tsc_khz, *khz,
            set.error().message());
      }
    }
  }
  CLONE_TRY_VOID(fd.SetCpuid(s.cpuid));
  CLONE_TRY_VOID(fd.SetMpState(s.mp_state));
  CLONE_TRY_VOID(fd.SetSregs(s.sregs));
  CLONE_TRY_VOID(fd.SetRegs(s.regs));
  CLONE_TRY_VOID(fd.SetXsave(s.xsave, xsave_size));
  CLONE_TRY_VOID(fd.SetXcrs(s.xcrs));
  CLONE_TRY_VOID(fd.SetDebugRegs(s.debugregs));
  CLONE_TRY_VOID(fd.SetLapic(s.lapic));
  std::vector<kvm_msr_entry> msrs = s.msrs;
  AdvanceTsc(msrs, s.tsc_khz, elapsed_ns);
  std::vector<uint32_t> refused = CLONE_TRY(fd.SetMsrsSkippingRefused(msrs));
  for (uint32_t index : refused) Log(LogLevel::kDebug, "vcpu {}: KVM refused MSR {:#x}; skipped", fd.id(), index);
  kvm_vcpu_events events = s.events;
  // GET reports these unconditionally; SET applies them only when flagged.
  events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
  CLONE_TRY_VOID(fd.SetVcpuEvents(events));
  return {};
}

}  // namespace

Result<void> Vm::RestoreVcpus(const VmState& state, uint64_t elapsed_ns) {
  CLONE_TRY_VOID(vm_fd_->SetIrqchip(state.pic_master));
  CLONE_TRY_VOID(vm_fd_->SetIrqchip(state.pic_slave));
  CLONE_TRY_VOID(vm_fd_->SetIrqchip(state.ioapic));
  CLONE_TRY_VOID(vm_fd_->SetPit2(state.pit));
  size_t xsave_size = static_cast<size_t>(vm_fd_->CheckExtension(KVM_CAP_XSAVE2));
  for (uint32_t i = 0; i < state.vcpus.size(); ++i) {
    auto fd = CLONE_TRY(vm_fd_->CreateVcpu(i, kvm_->vcpu_mmap_size()));
    auto vcpu = std::make_unique<Vcpu>(std::move(fd));
    auto restored = RestoreVcpu(vcpu->vcpu, state.vcpus[i], xsave_size, elapsed_ns);
    if (!restored) return Fail(restored.error().Wrap(fmt::format("restoring vcpu {}", i)));
    vcpus_.push_back(std::move(vcpu));
  }
  return {};
}

void Vm::MarkGuestPaused() {
  for (auto& v : vcpus_) {
    // EINVAL: the guest never enabled kvmclock on this vCPU, so it has no paused flag to read.
    if (auto marked = v->vcpu.MarkGuestPaused(); !marked) {
      Log(LogLevel::kDebug, "vcpu {}: {}", v->vcpu.id(), marked.error().message());
    }
  }
}

Result<void> Vm::RestoreDevices(const VmState& state) {
  std::vector<uint32_t> types = virtio_device_types();
  if (types.size() != state.virtio.size()) {
    return Fail("the snapshot has {} virtio devices, the configuration {}", state.virtio.size(), types.size());
  }
  for (size_t i = 0; i < types.size(); ++i) {
    if (types[i] != state.virtio[i].device_type) {
      return Fail("virtio slot {}: the snapshot has device type {}, the configuration {}", i,
                  state.virtio[i].device_type, types[i]);
    }
    CLONE_TRY_VOID(virtio_[i].transport->RestoreState(state.virtio[i].transport));
  }
  serial_->RestoreState(state.serial);
  auto cmos = std::dynamic_pointer_cast<Cmos>(pio_bus_.DeviceAt(x86::kCmosPort));
  auto pci = std::dynamic_pointer_cast<PciRoot>(pio_bus_.DeviceAt(PciRoot::kConfigAddressPort));
  if (!cmos || !pci) return Fail("restore: the CMOS or PCI device is missing");
  cmos->RestoreState(state.cmos);
  pci->RestoreState(state.pci);
  return {};
}

}  // namespace clonevm

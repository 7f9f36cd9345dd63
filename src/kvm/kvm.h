// Typed, RAII wrappers over the KVM ioctl API (Documentation/virt/kvm/api.rst).
//
// Kvm (the /dev/kvm system fd) creates VmFds; a VmFd creates VcpuFds. Every failing ioctl returns
// an Error naming the ioctl and its context. Objects are move-only and close their fds.
// Thread-safety: VmFd ioctls may be issued from any thread (the kernel serialises them);
// a VcpuFd belongs to the thread that runs it (vmm/ kicks it out of KVM_RUN with a signal).
#pragma once

#include <linux/kvm.h>

#include <atomic>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/fd.h"
#include "base/mmap.h"
#include "base/result.h"

namespace clonevm::kvm {

class VmFd;
class VcpuFd;

// KVM's binary statistics of one VM or vCPU (KVM_GET_STATS_FD, KVM_CAP_BINARY_STATS_FD): named
// u64 counters such as "exits", "io_exits", "mmio_exits", "halt_exits", "irq_window_exits". The
// descriptors are read once; Read() is one pread of the data block, safe from any thread while the
// vCPU runs (the kernel updates the counters in place).
class Stats {
 public:
  [[nodiscard]] static Result<Stats> FromFd(Fd fd);
  // Every counter's first value, by name, now.
  [[nodiscard]] Result<std::vector<std::pair<std::string, uint64_t>>> ReadAll() const;
  // One counter; nullopt if KVM has no counter of that name (or the read failed).
  std::optional<uint64_t> Read(std::string_view name) const;

 private:
  struct Desc {
    std::string name;
    uint32_t offset;  // bytes into the data block
  };
  Stats(Fd fd, std::vector<Desc> descs, uint32_t data_offset, uint32_t data_size)
      : fd_(std::move(fd)), descs_(std::move(descs)), data_offset_(data_offset), data_size_(data_size) {}
  Fd fd_;
  std::vector<Desc> descs_;
  uint32_t data_offset_ = 0;
  uint32_t data_size_ = 0;
};

class Kvm {
 public:
  // Opens /dev/kvm (or `path`) and checks the API version and the capabilities Clone needs. The
  // error explains what to do when KVM is missing or not accessible.
  [[nodiscard]] static Result<Kvm> Open(const std::string& path = "/dev/kvm");

  int fd() const { return fd_.get(); }
  // KVM_CHECK_EXTENSION; 0 when unsupported.
  int CheckExtension(int cap) const;
  // Largest number of vCPUs a VM may have (KVM_CAP_MAX_VCPUS, falling back to NR_VCPUS).
  int MaxVcpus() const;
  size_t vcpu_mmap_size() const { return vcpu_mmap_size_; }

  [[nodiscard]] Result<std::vector<kvm_cpuid_entry2>> SupportedCpuid() const;
  [[nodiscard]] Result<VmFd> CreateVm() const;
  // KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores for a vCPU (hardware and KVM's own).
  [[nodiscard]] Result<std::vector<uint32_t>> MsrIndexList() const;

 private:
  Kvm(Fd fd, size_t mmap_size) : fd_(std::move(fd)), vcpu_mmap_size_(mmap_size) {}
  Fd fd_;
  size_t vcpu_mmap_size_ = 0;
};

class VmFd {
 public:
  int fd() const { return fd_.get(); }

  [[nodiscard]] Result<void> SetTssAddress(uint64_t gpa);
  [[nodiscard]] Result<void> SetIdentityMapAddress(uint64_t gpa);
  // In-kernel IOAPIC + PIC + LAPICs.
  [[nodiscard]] Result<void> CreateIrqchip();
  // In-kernel PIT (i8254) with the port-0x61 speaker emulated in the kernel too.
  [[nodiscard]] Result<void> CreatePit();
  // `flags`: KVM_MEM_LOG_DIRTY_PAGES turns on dirty logging for the slot (re-registering an
  // existing slot with only the flags changed is allowed while vCPUs run).
  [[nodiscard]] Result<void> SetUserMemoryRegion(uint32_t slot, uint64_t gpa, uint64_t size, void* host,
                                                 uint32_t flags = 0);
  // KVM_GET_DIRTY_LOG: fills `bitmap` (bit i = page i of the slot, (pages + 63) / 64 words) with the
  // pages written since the previous call (or since logging was enabled) and re-arms the log.
  [[nodiscard]] Result<void> GetDirtyLog(uint32_t slot, std::span<uint64_t> bitmap) const;
  // Drives a GSI of the in-kernel irqchip to `level` (KVM_IRQ_LINE).
  [[nodiscard]] Result<void> SetIrqLine(uint32_t gsi, bool level);
  // Raises `gsi` edge-style whenever `eventfd` is signalled (KVM_IRQFD).
  [[nodiscard]] Result<void> RegisterIrqfd(int eventfd, uint32_t gsi);
  // Signals `eventfd` when the guest writes `datamatch` (4 bytes) to MMIO address `gpa`.
  [[nodiscard]] Result<void> RegisterIoeventfd(int eventfd, uint64_t gpa, uint32_t len, uint64_t datamatch);
  [[nodiscard]] Result<VcpuFd> CreateVcpu(uint32_t id, size_t mmap_size);
  // KVM_CHECK_EXTENSION on the VM fd (some capabilities, e.g. KVM_CAP_XSAVE2, are per VM); 0 when
  // unsupported.
  int CheckExtension(int cap) const;

  // VM-wide state for snapshots (the VM's vCPUs must not run). `chip_id` is KVM_IRQCHIP_PIC_MASTER,
  // KVM_IRQCHIP_PIC_SLAVE or KVM_IRQCHIP_IOAPIC.
  [[nodiscard]] Result<kvm_irqchip> GetIrqchip(uint32_t chip_id) const;
  [[nodiscard]] Result<void> SetIrqchip(const kvm_irqchip& chip);
  [[nodiscard]] Result<kvm_pit_state2> GetPit2() const;
  [[nodiscard]] Result<void> SetPit2(const kvm_pit_state2& pit);
  // kvmclock: the guest's view of time in ns. SetClock sets clock.clock only (its flags and
  // realtime are ignored, so the guest clock resumes exactly there); call it after the vCPUs are
  // restored.
  [[nodiscard]] Result<kvm_clock_data> GetClock() const;
  [[nodiscard]] Result<void> SetClock(const kvm_clock_data& clock);

 private:
  friend class Kvm;
  explicit VmFd(Fd fd) : fd_(std::move(fd)) {}
  Fd fd_;
};

class VcpuFd {
 public:
  uint32_t id() const { return id_; }
  kvm_run* run() const { return reinterpret_cast<kvm_run*>(run_.data()); }  // SAFETY: KVM maps a kvm_run at offset 0.

  // KVM_RUN. Returns the exit reason, or an error; EINTR/EAGAIN are reported as an Error whose
  // error_number() is that errno so the caller can treat them as "kicked".
  [[nodiscard]] Result<uint32_t> Run();

  [[nodiscard]] Result<kvm_regs> GetRegs() const;
  [[nodiscard]] Result<void> SetRegs(const kvm_regs& regs);
  [[nodiscard]] Result<kvm_sregs> GetSregs() const;
  [[nodiscard]] Result<void> SetSregs(const kvm_sregs& sregs);
  [[nodiscard]] Result<void> SetFpu(const kvm_fpu& fpu);
  [[nodiscard]] Result<void> SetCpuid(const std::vector<kvm_cpuid_entry2>& entries);
  // Sets every MSR in `msrs`; fails naming the first one KVM refused.
  [[nodiscard]] Result<void> SetMsrs(const std::vector<kvm_msr_entry>& msrs);
  [[nodiscard]] Result<kvm_lapic_state> GetLapic() const;
  [[nodiscard]] Result<void> SetLapic(const kvm_lapic_state& lapic);

  // Snapshot state. The vCPU must be outside KVM_RUN (paused or not started); these may be called
  // from any thread then. Restore order matters: see vmm/vm_snapshot.cc.
  [[nodiscard]] Result<kvm_fpu> GetFpu() const;
  // KVM_GET_CPUID2: the CPUID table this vCPU was given.
  [[nodiscard]] Result<std::vector<kvm_cpuid_entry2>> GetCpuid() const;
  // Reads the MSRs in `indices`; one that KVM refuses is skipped (not an error), so the result
  // holds every MSR that could be read, in order.
  [[nodiscard]] Result<std::vector<kvm_msr_entry>> GetMsrs(const std::vector<uint32_t>& indices) const;
  // Sets MSRs one batch at a time, skipping those KVM refuses; returns the refused indices.
  [[nodiscard]] Result<std::vector<uint32_t>> SetMsrsSkippingRefused(const std::vector<kvm_msr_entry>& msrs);
  // The XSAVE area: KVM_GET_XSAVE2 when `size` (KVM_CAP_XSAVE2 on the VM fd) exceeds 4096 bytes,
  // else KVM_GET_XSAVE. SetXsave pads `area` with zeros to at least `size` bytes.
  [[nodiscard]] Result<std::vector<uint8_t>> GetXsave(size_t size) const;
  [[nodiscard]] Result<void> SetXsave(const std::vector<uint8_t>& area, size_t size);
  [[nodiscard]] Result<kvm_xcrs> GetXcrs() const;
  [[nodiscard]] Result<void> SetXcrs(const kvm_xcrs& xcrs);
  [[nodiscard]] Result<kvm_vcpu_events> GetVcpuEvents() const;
  [[nodiscard]] Result<void> SetVcpuEvents(const kvm_vcpu_events& events);
  [[nodiscard]] Result<kvm_mp_state> GetMpState() const;
  [[nodiscard]] Result<void> SetMpState(const kvm_mp_state& state);
  [[nodiscard]] Result<kvm_debugregs> GetDebugRegs() const;
  [[nodiscard]] Result<void> SetDebugRegs(const kvm_debugregs& regs);
  // KVM_GET/SET_TSC_KHZ (KVM_CAP_GET_TSC_KHZ / KVM_CAP_TSC_CONTROL).
  [[nodiscard]] Result<uint32_t> GetTscKhz() const;
  [[nodiscard]] Result<void> SetTscKhz(uint32_t khz);
  // KVM_KVMCLOCK_CTRL: tells the guest (PVCLOCK_GUEST_STOPPED in its kvmclock page) that the host
  // stopped this vCPU, so its soft-lockup and RCU-stall detectors do not report the gap. EINVAL when
  // the guest has not enabled kvmclock on this vCPU. Not while the vCPU is in KVM_RUN.
  [[nodiscard]] Result<void> MarkGuestPaused();
  // KVM_GET_STATS_FD on this vCPU (any thread).
  [[nodiscard]] Result<Stats> OpenStats() const;

 private:
  friend class VmFd;
  VcpuFd(Fd fd, Mmap run, uint32_t id) : fd_(std::move(fd)), run_(std::move(run)), id_(id) {}
  Fd fd_;
  Mmap run_;
  uint32_t id_ = 0;
};

}  // namespace clonevm::kvm

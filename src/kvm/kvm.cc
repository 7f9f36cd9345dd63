#include "kvm/kvm.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include "kvm/uapi.h"

namespace clonevm::kvm {
namespace {

constexpr int kKvmApiVersion = 12;

struct RequiredCap {
  int cap;
  const char* name;
};
constexpr RequiredCap kRequiredCaps[] = {
    {KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"},
    {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"},
    {KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR"},
    {KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"},
    {KVM_CAP_PIT2, "KVM_CAP_PIT2"},
    {KVM_CAP_IRQFD, "KVM_CAP_IRQFD"},
    {KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD"},
    {KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"},
};

Error OpenError(const std::string& path, int err) {
  std::string hint;
  if (err == ENOENT) {
    hint =
        "KVM is not available on this host (no vmx/svm CPU support, or the kvm-intel/kvm-amd module is not "
        "loaded); without KVM, run Clone inside the nested lab: tools/lab/run-in-lab";
  } else if (err == EACCES || err == EPERM) {
    hint = "no permission; add your user to the 'kvm' group or run as root";
  }
  Error e = Error::FromErrno("open", err, path);
  if (hint.empty()) return e;
  return Error(fmt::format("{}: {}", e.message(), hint), err);
}

}  // namespace

Result<Kvm> Kvm::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return Fail(OpenError(path, errno));
  Fd kvm_fd(fd);
  int version = ::ioctl(fd, KVM_GET_API_VERSION, 0);
  if (version != kKvmApiVersion)
    return Fail("{}: unsupported KVM API version {} (need {})", path, version, kKvmApiVersion);
  for (const auto& req : kRequiredCaps) {
    if (::ioctl(fd, KVM_CHECK_EXTENSION, req.cap) <= 0) return Fail("KVM lacks a required capability: {}", req.name);
  }
  int mmap_size = ::ioctl(fd, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (mmap_size <= 0) return FailErrno("KVM_GET_VCPU_MMAP_SIZE");
  return Kvm(std::move(kvm_fd), static_cast<size_t>(mmap_size));
}

int Kvm::CheckExtension(int cap) const {
  int r = ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

int Kvm::MaxVcpus() const {
  int max = CheckExtension(KVM_CAP_MAX_VCPUS);
  if (max > 0) return max;
  max = CheckExtension(KVM_CAP_NR_VCPUS);
  return max > 0 ? max : 4;
}

Result<std::vector<kvm_cpuid_entry2>> Kvm::SupportedCpuid() const {
  for (uint32_t n = 128; n <= 4096; n *= 2) {
    std::vector<uint8_t> buf(uapi::kCpuidEntriesOffset + n * sizeof(kvm_cpuid_entry2), 0);
    uapi::CpuidHeader header{n, 0};
    std::memcpy(buf.data(), &header, sizeof(header));
    if (::ioctl(fd_.get(), uapi::kGetSupportedCpuid, buf.data()) == 0) {
      std::memcpy(&header, buf.data(), sizeof(header));
      std::vector<kvm_cpuid_entry2> entries(header.nent);
      std::memcpy(entries.data(), buf.data() + uapi::kCpuidEntriesOffset, header.nent * sizeof(kvm_cpuid_entry2));
      return entries;
    }
    if (errno != E2BIG) return FailErrno("KVM_GET_SUPPORTED_CPUID");
  }
  return Fail("KVM_GET_SUPPORTED_CPUID: too many entries");
}

Result<VmFd> Kvm::CreateVm() const {
  int fd;
  do {
    fd = ::ioctl(fd_.get(), KVM_CREATE_VM, 0);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return FailErrno("KVM_CREATE_VM");
  return VmFd(Fd(fd));
}

Result<std::vector<uint32_t>> Kvm::MsrIndexList() const {
  uapi::MsrListHeader probe{0};
  // The first call fails with E2BIG and reports the count.
  if (::ioctl(fd_.get(), uapi::kGetMsrIndexList, &probe) != 0 && errno != E2BIG) {
    return FailErrno("KVM_GET_MSR_INDEX_LIST");
  }
  std::vector<uint8_t> buf(sizeof(uapi::MsrListHeader) + probe.nmsrs * sizeof(uint32_t), 0);
  uapi::MsrListHeader header{probe.nmsrs};
  std::memcpy(buf.data(), &header, sizeof(header));
  if (::ioctl(fd_.get(), uapi::kGetMsrIndexList, buf.data()) != 0) return FailErrno("KVM_GET_MSR_INDEX_LIST");
  std::memcpy(&header, buf.data(), sizeof(header));
  std::vector<uint32_t> indices(std::min(header.nmsrs, probe.nmsrs));
  std::memcpy(indices.data(), buf.data() + sizeof(header), indices.size() * sizeof(uint32_t));
  return indices;
}

Result<void> VmFd::SetTssAddress(uint64_t gpa) {
  if (::ioctl(fd_.get(), KVM_SET_TSS_ADDR, gpa) != 0) return FailErrno("KVM_SET_TSS_ADDR", fmt::format("{:#x}", gpa));
  return {};
}

Result<void> VmFd::SetIdentityMapAddress(uint64_t gpa) {
  if (::ioctl(fd_.get(), KVM_SET_IDENTITY_MAP_ADDR, &gpa) != 0) {
    return FailErrno("KVM_SET_IDENTITY_MAP_ADDR", fmt::format("{:#x}", gpa));
  }
  return {};
}

Result<void> VmFd::CreateIrqchip() {
  if (::ioctl(fd_.get(), KVM_CREATE_IRQCHIP, 0) != 0) return FailErrno("KVM_CREATE_IRQCHIP");
  return {};
}

Result<void> VmFd::CreatePit() {
  kvm_pit_config config{};
  config.flags = KVM_PIT_SPEAKER_DUMMY;
  if (::ioctl(fd_.get(), KVM_CREATE_PIT2, &config) != 0) return FailErrno("KVM_CREATE_PIT2");
  return {};
}

Result<void> VmFd::GetDirtyLog(uint32_t slot, std::span<uint64_t> bitmap) const {
  kvm_dirty_log log{};
  log.slot = slot;
  log.dirty_bitmap = bitmap.data();
  if (::ioctl(fd_.get(), KVM_GET_DIRTY_LOG, &log) != 0)
    return FailErrno("KVM_GET_DIRTY_LOG", fmt::format("slot {}", slot));
  return {};
}

Result<void> VmFd::SetUserMemoryRegion(uint32_t slot, uint64_t gpa, uint64_t size, void* host, uint32_t flags) {
  kvm_userspace_memory_region region{};
  region.slot = slot;
  region.flags = flags;
  region.guest_phys_addr = gpa;
  region.memory_size = size;
  region.userspace_addr = reinterpret_cast<uint64_t>(host);
  if (::ioctl(fd_.get(), KVM_SET_USER_MEMORY_REGION, &region) != 0) {
    return FailErrno("KVM_SET_USER_MEMORY_REGION", fmt::format("slot {}, {:#x}+{}MiB", slot, gpa, size >> 20));
  }
  return {};
}

Result<void> VmFd::SetIrqLine(uint32_t gsi, bool level) {
  kvm_irq_level irq{};
  irq.irq = gsi;
  irq.level = level ? 1 : 0;
  if (::ioctl(fd_.get(), KVM_IRQ_LINE, &irq) != 0) return FailErrno("KVM_IRQ_LINE", fmt::format("gsi {}", gsi));
  return {};
}

Result<void> VmFd::RegisterIrqfd(int eventfd, uint32_t gsi) {
  kvm_irqfd irqfd{};
  irqfd.fd = static_cast<uint32_t>(eventfd);
  irqfd.gsi = gsi;
  if (::ioctl(fd_.get(), KVM_IRQFD, &irqfd) != 0) return FailErrno("KVM_IRQFD", fmt::format("gsi {}", gsi));
  return {};
}

Result<void> VmFd::RegisterIoeventfd(int eventfd, uint64_t gpa, uint32_t len, uint64_t datamatch) {
  kvm_ioeventfd io{};
  io.datamatch = datamatch;
  io.addr = gpa;
  io.len = len;
  io.fd = eventfd;
  io.flags = KVM_IOEVENTFD_FLAG_DATAMATCH;
  if (::ioctl(fd_.get(), KVM_IOEVENTFD, &io) != 0) return FailErrno("KVM_IOEVENTFD", fmt::format("{:#x}", gpa));
  return {};
}

Result<VcpuFd> VmFd::CreateVcpu(uint32_t id, size_t mmap_size) {
  int fd = ::ioctl(fd_.get(), KVM_CREATE_VCPU, id);
  if (fd < 0) return FailErrno("KVM_CREATE_VCPU", fmt::format("vcpu {}", id));
  Fd vcpu_fd(fd);
  Mmap run = CLONE_TRY(Mmap::Map(mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  return VcpuFd(std::move(vcpu_fd), std::move(run), id);
}

int VmFd::CheckExtension(int cap) const {
  int r = ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

Result<kvm_irqchip> VmFd::GetIrqchip(uint32_t chip_id) const {
  kvm_irqchip chip{};
  chip.chip_id = chip_id;
  if (::ioctl(fd_.get(), KVM_GET_IRQCHIP, &chip) != 0)
    return FailErrno("KVM_GET_IRQCHIP", fmt::format("chip {}", chip_id));
  return chip;
}

Result<void> VmFd::SetIrqchip(const kvm_irqchip& chip) {
  if (::ioctl(fd_.get(), KVM_SET_IRQCHIP, &chip) != 0)
    return FailErrno("KVM_SET_IRQCHIP", fmt::format("chip {}", chip.chip_id));
  return {};
}

Result<kvm_pit_state2> VmFd::GetPit2() const {
  kvm_pit_state2 pit{};
  if (::ioctl(fd_.get(), KVM_GET_PIT2, &pit) != 0) return FailErrno("KVM_GET_PIT2");
  return pit;
}

Result<void> VmFd::SetPit2(const kvm_pit_state2& pit) {
  if (::ioctl(fd_.get(), KVM_SET_PIT2, &pit) != 0) return FailErrno("KVM_SET_PIT2");
  return {};
}

Result<kvm_clock_data> VmFd::GetClock() const {
  kvm_clock_data clock{};
  if (::ioctl(fd_.get(), KVM_GET_CLOCK, &clock) != 0) return FailErrno("KVM_GET_CLOCK");
  return clock;
}

Result<void> VmFd::SetClock(const kvm_clock_data& clock) {
  kvm_clock_data c{};
  c.clock = clock.clock;  // flags 0: no KVM_CLOCK_REALTIME advance, the clock resumes at this value
  if (::ioctl(fd_.get(), KVM_SET_CLOCK, &c) != 0) return FailErrno("KVM_SET_CLOCK");
  return {};
}

Result<uint32_t> VcpuFd::Run() {
  if (::ioctl(fd_.get(), KVM_RUN, 0) != 0) return FailErrno("KVM_RUN", fmt::format("vcpu {}", id_));
  return run()->exit_reason;
}

Result<kvm_regs> VcpuFd::GetRegs() const {
  kvm_regs regs{};
  if (::ioctl(fd_.get(), KVM_GET_REGS, &regs) != 0) return FailErrno("KVM_GET_REGS");
  return regs;
}

Result<void> VcpuFd::SetRegs(const kvm_regs& regs) {
  if (::ioctl(fd_.get(), KVM_SET_REGS, &regs) != 0) return FailErrno("KVM_SET_REGS");
  return {};
}

Result<kvm_sregs> VcpuFd::GetSregs() const {
  kvm_sregs sregs{};
  if (::ioctl(fd_.get(), KVM_GET_SREGS, &sregs) != 0) return FailErrno("KVM_GET_SREGS");
  return sregs;
}

Result<void> VcpuFd::SetSregs(const kvm_sregs& sregs) {
  if (::ioctl(fd_.get(), KVM_SET_SREGS, &sregs) != 0) return FailErrno("KVM_SET_SREGS");
  return {};
}

Result<void> VcpuFd::SetFpu(const kvm_fpu& fpu) {
  if (::ioctl(fd_.get(), KVM_SET_FPU, &fpu) != 0) return FailErrno("KVM_SET_FPU");
  return {};
}

Result<void> VcpuFd::SetCpuid(const std::vector<kvm_cpuid_entry2>& entries) {
  std::vector<uint8_t> buf(uapi::kCpuidEntriesOffset + entries.size() * sizeof(kvm_cpuid_entry2), 0);
  uapi::CpuidHeader header{static_cast<uint32_t>(entries.size()), 0};
  std::memcpy(buf.data(), &header, sizeof(header));
  std::memcpy(buf.data() + uapi::kCpuidEntriesOffset, entries.data(), entries.size() * sizeof(kvm_cpuid_entry2));
  if (::ioctl(fd_.get(), uapi::kSetCpuid2, buf.data()) != 0)
    return FailErrno("KVM_SET_CPUID2", fmt::format("vcpu {}", id_));
  return {};
}

Result<void> VcpuFd::SetMsrs(const std::vector<kvm_msr_entry>& msrs) {
  std::vector<uint8_t> buf(uapi::kMsrEntriesOffset + msrs.size() * sizeof(kvm_msr_entry), 0);
  uapi::MsrsHeader header{static_cast<uint32_t>(msrs.size()), 0};
  std::memcpy(buf.data(), &header, sizeof(header));
  std::memcpy(buf.data() + uapi::kMsrEntriesOffset, msrs.data(), msrs.size() * sizeof(kvm_msr_entry));
  int n = ::ioctl(fd_.get(), uapi::kSetMsrs, buf.data());
  if (n < 0) return FailErrno("KVM_SET_MSRS", fmt::format("vcpu {}", id_));
  if (static_cast<size_t>(n) != msrs.size()) {
    return Fail("KVM_SET_MSRS: KVM refused MSR {:#x} (vcpu {})", msrs[n].index, id_);
  }
  return {};
}

Result<kvm_lapic_state> VcpuFd::GetLapic() const {
  kvm_lapic_state lapic{};
  if (::ioctl(fd_.get(), KVM_GET_LAPIC, &lapic) != 0) return FailErrno("KVM_GET_LAPIC");
  return lapic;
}

Result<void> VcpuFd::SetLapic(const kvm_lapic_state& lapic) {
  if (::ioctl(fd_.get(), KVM_SET_LAPIC, &lapic) != 0) return FailErrno("KVM_SET_LAPIC");
  return {};
}

Result<kvm_fpu> VcpuFd::GetFpu() const {
  kvm_fpu fpu{};
  if (::ioctl(fd_.get(), KVM_GET_FPU, &fpu) != 0) return FailErrno("KVM_GET_FPU");
  return fpu;
}

Result<std::vector<kvm_cpuid_entry2>> VcpuFd::GetCpuid() const {
  for (uint32_t n = 128; n <= 4096; n *= 2) {
    std::vector<uint8_t> buf(uapi::kCpuidEntriesOffset + n * sizeof(kvm_cpuid_entry2), 0);
    uapi::CpuidHeader header{n, 0};
    std::memcpy(buf.data(), &header, sizeof(header));
    if (::ioctl(fd_.get(), uapi::kGetCpuid2, buf.data()) == 0) {
      std::memcpy(&header, buf.data(), sizeof(header));
      std::vector<kvm_cpuid_entry2> entries(std::min(header.nent, n));
      std::memcpy(entries.data(), buf.data() + uapi::kCpuidEntriesOffset, entries.size() * sizeof(kvm_cpuid_entry2));
      return entries;
    }
    if (errno != E2BIG) return FailErrno("KVM_GET_CPUID2", fmt::format("vcpu {}", id_));
  }
  return Fail("KVM_GET_CPUID2: too many entries (vcpu {})", id_);
}

namespace {

// One KVM_GET_MSRS / KVM_SET_MSRS call on `entries`; returns how many KVM processed (it stops at
// the first MSR it refuses).
Result<size_t> MsrsIoctl(int fd, unsigned long request, std::vector<kvm_msr_entry>& entries) {
  std::vector<uint8_t> buf(uapi::kMsrEntriesOffset + entries.size() * sizeof(kvm_msr_entry), 0);
  uapi::MsrsHeader header{static_cast<uint32_t>(entries.size()), 0};
  std::memcpy(buf.data(), &header, sizeof(header));
  std::memcpy(buf.data() + uapi::kMsrEntriesOffset, entries.data(), entries.size() * sizeof(kvm_msr_entry));
  int n = ::ioctl(fd, request, buf.data());
  if (n < 0) return FailErrno(request == uapi::kGetMsrs ? "KVM_GET_MSRS" : "KVM_SET_MSRS");
  std::memcpy(entries.data(), buf.data() + uapi::kMsrEntriesOffset, entries.size() * sizeof(kvm_msr_entry));
  return std::min(static_cast<size_t>(n), entries.size());
}

}  // namespace

Result<std::vector<kvm_msr_entry>> VcpuFd::GetMsrs(const std::vector<uint32_t>& indices) const {
  std::vector<kvm_msr_entry> result;
  size_t next = 0;
  while (next < indices.size()) {
    std::vector<kvm_msr_entry> batch(indices.size() - next);
    for (size_t i = 0; i < batch.size(); ++i) batch[i].index = indices[next + i];
    size_t n = CLONE_TRY(MsrsIoctl(fd_.get(), uapi::kGetMsrs, batch));
    result.insert(result.end(), batch.begin(), batch.begin() + static_cast<ptrdiff_t>(n));
    next += n + 1;  // skip the one KVM refused
  }
  return result;
}

Result<std::vector<uint32_t>> VcpuFd::SetMsrsSkippingRefused(const std::vector<kvm_msr_entry>& msrs) {
  std::vector<uint32_t> refused;
  size_t next = 0;
  while (next < msrs.size()) {
    std::vector<kvm_msr_entry> batch(msrs.begin() + static_cast<ptrdiff_t>(next), msrs.end());
    size_t n = CLONE_TRY(MsrsIoctl(fd_.get(), uapi::kSetMsrs, batch));
    if (n < batch.size()) refused.push_back(batch[n].index);
    next += n + 1;
  }
  return refused;
}

Result<std::vector<uint8_t>> VcpuFd::GetXsave(size_t size) const {
  size = std::max(size, sizeof(uapi::XsaveHeader));
  std::vector<uint8_t> area(size, 0);
  unsigned long request = size > sizeof(uapi::XsaveHeader) ? uapi::kGetXsave2 : uapi::kGetXsave;
  if (::ioctl(fd_.get(), request, area.data()) != 0) {
    return FailErrno(request == uapi::kGetXsave2 ? "KVM_GET_XSAVE2" : "KVM_GET_XSAVE", fmt::format("vcpu {}", id_));
  }
  return area;
}

Result<void> VcpuFd::SetXsave(const std::vector<uint8_t>& area, size_t size) {
  std::vector<uint8_t> buf(std::max({size, area.size(), sizeof(uapi::XsaveHeader)}), 0);
  std::memcpy(buf.data(), area.data(), area.size());
  if (::ioctl(fd_.get(), uapi::kSetXsave, buf.data()) != 0)
    return FailErrno("KVM_SET_XSAVE", fmt::format("vcpu {}", id_));
  return {};
}

Result<kvm_xcrs> VcpuFd::GetXcrs() const {
  kvm_xcrs xcrs{};
  if (::ioctl(fd_.get(), KVM_GET_XCRS, &xcrs) != 0) return FailErrno("KVM_GET_XCRS");
  return xcrs;
}

Result<void> VcpuFd::SetXcrs(const kvm_xcrs& xcrs) {
  if (::ioctl(fd_.get(), KVM_SET_XCRS, &xcrs) != 0) return FailErrno("KVM_SET_XCRS");
  return {};
}

Result<kvm_vcpu_events> VcpuFd::GetVcpuEvents() const {
  kvm_vcpu_events events{};
  if (::ioctl(fd_.get(), KVM_GET_VCPU_EVENTS, &events) != 0) return FailErrno("KVM_GET_VCPU_EVENTS");
  return events;
}

Result<void> VcpuFd::SetVcpuEvents(const kvm_vcpu_events& events) {
  if (::ioctl(fd_.get(), KVM_SET_VCPU_EVENTS, &events) != 0) return FailErrno("KVM_SET_VCPU_EVENTS");
  return {};
}

Result<kvm_mp_state> VcpuFd::GetMpState() const {
  kvm_mp_state state{};
  if (::ioctl(fd_.get(), KVM_GET_MP_STATE, &state) != 0) return FailErrno("KVM_GET_MP_STATE");
  return state;
}

Result<void> VcpuFd::SetMpState(const kvm_mp_state& state) {
  if (::ioctl(fd_.get(), KVM_SET_MP_STATE, &state) != 0) return FailErrno("KVM_SET_MP_STATE");
  return {};
}

Result<kvm_debugregs> VcpuFd::GetDebugRegs() const {
  kvm_debugregs regs{};
  if (::ioctl(fd_.get(), KVM_GET_DEBUGREGS, &regs) != 0) return FailErrno("KVM_GET_DEBUGREGS");
  return regs;
}

Result<void> VcpuFd::SetDebugRegs(const kvm_debugregs& regs) {
  if (::ioctl(fd_.get(), KVM_SET_DEBUGREGS, &regs) != 0) return FailErrno("KVM_SET_DEBUGREGS");
  return {};
}

Result<uint32_t> VcpuFd::GetTscKhz() const {
  int khz = ::ioctl(fd_.get(), KVM_GET_TSC_KHZ, 0);
  if (khz < 0) return FailErrno("KVM_GET_TSC_KHZ");
  return static_cast<uint32_t>(khz);
}

Result<void> VcpuFd::SetTscKhz(uint32_t khz) {
  if (::ioctl(fd_.get(), KVM_SET_TSC_KHZ, static_cast<unsigned long>(khz)) != 0) {
    return FailErrno("KVM_SET_TSC_KHZ", fmt::format("{} kHz", khz));
  }
  return {};
}

Result<void> VcpuFd::MarkGuestPaused() {
  if (::ioctl(fd_.get(), KVM_KVMCLOCK_CTRL, 0) != 0) return FailErrno("KVM_KVMCLOCK_CTRL");
  return {};
}

Result<Stats> VcpuFd::OpenStats() const {
  int fd = ::ioctl(fd_.get(), KVM_GET_STATS_FD, 0);
  if (fd < 0) return FailErrno("KVM_GET_STATS_FD", fmt::format("vcpu {}", id_));
  return Stats::FromFd(Fd(fd));
}

Result<Stats> Stats::FromFd(Fd fd) {
  kvm_stats_header header{};
  if (::pread(fd.get(), &header, sizeof(header), 0) != static_cast<ssize_t>(sizeof(header))) {
    return FailErrno("KVM stats: reading the header");
  }
  // Sanity bounds: a descriptor is a fixed part plus name_size bytes; KVM has a few dozen.
  if (header.num_desc > 4096 || header.name_size == 0 || header.name_size > 4096) {
    return Fail("KVM stats: implausible header ({} descriptors, names of {} bytes)", header.num_desc, header.name_size);
  }
  size_t desc_size = sizeof(kvm_stats_desc) + header.name_size;
  std::vector<uint8_t> block(desc_size * header.num_desc);
  if (::pread(fd.get(), block.data(), block.size(), header.desc_offset) != static_cast<ssize_t>(block.size())) {
    return FailErrno("KVM stats: reading the descriptors");
  }
  std::vector<Desc> descs;
  uint32_t data_size = 0;
  for (uint32_t i = 0; i < header.num_desc; ++i) {
    const uint8_t* d = block.data() + i * desc_size;
    kvm_stats_desc desc{};
    std::memcpy(&desc, d, sizeof(desc));
    const char* name = reinterpret_cast<const char*>(d + sizeof(kvm_stats_desc));  // SAFETY: in `block`
    std::string n(name, strnlen(name, header.name_size));
    descs.push_back({std::move(n), desc.offset});
    data_size = std::max<uint32_t>(data_size, desc.offset + std::max<uint32_t>(desc.size, 1) * 8);
  }
  return Stats(std::move(fd), std::move(descs), header.data_offset, data_size);
}

Result<std::vector<std::pair<std::string, uint64_t>>> Stats::ReadAll() const {
  std::vector<uint8_t> data(data_size_);
  if (::pread(fd_.get(), data.data(), data.size(), data_offset_) != static_cast<ssize_t>(data.size())) {
    return FailErrno("KVM stats: reading the data");
  }
  std::vector<std::pair<std::string, uint64_t>> out;
  for (const Desc& d : descs_) {
    uint64_t v = 0;
    std::memcpy(&v, data.data() + d.offset, sizeof(v));
    out.emplace_back(d.name, v);
  }
  return out;
}

std::optional<uint64_t> Stats::Read(std::string_view name) const {
  for (const Desc& d : descs_) {
    if (d.name != name) continue;
    uint64_t v = 0;
    if (::pread(fd_.get(), &v, sizeof(v), data_offset_ + d.offset) != static_cast<ssize_t>(sizeof(v))) {
      return std::nullopt;
    }
    return v;
  }
  return std::nullopt;
}

}  // namespace clonevm::kvm

#include "host/check.h"

#include <cpuid.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "base/fd.h"
#include "base/subprocess.h"

namespace clonevm::host {
namespace {

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\t')) s.pop_back();
  size_t start = s.find_first_not_of(" \t");
  return start == std::string::npos ? std::string() : s.substr(start);
}

// The "flags" of the first processor in /proc/cpuinfo.
std::set<std::string> CpuFlags(const System& system) {
  std::set<std::string> flags;
  auto cpuinfo = system.ReadFile("/proc/cpuinfo");
  if (!cpuinfo) return flags;
  std::istringstream in(*cpuinfo);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.starts_with("flags")) continue;
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::istringstream words(line.substr(colon + 1));
    std::string word;
    while (words >> word) flags.insert(word);
    break;
  }
  return flags;
}

// "y", "m" or "" for CONFIG_<name> in the running kernel's config (/boot/config-R or /proc/config.gz).
std::string KernelConfig(const System& system, const std::string& name) {
  std::string key = "CONFIG_" + name + "=";
  for (const std::string& path : {"/boot/config-" + system.KernelRelease(), std::string("/proc/config.gz")}) {
    auto config = system.ReadFile(path);
    if (!config) continue;
    std::istringstream in(*config);
    std::string line;
    while (std::getline(in, line)) {
      if (line.starts_with(key)) return Trim(line.substr(key.size()));
    }
    return "";
  }
  return "";
}

bool YesFile(const System& system, const std::string& path) {
  auto v = system.ReadFile(path);
  if (!v) return false;
  std::string t = Trim(*v);
  return t == "Y" || t == "y" || t == "1";
}

std::optional<long long> NumberFile(const System& system, const std::string& path) {
  auto v = system.ReadFile(path);
  if (!v) return std::nullopt;
  char* end = nullptr;
  std::string t = Trim(*v);
  long long n = std::strtoll(t.c_str(), &end, 10);
  if (t.empty() || *end != '\0') return std::nullopt;
  return n;
}

// "KVM_CAP_IRQFD" -> "irqfd"
std::string CapName(std::string_view name) {
  if (name.starts_with("KVM_CAP_")) name.remove_prefix(8);
  std::string out;
  for (char c : name) out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// System: this machine, under a root.

System::System(std::string root) : root_(std::move(root)) {
  if (root_.empty()) {
    const char* env = std::getenv("CLONE_HOST_ROOT");
    root_ = env != nullptr && *env != '\0' ? env : "/";
  }
}

std::string System::Under(const std::string& path) const {
  if (root_.empty() || root_ == "/") return path;
  return root_ + path;
}

std::optional<std::string> System::ReadFile(const std::string& path) const {
  std::string full = Under(path);
  if (path.ends_with(".gz")) {
    gzFile gz = gzopen(full.c_str(), "rb");
    if (gz == nullptr) return std::nullopt;
    std::string out;
    char buf[16384];
    int n;
    while ((n = gzread(gz, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
    gzclose(gz);
    if (n < 0) return std::nullopt;
    return out;
  }
  std::ifstream in(full, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return ss.str();
}

bool System::Exists(const std::string& path) const { return ::access(Under(path).c_str(), F_OK) == 0; }

int System::AccessRw(const std::string& path) const {
  return ::access(Under(path).c_str(), R_OK | W_OK) == 0 ? 0 : errno;
}

std::vector<std::string> System::List(const std::string& dir) const {
  std::vector<std::string> names;
  DIR* d = ::opendir(Under(dir).c_str());
  if (d == nullptr) return names;
  while (dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
    names.emplace_back(e->d_name);
  }
  ::closedir(d);
  return names;
}

std::optional<std::string> System::FindTool(const std::string& name) const {
  std::string path = clonevm::FindTool(name, root_);
  if (path.empty()) return std::nullopt;
  return path;
}

KvmAnswers System::AskKvm(const std::string& path, const std::vector<int>& caps) const {
  KvmAnswers a;
  std::string full = Under(path);
  a.present = ::access(full.c_str(), F_OK) == 0;
  if (!a.present) return a;
  int fd = ::open(full.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    a.open_errno = errno;
    return a;
  }
  Fd kvm(fd);
  a.api_version = ::ioctl(fd, KVM_GET_API_VERSION, 0);
  for (int cap : caps) {
    int r = ::ioctl(fd, KVM_CHECK_EXTENSION, cap);
    a.caps[cap] = r < 0 ? 0 : r;
  }
  return a;
}

CpuidBits System::Cpuid() const {
  CpuidBits bits;
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(0, &eax, &ebx, &ecx, &edx)) {
    char vendor[13];
    std::memcpy(vendor, &ebx, 4);
    std::memcpy(vendor + 4, &edx, 4);
    std::memcpy(vendor + 8, &ecx, 4);
    vendor[12] = '\0';
    bits.vendor = vendor;
  }
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx)) {
    bits.vmx = (ecx >> 5) & 1;
    bits.hypervisor = (ecx >> 31) & 1;
  }
  if (__get_cpuid(0x80000001, &eax, &ebx, &ecx, &edx)) bits.svm = (ecx >> 2) & 1;
  return bits;
}

int System::UserfaultfdErrno() const {
#ifdef SYS_userfaultfd
  // UFFD_USER_MODE_ONLY (1): what an unprivileged VMM may ask for on kernels >= 5.11.
  for (int flags : {O_CLOEXEC | O_NONBLOCK, O_CLOEXEC | O_NONBLOCK | 1}) {
    long fd = ::syscall(SYS_userfaultfd, flags);
    if (fd >= 0) {
      ::close(static_cast<int>(fd));
      return 0;
    }
  }
  return errno;
#else
  return ENOSYS;
#endif
}

std::string System::KernelRelease() const {
  utsname u{};
  if (::uname(&u) != 0) return "";
  return u.release;
}

// ---------------------------------------------------------------------------------------------

const char* KvmKindName(KvmKind kind) {
  switch (kind) {
    case KvmKind::kAbsent:
      return "absent";
    case KvmKind::kAmdSvm:
      return "amd-svm";
    case KvmKind::kIntelVmx:
      return "intel-vmx";
    case KvmKind::kPvm:
      return "pvm";
    case KvmKind::kOther:
      return "other";
  }
  return "?";
}

const char* StatusName(Status status) {
  switch (status) {
    case Status::kOk:
      return "ok";
    case Status::kMissing:
      return "missing";
    case Status::kOff:
      return "off";
    case Status::kUnusable:
      return "unusable";
    case Status::kInfo:
      return "info";
  }
  return "?";
}

const std::vector<CapInfo>& KvmCaps() {
  static const std::vector<CapInfo> caps = {
      {KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP", true, ""},
      {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY", true, ""},
      {KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR", true, ""},
      {KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID", true, ""},
      {KVM_CAP_PIT2, "KVM_CAP_PIT2", true, ""},
      {KVM_CAP_IRQFD, "KVM_CAP_IRQFD", true, ""},
      {KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD", true, ""},
      {KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT", true, ""},
      {KVM_CAP_SYNC_MMU, "KVM_CAP_SYNC_MMU", false, "copy-on-write forks may see stale template pages"},
      {KVM_CAP_ADJUST_CLOCK, "KVM_CAP_ADJUST_CLOCK", false, "no snapshots or forks (kvmclock cannot be saved)"},
      {KVM_CAP_VCPU_EVENTS, "KVM_CAP_VCPU_EVENTS", false, "no snapshots or forks"},
      {KVM_CAP_XCRS, "KVM_CAP_XCRS", false, "no snapshots or forks"},
      {KVM_CAP_XSAVE2, "KVM_CAP_XSAVE2", false, "snapshots keep only the legacy 4 KiB XSAVE area (no AMX state)"},
      {KVM_CAP_TSC_CONTROL, "KVM_CAP_TSC_CONTROL", false, "a snapshot restores only on a host with the same TSC rate"},
      {KVM_CAP_GET_TSC_KHZ, "KVM_CAP_GET_TSC_KHZ", false, "restored guests' TSC is not moved to now"},
      {KVM_CAP_KVMCLOCK_CTRL, "KVM_CAP_KVMCLOCK_CTRL", false, "forks of old templates report soft lockups"},
      {KVM_CAP_IRQ_ROUTING, "KVM_CAP_IRQ_ROUTING", false, "no MSI routing (PCI passthrough)"},
      {KVM_CAP_DIRTY_LOG_RING, "KVM_CAP_DIRTY_LOG_RING", false, "dirty tracking uses the bitmap only"},
      {KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", false,
       "dirty-log collection write-protects all of memory at once"},
      {KVM_CAP_BINARY_STATS_FD, "KVM_CAP_BINARY_STATS_FD", false, "no per-reason VM exit counters"},
  };
  return caps;
}

KvmVerdict ClassifyKvm(const System& system, const std::string& kvm_path) {
  KvmVerdict v;
  if (!system.Exists(kvm_path)) {
    v.kind = KvmKind::kAbsent;
    v.why = fmt::format(
        "this host has no {} (no KVM): run Clone inside the nested lab (tools/lab/run-in-lab); see 'clone check'",
        kvm_path);
    return v;
  }
  std::set<std::string> flags = CpuFlags(system);
  CpuidBits cpuid = system.Cpuid();
  bool amd_module = system.Exists("/sys/module/kvm_amd");
  bool intel_module = system.Exists("/sys/module/kvm_intel");
  bool pvm_module = system.Exists("/sys/module/kvm_pvm");
  std::string pvm_config = KernelConfig(system, "KVM_PVM");
  // Without a readable /proc/cpuinfo, CPUID answers (it cannot tell that the kernel disabled them).
  bool svm = flags.contains("svm") || (flags.empty() && cpuid.svm);
  bool vmx = flags.contains("vmx") || (flags.empty() && cpuid.vmx);
  // /proc/cpuinfo is the kernel's view (it hides SVM/VMX when they are disabled or absent); CPUID
  // only confirms. A kvm_amd/kvm_intel module without the flag cannot have loaded.
  if (svm && (amd_module || !intel_module)) {
    v.kind = KvmKind::kAmdSvm;
  } else if (vmx) {
    v.kind = KvmKind::kIntelVmx;
  } else if (pvm_module || pvm_config == "y" || pvm_config == "m") {
    v.kind = KvmKind::kPvm;
  } else {
    v.kind = KvmKind::kOther;
  }
  if (v.kind == KvmKind::kAmdSvm || v.kind == KvmKind::kIntelVmx) {
    v.stock_guests = true;
    return v;
  }
  if (v.kind == KvmKind::kPvm) {
    v.why =
        "this host's KVM is PVM (no AMD SVM or Intel VMX): it runs only PVM-enabled guest kernels; see 'clone check'";
  } else {
    v.why =
        "this host's KVM has no AMD SVM or Intel VMX behind it (software or nested KVM): it cannot run a stock "
        "kernel; see 'clone check'";
  }
  return v;
}

std::optional<std::string> RefuseNonHardwareKvm(const System& system) {
  const char* any = std::getenv("CLONE_ANY_KVM");
  if (any != nullptr && std::string(any) == "1") return std::nullopt;
  KvmVerdict v = ClassifyKvm(system);
  // No /dev/kvm at all: Kvm::Open says so with its own hint.
  if (v.stock_guests || v.kind == KvmKind::kAbsent) return std::nullopt;
  return v.why;
}

Report Check(const System& system) {
  Report r;
  r.kvm = ClassifyKvm(system);
  auto add = [&](std::string name, Status status, std::string detail, std::string cost = {}, std::string fix = {}) {
    r.items.push_back({std::move(name), status, std::move(detail), std::move(cost), std::move(fix)});
  };
  CpuidBits cpuid = system.Cpuid();
  std::set<std::string> flags = CpuFlags(system);

  // --- KVM ---
  std::vector<int> cap_ids;
  for (const auto& c : KvmCaps()) cap_ids.push_back(c.cap);
  cap_ids.push_back(KVM_CAP_MAX_VCPUS);
  KvmAnswers kvm = system.AskKvm("/dev/kvm", cap_ids);
  bool kvm_usable = false;
  if (!kvm.present) {
    add("kvm", Status::kMissing, "no /dev/kvm", "no VMs can run on this host",
        flags.contains("svm") || flags.contains("vmx")
            ? "modprobe kvm_amd (or kvm_intel); or run in the nested lab: tools/lab/run-in-lab"
            : "no SVM/VMX visible to this kernel: run guests in the nested lab (tools/lab/run-in-lab)");
  } else if (kvm.open_errno != 0) {
    bool perm = kvm.open_errno == EACCES || kvm.open_errno == EPERM;
    add("kvm", Status::kUnusable, fmt::format("/dev/kvm: {}", std::strerror(kvm.open_errno)),
        "no VMs can run as this user",
        perm ? "add your user to the 'kvm' group (usermod -aG kvm $USER) and log in again" : "");
  } else if (kvm.api_version != 12) {
    add("kvm", Status::kUnusable, fmt::format("/dev/kvm: API version {} (Clone needs 12)", kvm.api_version),
        "no VMs can run");
  } else {
    kvm_usable = true;
    std::string kind;
    switch (r.kvm.kind) {
      case KvmKind::kAmdSvm:
        kind = "AMD SVM, hardware-assisted";
        break;
      case KvmKind::kIntelVmx:
        kind = "Intel VMX, hardware-assisted";
        break;
      case KvmKind::kPvm:
        kind = "PVM (software nested virtualization; no SVM/VMX)";
        break;
      default:
        kind = "no AMD SVM or Intel VMX behind it";
    }
    int max_vcpus = kvm.caps.count(KVM_CAP_MAX_VCPUS) ? kvm.caps[KVM_CAP_MAX_VCPUS] : 0;
    std::string detail = fmt::format("/dev/kvm, API 12, {}", kind);
    if (max_vcpus > 0) detail += fmt::format(", up to {} vCPUs", max_vcpus);
    if (cpuid.hypervisor) detail += ", itself a guest";
    if (r.kvm.stock_guests) {
      add("kvm", Status::kOk, detail);
    } else {
      add("kvm", Status::kUnusable, detail, "stock distro kernels spin forever in KVM_RUN with no output",
          "use a host with hardware virtualization, or the nested lab (tools/lab/run-in-lab)");
    }
  }
  if (r.kvm.kind == KvmKind::kAmdSvm || r.kvm.kind == KvmKind::kIntelVmx) {
    bool amd = r.kvm.kind == KvmKind::kAmdSvm;
    std::string param = amd ? "/sys/module/kvm_amd/parameters/npt" : "/sys/module/kvm_intel/parameters/ept";
    if (!system.Exists(param)) {
      add("nested paging", Status::kInfo, fmt::format("unknown ({} not readable)", param));
    } else if (YesFile(system, param)) {
      add("nested paging", Status::kOk, amd ? "NPT on" : "EPT on");
    } else {
      add("nested paging", Status::kMissing, amd ? "NPT off" : "EPT off",
          "every guest page-table change exits to KVM (shadow paging): slow guests",
          amd ? "modprobe -r kvm_amd && modprobe kvm_amd npt=1" : "modprobe -r kvm_intel && modprobe kvm_intel ept=1");
    }
  }
  if (kvm_usable) {
    std::vector<std::string> have, missing_required;
    for (const auto& c : KvmCaps()) {
      int answer = kvm.caps.count(c.cap) ? kvm.caps[c.cap] : 0;
      std::string name = CapName(c.name);
      if (answer > 0) {
        have.push_back(name);
      } else if (c.required) {
        missing_required.push_back(name);
      } else {
        add("kvm " + name, Status::kMissing, c.name + std::string(" not offered"), c.cost);
      }
    }
    if (!missing_required.empty()) {
      add("kvm caps", Status::kUnusable, fmt::format("missing required: {}", fmt::join(missing_required, " ")),
          "no VMs can run");
    } else {
      add("kvm caps", Status::kOk, fmt::format("{}", fmt::join(have, " ")));
    }
  }

  // --- devices ---
  struct Dev {
    const char* name;
    const char* path;
    const char* cost;
    const char* fix;
  };
  const Dev devs[] = {
      {"vhost-vsock", "/dev/vhost-vsock",
       "no guest agent: no 'clone exec', no fresh identity in forks, no balloon policy", "modprobe vhost_vsock"},
      {"vhost-net", "/dev/vhost-net", "--net/--tap use the slower userspace virtio-net data path",
       "modprobe vhost_net"},
      {"tun", "/dev/net/tun", "no --net or --tap networking", "modprobe tun"},
  };
  for (const Dev& d : devs) {
    if (!system.Exists(d.path)) {
      add(d.name, Status::kMissing, fmt::format("no {}", d.path), d.cost, d.fix);
    } else if (int err = system.AccessRw(d.path); err != 0) {
      add(d.name, Status::kUnusable, fmt::format("{}: {}", d.path, std::strerror(err)), d.cost,
          "give your user read-write access to it (or run as root)");
    } else {
      add(d.name, Status::kOk, d.path);
    }
  }

  // --- memory ---
  if (system.Exists("/sys/kernel/mm/ksm/run")) {
    std::map<std::string, long long> ksm;
    for (const char* k : {"run", "pages_shared", "pages_sharing", "pages_to_scan", "sleep_millisecs"}) {
      if (auto n = NumberFile(system, fmt::format("/sys/kernel/mm/ksm/{}", k))) ksm[k] = *n;
    }
    r.ksm = ksm;
    std::string counters =
        fmt::format("pages_shared {}, pages_sharing {}", ksm.count("pages_shared") ? ksm["pages_shared"] : 0,
                    ksm.count("pages_sharing") ? ksm["pages_sharing"] : 0);
    if (ksm.count("run") && ksm["run"] == 1) {
      add("ksm", Status::kOk, "running; " + counters);
    } else {
      add("ksm", Status::kOff,
          "present but not running (run = " + std::to_string(ksm.count("run") ? ksm["run"] : -1) + ")",
          "identical pages of different VMs are not merged (guest RAM is still MADV_MERGEABLE)",
          "echo 1 > /sys/kernel/mm/ksm/run (Clone never changes host-wide KSM settings itself)");
    }
  } else {
    add("ksm", Status::kMissing, "no /sys/kernel/mm/ksm (CONFIG_KSM off)",
        "identical pages of different VMs are never merged");
  }
  if (int err = system.UserfaultfdErrno(); err == 0) {
    add("userfaultfd", Status::kOk, "available");
  } else {
    add("userfaultfd", Status::kMissing, fmt::format("userfaultfd: {}", std::strerror(err)),
        "no post-copy live migration",
        err == EPERM ? "sysctl vm.unprivileged_userfaultfd=1, or run as root" : "a kernel with CONFIG_USERFAULTFD");
  }
  if (auto meminfo = system.ReadFile("/proc/meminfo")) {
    std::istringstream in(*meminfo);
    std::string line, total, avail;
    while (std::getline(in, line)) {
      if (line.starts_with("MemTotal:")) total = Trim(line.substr(9));
      if (line.starts_with("MemAvailable:")) avail = Trim(line.substr(13));
    }
    if (!total.empty()) add("memory", Status::kInfo, fmt::format("MemTotal {}, MemAvailable {}", total, avail));
  }

  // --- passthrough ---
  bool iommu = !system.List("/sys/class/iommu").empty() || !system.List("/sys/kernel/iommu_groups").empty();
  if (iommu) {
    add("iommu", Status::kOk, fmt::format("{} IOMMU group(s)", system.List("/sys/kernel/iommu_groups").size()));
  } else {
    add("iommu", Status::kMissing, "no IOMMU groups", "no PCI passthrough (--passthrough)",
        "enable VT-d/AMD-Vi in the firmware and boot with intel_iommu=on or amd_iommu=on");
  }
  if (system.Exists("/sys/bus/pci/drivers/vfio-pci")) {
    add("vfio-pci", Status::kOk, "driver loaded");
  } else {
    add("vfio-pci", Status::kMissing, "vfio-pci driver not loaded", "no PCI passthrough (--passthrough)",
        "modprobe vfio-pci");
  }

  // --- tools ---
  struct Tool {
    const char* name;
    const char* cost;
    const char* fix;
  };
  const Tool tools[] = {
      {"nft", "--net cannot set up its NAT to the uplink", "apt-get install nftables"},
      {"mkfs.ext4", "no 'clone rootfs create'", "apt-get install e2fsprogs"},
      {"debootstrap", "no 'clone rootfs create --distro'", "apt-get install debootstrap"},
      {"busybox", "no generated initrd for --rootfs", "apt-get install busybox-static"},
  };
  for (const Tool& t : tools) {
    if (auto path = system.FindTool(t.name)) {
      add(t.name, Status::kOk, *path);
    } else {
      add(t.name, Status::kMissing, "not on PATH", t.cost, t.fix);
    }
  }
  return r;
}

std::string Report::ToText(bool color) const {
  std::string out = "Clone host check\n";
  for (const Item& item : items) {
    const char* c = "";
    switch (item.status) {
      case Status::kOk:
        c = "\033[32m";
        break;
      case Status::kMissing:
      case Status::kOff:
        c = "\033[33m";
        break;
      case Status::kUnusable:
        c = "\033[31m";
        break;
      case Status::kInfo:
        c = "";
        break;
    }
    std::string status = StatusName(item.status);
    if (color && *c) status = fmt::format("{}{:<8}\033[0m", c, status);
    out += fmt::format("  {:<8} {:<16} {}", color ? status : fmt::format("{:<8}", status), item.name, item.detail);
    if (!item.cost.empty() && item.status != Status::kOk) out += fmt::format(": {}", item.cost);
    if (!item.fix.empty() && item.status != Status::kOk) out += fmt::format(" (fix: {})", item.fix);
    out += "\n";
  }
  if (kvm.stock_guests) {
    out += "result: stock Linux guests run here (clone run, restore, fork)\n";
  } else {
    out += fmt::format("result: stock Linux guests cannot run here: {}\n", kvm.why);
  }
  return out;
}

nlohmann::json Report::ToJson() const {
  nlohmann::json j;
  j["stock_guests"] = kvm.stock_guests;
  j["kvm_kind"] = KvmKindName(kvm.kind);
  if (!kvm.why.empty()) j["reason"] = kvm.why;
  nlohmann::json list = nlohmann::json::array();
  for (const Item& item : items) {
    nlohmann::json e{{"name", item.name}, {"status", StatusName(item.status)}, {"detail", item.detail}};
    if (!item.cost.empty() && item.status != Status::kOk) e["cost"] = item.cost;
    if (!item.fix.empty() && item.status != Status::kOk) e["fix"] = item.fix;
    list.push_back(std::move(e));
  }
  j["checks"] = std::move(list);
  if (ksm) j["ksm"] = *ksm;
  return j;
}

}  // namespace clonevm::host

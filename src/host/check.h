// Host check: can Clone run here, and what does each missing piece cost? (`clone check`)
//
// Everything is read through a `System`: files under a root directory (/proc, /sys, /dev, /boot,
// the PATH) plus the few answers that need a syscall (KVM's API version and capabilities, CPUID,
// userfaultfd). `RealSystem` asks this machine; tests subclass it over a fake tree with fake
// answers. Nothing here needs root, and nothing changes the host.
//
// The one verdict that matters most is the KVM kind: a hardware-assisted KVM (AMD SVM or Intel VMX)
// runs stock distro kernels; PVM (a software nested hypervisor, CONFIG_KVM_PVM) or any other KVM
// without SVM/VMX runs only specially built guests, and an unmodified kernel spins in KVM_RUN
// forever. `ClassifyKvm` is cheap (a few small files) so that `clone run|restore|fork` can refuse
// such a host before any guest instruction.
#pragma once

#include <map>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

namespace clonevm::host {

// What KVM answered when opened (or why it could not be).
struct KvmAnswers {
  bool present = false;  // the device node exists
  int open_errno = 0;    // 0: opened read-write
  int api_version = -1;
  std::map<int, int> caps;  // KVM_CHECK_EXTENSION answers for the capabilities Clone looks at
};

struct CpuidBits {
  bool svm = false;         // CPUID 0x80000001 ECX[2]
  bool vmx = false;         // CPUID 1 ECX[5]
  bool hypervisor = false;  // CPUID 1 ECX[31]: this host is itself a guest
  std::string vendor;       // "AuthenticAMD", "GenuineIntel", ...
};

class System {
 public:
  // `root` "/" is this machine. An empty root means $CLONE_HOST_ROOT if set (a fake tree for tests
  // of the CLI), else "/".
  explicit System(std::string root = "");
  virtual ~System() = default;

  // The contents of `path` (absolute, taken under the root); nullopt if it cannot be read.
  // Paths ending in .gz are decompressed.
  virtual std::optional<std::string> ReadFile(const std::string& path) const;
  virtual bool Exists(const std::string& path) const;
  // access(2) R_OK|W_OK on the path under the root: 0 or the errno.
  virtual int AccessRw(const std::string& path) const;
  // Names in a directory (no . and ..); empty if it cannot be listed.
  virtual std::vector<std::string> List(const std::string& dir) const;
  // The first executable `name` on $PATH (directories taken under the root), if any.
  virtual std::optional<std::string> FindTool(const std::string& name) const;
  // Opens `path` and asks its API version and the capabilities in `caps`.
  virtual KvmAnswers AskKvm(const std::string& path, const std::vector<int>& caps) const;
  virtual CpuidBits Cpuid() const;
  // Whether a userfaultfd can be created by this process (0) or the errno.
  virtual int UserfaultfdErrno() const;
  // uname -r
  virtual std::string KernelRelease() const;

 protected:
  std::string Under(const std::string& path) const;
  std::string root_;
};

enum class KvmKind {
  kAbsent,    // no /dev/kvm
  kAmdSvm,    // hardware-assisted
  kIntelVmx,  // hardware-assisted
  kPvm,       // pagetable-based (software) virtualization: PVM-enabled guest kernels only
  kOther,     // a /dev/kvm without SVM or VMX behind it
};
const char* KvmKindName(KvmKind kind);

struct KvmVerdict {
  KvmKind kind = KvmKind::kAbsent;
  bool stock_guests = false;  // an unmodified distro kernel runs here
  std::string why;            // when !stock_guests: one line, e.g. "this host's KVM is PVM (...)"
};

// The KVM kind from /proc/cpuinfo, CPUID, /sys/module and the kernel config; no ioctl.
KvmVerdict ClassifyKvm(const System& system, const std::string& kvm_path = "/dev/kvm");

enum class Status { kOk, kMissing, kOff, kUnusable, kInfo };  // kOff: present but switched off
const char* StatusName(Status status);

struct Item {
  std::string name;
  Status status = Status::kOk;
  std::string detail;  // what was found
  std::string cost;    // when not ok: what the user loses
  std::string fix;     // when there is one
};

struct Report {
  KvmVerdict kvm;
  std::vector<Item> items;
  // KSM counters when KSM exists (/sys/kernel/mm/ksm): run, pages_shared, pages_sharing.
  std::optional<std::map<std::string, long long>> ksm;

  bool stock_guests() const { return kvm.stock_guests; }
  std::string ToText(bool color) const;
  nlohmann::json ToJson() const;
};

Report Check(const System& system);

// KVM capabilities Clone looks at: required ones make KVM unusable when missing.
struct CapInfo {
  int cap;
  const char* name;
  bool required;
  const char* cost;  // what a missing optional one costs
};
const std::vector<CapInfo>& KvmCaps();

// What run/restore/fork call first: nullopt when stock kernels run here, else the one-line reason
// ("this host's KVM is PVM (no AMD SVM or Intel VMX): it runs only PVM-enabled guest kernels; see
// 'clone check'"). CLONE_ANY_KVM=1 in the environment skips the refusal (a PVM-enabled guest).
std::optional<std::string> RefuseNonHardwareKvm(const System& system);

}  // namespace clonevm::host

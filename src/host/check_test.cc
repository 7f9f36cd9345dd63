#include "host/check.h"

#include <gtest/gtest.h>
#include <linux/kvm.h>
#include <sys/stat.h>
#include <zlib.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "base/testing/host_tools.h"

namespace clonevm::host {
namespace {

namespace fs = std::filesystem;

// A fake host: files under a temporary root, and KVM/CPUID/userfaultfd answers set by the test.
class FakeSystem : public System {
 public:
  explicit FakeSystem(const std::string& root) : System(root) {}
  KvmAnswers AskKvm(const std::string& path, const std::vector<int>& caps) const override {
    KvmAnswers a = kvm;
    a.present = Exists(path);
    if (a.present && a.open_errno == 0 && a.caps.empty()) {
      for (int c : caps) a.caps[c] = 1;
    }
    return a;
  }
  CpuidBits Cpuid() const override { return cpuid; }
  int UserfaultfdErrno() const override { return uffd_errno; }
  std::string KernelRelease() const override { return "6.1.0-test"; }

  KvmAnswers kvm{true, 0, 12, {}};
  CpuidBits cpuid;
  int uffd_errno = 0;
};

class HostCheckTest : public ::testing::Test {
 protected:
  void Write(const std::string& path, const std::string& text) {
    fs::path p = dir_.path() / path.substr(1);
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }
  void Mkdir(const std::string& path) { fs::create_directories(dir_.path() / path.substr(1)); }
  void Tool(const std::string& name) {
    Write("/usr/bin/" + name, "#!/bin/sh\n");
    ::chmod((dir_.path() / "usr/bin" / name).c_str(), 0755);
  }
  // A hardware AMD host with everything Clone uses.
  void FullAmdHost() {
    Write("/proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu vme svm npt lm\n\nprocessor\t: 1\nflags\t\t: fpu\n");
    Write("/dev/kvm", "");
    Write("/sys/module/kvm_amd/parameters/npt", "1\n");
    Write("/dev/vhost-vsock", "");
    Write("/dev/vhost-net", "");
    Write("/dev/net/tun", "");
    Write("/sys/kernel/mm/ksm/run", "1\n");
    Write("/sys/kernel/mm/ksm/pages_shared", "12\n");
    Write("/sys/kernel/mm/ksm/pages_sharing", "340\n");
    Write("/proc/meminfo", "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   20000000 kB\n");
    Mkdir("/sys/kernel/iommu_groups/0");
    Mkdir("/sys/bus/pci/drivers/vfio-pci");
    for (const char* t : {"nft", "mkfs.ext4", "debootstrap", "busybox"}) Tool(t);
  }
  const Item* Find(const Report& r, const std::string& name) {
    for (const Item& i : r.items) {
      if (i.name == name) return &i;
    }
    return nullptr;
  }

  host_tools::TempDir dir_{"clone-hostcheck"};
  FakeSystem sys_{dir_.path().string()};
};

TEST_F(HostCheckTest, HardwareAmdHostRunsStockGuestsAndListsEverything) {
  FullAmdHost();
  Report r = Check(sys_);
  EXPECT_TRUE(r.stock_guests());
  EXPECT_EQ(r.kvm.kind, KvmKind::kAmdSvm);
  for (const char* name : {"kvm", "nested paging", "kvm caps", "vhost-vsock", "vhost-net", "tun", "ksm", "userfaultfd",
                           "iommu", "vfio-pci", "nft", "mkfs.ext4", "debootstrap", "busybox"}) {
    const Item* item = Find(r, name);
    ASSERT_NE(item, nullptr) << name;
    EXPECT_EQ(item->status, Status::kOk) << name << ": " << item->detail;
  }
  EXPECT_NE(Find(r, "kvm")->detail.find("AMD SVM"), std::string::npos);
  EXPECT_NE(Find(r, "ksm")->detail.find("pages_sharing 340"), std::string::npos);
  ASSERT_TRUE(r.ksm.has_value());
  EXPECT_EQ(r.ksm->at("pages_shared"), 12);
  EXPECT_EQ(RefuseNonHardwareKvm(sys_), std::nullopt);
  auto j = r.ToJson();
  EXPECT_EQ(j["stock_guests"], true);
  EXPECT_EQ(j["kvm_kind"], "amd-svm");
  EXPECT_NE(r.ToText(false).find("result: stock Linux guests run here"), std::string::npos);
}

TEST_F(HostCheckTest, PvmHostIsRefusedWithTheReason) {
  Write("/proc/cpuinfo", "processor\t: 0\nflags\t\t: fpu vme hypervisor lm\n");
  Write("/dev/kvm", "");
  Mkdir("/sys/module/kvm_pvm");
  sys_.cpuid.hypervisor = true;
  Report r = Check(sys_);
  EXPECT_FALSE(r.stock_guests());
  EXPECT_EQ(r.kvm.kind, KvmKind::kPvm);
  EXPECT_EQ(Find(r, "kvm")->status, Status::kUnusable);
  EXPECT_NE(Find(r, "kvm")->detail.find("PVM"), std::string::npos);
  auto why = RefuseNonHardwareKvm(sys_);
  ASSERT_TRUE(why.has_value());
  EXPECT_EQ(*why,
            "this host's KVM is PVM (no AMD SVM or Intel VMX): it runs only PVM-enabled guest kernels; see 'clone "
            "check'");
  EXPECT_EQ(r.ToJson()["kvm_kind"], "pvm");
}

TEST_F(HostCheckTest, PvmFoundThroughTheKernelConfigOnly) {
  Write("/proc/cpuinfo", "flags\t\t: fpu lm\n");
  Write("/dev/kvm", "");
  Write("/boot/config-6.1.0-test", "CONFIG_KVM=y\nCONFIG_KVM_PVM=y\n# CONFIG_KVM_AMD is not set\n");
  EXPECT_EQ(ClassifyKvm(sys_).kind, KvmKind::kPvm);
}

TEST_F(HostCheckTest, PvmFoundThroughAGzippedProcConfig) {
  Write("/proc/cpuinfo", "flags\t\t: fpu lm\n");
  Write("/dev/kvm", "");
  fs::create_directories(dir_.path() / "proc");
  gzFile gz = gzopen((dir_.path() / "proc/config.gz").c_str(), "wb");
  ASSERT_NE(gz, nullptr);
  std::string config = "CONFIG_KVM=y\nCONFIG_KVM_PVM=m\n";
  gzwrite(gz, config.data(), static_cast<unsigned>(config.size()));
  gzclose(gz);
  EXPECT_EQ(ClassifyKvm(sys_).kind, KvmKind::kPvm);
}

TEST_F(HostCheckTest, KvmWithoutSvmOrVmxIsNotForStockGuests) {
  Write("/proc/cpuinfo", "flags\t\t: fpu lm\n");
  Write("/dev/kvm", "");
  KvmVerdict v = ClassifyKvm(sys_);
  EXPECT_EQ(v.kind, KvmKind::kOther);
  EXPECT_FALSE(v.stock_guests);
  EXPECT_NE(v.why.find("no AMD SVM or Intel VMX"), std::string::npos);
}

TEST_F(HostCheckTest, IntelVmxWithEptOff) {
  Write("/proc/cpuinfo", "flags\t\t: fpu vmx lm\n");
  Write("/dev/kvm", "");
  Write("/sys/module/kvm_intel/parameters/ept", "N\n");
  Report r = Check(sys_);
  EXPECT_EQ(r.kvm.kind, KvmKind::kIntelVmx);
  EXPECT_TRUE(r.stock_guests());
  ASSERT_NE(Find(r, "nested paging"), nullptr);
  EXPECT_EQ(Find(r, "nested paging")->status, Status::kMissing);
  EXPECT_NE(Find(r, "nested paging")->fix.find("ept=1"), std::string::npos);
}

TEST_F(HostCheckTest, CpuidDecidesWhenCpuinfoIsUnreadable) {
  Write("/dev/kvm", "");
  sys_.cpuid.svm = true;
  EXPECT_EQ(ClassifyKvm(sys_).kind, KvmKind::kAmdSvm);
  sys_.cpuid.svm = false;
  EXPECT_EQ(ClassifyKvm(sys_).kind, KvmKind::kOther);
}

TEST_F(HostCheckTest, NoKvmAtAll) {
  Write("/proc/cpuinfo", "flags\t\t: fpu lm\n");
  Report r = Check(sys_);
  EXPECT_FALSE(r.stock_guests());
  EXPECT_EQ(r.kvm.kind, KvmKind::kAbsent);
  EXPECT_EQ(Find(r, "kvm")->status, Status::kMissing);
  EXPECT_NE(Find(r, "kvm")->fix.find("run-in-lab"), std::string::npos);
  // Kvm::Open reports a missing /dev/kvm itself, with its own hint.
  EXPECT_EQ(RefuseNonHardwareKvm(sys_), std::nullopt);
}

TEST_F(HostCheckTest, KvmWithoutPermission) {
  FullAmdHost();
  sys_.kvm.open_errno = EACCES;
  Report r = Check(sys_);
  EXPECT_EQ(Find(r, "kvm")->status, Status::kUnusable);
  EXPECT_NE(Find(r, "kvm")->fix.find("kvm' group"), std::string::npos);
  EXPECT_EQ(Find(r, "kvm caps"), nullptr);
}

TEST_F(HostCheckTest, MissingCapabilitiesSayWhatTheyCost) {
  FullAmdHost();
  for (const auto& c : KvmCaps()) sys_.kvm.caps[c.cap] = 1;
  sys_.kvm.caps[KVM_CAP_IRQFD] = 0;
  sys_.kvm.caps[KVM_CAP_XSAVE2] = 0;
  Report r = Check(sys_);
  ASSERT_NE(Find(r, "kvm caps"), nullptr);
  EXPECT_EQ(Find(r, "kvm caps")->status, Status::kUnusable);
  EXPECT_NE(Find(r, "kvm caps")->detail.find("irqfd"), std::string::npos);
  ASSERT_NE(Find(r, "kvm xsave2"), nullptr);
  EXPECT_EQ(Find(r, "kvm xsave2")->status, Status::kMissing);
  EXPECT_NE(Find(r, "kvm xsave2")->cost.find("XSAVE"), std::string::npos);
}

TEST_F(HostCheckTest, MissingDevicesKsmAndToolsNameTheirCostAndFix) {
  Write("/proc/cpuinfo", "flags\t\t: svm\n");
  Write("/dev/kvm", "");
  Write("/sys/kernel/mm/ksm/run", "0\n");
  sys_.uffd_errno = EPERM;
  Report r = Check(sys_);
  EXPECT_TRUE(r.stock_guests());  // nothing below stops a guest from booting
  const Item* vsock = Find(r, "vhost-vsock");
  ASSERT_NE(vsock, nullptr);
  EXPECT_EQ(vsock->status, Status::kMissing);
  EXPECT_NE(vsock->cost.find("no guest agent: no 'clone exec'"), std::string::npos);
  EXPECT_EQ(vsock->fix, "modprobe vhost_vsock");
  EXPECT_EQ(Find(r, "tun")->fix, "modprobe tun");
  EXPECT_EQ(Find(r, "ksm")->status, Status::kOff);
  EXPECT_NE(Find(r, "ksm")->fix.find("never changes"), std::string::npos);
  EXPECT_EQ(Find(r, "userfaultfd")->status, Status::kMissing);
  EXPECT_NE(Find(r, "userfaultfd")->fix.find("unprivileged_userfaultfd"), std::string::npos);
  EXPECT_EQ(Find(r, "iommu")->status, Status::kMissing);
  EXPECT_EQ(Find(r, "vfio-pci")->fix, "modprobe vfio-pci");
  EXPECT_EQ(Find(r, "debootstrap")->status, Status::kMissing);
  std::string text = r.ToText(false);
  EXPECT_NE(text.find("missing  vhost-vsock"), std::string::npos) << text;
  auto j = r.ToJson();
  bool found = false;
  for (const auto& c : j["checks"]) {
    if (c["name"] == "vhost-vsock") {
      found = true;
      EXPECT_EQ(c["status"], "missing");
      EXPECT_EQ(c["fix"], "modprobe vhost_vsock");
    }
  }
  EXPECT_TRUE(found);
}

TEST_F(HostCheckTest, DeviceWithoutPermissionIsUnusable) {
  if (::geteuid() == 0) GTEST_SKIP() << "root passes every access check";
  FullAmdHost();
  ::chmod((dir_.path() / "dev/vhost-net").c_str(), 0);
  EXPECT_EQ(Find(Check(sys_), "vhost-net")->status, Status::kUnusable);
}

TEST_F(HostCheckTest, AnyKvmOverride) {
  Write("/proc/cpuinfo", "flags\t\t: fpu\n");
  Write("/dev/kvm", "");
  Mkdir("/sys/module/kvm_pvm");
  ASSERT_TRUE(RefuseNonHardwareKvm(sys_).has_value());
  ::setenv("CLONE_ANY_KVM", "1", 1);
  EXPECT_EQ(RefuseNonHardwareKvm(sys_), std::nullopt);
  ::unsetenv("CLONE_ANY_KVM");
}

TEST(HostCheckRealTest, RealSystemAnswersWithoutRoot) {
  // Whatever this host is, the check completes and is consistent with its own verdict.
  System real;
  Report r = Check(real);
  EXPECT_FALSE(r.items.empty());
  EXPECT_EQ(r.ToJson()["stock_guests"], r.stock_guests());
}

}  // namespace
}  // namespace clonevm::host

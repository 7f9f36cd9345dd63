#include "runtime/vm_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "base/log.h"

namespace clonevm {
namespace {

namespace fs = std::filesystem;

Result<void> MakeDirs(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec) return Fail("cannot create {}: {}", path, ec.message());
  ::chmod(path.c_str(), 0700);
  return {};
}

// Tries to take the lock of a VM directory; an empty Fd means a live VM holds it.
Result<Fd> TryLock(const std::string& dir) {
  std::string path = dir + "/lock";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return FailErrno("cannot open {}", path);
  Fd lock(fd);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) return Fd();
    return FailErrno("cannot lock {}", path);
  }
  return lock;
}

}  // namespace

std::string RuntimeDir() {
  if (const char* dir = std::getenv("CLONE_RUNTIME_DIR"); dir != nullptr && *dir != '\0') return dir;
  if (::geteuid() == 0) return "/run/clone";
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg != '\0') {
    return std::string(xdg) + "/clone";
  }
  return fmt::format("/tmp/clone-{}", ::geteuid());
}

std::string VmsDir() { return RuntimeDir() + "/vms"; }

std::string NewVmId() {
  uint8_t bytes[3] = {};
  if (::getrandom(bytes, sizeof(bytes), 0) != sizeof(bytes)) {
    uint32_t v = static_cast<uint32_t>(::getpid()) ^ static_cast<uint32_t>(::time(nullptr));
    std::memcpy(bytes, &v, sizeof(bytes));
  }
  return fmt::format("vm-{:02x}{:02x}{:02x}", bytes[0], bytes[1], bytes[2]);
}

Result<VmDir> VmDir::Create(const std::string& id) {
  if (!IsValidVmId(id)) {
    return Fail("invalid VM id '{}': use up to 32 characters a-z, 0-9 and '-', not starting with '-'", id);
  }
  CLONE_TRY_VOID(MakeDirs(VmsDir()));
  std::string path = VmsDir() + "/" + id;
  CLONE_TRY_VOID(MakeDirs(path));
  Fd lock = CLONE_TRY(TryLock(path));
  if (!lock) return Fail("a VM named '{}' is already running ({})", id, path);
  // A stale directory: clear what the dead VM left (its lock file stays; we hold it now).
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(path, ec)) {
    if (entry.path().filename() != "lock") fs::remove_all(entry.path(), ec);
  }
  return VmDir(id, path, std::move(lock));
}

VmDir::~VmDir() {
  if (!lock_) return;  // moved from
  std::error_code ec;
  fs::remove_all(path_, ec);
}

Result<void> VmDir::WriteInfo(const nlohmann::json& info) const {
  std::string tmp = path_ + "/.info.json.tmp";
  std::string text = info.dump(2) + "\n";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return FailErrno("cannot write {}", tmp);
  Fd file(fd);
  CLONE_TRY_VOID(WriteAll(fd, text.data(), text.size()));
  if (::rename(tmp.c_str(), (path_ + "/info.json").c_str()) != 0) return FailErrno("cannot rename {}", tmp);
  return {};
}

std::vector<VmEntry> ListVms() {
  std::vector<VmEntry> vms;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(VmsDir(), ec)) {
    if (!entry.is_directory(ec)) continue;
    std::string path = entry.path().string();
    auto lock = TryLock(path);
    if (!lock) continue;  // unreadable: not ours to judge
    if (*lock) {          // nobody holds it: the VM died without cleaning up
      fs::remove_all(path, ec);
      continue;
    }
    VmEntry vm{entry.path().filename().string(), path, nlohmann::json::object()};
    std::ifstream in(path + "/info.json");
    if (in) vm.info = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (vm.info.is_discarded() || !vm.info.is_object()) vm.info = nlohmann::json::object();
    vms.push_back(std::move(vm));
  }
  std::sort(vms.begin(), vms.end(), [](const VmEntry& a, const VmEntry& b) { return a.id < b.id; });
  return vms;
}

Result<VmEntry> FindVm(const std::string& id) {
  auto vms = ListVms();
  if (!id.empty()) {
    for (auto& vm : vms) {
      if (vm.id == id) return vm;
    }
    bool digits = std::all_of(id.begin(), id.end(), [](char c) { return c >= '0' && c <= '9'; });
    for (auto& vm : vms) {
      auto pid = vm.info.find("pid");
      if (digits && pid != vm.info.end() && pid->is_number_integer() && std::to_string(pid->get<int64_t>()) == id) {
        return vm;
      }
    }
    return Fail("no running VM named '{}' (see 'clone list'; --vm-id takes an id or a VM process's PID)", id);
  }
  if (vms.empty()) return Fail("no VM is running (runtime directory {})", VmsDir());
  if (vms.size() > 1) {
    std::string names;
    for (const auto& vm : vms) names += (names.empty() ? "" : ", ") + vm.id;
    return Fail("{} VMs are running: pass --vm-id (one of {})", vms.size(), names);
  }
  return vms[0];
}

}  // namespace clonevm

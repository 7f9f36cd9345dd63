#include "net/alloc.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <system_error>

namespace clonevm::net {
namespace {

constexpr const char* kLockName = ".lock";

Result<FileLock> TakeDirLock(const std::string& dir) { return FileLock::Exclusive(dir + "/" + kLockName); }

std::string LeasePath(const std::string& dir, uint32_t ip) { return dir + "/" + FormatIpv4(ip); }

// True when `fd` still is the file at `path` (not unlinked and replaced after we opened it).
bool SameFile(int fd, const std::string& path) {
  struct stat by_fd {
  }, by_path{};
  if (::fstat(fd, &by_fd) != 0 || ::stat(path.c_str(), &by_path) != 0) return false;
  return by_fd.st_dev == by_path.st_dev && by_fd.st_ino == by_path.st_ino;
}

void ParseLeaseText(std::string_view text, LeaseEntry* entry) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find_first_of(" \n", pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view field = text.substr(pos, end - pos);
    if (field.starts_with("pid=")) entry->pid = static_cast<pid_t>(std::atoi(std::string(field.substr(4)).c_str()));
    if (field.starts_with("owner=")) entry->owner = std::string(field.substr(6));
    pos = end + 1;
  }
}

}  // namespace

Result<FileLock> FileLock::Exclusive(const std::string& path) {
  Fd fd = CLONE_TRY(OpenFile(path, O_RDWR | O_CREAT, 0644));
  while (::flock(fd.get(), LOCK_EX) != 0) {
    if (errno != EINTR) return FailErrno("flock", path);
  }
  return FileLock(std::move(fd));
}

Result<std::string> DefaultRuntimeDir() {
  if (const char* dir = std::getenv("CLONE_RUNTIME_DIR"); dir != nullptr && *dir != '\0') return std::string(dir);
  if (::geteuid() == 0) return std::string("/run/clone");
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg != '\0') {
    return std::string(xdg) + "/clone";
  }
  return Fail("no runtime directory: set XDG_RUNTIME_DIR or CLONE_RUNTIME_DIR");
}

std::string LeaseDirectory(std::string_view runtime_dir, std::string_view bridge) {
  return fmt::format("{}/net/{}", runtime_dir, bridge);
}

Result<void> ValidateLeaseSubnet(const Ipv4Subnet& subnet) {
  if (subnet.prefix_len < 16 || subnet.prefix_len > 30) {
    return Fail("subnet {} has an unsupported size: use a prefix length from /16 to /30", subnet.ToString());
  }
  if ((subnet.network & ~subnet.mask()) != 0) return Fail("subnet {} has host bits set", subnet.ToString());
  return {};
}

IpLease::IpLease(IpLease&& other) noexcept
    : fd_(std::move(other.fd_)), dir_(std::move(other.dir_)), path_(std::move(other.path_)), ip_(other.ip_) {}

IpLease& IpLease::operator=(IpLease&& other) noexcept {
  if (this != &other) {
    Release();
    fd_ = std::move(other.fd_);
    dir_ = std::move(other.dir_);
    path_ = std::move(other.path_);
    ip_ = other.ip_;
  }
  return *this;
}

void IpLease::Release() {
  if (!fd_) return;
  // Under the directory lock, so no acquirer sees the file between unlink and close.
  auto lock = TakeDirLock(dir_);
  if (SameFile(fd_.get(), path_)) ::unlink(path_.c_str());
  fd_.reset();
}

void IpLease::CloseInChild() { fd_.reset(); }

Result<IpLease> AcquireLease(const std::string& lease_dir, const Ipv4Subnet& subnet, std::string_view owner) {
  CLONE_TRY_VOID(ValidateLeaseSubnet(subnet));
  std::error_code ec;
  std::filesystem::create_directories(lease_dir, ec);
  if (ec) return Fail("creating the lease directory {}: {}", lease_dir, ec.message());
  FileLock lock = CLONE_TRY(TakeDirLock(lease_dir));

  for (uint32_t ip = subnet.gateway() + 1; ip < subnet.broadcast(); ++ip) {
    const std::string path = LeasePath(lease_dir, ip);
    Fd fd = CLONE_TRY(OpenFile(path, O_RDWR | O_CREAT | O_NOFOLLOW, 0644));
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
      if (errno == EWOULDBLOCK) continue;  // held by a live process
      return FailErrno("flock", path);
    }
    if (!SameFile(fd.get(), path)) continue;  // released meanwhile by someone not using .lock
    // A free file: new, or left by a process that died. Record who holds it now.
    const std::string text = fmt::format("pid={} owner={}\n", ::getpid(), owner.empty() ? "-" : owner);
    if (::ftruncate(fd.get(), 0) != 0) return FailErrno("ftruncate", path);
    CLONE_TRY_VOID(WriteAll(fd.get(), text.data(), text.size()));
    return IpLease(std::move(fd), lease_dir, path, ip);
  }
  const uint32_t total = subnet.broadcast() - subnet.gateway() - 1;
  return Fail("no free IP address in {}: {} VMs hold all of them (leases in {})", subnet.ToString(), total, lease_dir);
}

Result<std::vector<LeaseEntry>> ListLeases(const std::string& lease_dir) {
  std::vector<LeaseEntry> entries;
  if (::access(lease_dir.c_str(), F_OK) != 0) return entries;
  FileLock lock = CLONE_TRY(TakeDirLock(lease_dir));
  std::error_code ec;
  for (const auto& file : std::filesystem::directory_iterator(lease_dir, ec)) {
    auto ip = ParseIpv4(file.path().filename().string());
    if (!ip) continue;
    LeaseEntry entry;
    entry.ip = *ip;
    auto fd = OpenFile(file.path().string(), O_RDONLY | O_NOFOLLOW);
    if (!fd) continue;
    // A shared lock we can take means no exclusive holder; we drop it at once (close).
    entry.held = ::flock(fd->get(), LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
    if (auto text = ReadFile(file.path().string())) ParseLeaseText(*text, &entry);
    entries.push_back(std::move(entry));
  }
  if (ec) return Fail("listing {}: {}", lease_dir, ec.message());
  std::sort(entries.begin(), entries.end(), [](const LeaseEntry& a, const LeaseEntry& b) { return a.ip < b.ip; });
  return entries;
}

}  // namespace clonevm::net

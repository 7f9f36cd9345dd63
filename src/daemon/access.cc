#include "daemon/access.h"

#include <grp.h>
#include <pwd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <utility>

namespace clonevm::daemon {
namespace {

// "read", "read and write", "read, write and search".
std::string ModeName(int mode) {
  std::vector<const char*> words;
  if (mode & R_OK) words.push_back("read");
  if (mode & W_OK) words.push_back("write");
  if (mode & X_OK) words.push_back("search");
  std::string name;
  for (size_t i = 0; i < words.size(); ++i) {
    if (i > 0) name += i + 1 == words.size() ? " and " : ", ";
    name += words[i];
  }
  return name;
}

// The caller's groups: the password database's primary group and supplementary groups of `uid`
// (SO_PEERCRED's gid when the uid has no entry).
std::vector<gid_t> GroupsOf(uid_t uid, gid_t* gid) {
  std::vector<gid_t> groups;
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* found = nullptr;
  if (::getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) != 0 || found == nullptr) return {*gid};
  *gid = pw.pw_gid;
  int n = 64;
  groups.resize(static_cast<size_t>(n));
  if (::getgrouplist(pw.pw_name, pw.pw_gid, groups.data(), &n) < 0) {
    groups.resize(static_cast<size_t>(n));
    if (::getgrouplist(pw.pw_name, pw.pw_gid, groups.data(), &n) < 0) return {*gid};
  }
  groups.resize(static_cast<size_t>(n));
  return groups;
}

void AddShares(const std::vector<spec::ShareSpec>& shares, std::vector<PathUse>* uses) {
  for (size_t i = 0; i < shares.size(); ++i) {
    uses->push_back(
        {fmt::format("shares[{}]", i), shares[i].host_path, shares[i].read_only ? R_OK | X_OK : R_OK | W_OK | X_OK});
  }
}

}  // namespace

std::vector<PathUse> PathsOf(const spec::VmSpec& spec) {
  std::vector<PathUse> uses;
  auto add = [&](std::string what, const std::string& path, int mode) {
    if (!path.empty()) uses.push_back({std::move(what), path, mode});
  };
  add("kernel", spec.kernel, R_OK);
  add("initrd", spec.initrd, R_OK);
  const spec::RootfsSpec& rootfs = spec.rootfs;
  if (!rootfs.image.empty()) {
    // Without an overlay the image itself is written; with one it is only read.
    add("rootfs", rootfs.image, rootfs.overlay.empty() ? R_OK | W_OK : R_OK);
    add("rootfs modules", rootfs.modules, R_OK | X_OK);
    if (!rootfs.overlay.empty() && rootfs.overlay != "tmpfs" && rootfs.overlay != "auto") {
      std::error_code ec;
      if (std::filesystem::exists(rootfs.overlay, ec)) {
        add("overlay", rootfs.overlay, R_OK | W_OK);
      } else {
        std::string dir = std::filesystem::path(rootfs.overlay).parent_path().string();
        add("overlay's directory", dir.empty() ? "." : dir, W_OK | X_OK);
      }
    }
  }
  for (size_t i = 0; i < spec.disks.size(); ++i) {
    add(fmt::format("disks[{}]", i), spec.disks[i].path, spec.disks[i].read_only ? R_OK : R_OK | W_OK);
  }
  AddShares(spec.shares, &uses);
  return uses;
}

std::vector<PathUse> PathsOf(const spec::ForkOverrides& overrides) {
  std::vector<PathUse> uses;
  AddShares(overrides.shares, &uses);
  for (size_t i = 0; i < overrides.disk_rewrites.size(); ++i) {
    const std::string& rewrite = overrides.disk_rewrites[i];
    size_t eq = rewrite.find('=');
    if (eq != std::string::npos && eq + 1 < rewrite.size()) {
      uses.push_back({fmt::format("disk_rewrites[{}]", i), rewrite.substr(eq + 1), R_OK | W_OK});
    }
  }
  return uses;
}

Result<void> CheckCallerAccess(const std::vector<PathUse>& uses, uid_t uid, gid_t gid) {
  // Root may use everything; the daemon's own user gains nothing through it (its VMs run as itself).
  if (uid == 0 || uid == ::geteuid() || uses.empty()) return {};
  std::vector<gid_t> groups = GroupsOf(uid, &gid);
  // Everything the child uses is prepared here: after fork() in a threaded process it may only make
  // async-signal-safe calls.
  std::vector<const char*> paths;
  for (const auto& use : uses) paths.push_back(use.path.c_str());
  constexpr int kCredentialsFailed = 255;
  pid_t pid = ::fork();
  if (pid < 0) return FailErrno("fork", "checking the caller's access to the VM's files");
  if (pid == 0) {
    if (::setgroups(groups.size(), groups.data()) != 0 || ::setresgid(gid, gid, gid) != 0 ||
        ::setresuid(uid, uid, uid) != 0) {
      ::_exit(kCredentialsFailed);
    }
    for (size_t i = 0; i < paths.size(); ++i) {
      // A missing file is not the caller's to be refused: the VM process reports it when it starts.
      if (::access(paths[i], uses[i].mode) != 0 && errno != ENOENT) {
        ::_exit(static_cast<int>(std::min<size_t>(i + 1, 254)));
      }
    }
    ::_exit(0);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return FailErrno("waitpid", "checking the caller's access to the VM's files");
  }
  if (!WIFEXITED(status)) return Fail("checking uid {}'s access to the VM's files: the check was killed", uid);
  int code = WEXITSTATUS(status);
  if (code == 0) return {};
  if (code == kCredentialsFailed) return Fail("cannot take uid {}'s credentials to check its access", uid);
  const PathUse& use = uses[static_cast<size_t>(code - 1)];
  return Fail("{} {}: uid {} may not {} it (the daemon opens the VM's files only for callers who may)", use.what,
              use.path, uid, ModeName(use.mode));
}

}  // namespace clonevm::daemon

#include "image/rootfs_create.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>

#include "base/fd.h"
#include "base/log.h"
#include "base/subprocess.h"
#include "block/qcow2.h"
#include "image/oci.h"

namespace clonevm {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kMiB = 1ull << 20;
constexpr uint64_t kChunk = 64 * 1024;

bool Interrupted(const std::atomic<bool>* flag) { return flag != nullptr && flag->load(); }

Result<void> CheckInterrupted(const std::atomic<bool>* flag) {
  if (Interrupted(flag)) return Fail("interrupted");
  return {};
}

std::string HumanSize(uint64_t bytes) {
  if (bytes % (1ull << 40) == 0) return fmt::format("{} TiB", bytes >> 40);
  if (bytes % (1ull << 30) == 0) return fmt::format("{} GiB", bytes >> 30);
  return fmt::format("{} MiB", bytes >> 20);
}

// ---- external tools --------------------------------------------------------------------------

struct ToolSpec {
  std::vector<std::string> argv;
  std::string package;  // the Debian package to install when it is missing
  ToolOutput output = ToolOutput::kCapture;
};

// Runs a tool (base/subprocess.h) with stdin from /dev/null. kCapture: its output's last line goes
// into the error; kToStderr: its output goes to our stderr (progress the user should see). While
// `interrupted` is set the tool gets SIGTERM, and the result is "interrupted".
Result<void> RunTool(const ToolSpec& spec, const std::atomic<bool>* interrupted) {
  const std::string& name = spec.argv.at(0);
  if (FindTool(name).empty()) return Fail("{} not found: install it (apt-get install {})", name, spec.package);
  CLONE_TRY_VOID(CheckInterrupted(interrupted));
  ToolResult result = CLONE_TRY(
      clonevm::RunTool(spec.argv, {.input_from_null = true, .output = spec.output, .interrupted = interrupted}));
  if (result.interrupted) return Fail("interrupted");
  if (result.ok()) return {};
  std::string last = result.LastLine();
  if (last.empty()) return Fail("{} failed ({})", name, result.How());
  return Fail("{} failed ({}): {}", name, result.How(), last);
}

// ---- temporary files -------------------------------------------------------------------------

// Removes a tree without crossing into other filesystems (a mount left inside a debootstrap
// target, e.g. a bind-mounted /dev, must never be emptied) and without following symlinks.
void RemoveTree(const std::string& path) {
  ::nftw(
      path.c_str(),
      [](const char* p, const struct stat*, int type, FTW*) {
        if (type == FTW_DP) {
          ::rmdir(p);
        } else {
          ::unlink(p);
        }
        return 0;
      },
      64, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) Log(LogLevel::kWarn, "could not remove all of {}", path);
}

// Owns the temporaries of one run; removes them unless released.
class Temporaries {
 public:
  Temporaries() = default;
  Temporaries(const Temporaries&) = delete;
  Temporaries& operator=(const Temporaries&) = delete;
  ~Temporaries() {
    for (const auto& f : files_) ::unlink(f.c_str());
    for (const auto& d : dirs_) RemoveTree(d);
  }
  void AddFile(std::string path) { files_.push_back(std::move(path)); }
  void AddDir(std::string path) { dirs_.push_back(std::move(path)); }
  void ForgetFile(const std::string& path) { std::erase(files_, path); }

 private:
  std::vector<std::string> files_;
  std::vector<std::string> dirs_;
};

Result<void> FsyncPath(const std::string& path, int flags) {
  auto fd = CLONE_TRY(OpenFile(path, flags));
  if (::fsync(fd.get()) != 0) return FailErrno("fsync", path);
  return {};
}

// ---- writing inside the root tree ------------------------------------------------------------

// Opens (creating as needed) the directory `rel` under `root_fd`, one component at a time,
// refusing symlinks: nothing is ever written outside the tree.
Result<Fd> OpenDirInRoot(int root_fd, const std::string& rel) {
  Fd dir(::dup(root_fd));
  if (!dir) return FailErrno("dup");
  fs::path p(rel);
  for (const auto& part : p) {
    std::string name = part.string();
    if (name.empty() || name == "." || name == "/") continue;
    if (name == "..") return Fail("'..' in {}", rel);
    if (::mkdirat(dir.get(), name.c_str(), 0755) != 0 && errno != EEXIST) return FailErrno("mkdir", rel);
    Fd next(::openat(dir.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!next) {
      if (errno == ELOOP || errno == ENOTDIR)
        return Fail("/{} in the image tree is a symlink or not a directory; not writing through it", rel);
      return FailErrno("open", rel);
    }
    dir = std::move(next);
  }
  return dir;
}

struct InRoot {
  Fd dir;
  std::string name;
  std::string rel;
};

Result<InRoot> Locate(int root_fd, const std::string& rel) {
  fs::path p(rel);
  InRoot r;
  r.dir = CLONE_TRY(OpenDirInRoot(root_fd, p.parent_path().string()));
  r.name = p.filename().string();
  r.rel = rel;
  return r;
}

bool ExistsAt(const InRoot& f) {
  struct stat st;
  return ::fstatat(f.dir.get(), f.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
}

// Writes a file (replacing a symlink of that name rather than following it).
Result<void> WriteInRoot(const InRoot& f, std::string_view text, mode_t mode = 0644) {
  struct stat st;
  if (::fstatat(f.dir.get(), f.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISREG(st.st_mode)) {
    if (::unlinkat(f.dir.get(), f.name.c_str(), 0) != 0) return FailErrno("unlink", "/" + f.rel);
  }
  Fd fd(::openat(f.dir.get(), f.name.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode));
  if (!fd) return FailErrno("writing", "/" + f.rel);
  CLONE_TRY_VOID(WriteAll(fd.get(), text.data(), text.size()));
  if (::fchmod(fd.get(), mode) != 0) return FailErrno("chmod", "/" + f.rel);
  return {};
}

// Whether `rel` exists in the tree, resolving symlinks as the guest would (inside the root).
bool ExistsInRoot(const std::string& root, const std::string& rel, int depth = 0) {
  if (depth > 16) return false;
  fs::path current;  // relative to root, resolved so far
  fs::path p(rel);
  std::vector<std::string> parts;
  for (const auto& part : p)
    if (!part.empty() && part != "/" && part != ".") parts.push_back(part.string());
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i] == "..") {
      current = current.parent_path();
      continue;
    }
    fs::path next = current / parts[i];
    struct stat st;
    std::string host = (fs::path(root) / next).string();
    if (::lstat(host.c_str(), &st) != 0) return false;
    if (S_ISLNK(st.st_mode)) {
      char target[4096];
      ssize_t n = ::readlink(host.c_str(), target, sizeof(target) - 1);
      if (n <= 0) return false;
      std::string t(target, static_cast<size_t>(n));
      fs::path resolved = t.front() == '/' ? fs::path(t.substr(1)) : current / t;
      for (size_t j = i + 1; j < parts.size(); ++j) resolved /= parts[j];
      return ExistsInRoot(root, resolved.lexically_normal().string(), depth + 1);
    }
    current = next;
  }
  return true;
}

// The first of `candidates` that exists in the tree, or "".
std::string FirstInRoot(const std::string& root, std::initializer_list<const char*> candidates) {
  for (const char* c : candidates)
    if (ExistsInRoot(root, c)) return std::string("/") + c;
  return {};
}

// Busybox inittab lines are "id::action:process" (empty runlevels).
bool IsBusyboxInittab(const std::string& text) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    if (line.empty() || line.front() == '#') continue;
    size_t c = line.find(':');
    if (c != std::string_view::npos && c + 1 < line.size() && line[c + 1] == ':') return true;
  }
  return false;
}

Result<void> ConfigureSerialConsole(const std::string& root, int root_fd, bool systemd) {
  if (systemd) {
    std::string unit =
        FirstInRoot(root, {"usr/lib/systemd/system/serial-getty@.service", "lib/systemd/system/serial-getty@.service"});
    if (unit.empty()) unit = "/lib/systemd/system/serial-getty@.service";
    auto link = CLONE_TRY(Locate(root_fd, "etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"));
    if (!ExistsAt(link) && ::symlinkat(unit.c_str(), link.dir.get(), link.name.c_str()) != 0)
      return FailErrno("symlink", "/" + link.rel);
    return {};
  }
  auto inittab = CLONE_TRY(Locate(root_fd, "etc/inittab"));
  if (!ExistsAt(inittab)) return {};
  Fd fd(::openat(inittab.dir.get(), inittab.name.c_str(), O_RDWR | O_APPEND | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) return FailErrno("open", "/etc/inittab");
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd.get(), buf, sizeof(buf))) > 0) text.append(buf, static_cast<size_t>(n));
  if (n < 0) return FailErrno("read", "/etc/inittab");
  if (text.find("ttyS0") != std::string::npos) return {};
  std::string line = IsBusyboxInittab(text) ? "ttyS0::respawn:/sbin/getty -L 115200 ttyS0 vt100\n"
                                            : "T0:2345:respawn:/sbin/getty -L ttyS0 115200 vt100\n";
  line.insert(0, "# Serial console (added by clone rootfs create)\n");
  if (!text.empty() && text.back() != '\n') line.insert(line.begin(), '\n');
  return WriteAll(fd.get(), line.data(), line.size());
}

Result<void> ConfigureNetwork(const std::string& root, int root_fd, bool systemd) {
  if (systemd) {
    auto file = CLONE_TRY(Locate(root_fd, "etc/systemd/network/20-clone-eth0.network"));
    if (ExistsAt(file)) return {};
    CLONE_TRY_VOID(WriteInRoot(file,
                               "# eth0 of a Clone VM: the address is static and set by Clone (no DHCP).\n"
                               "[Match]\n"
                               "Name=eth0\n"
                               "\n"
                               "[Network]\n"
                               "DHCP=no\n"
                               "LinkLocalAddressing=no\n"
                               "IPv6AcceptRA=no\n"));
    std::string unit = FirstInRoot(
        root, {"usr/lib/systemd/system/systemd-networkd.service", "lib/systemd/system/systemd-networkd.service"});
    if (!unit.empty()) {
      auto link = CLONE_TRY(Locate(root_fd, "etc/systemd/system/multi-user.target.wants/systemd-networkd.service"));
      if (!ExistsAt(link) && ::symlinkat(unit.c_str(), link.dir.get(), link.name.c_str()) != 0)
        return FailErrno("symlink", "/" + link.rel);
    }
    return {};
  }
  auto file = CLONE_TRY(Locate(root_fd, "etc/network/interfaces"));
  if (ExistsAt(file)) return {};
  return WriteInRoot(file,
                     "auto lo\n"
                     "iface lo inet loopback\n"
                     "\n"
                     "# eth0 of a Clone VM: the address is static and set by Clone (no DHCP).\n"
                     "allow-hotplug eth0\n"
                     "iface eth0 inet manual\n");
}

constexpr std::string_view kAgentUnit =
    "# Installed by clone rootfs create: the Clone guest agent on vsock port 1024 (clone exec).\n"
    "# A VM booted with clone run --rootfs has the agent started by Clone's initrd already; this\n"
    "# second instance then finds the port taken and exits, which is not a failure.\n"
    "[Unit]\n"
    "Description=Clone guest agent\n"
    "After=systemd-modules-load.service\n"
    "\n"
    "[Service]\n"
    "ExecStartPre=-/sbin/modprobe -q vmw_vsock_virtio_transport\n"
    "ExecStart=/usr/bin/clone-agent\n"
    "SuccessExitStatus=1\n"
    "Restart=on-abnormal\n"
    "\n"
    "[Install]\n"
    "WantedBy=multi-user.target\n";

Result<void> InstallAgent(int root_fd, const std::string& agent_path, bool systemd) {
  if (agent_path.empty()) return {};
  struct stat st;
  if (::stat(agent_path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return Fail("guest agent {}: not found (or not a regular file)", agent_path);
  }
  std::string binary = CLONE_TRY(ReadFile(agent_path));
  auto file = CLONE_TRY(Locate(root_fd, "usr/bin/clone-agent"));
  CLONE_TRY_VOID(WriteInRoot(file, binary, 0755));
  if (!systemd) return {};
  auto unit = CLONE_TRY(Locate(root_fd, "etc/systemd/system/clone-agent.service"));
  CLONE_TRY_VOID(WriteInRoot(unit, kAgentUnit));
  auto link = CLONE_TRY(Locate(root_fd, "etc/systemd/system/multi-user.target.wants/clone-agent.service"));
  if (!ExistsAt(link) && ::symlinkat("/etc/systemd/system/clone-agent.service", link.dir.get(), link.name.c_str()) != 0)
    return FailErrno("symlink", "/" + link.rel);
  return {};
}

// Sets root's password field in /etc/shadow: "*" (locked), "" (none) or a crypt(3) hash.
Result<void> SetRootPassword(int root_fd, const std::string& field) {
  auto shadow = CLONE_TRY(Locate(root_fd, "etc/shadow"));
  Fd fd(::openat(shadow.dir.get(), shadow.name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) return FailErrno("open", "/etc/shadow (needed to set the root password)");
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return FailErrno("stat", "/etc/shadow");
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd.get(), buf, sizeof(buf))) > 0) text.append(buf, static_cast<size_t>(n));
  if (n < 0) return FailErrno("read", "/etc/shadow");
  size_t line = text.starts_with("root:") ? 0 : text.find("\nroot:");
  if (line == std::string::npos) return Fail("/etc/shadow has no root entry");
  if (line != 0) ++line;
  size_t start = line + 5;  // after "root:"
  size_t end = text.find_first_of(":\n", start);
  if (end == std::string::npos || text[end] != ':') return Fail("/etc/shadow: malformed root entry");
  text.replace(start, end - start, field);
  return WriteInRoot(shadow, text, st.st_mode & 07777);
}
// Bytes allocated by the files under `path` (for the "too small" hint).
uint64_t TreeBytes(const std::string& path) {
  static thread_local uint64_t total;
  total = 0;
  ::nftw(
      path.c_str(),
      [](const char*, const struct stat* st, int type, FTW*) {
        if (type == FTW_F || type == FTW_SL) total += static_cast<uint64_t>(st->st_blocks) * 512;
        return 0;
      },
      64, FTW_PHYS | FTW_MOUNT);
  return total;
}

// ---- staging ---------------------------------------------------------------------------------

Result<void> StageDirectory(const std::string& source, const std::string& staging,
                            const std::atomic<bool>* interrupted) {
  struct stat staging_st;
  if (::stat(staging.c_str(), &staging_st) != 0) return FailErrno("stat", staging);
  ToolSpec cp{{"cp", "-a", "--reflink=auto", "-t", staging}, "coreutils"};
  std::error_code ec;
  for (fs::directory_iterator it(source, ec), end; !ec && it != end; it.increment(ec)) {
    struct stat st;
    // Skip our own staging directory when the output lies inside the source directory.
    if (::lstat(it->path().c_str(), &st) == 0 && st.st_dev == staging_st.st_dev && st.st_ino == staging_st.st_ino)
      continue;
    cp.argv.push_back(it->path().string());
  }
  if (ec) return Fail("reading {}: {}", source, ec.message());
  if (cp.argv.size() == 5) return {};  // empty directory
  return RunTool(cp, interrupted).map_error([](const Error& e) { return e.Wrap("copying the directory"); });
}

// Creates "<dir>/.<name>.<what>-XXXXXX" as a file (mkstemp) or directory (mkdtemp).
Result<std::string> MakeTemp(const fs::path& out, std::string_view what, bool directory) {
  std::string pattern = (out.parent_path() / fmt::format(".{}.{}-XXXXXX", out.filename().string(), what)).string();
  if (directory) {
    if (::mkdtemp(pattern.data()) == nullptr) return FailErrno("mkdtemp", pattern);
    ::chmod(pattern.c_str(), 0755);  // the root directory of the image gets these permissions
  } else {
    int fd = ::mkstemp(pattern.data());
    if (fd < 0) return FailErrno("mkstemp", pattern);
    ::close(fd);
  }
  return pattern;
}

// rename(2), refusing to replace unless `replace`.
Result<void> Publish(const std::string& from, const std::string& to, bool replace) {
  if (!replace) {
    if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return {};
    if (errno == EEXIST) return Fail("{} exists (use --force to replace it)", to);
    if (errno != EINVAL && errno != ENOSYS) return FailErrno("rename", to);
    // The filesystem cannot do RENAME_NOREPLACE: link(2) is just as exclusive.
    if (::link(from.c_str(), to.c_str()) != 0) {
      if (errno == EEXIST) return Fail("{} exists (use --force to replace it)", to);
      return FailErrno("link", to);
    }
    ::unlink(from.c_str());
    return {};
  }
  if (::rename(from.c_str(), to.c_str()) != 0) return FailErrno("rename", to);
  return {};
}

}  // namespace

Result<uint64_t> ParseRootfsSize(std::string_view text) {
  std::string t(text);
  size_t digits = 0;
  while (digits < t.size() && std::isdigit(static_cast<unsigned char>(t[digits]))) ++digits;
  if (digits == 0 || digits > 15) return Fail("invalid size '{}': expected e.g. 512M, 1G or 2048 (MiB)", text);
  uint64_t number = std::stoull(t.substr(0, digits));
  std::string suffix = t.substr(digits);
  std::transform(suffix.begin(), suffix.end(), suffix.begin(), [](unsigned char c) { return std::toupper(c); });
  if (suffix.size() > 1 && (suffix.ends_with("IB") || suffix.ends_with("B")))
    suffix.resize(suffix.ends_with("IB") ? suffix.size() - 2 : suffix.size() - 1);
  uint64_t unit;
  if (suffix.empty() || suffix == "M") {
    unit = kMiB;
  } else if (suffix == "K") {
    unit = 1024;
  } else if (suffix == "G") {
    unit = 1ull << 30;
  } else if (suffix == "T") {
    unit = 1ull << 40;
  } else {
    return Fail("invalid size '{}': expected e.g. 512M, 1G or 2048 (MiB)", text);
  }
  if (number > kMaxRootfsBytes / unit) return Fail("size '{}' is too large (at most 16T)", text);
  uint64_t bytes = number * unit;
  if (bytes % kMiB != 0) return Fail("size '{}' is not a whole number of MiB", text);
  if (bytes < kMinRootfsBytes) return Fail("size '{}' is too small (at least 16M)", text);
  return bytes;
}

Result<void> ValidateHostname(std::string_view name) {
  bool ok = !name.empty() && name.size() <= 63 && name.front() != '-' && name.back() != '-' &&
            std::all_of(name.begin(), name.end(),
                        [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-'; });
  if (!ok) return Fail("invalid hostname '{}': use 1-63 letters, digits and '-'", name);
  return {};
}

std::vector<std::string> DebootstrapArgv(const std::string& suite, const std::string& target, const std::string& mirror,
                                         const std::string& keyring) {
  // minbase has no init: systemd-sysv provides /sbin/init, udev the device units (the ttyS0
  // getty waits for dev-ttyS0.device). Both are in Ubuntu's main component.
  std::vector<std::string> argv = {"debootstrap", "--variant=minbase", "--include=systemd-sysv,udev"};
  if (!keyring.empty()) {
    argv.push_back("--keyring=" + keyring);
    argv.push_back("--components=main");
  }
  for (const auto& a : {suite, target, mirror}) argv.push_back(a);
  return argv;
}

std::vector<std::string> TarExtractArgv(const std::string& archive, const std::string& target) {
  // GNU tar detects gzip/bzip2/xz/zstd compression by the archive's magic when reading a file.
  return {"tar", "-x", "--numeric-owner", "-f", archive, "-C", target};
}

std::vector<std::string> MkfsExt4Argv(const std::string& staging, const std::string& image, uint64_t size_bytes) {
  return {"mkfs.ext4", "-q", "-F", "-d", staging, "-L", "rootfs", image, fmt::format("{}k", size_bytes / 1024)};
}

Result<void> CustomizeRootfs(const std::string& root, const RootfsCustomization& c) {
  CLONE_TRY_VOID(ValidateHostname(c.hostname));
  Fd root_fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root_fd) return FailErrno("open", root);
  const bool systemd = !FirstInRoot(root, {"usr/lib/systemd/systemd", "lib/systemd/systemd"}).empty();

  auto hostname = CLONE_TRY(Locate(root_fd.get(), "etc/hostname"));
  CLONE_TRY_VOID(WriteInRoot(hostname, c.hostname + "\n"));
  CLONE_TRY_VOID(ConfigureSerialConsole(root, root_fd.get(), systemd));
  auto fstab = CLONE_TRY(Locate(root_fd.get(), "etc/fstab"));
  if (!ExistsAt(fstab)) CLONE_TRY_VOID(WriteInRoot(fstab, "/dev/vda / ext4 defaults 0 1\n"));
  CLONE_TRY_VOID(ConfigureNetwork(root, root_fd.get(), systemd));
  CLONE_TRY_VOID(InstallAgent(root_fd.get(), c.agent_path, systemd));
  if (c.root_password) CLONE_TRY_VOID(SetRootPassword(root_fd.get(), *c.root_password));
  return {};
}

Result<std::optional<std::string>> RootPasswordField(RootfsSource source, std::string_view option) {
  if (option.empty()) {
    if (source == RootfsSource::kDebian || source == RootfsSource::kUbuntu) return std::optional<std::string>("*");
    return std::nullopt;
  }
  if (option == "locked") return std::optional<std::string>("*");
  if (option == "none") return std::optional<std::string>("");
  if (option.starts_with("$") && option.find_first_of(":\n") == std::string_view::npos)
    return std::optional<std::string>(std::string(option));
  return Fail("--root-password wants locked, none or a crypt(3) hash such as $6$... (from mkpasswd), not '{}'", option);
}

Result<void> ConvertRawToQcow2(const std::string& raw, const std::string& qcow2_path,
                               const std::atomic<bool>* interrupted) {
  auto in = CLONE_TRY(OpenFile(raw, O_RDONLY));
  struct stat st;
  if (::fstat(in.get(), &st) != 0) return FailErrno("stat", raw);
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  CLONE_TRY_VOID(Qcow2Create(qcow2_path, size, kChunk));
  auto out = CLONE_TRY(OpenImage(qcow2_path, OpenMode{}, Format::kQcow2));

  std::vector<uint8_t> chunk(kChunk);
  static const std::vector<uint8_t> zeros(kChunk, 0);
  uint64_t pos = 0;
  while (pos < size) {
    CLONE_TRY_VOID(CheckInterrupted(interrupted));
    off_t data = ::lseek(in.get(), static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // only a hole remains
      if (errno != EINVAL) return FailErrno("lseek(SEEK_DATA)", raw);
      data = static_cast<off_t>(pos);  // no SEEK_DATA support: scan everything
    }
    off_t hole = ::lseek(in.get(), data, SEEK_HOLE);
    if (hole < 0) hole = static_cast<off_t>(size);
    uint64_t begin = static_cast<uint64_t>(data) / kChunk * kChunk;
    uint64_t end = std::min<uint64_t>(size, (static_cast<uint64_t>(hole) + kChunk - 1) / kChunk * kChunk);
    for (uint64_t off = std::max(begin, pos); off < end; off += kChunk) {
      CLONE_TRY_VOID(CheckInterrupted(interrupted));
      size_t len = static_cast<size_t>(std::min<uint64_t>(kChunk, size - off));
      size_t got = 0;
      while (got < len) {
        ssize_t n = ::pread(in.get(), chunk.data() + got, len - got, static_cast<off_t>(off + got));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return FailErrno("read", raw);
        if (n == 0) return Fail("{}: unexpected end of file", raw);
        got += static_cast<size_t>(n);
      }
      if (std::memcmp(chunk.data(), zeros.data(), len) == 0) continue;
      CLONE_TRY_VOID(out->Write(off, std::span<const uint8_t>(chunk.data(), len)));
    }
    pos = std::max(pos, end);
  }
  CLONE_TRY_VOID(out->Flush());
  out.reset();
  return FsyncPath(qcow2_path, O_RDONLY);
}

Result<void> CreateRootfs(const RootfsCreateOptions& o) {
  auto progress = [&](std::string_view line) {
    if (o.progress) o.progress(line);
  };
  if (o.output.empty()) return Fail("no output file given");
  if (o.format != Format::kRaw && o.format != Format::kQcow2) return Fail("the output format must be raw or qcow2");
  if (o.size_bytes < kMinRootfsBytes || o.size_bytes % kMiB != 0 || o.size_bytes > kMaxRootfsBytes)
    return Fail("invalid image size {} bytes (a whole number of MiB, at least 16M)", o.size_bytes);
  CLONE_TRY_VOID(ValidateHostname(o.hostname));

  // Check everything cheap before creating anything.
  struct stat st;
  switch (o.source) {
    case RootfsSource::kDirectory:
      if (::stat(o.source_path.c_str(), &st) != 0) {
        if (errno == ENOENT) return Fail("source directory {} does not exist", o.source_path);
        return FailErrno("source directory", o.source_path);
      }
      if (!S_ISDIR(st.st_mode)) return Fail("{} is not a directory", o.source_path);
      break;
    case RootfsSource::kTar:
      if (::stat(o.source_path.c_str(), &st) != 0) {
        if (errno == ENOENT) return Fail("source archive {} does not exist", o.source_path);
        return FailErrno("source archive", o.source_path);
      }
      if (S_ISDIR(st.st_mode)) return Fail("{} is a directory, not a tar archive (use --from-dir)", o.source_path);
      break;
    case RootfsSource::kOci:
      if (FindTool("tar").empty()) return Fail("tar not found: install it (apt-get install tar)");
      break;
    case RootfsSource::kDebian:
    case RootfsSource::kUbuntu:
      if (::geteuid() != 0)
        return Fail("--distro needs root (debootstrap creates device nodes and chroots): run it with sudo");
      if (FindTool("debootstrap").empty())
        return Fail("debootstrap not found: install it (apt-get install debootstrap)");
      if (o.source == RootfsSource::kUbuntu && ::access(kUbuntuKeyring, R_OK) != 0)
        return Fail("the Ubuntu archive keyring {} is missing: install it (apt-get install ubuntu-keyring)",
                    kUbuntuKeyring);
      break;
  }
  if (FindTool("mkfs.ext4").empty()) return Fail("mkfs.ext4 not found: install it (apt-get install e2fsprogs)");
  const fs::path out = fs::absolute(o.output).lexically_normal();
  if (out.filename().empty()) return Fail("invalid output path {}", o.output);
  if (::stat(out.parent_path().c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return Fail("output directory {} does not exist", out.parent_path().string());
  if (::lstat(out.c_str(), &st) == 0) {
    if (!o.force) return Fail("{} exists (use --force to replace it)", o.output);
    if (S_ISDIR(st.st_mode)) return Fail("{} is a directory", o.output);
  }

  // An OCI layout is resolved and its blobs verified before anything is created.
  std::vector<OciLayer> layers;
  if (o.source == RootfsSource::kOci) layers = CLONE_TRY(ResolveOciLayers(o.source_path));

  Temporaries temps;
  const std::string staging = CLONE_TRY(MakeTemp(out, "staging", /*directory=*/true));
  temps.AddDir(staging);

  switch (o.source) {
    case RootfsSource::kDirectory:
      progress(fmt::format("staging {} ...", o.source_path));
      CLONE_TRY_VOID(StageDirectory(o.source_path, staging, o.interrupted));
      break;
    case RootfsSource::kTar:
      progress(fmt::format("staging {} ...", o.source_path));
      CLONE_TRY_VOID(
          RunTool({TarExtractArgv(o.source_path, staging), "tar"}, o.interrupted).map_error([&](const Error& e) {
            return e.Wrap("extracting " + o.source_path);
          }));
      break;
    case RootfsSource::kOci:
      for (size_t i = 0; i < layers.size(); ++i) {
        const OciLayer& layer = layers[i];
        progress(fmt::format("staging layer {}/{} {} ...", i + 1, layers.size(), layer.digest.substr(0, 19)));
        // Its own directory next to the staging one (same filesystem: entries are renamed over).
        const std::string layer_dir = CLONE_TRY(MakeTemp(out, "layer", /*directory=*/true));
        temps.AddDir(layer_dir);
        CLONE_TRY_VOID(
            RunTool({TarExtractArgv(layer.path, layer_dir), "tar"}, o.interrupted).map_error([&](const Error& e) {
              return e.Wrap("extracting layer " + layer.digest);
            }));
        CLONE_TRY_VOID(ApplyOciLayer(layer_dir, staging).map_error([&](const Error& e) {
          return e.Wrap("applying layer " + layer.digest);
        }));
        RemoveTree(layer_dir);
        CLONE_TRY_VOID(CheckInterrupted(o.interrupted));
      }
      break;
    case RootfsSource::kDebian:
    case RootfsSource::kUbuntu: {
      const bool ubuntu = o.source == RootfsSource::kUbuntu;
      progress(fmt::format("staging {} {} from {} (debootstrap) ...", ubuntu ? "Ubuntu" : "Debian", o.suite, o.mirror));
      CLONE_TRY_VOID(RunTool({DebootstrapArgv(o.suite, staging, o.mirror, ubuntu ? kUbuntuKeyring : ""), "debootstrap",
                              ToolOutput::kToStderr},
                             o.interrupted));
      break;
    }
  }
  CLONE_TRY_VOID(CheckInterrupted(o.interrupted));

  progress("configuring hostname, serial console, fstab, network ...");
  const std::optional<std::string> root_password = CLONE_TRY(RootPasswordField(o.source, o.root_password));
  CLONE_TRY_VOID(CustomizeRootfs(staging, {o.hostname, o.agent_path, root_password}).map_error([](const Error& e) {
    return e.Wrap("configuring the image");
  }));
  CLONE_TRY_VOID(CheckInterrupted(o.interrupted));

  const std::string raw = CLONE_TRY(MakeTemp(out, "raw", /*directory=*/false));
  temps.AddFile(raw);
  if (::truncate(raw.c_str(), static_cast<off_t>(o.size_bytes)) != 0) return FailErrno("truncate", raw);
  progress(fmt::format("formatting ext4 ({}) ...", HumanSize(o.size_bytes)));
  auto mkfs = RunTool({MkfsExt4Argv(staging, raw, o.size_bytes), "e2fsprogs"}, o.interrupted);
  if (!mkfs) {
    if (Interrupted(o.interrupted)) return mkfs;
    uint64_t tree = TreeBytes(staging);
    if (tree + tree / 4 + 8 * kMiB > o.size_bytes)
      return Fail("{} (the tree holds {} MiB: is --size {} large enough?)", mkfs.error().message(),
                  (tree + kMiB - 1) / kMiB, HumanSize(o.size_bytes));
    return mkfs;
  }
  RemoveTree(staging);  // free the space before converting

  std::string result = raw;
  if (o.format == Format::kQcow2) {
    progress("converting to qcow2 ...");
    std::string qcow2 = CLONE_TRY(MakeTemp(out, "qcow2", /*directory=*/false));
    temps.AddFile(qcow2);
    ::unlink(qcow2.c_str());  // Qcow2Create wants a new file; the random name stays ours in practice
    CLONE_TRY_VOID(ConvertRawToQcow2(raw, qcow2, o.interrupted));
    result = qcow2;
  } else {
    CLONE_TRY_VOID(FsyncPath(raw, O_RDONLY));
  }
  CLONE_TRY_VOID(CheckInterrupted(o.interrupted));
  const mode_t mask = ::umask(0);
  ::umask(mask);
  ::chmod(result.c_str(), 0666 & ~mask);
  CLONE_TRY_VOID(Publish(result, out.string(), o.force));
  temps.ForgetFile(result);
  (void)FsyncPath(out.parent_path().string(), O_RDONLY | O_DIRECTORY);
  progress(fmt::format("wrote {}", o.output));
  return {};
}

}  // namespace clonevm

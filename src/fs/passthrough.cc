#include "fs/passthrough.h"

#include <dirent.h>
#include <endian.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <linux/openat2.h>
#include <sys/file.h>
#include <sys/fsuid.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "base/json.h"

namespace clonevm::fs {
namespace {

constexpr int kStateVersion = 1;
constexpr uint32_t kOurMinor = FUSE_KERNEL_MINOR_VERSION;
// INIT flags we accept when the kernel offers them.
// FUSE_DONT_MASK: the guest sends its umask and the server applies it (the VMM's own umask must
// not). FUSE_HANDLE_KILLPRIV_V2: the guest leaves clearing set-uid/set-gid on write, truncate and
// chown to the server (KillSuidGid; the host's chown does it itself), so a writer who is not the
// owner does not need a chmod the host would refuse.
// FUSE_POSIX_LOCKS, FUSE_FLOCK_LOCKS: guest locks are host locks (the header's "Locks").
// FUSE_SETXATTR_EXT: setxattr carries FUSE_SETXATTR_ACL_KILL_SGID. FUSE_POSIX_ACL is added when the
// shared directory's file system has ACLs.
constexpr uint32_t kSupportedFlags = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_ATOMIC_O_TRUNC | FUSE_DO_READDIRPLUS |
                                     FUSE_READDIRPLUS_AUTO | FUSE_MAX_PAGES | FUSE_DONT_MASK | FUSE_HANDLE_KILLPRIV_V2 |
                                     FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS | FUSE_SETXATTR_EXT;
constexpr size_t kMaxXattrBytes = 65536;  // XATTR_SIZE_MAX (values and lists)
constexpr char kAclAccess[] = "system.posix_acl_access";
constexpr char kAclDefault[] = "system.posix_acl_default";

// Reads one T from the front of `in` (advancing it); nullopt when too short.
template <typename T>
std::optional<T> Take(std::span<const uint8_t>& in) {
  if (in.size() < sizeof(T)) return std::nullopt;
  T value;
  std::memcpy(&value, in.data(), sizeof(T));
  in = in.subspan(sizeof(T));
  return value;
}

// A NUL-terminated string at the front of `in` (advancing past the NUL); nullopt without a NUL.
std::optional<std::string> TakeString(std::span<const uint8_t>& in) {
  auto nul = std::find(in.begin(), in.end(), uint8_t{0});
  if (nul == in.end()) return std::nullopt;
  std::string s(in.begin(), nul);
  in = in.subspan(static_cast<size_t>(nul - in.begin()) + 1);
  return s;
}

// 0 for a name that is one plain path component, else the errno to answer.
int CheckName(const std::string& name) {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) return EINVAL;
  if (name.size() > NAME_MAX) return ENAMETOOLONG;
  return 0;
}

void FillAttr(const struct stat& st, fuse_attr& attr) {
  attr = {};
  attr.ino = st.st_ino;
  attr.size = static_cast<uint64_t>(st.st_size);
  attr.blocks = static_cast<uint64_t>(st.st_blocks);
  attr.atime = static_cast<uint64_t>(st.st_atim.tv_sec);
  attr.mtime = static_cast<uint64_t>(st.st_mtim.tv_sec);
  attr.ctime = static_cast<uint64_t>(st.st_ctim.tv_sec);
  attr.atimensec = static_cast<uint32_t>(st.st_atim.tv_nsec);
  attr.mtimensec = static_cast<uint32_t>(st.st_mtim.tv_nsec);
  attr.ctimensec = static_cast<uint32_t>(st.st_ctim.tv_nsec);
  attr.mode = st.st_mode;
  attr.nlink = static_cast<uint32_t>(st.st_nlink);
  attr.uid = st.st_uid;
  attr.gid = st.st_gid;
  attr.rdev = static_cast<uint32_t>(st.st_rdev);
  attr.blksize = static_cast<uint32_t>(st.st_blksize);
}

int Errno() { return errno != 0 ? errno : EIO; }

int StatFd(int fd, struct stat* st) {
  return ::fstatat(fd, "", st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0 ? 0 : Errno();
}

long OpenAt2(int dirfd, const char* path, uint64_t flags, uint64_t resolve) {
  open_how how{};
  how.flags = flags;
  how.resolve = resolve;
  return ::syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
}

constexpr uint64_t kCacheSec = static_cast<uint64_t>(PassthroughFs::kCacheSeconds);

// One request's host credentials on this thread: fsuid, fsgid and supplementary groups, changed
// with the raw syscalls because those are per thread (glibc's setgroups/setresuid wrappers
// broadcast to every thread of the VMM), and put back when the request is answered. Changing the
// fsuid away from 0 drops CAP_CHOWN, CAP_DAC_*, CAP_FOWNER, CAP_FSETID, CAP_MKNOD... from the
// effective set and setting it back to 0 restores them, so while switched the host kernel checks
// exactly what it would for that user. Only used when the VMM is root.
class ScopedCredentials {
 public:
  ScopedCredentials(uid_t uid, gid_t gid, std::span<const gid_t> groups, std::span<const gid_t> restore_groups)
      : restore_groups_(restore_groups) {
    ok_ = ::syscall(SYS_setgroups, groups.size(), groups.data()) == 0;
    old_gid_ = static_cast<gid_t>(::setfsgid(gid));
    old_uid_ = static_cast<uid_t>(::setfsuid(uid));
    // setfsuid/setfsgid return the previous id whether or not they worked: ask again.
    ok_ = ok_ && static_cast<uid_t>(::setfsuid(static_cast<uid_t>(-1))) == uid &&
          static_cast<gid_t>(::setfsgid(static_cast<gid_t>(-1))) == gid;
  }
  ~ScopedCredentials() {
    ::setfsuid(old_uid_);  // first: back to fsuid 0 brings the capabilities back
    ::setfsgid(old_gid_);
    [[maybe_unused]] long r = ::syscall(SYS_setgroups, restore_groups_.size(), restore_groups_.data());
  }
  ScopedCredentials(const ScopedCredentials&) = delete;
  ScopedCredentials& operator=(const ScopedCredentials&) = delete;
  bool ok() const { return ok_; }

 private:
  std::span<const gid_t> restore_groups_;
  uid_t old_uid_ = 0;
  gid_t old_gid_ = 0;
  bool ok_ = false;
};

// Requests that create an inode: they run as the caller even when the server trusts the guest
// kernel's permission checks (CredentialModel::kCreatorOwns), so the host gives the new inode the
// caller's uid, its gid or the set-gid parent's, and strips set-gid as it would locally.
bool CreatesInode(uint32_t opcode) {
  return opcode == FUSE_CREATE || opcode == FUSE_MKDIR || opcode == FUSE_MKNOD || opcode == FUSE_SYMLINK;
}

// The permission bits of a new inode: the guest's mode less the guest's umask (sent with
// FUSE_DONT_MASK; 0 otherwise, the guest having applied it). The server's thread has umask 0
// (devices/virtio/fs.cc), so the VMM's own umask does not strip bits the guest asked for.
mode_t GuestMode(uint32_t mode, uint32_t umask) { return static_cast<mode_t>(mode & ~umask & 07777); }

// Clears set-uid, and set-gid with group execute, of a regular file (the rule of the host's own
// write/truncate for a caller without CAP_FSETID). `fd` may be O_PATH (chmod goes through
// /proc/self/fd, `proc_fd`).
int KillSuidGid(int proc_fd, int fd) {
  struct stat st {};
  if (int err = StatFd(fd, &st)) return err;
  if (!S_ISREG(st.st_mode)) return 0;
  mode_t mode = st.st_mode & 07777;
  mode_t kill = S_ISUID | ((mode & S_IXGRP) ? S_ISGID : 0);
  if ((mode & kill) == 0) return 0;
  if (::fchmodat(proc_fd, std::to_string(fd).c_str(), mode & ~kill, 0) != 0) return Errno();
  return 0;
}

// The named groups (ACL_GROUP entries) of the access ACL at `path`, appended to `groups`. The
// xattr is posix_acl_xattr_header {le32 version = 2} then entries {le16 tag, le16 perm, le32 id}.
void AclGroups(const std::string& path, std::vector<gid_t>& groups) {
  constexpr uint16_t kAclGroupTag = 0x08;  // ACL_GROUP
  constexpr size_t kMaxEntries = 128;      // a larger ACL adds nothing (ERANGE)
  uint8_t buf[4 + 8 * kMaxEntries];
  ssize_t n = ::getxattr(path.c_str(), kAclAccess, buf, sizeof(buf));
  uint32_t version = 0;
  if (n >= 4) std::memcpy(&version, buf, sizeof(version));
  if (n < 4 || le32toh(version) != 2) return;
  for (size_t pos = 4; pos + 8 <= static_cast<size_t>(n); pos += 8) {
    uint16_t tag;
    uint32_t id;
    std::memcpy(&tag, buf + pos, sizeof(tag));
    std::memcpy(&id, buf + pos + 4, sizeof(id));
    if (le16toh(tag) == kAclGroupTag) groups.push_back(static_cast<gid_t>(le32toh(id)));
  }
}

// ---- lock request checks ----
constexpr uint64_t kOffsetMax = INT64_MAX;   // OFFSET_MAX: a lock's end "to EOF"
constexpr uint32_t kPidMaxLimit = 4u << 20;  // PID_MAX_LIMIT (64-bit)

// 0 when the guest's fuse_lk_in is well formed (fills `fl` as an OFD lock: SEEK_SET, l_pid 0),
// else EINVAL. `setlk`: SETLK/SETLKW (may unlock, may be flock); else GETLK.
int CheckLock(const fuse_lk_in& in, bool setlk, struct flock* fl) {
  if ((in.lk_flags & ~static_cast<uint32_t>(FUSE_LK_FLOCK)) != 0) return EINVAL;
  if (!setlk && (in.lk_flags & FUSE_LK_FLOCK)) return EINVAL;
  if (in.lk.type != F_RDLCK && in.lk.type != F_WRLCK && (in.lk.type != F_UNLCK || !setlk)) return EINVAL;
  if (in.lk.start > kOffsetMax || in.lk.end > kOffsetMax || in.lk.start > in.lk.end) return EINVAL;
  if (in.lk.pid > kPidMaxLimit) return EINVAL;
  *fl = {};
  fl->l_type = static_cast<short>(in.lk.type);
  fl->l_whence = SEEK_SET;
  fl->l_start = static_cast<off_t>(in.lk.start);
  fl->l_len = in.lk.end == kOffsetMax ? 0 : static_cast<off_t>(in.lk.end - in.lk.start + 1);
  return 0;
}

}  // namespace

// The reply being built: fuse_out_header then the payload, bounded by the guest's buffer.
struct PassthroughFs::Reply {
  std::span<uint8_t> buffer;  // the whole reply buffer (>= sizeof(fuse_out_header))
  size_t length = 0;          // 0: no reply
  int error = 0;
  uint64_t ticket = 0;  // Handle()'s, for a SETLKW that parks
  bool parked = false;  // a SETLKW kept waiting: no reply now

  // Payload space after the header.
  std::span<uint8_t> payload() { return buffer.subspan(sizeof(fuse_out_header)); }
  void Error(int err) {
    error = err;
    length = sizeof(fuse_out_header);
  }
  // A fixed-size reply; -EIO when the guest's buffer is too small for it.
  template <typename T>
  void Ok(const T& value) {
    if (payload().size() < sizeof(T)) return Error(EIO);
    std::memcpy(payload().data(), &value, sizeof(T));
    error = 0;
    length = sizeof(fuse_out_header) + sizeof(T);
  }
  void OkEmpty() {
    error = 0;
    length = sizeof(fuse_out_header);
  }
  void OkBytes(size_t n) {
    error = 0;
    length = sizeof(fuse_out_header) + n;
  }
};

Result<std::unique_ptr<PassthroughFs>> PassthroughFs::Create(const std::string& root, FsOptions options) {
  if (options.max_write < 4096 || options.max_write > kMaxIoBytes) {
    return Fail("shared directory: max_write {} is not in 4096..{}", options.max_write, kMaxIoBytes);
  }
  Fd root_fd(::open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root_fd) return FailErrno("opening the shared directory", root);
  Fd proc_fd(::open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!proc_fd) return FailErrno("open /proc/self/fd");
  char buf[PATH_MAX];
  ssize_t n = ::readlinkat(proc_fd.get(), std::to_string(root_fd.get()).c_str(), buf, sizeof(buf) - 1);
  if (n <= 0) return FailErrno("readlink of the shared directory's fd", root);
  std::string canonical(buf, static_cast<size_t>(n));
  struct stat st {};
  if (StatFd(root_fd.get(), &st) != 0) return FailErrno("stat", root);
  std::unique_ptr<PassthroughFs> fs(
      new PassthroughFs(std::move(root_fd), std::move(canonical), options, std::move(proc_fd)));
  rlimit files{};
  if (::getrlimit(RLIMIT_NOFILE, &files) == 0) {
    if (files.rlim_cur < files.rlim_max) {
      files.rlim_cur = files.rlim_max;
      [[maybe_unused]] int raised = ::setrlimit(RLIMIT_NOFILE, &files);
      ::getrlimit(RLIMIT_NOFILE, &files);
    }
    fs->max_inodes_ = std::min<size_t>(kMaxInodes, files.rlim_cur / 4);
    fs->max_handles_ = std::min<size_t>(kMaxHandles, files.rlim_cur / 16);
  }
  if (::geteuid() == 0) {
    fs->model_ = options.root_squash ? CredentialModel::kCaller : CredentialModel::kCreatorOwns;
    int n_groups = ::getgroups(0, nullptr);
    fs->host_groups_.resize(static_cast<size_t>(std::max(n_groups, 0)));
    if (n_groups > 0 && ::getgroups(n_groups, fs->host_groups_.data()) != n_groups) {
      return FailErrno("getgroups");
    }
  }
  // POSIX ACLs: a file system without them answers EOPNOTSUPP, one with them ENODATA (no ACL on
  // the root) or the ACL.
  errno = 0;
  fs->acl_supported_ =
      ::getxattr(ProcPath(fs->root_fd_.get()).c_str(), kAclAccess, nullptr, 0) >= 0 || errno == ENODATA;
  Inode& inode = fs->inodes_[kRootNodeId];
  inode.fd.reset(::open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!inode.fd) return FailErrno("opening the shared directory", root);
  inode.lookups = 1;
  inode.dev = st.st_dev;
  inode.ino = st.st_ino;
  inode.type = st.st_mode & S_IFMT;
  fs->by_host_inode_[{st.st_dev, st.st_ino}] = kRootNodeId;
  return fs;
}

PassthroughFs::PassthroughFs(Fd root, std::string root_path, FsOptions options, Fd proc_fd)
    : root_fd_(std::move(root)), root_path_(std::move(root_path)), options_(options), proc_fd_(std::move(proc_fd)) {}

uint64_t PassthroughFs::lookup_count(uint64_t nodeid) const {
  auto it = inodes_.find(nodeid);
  return it == inodes_.end() ? 0 : it->second.lookups;
}

std::string PassthroughFs::ProcName(int fd) { return std::to_string(fd); }

Result<PassthroughFs::Inode*> PassthroughFs::GetInode(uint64_t nodeid) {
  auto it = inodes_.find(nodeid);
  if (it == inodes_.end()) return Fail(Error("unknown nodeid", EBADF));
  if (!it->second.fd) return Fail(Error("stale nodeid", ESTALE));
  return &it->second;
}

PassthroughFs::Inode* PassthroughFs::DirFor(uint64_t parent, const std::optional<std::string>& name, Access access,
                                            Reply& reply) {
  auto fail = [&reply](int err) -> Inode* {
    reply.Error(err);
    return nullptr;
  };
  if (!name) return fail(EINVAL);
  if (int err = CheckName(*name)) return fail(err);
  auto dir = GetInode(parent);
  if (!dir) return fail(dir.error().error_number());
  if (access == Access::kChange && options_.read_only) return fail(EROFS);
  return *dir;
}

Result<PassthroughFs::OpenFile*> PassthroughFs::GetHandle(uint64_t fh, bool dir) {
  auto it = handles_.find(fh);
  if (it == handles_.end() || it->second.dir != dir) return Fail(Error("unknown fh", EBADF));
  if (!it->second.fd) return Fail(Error("stale fh", ESTALE));
  return &it->second;
}

Result<Fd> PassthroughFs::ReopenInode(const Inode& inode, int flags) const {
  if (inode.type == S_IFLNK) return Fail(Error("symlink", ELOOP));
  // A FIFO would block the worker until a reader came (forever, and with it every pause and
  // reset); a device node would open the host's device.
  if (inode.type != S_IFREG && inode.type != S_IFDIR) return Fail(Error("not a regular file", EACCES));
  int fd = ::openat(proc_fd_.get(), ProcName(inode.fd.get()).c_str(), flags | O_CLOEXEC);
  if (fd < 0) return Fail(Error("open", Errno()));
  return Fd(fd);
}

uint64_t PassthroughFs::AddHandle(Fd fd, uint64_t nodeid, uint32_t flags, bool dir) {
  uint64_t fh = next_fh_++;
  handles_[fh] = OpenFile{std::move(fd), nodeid, flags, dir};
  return fh;
}

size_t PassthroughFs::Handle(std::span<const uint8_t> request, std::span<uint8_t> reply_buffer, uint64_t ticket) {
  if (reply_buffer.size() < sizeof(fuse_out_header)) reply_buffer = {};
  std::span<const uint8_t> in = request;
  auto header = Take<fuse_in_header>(in);
  if (!header) return 0;  // the transport checks this; nothing to answer without a unique id
  Reply reply{reply_buffer};
  reply.ticket = ticket;
  const uint64_t node = header->nodeid;
  const uint32_t op = header->opcode;

  if (op == FUSE_FORGET) {
    if (auto arg = Take<fuse_forget_in>(in)) DoForget(node, arg->nlookup);
    return 0;
  }
  if (op == FUSE_BATCH_FORGET) {
    DoBatchForget(in);
    return 0;
  }
  if (reply_buffer.empty()) return 0;

  if (op == FUSE_INIT) {
    DoInit(in, reply);
  } else if (!initialized_) {
    reply.Error(EIO);
  } else {
    DispatchAsCaller(*header, in, reply);
  }
  if (reply.parked) return kParked;
  if (reply.length == 0) return 0;
  fuse_out_header out{};
  out.len = static_cast<uint32_t>(reply.length);
  out.error = -reply.error;
  out.unique = header->unique;
  std::memcpy(reply_buffer.data(), &out, sizeof(out));
  return reply.length;
}

void PassthroughFs::DispatchAsCaller(const fuse_in_header& header, std::span<const uint8_t> in, Reply& reply) {
  if (auto who = CallerFor(header)) {
    ScopedCredentials creds(who->uid, who->gid, who->groups, host_groups_);
    if (!creds.ok()) return reply.Error(EPERM);
    return Dispatch(header, in, reply);
  }
  Dispatch(header, in, reply);
}

bool PassthroughFs::posix_acl() const { return (init_flags_ & FUSE_POSIX_ACL) != 0; }

std::optional<PassthroughFs::Caller> PassthroughFs::CallerFor(const fuse_in_header& header) const {
  if (model_ == CredentialModel::kVmm) return std::nullopt;
  const uint32_t op = header.opcode;
  Caller who{header.uid, header.gid, {}};
  if (model_ == CredentialModel::kCaller) {
    if (who.uid == 0) who.uid = options_.squash_uid;
    if (who.gid == 0) who.gid = options_.squash_gid;
    return who;  // no supplementary groups: the host checks the caller's uid and gid only
  }
  if (!CreatesInode(op) && op != FUSE_ACCESS) return std::nullopt;
  // The guest kernel (virtio-fs mounts with default_permissions) has already checked, with all of
  // the caller's groups, that it may write the parent directory; the host checks again with
  // fsuid/fsgid, and the parent's group stands in for the supplementary group that allowed it.
  if (CreatesInode(op)) {
    auto parent = inodes_.find(header.nodeid);
    struct stat st {};
    if (parent != inodes_.end() && parent->second.fd && StatFd(parent->second.fd.get(), &st) == 0) {
      who.groups.push_back(st.st_gid);
      // A directory writable through a named group of its ACL: that group stands in too.
      if (posix_acl()) AclGroups(ProcPath(parent->second.fd.get()), who.groups);
    }
  }
  return who;
}

void PassthroughFs::Dispatch(const fuse_in_header& header, std::span<const uint8_t> in, Reply& reply) {
  const uint64_t node = header.nodeid;
  switch (header.opcode) {
    case FUSE_DESTROY:
      DoDestroy();
      reply.OkEmpty();
      break;
    case FUSE_LOOKUP:
      DoLookup(node, in, reply);
      break;
    case FUSE_GETATTR:
      DoGetattr(node, reply);
      break;
    case FUSE_SETATTR:
      DoSetattr(node, in, reply);
      break;
    case FUSE_READLINK:
      DoReadlink(node, reply);
      break;
    case FUSE_SYMLINK:
      DoSymlink(node, in, reply);
      break;
    case FUSE_MKNOD:
      DoMknod(node, in, reply);
      break;
    case FUSE_MKDIR:
      DoMkdir(node, in, reply);
      break;
    case FUSE_UNLINK:
      DoUnlink(node, in, false, reply);
      break;
    case FUSE_RMDIR:
      DoUnlink(node, in, true, reply);
      break;
    case FUSE_RENAME:
      DoRename(node, in, false, reply);
      break;
    case FUSE_RENAME2:
      DoRename(node, in, true, reply);
      break;
    case FUSE_LINK:
      DoLink(node, in, reply);
      break;
    case FUSE_OPEN:
      DoOpen(node, in, false, reply);
      break;
    case FUSE_OPENDIR:
      DoOpen(node, in, true, reply);
      break;
    case FUSE_CREATE:
      DoCreate(node, in, reply);
      break;
    case FUSE_READ:
      DoRead(in, reply);
      break;
    case FUSE_WRITE:
      DoWrite(in, reply);
      break;
    case FUSE_STATFS:
      DoStatfs(node, reply);
      break;
    case FUSE_RELEASE:
      DoRelease(in, false, reply);
      break;
    case FUSE_RELEASEDIR:
      DoRelease(in, true, reply);
      break;
    case FUSE_FLUSH:
      DoFlush(in, reply);
      break;
    case FUSE_GETLK:
      DoGetlk(node, in, reply);
      break;
    case FUSE_SETLK:
      DoSetlk(header, in, false, reply);
      break;
    case FUSE_SETLKW:
      DoSetlk(header, in, true, reply);
      break;
    case FUSE_FSYNC:
      DoFsync(in, false, reply);
      break;
    case FUSE_FSYNCDIR:
      DoFsync(in, true, reply);
      break;
    case FUSE_READDIR:
      DoReaddir(in, false, reply);
      break;
    case FUSE_READDIRPLUS:
      DoReaddir(in, true, reply);
      break;
    case FUSE_ACCESS:
      DoAccess(node, in, reply);
      break;
    case FUSE_FALLOCATE:
      DoFallocate(in, reply);
      break;
    case FUSE_LSEEK:
      DoLseek(in, reply);
      break;
    case FUSE_GETXATTR:
      DoGetxattr(node, in, reply);
      break;
    case FUSE_LISTXATTR:
      DoListxattr(node, in, reply);
      break;
    case FUSE_SETXATTR:
      DoSetxattr(node, in, reply);
      break;
    case FUSE_REMOVEXATTR:
      DoRemovexattr(node, in, reply);
      break;
    default:
      reply.Error(ENOSYS);
      break;
  }
}

void PassthroughFs::DoInit(std::span<const uint8_t> in, Reply& reply) {
  auto arg = Take<fuse_init_in>(in);
  if (!arg) {
    // Kernels before 7.36 send the 16-byte form (no flags2).
    std::span<const uint8_t> again = in;
    if (again.size() < 16) return reply.Error(EINVAL);
    fuse_init_in short_in{};
    std::memcpy(&short_in, again.data(), 16);
    arg = short_in;
  }
  if (initialized_) return reply.Error(EPROTO);
  if (arg->major < 7) return reply.Error(EPROTO);
  fuse_init_out out{};
  out.major = FUSE_KERNEL_VERSION;
  out.minor = kOurMinor;
  if (arg->major > FUSE_KERNEL_VERSION) return reply.Ok(out);  // the kernel retries with our major
  out.minor = std::min(arg->minor, kOurMinor);
  out.max_readahead = arg->max_readahead;
  out.flags = arg->flags & (kSupportedFlags | (acl_supported_ ? FUSE_POSIX_ACL : 0));
  out.max_background = 64;
  out.congestion_threshold = 48;
  out.max_write = options_.max_write;
  out.time_gran = 1;
  out.max_pages = static_cast<uint16_t>(options_.max_write / 4096);
  minor_ = out.minor;
  init_flags_ = out.flags;
  max_write_ = out.max_write;
  initialized_ = true;
  // Older kernels want the older, shorter reply.
  if (out.minor < 5) {
    if (reply.payload().size() < FUSE_COMPAT_INIT_OUT_SIZE) return reply.Error(EIO);
    std::memcpy(reply.payload().data(), &out, FUSE_COMPAT_INIT_OUT_SIZE);
    return reply.OkBytes(FUSE_COMPAT_INIT_OUT_SIZE);
  }
  if (out.minor < 23) {
    if (reply.payload().size() < FUSE_COMPAT_22_INIT_OUT_SIZE) return reply.Error(EIO);
    std::memcpy(reply.payload().data(), &out, FUSE_COMPAT_22_INIT_OUT_SIZE);
    return reply.OkBytes(FUSE_COMPAT_22_INIT_OUT_SIZE);
  }
  reply.Ok(out);
}

void PassthroughFs::DoDestroy() {
  // The guest unmounted: it forgets every inode but the root and every handle. Closing the fds
  // releases every host lock the guest held; a wait still parked is answered EIO.
  lock_owners_.clear();
  for (Parked& p : parked_) {
    if (p.error < 0) p.error = EIO;
  }
  handles_.clear();
  for (auto it = inodes_.begin(); it != inodes_.end();) {
    if (it->first == kRootNodeId) {
      ++it;
      continue;
    }
    by_host_inode_.erase({it->second.dev, it->second.ino});
    it = inodes_.erase(it);
  }
  initialized_ = false;
}

int PassthroughFs::LookupEntry(Inode& parent, const char* name, void* entry_out) {
  int fd = ::openat(parent.fd.get(), name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return Errno();
  Fd new_fd(fd);
  struct stat st {};
  if (int err = StatFd(new_fd.get(), &st); err != 0) return err;
  uint64_t nodeid;
  auto known = by_host_inode_.find({st.st_dev, st.st_ino});
  if (known != by_host_inode_.end() && inodes_.count(known->second) != 0) {
    nodeid = known->second;
    Inode& inode = inodes_[nodeid];
    if (!inode.fd) inode.fd = std::move(new_fd);  // a stale entry found again
    ++inode.lookups;
  } else {
    if (inodes_.size() >= max_inodes_) return ENFILE;
    nodeid = next_nodeid_++;
    Inode& inode = inodes_[nodeid];
    inode.fd = std::move(new_fd);
    inode.lookups = 1;
    inode.dev = st.st_dev;
    inode.ino = st.st_ino;
    inode.type = st.st_mode & S_IFMT;
    by_host_inode_[{st.st_dev, st.st_ino}] = nodeid;
  }
  fuse_entry_out entry{};
  entry.nodeid = nodeid;
  entry.generation = 0;
  entry.entry_valid = kCacheSec;
  entry.attr_valid = kCacheSec;
  FillAttr(st, entry.attr);
  std::memcpy(entry_out, &entry, sizeof(entry));
  return 0;
}

void PassthroughFs::DoLookup(uint64_t parent, std::span<const uint8_t> in, Reply& reply) {
  auto name = TakeString(in);
  Inode* dir = DirFor(parent, name, Access::kLookup, reply);
  if (!dir) return;
  fuse_entry_out entry;
  if (int err = LookupEntry(*dir, name->c_str(), &entry)) return reply.Error(err);
  reply.Ok(entry);
}

void PassthroughFs::DoForget(uint64_t nodeid, uint64_t nlookup) {
  if (nodeid == kRootNodeId) return;  // the root lives as long as the server
  auto it = inodes_.find(nodeid);
  if (it == inodes_.end()) return;
  Inode& inode = it->second;
  inode.lookups -= std::min(inode.lookups, nlookup);
  if (inode.lookups > 0) return;
  auto key = std::make_pair(inode.dev, inode.ino);
  if (auto k = by_host_inode_.find(key); k != by_host_inode_.end() && k->second == nodeid) by_host_inode_.erase(k);
  inodes_.erase(it);
}

void PassthroughFs::DoBatchForget(std::span<const uint8_t> in) {
  auto arg = Take<fuse_batch_forget_in>(in);
  if (!arg) return;
  for (uint32_t i = 0; i < arg->count; ++i) {
    auto one = Take<fuse_forget_one>(in);
    if (!one) return;  // count larger than the request: forget what is there
    DoForget(one->nodeid, one->nlookup);
  }
}

void PassthroughFs::DoGetattr(uint64_t nodeid, Reply& reply) {
  auto inode = GetInode(nodeid);
  if (!inode) return reply.Error(inode.error().error_number());
  struct stat st {};
  if (int err = StatFd((*inode)->fd.get(), &st)) return reply.Error(err);
  fuse_attr_out out{};
  out.attr_valid = kCacheSec;
  FillAttr(st, out.attr);
  reply.Ok(out);
}

void PassthroughFs::DoSetattr(uint64_t nodeid, std::span<const uint8_t> in, Reply& reply) {
  auto arg = Take<fuse_setattr_in>(in);
  if (!arg) return reply.Error(EINVAL);
  auto got = GetInode(nodeid);
  if (!got) return reply.Error(got.error().error_number());
  if (options_.read_only) return reply.Error(EROFS);
  Inode& inode = **got;
  const std::string proc = ProcName(inode.fd.get());
  const bool symlink = inode.type == S_IFLNK;
  const uint32_t valid = arg->valid;
  if (valid & FATTR_MODE) {
    if (symlink) return reply.Error(EOPNOTSUPP);
    if (::fchmodat(proc_fd_.get(), proc.c_str(), arg->mode & 07777, 0) != 0) return reply.Error(Errno());
  }
  if (valid & (FATTR_UID | FATTR_GID)) {
    uid_t uid = (valid & FATTR_UID) ? arg->uid : static_cast<uid_t>(-1);
    gid_t gid = (valid & FATTR_GID) ? arg->gid : static_cast<gid_t>(-1);
    if (::fchownat(inode.fd.get(), "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) {
      return reply.Error(Errno());
    }
  }
  if (valid & FATTR_SIZE) {
    int result;
    if (auto h = (valid & FATTR_FH) ? GetHandle(arg->fh, false) : Result<OpenFile*>(nullptr); h && *h != nullptr) {
      result = ::ftruncate((*h)->fd.get(), static_cast<off_t>(arg->size));
    } else {
      auto fd = ReopenInode(inode, O_WRONLY);
      if (!fd) return reply.Error(fd.error().error_number());
      result = ::ftruncate(fd->get(), static_cast<off_t>(arg->size));
    }
    if (result != 0) return reply.Error(Errno());
  }
  if ((valid & FATTR_KILL_SUIDGID) && !(valid & FATTR_MODE)) {
    if (int err = KillSuidGid(proc_fd_.get(), inode.fd.get())) return reply.Error(err);
  }
  if (valid & (FATTR_ATIME | FATTR_MTIME)) {
    timespec times[2];
    times[0] = {0, UTIME_OMIT};
    times[1] = {0, UTIME_OMIT};
    if (valid & FATTR_ATIME) {
      times[0] = (valid & FATTR_ATIME_NOW)
                     ? timespec{0, UTIME_NOW}
                     : timespec{static_cast<time_t>(arg->atime), static_cast<long>(arg->atimensec)};
    }
    if (valid & FATTR_MTIME) {
      times[1] = (valid & FATTR_MTIME_NOW)
                     ? timespec{0, UTIME_NOW}
                     : timespec{static_cast<time_t>(arg->mtime), static_cast<long>(arg->mtimensec)};
    }
    // A symlink's own times through its O_PATH fd (the /proc link would reach the same inode only
    // for non-links); the rest through /proc, which also works for files the caller cannot open.
    int r = symlink ? ::utimensat(inode.fd.get(), "", times, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)
                    : ::utimensat(proc_fd_.get(), proc.c_str(), times, 0);
    if (r != 0) return reply.Error(Errno());
  }
  DoGetattr(nodeid, reply);
}

void PassthroughFs::DoReadlink(uint64_t nodeid, Reply& reply) {
  auto inode = GetInode(nodeid);
  if (!inode) return reply.Error(inode.error().error_number());
  char buf[PATH_MAX];
  ssize_t n = ::readlinkat((*inode)->fd.get(), "", buf, sizeof(buf));
  if (n < 0) return reply.Error(Errno());
  if (static_cast<size_t>(n) > reply.payload().size()) return reply.Error(ERANGE);
  std::memcpy(reply.payload().data(), buf, static_cast<size_t>(n));
  reply.OkBytes(static_cast<size_t>(n));
}

void PassthroughFs::FinishCreate(Inode& parent, const char* name, Reply& reply) {
  fuse_entry_out entry;
  if (int err = LookupEntry(parent, name, &entry)) return reply.Error(err);
  reply.Ok(entry);
}

void PassthroughFs::DoSymlink(uint64_t parent, std::span<const uint8_t> in, Reply& reply) {
  auto name = TakeString(in);
  auto target = name ? TakeString(in) : std::nullopt;
  if (!target || target->empty() || target->size() >= PATH_MAX) return reply.Error(EINVAL);
  Inode* dir = DirFor(parent, name, Access::kChange, reply);
  if (!dir) return;
  // The target is only text stored in the link; the server never follows it.
  if (::symlinkat(target->c_str(), dir->fd.get(), name->c_str()) != 0) return reply.Error(Errno());
  FinishCreate(*dir, name->c_str(), reply);
}

void PassthroughFs::DoMknod(uint64_t parent, std::span<const uint8_t> in, Reply& reply) {
  auto arg = Take<fuse_mknod_in>(in);
  auto name = arg ? TakeString(in) : std::nullopt;
  Inode* dir = DirFor(parent, name, Access::kChange, reply);
  if (!dir) return;
  mode_t type = arg->mode & S_IFMT;
  dev_t rdev = 0;
  if (type == S_IFCHR || type == S_IFBLK) {
    // A device node made by the guest must not become a host device for host users: only on a
    // host mount with nodev, where opening it on the host fails. (The guest never opens it
    // through the server: its kernel opens its own device of that number.)
    struct statvfs vfs {};
    if (::fstatvfs(dir->fd.get(), &vfs) != 0) return reply.Error(Errno());
    if (!(vfs.f_flag & ST_NODEV)) return reply.Error(EPERM);
    rdev = arg->rdev;
  } else if (type != S_IFREG && type != S_IFIFO && type != S_IFSOCK) {
    return reply.Error(EINVAL);
  }
  if (::mknodat(dir->fd.get(), name->c_str(), type | NewMode(*dir, arg->mode, arg->umask), rdev) != 0) {
    return reply.Error(Errno());
  }
  FinishCreate(*dir, name->c_str(), reply);
}

void PassthroughFs::DoMkdir(uint64_t parent, std::span<const uint8_t> in, Reply& reply) {
  auto arg = Take<fuse_mkdir_in>(in);
  auto name = arg ? TakeString(in) : std::nullopt;
  Inode* dir = DirFor(parent, name, Access::kChange, reply);
  if (!dir) return;
  if (::mkdirat(dir->fd.get(), name->c_str(), NewMode(*dir, arg->mode, arg->umask)) != 0) return reply.Error(Errno());
  FinishCreate(*dir, name->c_str(), reply);
}

void PassthroughFs::DoUnlink(uint64_t parent, std::span<const uint8_t> in, bool dir, Reply& reply) {
  auto name = TakeString(in);
  Inode* parent_dir = DirFor(parent, name, Access::kChange, reply);
  if (!parent_dir) return;
  if (::unlinkat(parent_dir->fd.get(), name->c_str(), dir ? AT_REMOVEDIR : 0) != 0) return reply.Error(Errno());
  reply.OkEmpty();
}

void PassthroughFs::DoRename(uint64_t parent, std::span<const uint8_t> in, bool rename2, Reply& reply) {
  uint64_t newdir;
  uint32_t flags = 0;
  if (rename2) {
    auto arg = Take<fuse_rename2_in>(in);
    if (!arg) return reply.Error(EINVAL);
    newdir = arg->newdir;
    flags = arg->flags;
  } else {
    auto arg = Take<fuse_rename_in>(in);
    if (!arg) return reply.Error(EINVAL);
    newdir = arg->newdir;
  }
  auto oldname = TakeString(in);
  auto newname = oldname ? TakeString(in) : std::nullopt;
  if (!newname) return reply.Error(EINVAL);
  if (int err = CheckName(*oldname)) return reply.Error(err);
  if (int err = CheckName(*newname)) return reply.Error(err);
  if ((flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT)) != 0) return reply.Error(EINVAL);
  auto from = GetInode(parent);
  if (!from) return reply.Error(from.error().error_number());
  auto to = GetInode(newdir);
  if (!to) return reply.Error(to.error().error_number());
  if (options_.read_only) return reply.Error(EROFS);
  if (::renameat2((*from)->fd.get(), oldname->c_str(), (*to)->fd.get(), newname->c_str(), flags) != 0) {
    return reply.Error(Errno());
  }
  reply.OkEmpty();
}

void PassthroughFs::DoLink(uint64_t parent, std::span<const uint8_t> in, Reply& reply) {
  auto arg = Take<fuse_link_in>(in);
  auto name = arg ? TakeString(in) : std::nullopt;
  if (!name) return reply.Error(EINVAL);
  if (int err = CheckName(*name)) return reply.Error(err);
  auto dir = GetInode(parent);
  if (!dir) return reply.Error(dir.error().error_number());
  auto target = GetInode(arg->oldnodeid);
  if (!target) return reply.Error(target.error().error_number());
  if (options_.read_only) return reply.Error(EROFS);
  if ((*target)->type == S_IFDIR) return reply.Error(EPERM);
  // linkat through /proc/self/fd/N names the inode itself (AT_EMPTY_PATH would need
  // CAP_DAC_READ_SEARCH); a symlink is linked as itself because /proc's magic link is not followed
  // further for the final component.
  if (::linkat(proc_fd_.get(), ProcName((*target)->fd.get()).c_str(), (*dir)->fd.get(), name->c_str(),
               AT_SYMLINK_FOLLOW) != 0) {
    return reply.Error(Errno());
  }
  fuse_entry_out entry;
  if (int err = LookupEntry(**dir, name->c_str(), &entry)) return reply.Error(err);
  reply.Ok(entry);
}

void PassthroughFs::DoOpen(uint64_t nodeid, std::span<const uint8_t> in, bool dir, Reply& reply) {
  auto arg = Take<fuse_open_in>(in);
  if (!arg) return reply.Error(EINVAL);
  auto got = GetInode(nodeid);
  if (!got) return reply.Error(got.error().error_number());
  Inode& inode = **got;
  if (handles_.size() >= max_handles_) return reply.Error(ENFILE);
  int flags = static_cast<int>(arg->flags) & ~(O_CREAT | O_EXCL | O_NOCTTY | O_NOFOLLOW | O_PATH);
  if (dir) {
    if (inode.type != S_IFDIR) return reply.Error(ENOTDIR);
    flags = O_RDONLY | O_DIRECTORY;
  } else {
    if (inode.type == S_IFDIR) return reply.Error(EISDIR);
    // Only regular files: a device node in the share must not become a host device for the
    // guest, and opening a FIFO would block the server.
    if (inode.type == S_IFLNK) return reply.Error(ELOOP);
    if (inode.type != S_IFREG) return reply.Error(EACCES);
    if (options_.read_only && ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC))) return reply.Error(EROFS);
  }
  auto fd = ReopenInode(inode, flags);
  if (!fd) return reply.Error(fd.error().error_number());
  if (!dir && (flags & O_TRUNC) && (arg->open_flags & FUSE_OPEN_KILL_SUIDGID)) {
    if (int err = KillSuidGid(proc_fd_.get(), fd->get())) return reply.Error(err);
  }
  fuse_open_out out{};
  out.fh = AddHandle(std::move(*fd), nodeid, static_cast<uint32_t>(flags), dir);
  reply.Ok(out);
  if (reply.error != 0) handles_.erase(out.fh);
}

void PassthroughFs::DoCreate(uint64_t parent, std::span<const uint8_t> in, Reply& reply) {
  auto arg = Take<fuse_create_in>(in);
  auto name = arg ? TakeString(in) : std::nullopt;
  Inode* dir = DirFor(parent, name, Access::kChange, reply);
  if (!dir) return;
  if (handles_.size() >= max_handles_) return reply.Error(ENFILE);
  int flags = (static_cast<int>(arg->flags) & ~(O_NOCTTY | O_PATH | O_DIRECTORY)) | O_CREAT | O_NOFOLLOW | O_CLOEXEC;
  // O_NONBLOCK until the type is known: an existing FIFO under that name must not block the
  // server, and only regular files are opened (as in OPEN).
  // O_EXCL first, to know whether this request made the file (it then belongs to the caller, see
  // CallerFor) or found one under the name (a stale negative dentry, a hostile kernel): without
  // the guest's own O_EXCL an existing file is then opened as it is, as the caller.
  int fd = ::openat(dir->fd.get(), name->c_str(), flags | O_EXCL | O_NONBLOCK, NewMode(*dir, arg->mode, arg->umask));
  const bool created = fd >= 0;
  if (fd < 0 && errno == EEXIST && !(flags & O_EXCL)) {
    fd = ::openat(dir->fd.get(), name->c_str(), (flags & ~O_CREAT) | O_NONBLOCK);
  }
  if (fd < 0) return reply.Error(Errno());
  Fd file(fd);
  struct stat st {};
  if (int err = StatFd(file.get(), &st)) return reply.Error(err);
  if (!S_ISREG(st.st_mode)) return reply.Error(EACCES);
  if (!(flags & O_NONBLOCK) && ::fcntl(file.get(), F_SETFL, ::fcntl(file.get(), F_GETFL) & ~O_NONBLOCK) != 0) {
    return reply.Error(Errno());
  }
  if (!created && (flags & O_TRUNC) && (arg->open_flags & FUSE_OPEN_KILL_SUIDGID)) {
    if (int err = KillSuidGid(proc_fd_.get(), file.get())) return reply.Error(err);
  }
  struct {
    fuse_entry_out entry;
    fuse_open_out open;
  } out{};
  if (int err = LookupEntry(*dir, name->c_str(), &out.entry)) return reply.Error(err);
  out.open.fh = AddHandle(std::move(file), out.entry.nodeid, static_cast<uint32_t>(flags & ~O_CREAT), false);
  reply.Ok(out);
  if (reply.error != 0) {
    handles_.erase(out.open.fh);
    DoForget(out.entry.nodeid, 1);
  }
}

void PassthroughFs::DoRead(std::span<const uint8_t> in, Reply& reply) {
  auto arg = Take<fuse_read_in>(in);
  if (!arg) return reply.Error(EINVAL);
  auto h = GetHandle(arg->fh, false);
  if (!h) return reply.Error(h.error().error_number());
  size_t size = std::min<size_t>({arg->size, reply.payload().size(), kMaxIoBytes});
  if (arg->offset > static_cast<uint64_t>(INT64_MAX)) return reply.Error(EINVAL);
  size_t done = 0;
  while (done < size) {
    ssize_t n =
        ::pread((*h)->fd.get(), reply.payload().data() + done, size - done, static_cast<off_t>(arg->offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (done == 0) return reply.Error(Errno());
      break;
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  reply.OkBytes(done);
}

void PassthroughFs::DoWrite(std::span<const uint8_t> in, Reply& reply) {
  auto arg = Take<fuse_write_in>(in);
  if (!arg) return reply.Error(EINVAL);
  if (arg->size > in.size() || arg->size > max_write_) return reply.Error(EINVAL);
  if (arg->offset > static_cast<uint64_t>(INT64_MAX)) return reply.Error(EINVAL);
  auto h = GetHandle(arg->fh, false);
  if (!h) return reply.Error(h.error().error_number());
  if (options_.read_only) return reply.Error(EROFS);
  size_t done = 0;
  while (done < arg->size) {
    ssize_t n = ::pwrite((*h)->fd.get(), in.data() + done, arg->size - done, static_cast<off_t>(arg->offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (done == 0) return reply.Error(Errno());
      break;
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  if (done > 0 && (arg->write_flags & FUSE_WRITE_KILL_SUIDGID)) {
    if (int err = KillSuidGid(proc_fd_.get(), (*h)->fd.get())) return reply.Error(err);
  }
  fuse_write_out out{};
  out.size = static_cast<uint32_t>(done);
  reply.Ok(out);
}

void PassthroughFs::DoStatfs(uint64_t nodeid, Reply& reply) {
  auto inode = GetInode(nodeid);
  if (!inode) return reply.Error(inode.error().error_number());
  struct statfs st {};
  if (::fstatfs((*inode)->fd.get(), &st) != 0) return reply.Error(Errno());
  fuse_statfs_out out{};
  out.st.blocks = st.f_blocks;
  out.st.bfree = st.f_bfree;
  out.st.bavail = st.f_bavail;
  out.st.files = st.f_files;
  out.st.ffree = st.f_ffree;
  out.st.bsize = static_cast<uint32_t>(st.f_bsize);
  out.st.namelen = static_cast<uint32_t>(st.f_namelen);
  out.st.frsize = static_cast<uint32_t>(st.f_frsize);
  reply.Ok(out);
}

void PassthroughFs::DoRelease(std::span<const uint8_t> in, bool dir, Reply& reply) {
  auto arg = Take<fuse_release_in>(in);
  if (!arg) return reply.Error(EINVAL);
  auto it = handles_.find(arg->fh);
  if (it == handles_.end() || it->second.dir != dir) return reply.Error(EBADF);
  const uint64_t nodeid = it->second.nodeid;
  handles_.erase(it);  // stale handles are released too; closing the fd drops its flock
  if (!dir) ForgetHandleLocks(nodeid, arg->fh);
  reply.OkEmpty();
}

void PassthroughFs::DoFsync(std::span<const uint8_t> in, bool dir, Reply& reply) {
  auto arg = Take<fuse_fsync_in>(in);
  if (!arg) return reply.Error(EINVAL);
  auto h = GetHandle(arg->fh, dir);
  if (!h) return reply.Error(h.error().error_number());
  int r = (arg->fsync_flags & 1) ? ::fdatasync((*h)->fd.get()) : ::fsync((*h)->fd.get());
  if (r != 0) return reply.Error(Errno());
  reply.OkEmpty();
}

void PassthroughFs::DoReaddir(std::span<const uint8_t> in, bool plus, Reply& reply) {
  auto arg = Take<fuse_read_in>(in);
  if (!arg) return reply.Error(EINVAL);
  auto h = GetHandle(arg->fh, true);
  if (!h) return reply.Error(h.error().error_number());
  auto dir_inode = GetInode((*h)->nodeid);
  if (!dir_inode) return reply.Error(dir_inode.error().error_number());
  const int fd = (*h)->fd.get();
  std::span<uint8_t> out = reply.payload().first(std::min<size_t>(reply.payload().size(), arg->size));
  if (::lseek(fd, static_cast<off_t>(arg->offset), SEEK_SET) < 0) return reply.Error(Errno());
  size_t used = 0;
  alignas(8) uint8_t buf[16384];
  bool full = false;
  while (!full) {
    long n = ::syscall(SYS_getdents64, fd, buf, sizeof(buf));
    if (n < 0) {
      if (used == 0) return reply.Error(Errno());
      break;
    }
    if (n == 0) break;
    for (long pos = 0; pos < n;) {
      dirent64 d;
      std::memcpy(&d, buf + pos, offsetof(dirent64, d_name));
      const char* name = reinterpret_cast<const char*>(buf + pos + offsetof(dirent64, d_name));
      pos += d.d_reclen;
      size_t namelen = ::strnlen(name, NAME_MAX + 1);
      size_t dirent_size = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + namelen);
      size_t entry_size = plus ? FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET_DIRENTPLUS + namelen) : dirent_size;
      if (used + entry_size > out.size()) {
        full = true;
        break;
      }
      fuse_dirent dirent{};
      dirent.ino = d.d_ino;
      dirent.off = static_cast<uint64_t>(d.d_off);
      dirent.namelen = static_cast<uint32_t>(namelen);
      dirent.type = d.d_type;
      uint8_t* dst = out.data() + used;
      std::memset(dst, 0, entry_size);
      if (plus) {
        fuse_entry_out entry{};
        bool dot = std::strcmp(name, ".") == 0 || std::strcmp(name, "..") == 0;
        // "." and ".." carry no entry (nodeid 0: the kernel does not instantiate them); an entry
        // that cannot be looked up (raced with an unlink) is skipped.
        if (!dot && LookupEntry(**dir_inode, name, &entry) != 0) continue;
        std::memcpy(dst, &entry, sizeof(entry));
        dst += sizeof(entry);
      }
      std::memcpy(dst, &dirent, FUSE_NAME_OFFSET);
      std::memcpy(dst + FUSE_NAME_OFFSET, name, namelen);
      used += entry_size;
    }
  }
  reply.OkBytes(used);
}

void PassthroughFs::DoAccess(uint64_t nodeid, std::span<const uint8_t> in, Reply& reply) {
  auto arg = Take<fuse_access_in>(in);
  if (!arg) return reply.Error(EINVAL);
  auto inode = GetInode(nodeid);
  if (!inode) return reply.Error(inode.error().error_number());
  if (options_.read_only && (arg->mask & W_OK)) return reply.Error(EROFS);
  if ((*inode)->type == S_IFLNK) return reply.OkEmpty();  // access() follows links in the guest
  // AT_EACCESS: checked with the fs credentials this request runs with (CallerFor), not the
  // VMM's real uid as access(2) would.
  if (::faccessat(proc_fd_.get(), ProcName((*inode)->fd.get()).c_str(), static_cast<int>(arg->mask & 7), AT_EACCESS) !=
      0) {
    return reply.Error(Errno());
  }
  reply.OkEmpty();
}

void PassthroughFs::DoFallocate(std::span<const uint8_t> in, Reply& reply) {
  auto arg = Take<fuse_fallocate_in>(in);
  if (!arg) return reply.Error(EINVAL);
  auto h = GetHandle(arg->fh, false);
  if (!h) return reply.Error(h.error().error_number());
  if (options_.read_only) return reply.Error(EROFS);
  if (arg->offset > static_cast<uint64_t>(INT64_MAX) || arg->length > static_cast<uint64_t>(INT64_MAX)) {
    return reply.Error(EINVAL);
  }
  if (::fallocate((*h)->fd.get(), static_cast<int>(arg->mode), static_cast<off_t>(arg->offset),
                  static_cast<off_t>(arg->length)) != 0) {
    return reply.Error(Errno());
  }
  reply.OkEmpty();
}

void PassthroughFs::DoLseek(std::span<const uint8_t> in, Reply& reply) {
  auto arg = Take<fuse_lseek_in>(in);
  if (!arg) return reply.Error(EINVAL);
  auto h = GetHandle(arg->fh, false);
  if (!h) return reply.Error(h.error().error_number());
  if (arg->whence != SEEK_DATA && arg->whence != SEEK_HOLE) return reply.Error(EINVAL);
  off_t r = ::lseek((*h)->fd.get(), static_cast<off_t>(arg->offset), static_cast<int>(arg->whence));
  if (r < 0) return reply.Error(Errno());
  fuse_lseek_out out{};
  out.offset = static_cast<uint64_t>(r);
  reply.Ok(out);
}

// ---- Extended attributes ----
//
// Through "/proc/self/fd/N" (the *xattr calls have no *at form and fgetxattr does not work on
// O_PATH fds): the magic link names the inode itself, whatever its path is now. Symlinks have no
// race-free equivalent (lgetxattr would read the /proc link's own): they show no attributes and
// refuse new ones, as virtiofsd does.

std::string PassthroughFs::ProcPath(int fd) { return "/proc/self/fd/" + std::to_string(fd); }

namespace {
constexpr size_t kXattrNameMax = 255;  // XATTR_NAME_MAX

// 0 for a name the guest may use, else the errno.
int CheckXattrName(const std::optional<std::string>& name) {
  if (!name) return EINVAL;
  if (name->empty() || name->size() > kXattrNameMax) return ERANGE;
  return 0;
}
// Namespaces whose attributes the host acts on with privilege (file capabilities, overlayfs and
// other trusted.* users): a squashed caller may not write them even on its own files, since
// fsuid switching leaves CAP_SETFCAP and CAP_SYS_ADMIN effective.
bool PrivilegedXattr(const std::string& name) { return name.starts_with("security.") || name.starts_with("trusted."); }
bool AclXattr(const std::string& name) { return name == kAclAccess || name == kAclDefault; }
}  // namespace

void PassthroughFs::DoGetxattr(uint64_t nodeid, std::span<const uint8_t> in, Reply& reply) {
  auto arg = Take<fuse_getxattr_in>(in);
  auto name = arg ? TakeString(in) : std::nullopt;
  if (int err = CheckXattrName(name)) return reply.Error(err);
  auto inode = GetInode(nodeid);
  if (!inode) return reply.Error(inode.error().error_number());
  if ((*inode)->type == S_IFLNK) return reply.Error(ENODATA);
  const std::string path = ProcPath((*inode)->fd.get());
  if (arg->size == 0) {  // the guest asks for the size
    ssize_t n = ::getxattr(path.c_str(), name->c_str(), nullptr, 0);
    if (n < 0) return reply.Error(Errno());
    fuse_getxattr_out out{};
    out.size = static_cast<uint32_t>(n);
    return reply.Ok(out);
  }
  size_t size = std::min<size_t>({arg->size, kMaxXattrBytes, reply.payload().size()});
  ssize_t n = ::getxattr(path.c_str(), name->c_str(), reply.payload().data(), size);
  if (n < 0) return reply.Error(Errno());
  reply.OkBytes(static_cast<size_t>(n));
}

void PassthroughFs::DoListxattr(uint64_t nodeid, std::span<const uint8_t> in, Reply& reply) {
  auto arg = Take<fuse_getxattr_in>(in);
  if (!arg) return reply.Error(EINVAL);
  auto inode = GetInode(nodeid);
  if (!inode) return reply.Error(inode.error().error_number());
  const bool symlink = (*inode)->type == S_IFLNK;
  const std::string path = ProcPath((*inode)->fd.get());
  if (arg->size == 0) {
    ssize_t n = symlink ? 0 : ::listxattr(path.c_str(), nullptr, 0);
    if (n < 0) return reply.Error(Errno());
    fuse_getxattr_out out{};
    out.size = static_cast<uint32_t>(n);
    return reply.Ok(out);
  }
  size_t size = std::min<size_t>({arg->size, kMaxXattrBytes, reply.payload().size()});
  ssize_t n = symlink ? 0 : ::listxattr(path.c_str(), reinterpret_cast<char*>(reply.payload().data()), size);
  if (n < 0) return reply.Error(Errno());
  reply.OkBytes(static_cast<size_t>(n));
}

void PassthroughFs::DoSetxattr(uint64_t nodeid, std::span<const uint8_t> in, Reply& reply) {
  // fuse_setxattr_in: 8 bytes (size, flags), 16 with FUSE_SETXATTR_EXT (+ setxattr_flags, padding).
  auto size = Take<uint32_t>(in);
  auto flags = size ? Take<uint32_t>(in) : std::nullopt;
  std::optional<uint32_t> ext_flags = 0;
  if (flags && (init_flags_ & FUSE_SETXATTR_EXT)) {
    ext_flags = Take<uint32_t>(in);
    if (!ext_flags || !Take<uint32_t>(in)) return reply.Error(EINVAL);
  }
  auto name = flags ? TakeString(in) : std::nullopt;
  if (int err = CheckXattrName(name)) return reply.Error(err);
  if ((*ext_flags & ~static_cast<uint32_t>(FUSE_SETXATTR_ACL_KILL_SGID)) != 0) return reply.Error(EINVAL);
  if (*size > kMaxXattrBytes) return reply.Error(E2BIG);
  if (*size > in.size()) return reply.Error(EINVAL);
  if ((*flags & ~static_cast<uint32_t>(XATTR_CREATE | XATTR_REPLACE)) != 0) return reply.Error(EINVAL);
  auto inode = GetInode(nodeid);
  if (!inode) return reply.Error(inode.error().error_number());
  if (options_.read_only) return reply.Error(EROFS);
  if ((*inode)->type == S_IFLNK) return reply.Error(EPERM);
  if (model_ == CredentialModel::kCaller && PrivilegedXattr(*name)) return reply.Error(EPERM);
  if (AclXattr(*name) && !posix_acl()) return reply.Error(EOPNOTSUPP);
  if (::setxattr(ProcPath((*inode)->fd.get()).c_str(), name->c_str(), in.data(), *size, static_cast<int>(*flags)) !=
      0) {
    return reply.Error(Errno());
  }
  // The guest found the caller neither in the file's group nor holding CAP_FSETID: setting an
  // access ACL clears set-gid then (posix_acl_update_mode), which the host, running this as root,
  // would not do by itself.
  if ((*ext_flags & FUSE_SETXATTR_ACL_KILL_SGID) && *name == kAclAccess) {
    struct stat st {};
    if (int err = StatFd((*inode)->fd.get(), &st)) return reply.Error(err);
    if ((st.st_mode & S_ISGID) &&
        ::fchmodat(proc_fd_.get(), ProcName((*inode)->fd.get()).c_str(), st.st_mode & 07777 & ~S_ISGID, 0) != 0) {
      return reply.Error(Errno());
    }
  }
  reply.OkEmpty();
}

void PassthroughFs::DoRemovexattr(uint64_t nodeid, std::span<const uint8_t> in, Reply& reply) {
  auto name = TakeString(in);
  if (int err = CheckXattrName(name)) return reply.Error(err);
  auto inode = GetInode(nodeid);
  if (!inode) return reply.Error(inode.error().error_number());
  if (options_.read_only) return reply.Error(EROFS);
  if ((*inode)->type == S_IFLNK) return reply.Error(EPERM);
  if (model_ == CredentialModel::kCaller && PrivilegedXattr(*name)) return reply.Error(EPERM);
  if (AclXattr(*name) && !posix_acl()) return reply.Error(EOPNOTSUPP);
  if (::removexattr(ProcPath((*inode)->fd.get()).c_str(), name->c_str()) != 0) return reply.Error(Errno());
  reply.OkEmpty();
}

// ---- New inodes and ACLs ----

mode_t PassthroughFs::NewMode(const Inode& dir, uint32_t mode, uint32_t umask) const {
  // With FUSE_POSIX_ACL the guest's VFS leaves the umask to the file system, which applies it only
  // when the parent has no default ACL; with one, the host kernel masks the mode by the inherited
  // ACL itself (posix_acl_create; this thread's umask is 0).
  if (posix_acl() && ::getxattr(ProcPath(dir.fd.get()).c_str(), kAclDefault, nullptr, 0) > 0) umask = 0;
  return GuestMode(mode, umask);
}

// ---- Locks (the header's "Locks") ----

Result<PassthroughFs::LockOwner*> PassthroughFs::OwnerFor(uint64_t nodeid, uint64_t owner, const OpenFile& handle,
                                                          uint64_t fh, LockNeed need) {
  auto key = std::make_pair(nodeid, owner);
  auto it = lock_owners_.find(key);
  if (need == LockNeed::kExisting) return it == lock_owners_.end() ? nullptr : &it->second;
  const int need_mode = need == LockNeed::kRead ? O_RDONLY : O_WRONLY;
  const int handle_mode = static_cast<int>(handle.flags) & O_ACCMODE;
  auto can = [](int mode, int needed) { return mode == O_RDWR || mode == needed; };
  // The guest checked its open file's mode; a request through a handle without it is hostile.
  if (!can(handle_mode, need_mode)) return Fail(Error("handle not open for this lock", EBADF));
  if (it != lock_owners_.end() && !can(::fcntl(it->second.fd.get(), F_GETFL) & O_ACCMODE, need_mode)) {
    // Read locks taken through a read-only open, now a write lock through a writable one (or the
    // reverse): a new description is only possible while the old one holds nothing. Known for sure
    // only when the file has no lock at all (a probe from the handle's fd, which never holds OFD
    // locks, sees every lock on it).
    struct flock probe {};
    probe.l_type = F_WRLCK;
    probe.l_whence = SEEK_SET;
    if (::fcntl(handle.fd.get(), F_OFD_GETLK, &probe) != 0 || probe.l_type != F_UNLCK) {
      return Fail(Error("lock owner's description lacks the access mode", ENOLCK));
    }
    lock_owners_.erase(it);
    it = lock_owners_.end();
  }
  if (it == lock_owners_.end()) {
    if (lock_owners_.size() >= max_handles_) return Fail(Error("too many lock owners", ENOLCK));
    // The handle's own access mode: a read-only open gets a read-only description (an extra
    // writable fd would be visible to the host: ETXTBSY, IN_CLOSE_WRITE). A write-only handle asks
    // for O_RDWR too, so later read locks through another open fit.
    const std::string proc = ProcName(handle.fd.get());
    int fd = -1;
    if (handle_mode != O_RDONLY && !options_.read_only) fd = ::openat(proc_fd_.get(), proc.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) fd = ::openat(proc_fd_.get(), proc.c_str(), handle_mode | O_CLOEXEC);
    if (fd < 0) return Fail(Error("reopening for locks", Errno()));
    it = lock_owners_.emplace(key, LockOwner{Fd(fd), 0, {}}).first;
  }
  if (std::find(it->second.handles.begin(), it->second.handles.end(), fh) == it->second.handles.end()) {
    it->second.handles.push_back(fh);
  }
  return &it->second;
}

std::optional<uint64_t> PassthroughFs::HolderOf(uint64_t nodeid, uint64_t except, const struct flock& conflict) {
  for (auto it = lock_owners_.lower_bound({nodeid, 0}); it != lock_owners_.end() && it->first.first == nodeid; ++it) {
    if (it->first.second == except) continue;
    // Its own locks never conflict with it: when nothing else overlaps the conflicting range, the
    // lock found is this owner's.
    struct flock probe {};
    probe.l_type = F_WRLCK;
    probe.l_whence = SEEK_SET;
    probe.l_start = conflict.l_start;
    probe.l_len = conflict.l_len;
    if (::fcntl(it->second.fd.get(), F_OFD_GETLK, &probe) == 0 && probe.l_type == F_UNLCK) return it->first.second;
  }
  return std::nullopt;
}

bool PassthroughFs::WouldDeadlock(uint64_t owner, uint64_t holder) {
  // The owner `holder` waits for (a parked POSIX SETLKW of it), and who holds that, and so on:
  // reaching `owner` closes a cycle. Bounded as Linux's posix_locks_deadlock (10 steps).
  for (int step = 0; step < 10; ++step) {
    if (holder == owner) return true;
    const Parked* waiting = nullptr;
    fuse_lk_in lk{};
    fuse_in_header header{};
    for (const Parked& p : parked_) {
      std::memcpy(&lk, p.lk.data(), sizeof(lk));
      if (p.error < 0 && lk.owner == holder && !(lk.lk_flags & FUSE_LK_FLOCK)) {
        waiting = &p;
        std::memcpy(&header, p.header.data(), sizeof(header));
        break;
      }
    }
    if (waiting == nullptr) return false;
    struct flock fl {};
    if (CheckLock(lk, true, &fl) != 0) return false;
    auto h = GetHandle(lk.fh, false);
    if (!h) return false;
    auto own = OwnerFor(header.nodeid, holder, **h, lk.fh, LockNeed::kExisting);
    if (!own) return false;
    if (::fcntl(*own ? (*own)->fd.get() : (*h)->fd.get(), F_OFD_GETLK, &fl) != 0 || fl.l_type == F_UNLCK) return false;
    auto next = HolderOf(header.nodeid, holder, fl);
    if (!next) return false;
    holder = *next;
  }
  return false;
}

void PassthroughFs::DoGetlk(uint64_t nodeid, std::span<const uint8_t> in, Reply& reply) {
  auto arg = Take<fuse_lk_in>(in);
  if (!arg) return reply.Error(EINVAL);
  struct flock fl {};
  if (int err = CheckLock(*arg, false, &fl)) return reply.Error(err);
  auto h = GetHandle(arg->fh, false);
  if (!h) return reply.Error(h.error().error_number());
  if ((*h)->nodeid != nodeid) return reply.Error(EINVAL);
  // The owner's own locks do not conflict with it: ask through its description when it has one,
  // else through the handle's fd (which never holds OFD locks).
  auto owner = OwnerFor(nodeid, arg->owner, **h, arg->fh, LockNeed::kExisting);
  if (!owner) return reply.Error(owner.error().error_number());
  if (::fcntl(*owner ? (*owner)->fd.get() : (*h)->fd.get(), F_OFD_GETLK, &fl) != 0) return reply.Error(Errno());
  fuse_lk_out out{};
  out.lk.type = static_cast<uint32_t>(fl.l_type);
  if (fl.l_type == F_UNLCK) {
    out.lk.start = arg->lk.start;
    out.lk.end = arg->lk.end;
  } else {
    out.lk.start = static_cast<uint64_t>(fl.l_start);
    out.lk.end = fl.l_len == 0 ? kOffsetMax : static_cast<uint64_t>(fl.l_start + fl.l_len - 1);
    // The holder's guest pid when it is one of this guest's owners; a host process's pid means
    // nothing in the guest (0).
    if (auto holder = HolderOf(nodeid, arg->owner, fl)) out.lk.pid = lock_owners_[{nodeid, *holder}].pid;
  }
  reply.Ok(out);
}

int PassthroughFs::TryLock(uint64_t nodeid, std::span<const uint8_t> lk) {
  auto arg = Take<fuse_lk_in>(lk);
  if (!arg) return EINVAL;
  struct flock fl {};
  if (int err = CheckLock(*arg, true, &fl)) return err;
  auto h = GetHandle(arg->fh, false);
  if (!h) return h.error().error_number();
  if ((*h)->nodeid != nodeid) return EINVAL;
  if (arg->lk_flags & FUSE_LK_FLOCK) {
    // flock's owner is the guest's open file, which is this handle.
    int op = fl.l_type == F_RDLCK ? LOCK_SH : fl.l_type == F_WRLCK ? LOCK_EX : LOCK_UN;
    if (::flock((*h)->fd.get(), op | LOCK_NB) != 0) return errno == EWOULDBLOCK ? EAGAIN : Errno();
    return 0;
  }
  const LockNeed need = fl.l_type == F_UNLCK   ? LockNeed::kExisting
                        : fl.l_type == F_RDLCK ? LockNeed::kRead
                                               : LockNeed::kWrite;
  const bool existed = lock_owners_.count({nodeid, arg->owner}) != 0;
  auto owner = OwnerFor(nodeid, arg->owner, **h, arg->fh, need);
  if (!owner) return owner.error().error_number();
  if (*owner == nullptr) return 0;  // unlocking what was never locked
  if (::fcntl((*owner)->fd.get(), F_OFD_SETLK, &fl) != 0) {
    int err = Errno();
    if (!existed) lock_owners_.erase({nodeid, arg->owner});  // holds nothing: no fd kept for a waiter
    return err == EACCES ? EAGAIN : err;
  }
  if (fl.l_type != F_UNLCK) (*owner)->pid = arg->lk.pid;
  return 0;
}

void PassthroughFs::DoSetlk(const fuse_in_header& header, std::span<const uint8_t> in, bool wait, Reply& reply) {
  if (in.size() < sizeof(fuse_lk_in)) return reply.Error(EINVAL);
  std::span<const uint8_t> lk = in.first(sizeof(fuse_lk_in));
  int err = TryLock(header.nodeid, lk);
  if (err != EAGAIN || !wait) return err == 0 ? reply.OkEmpty() : reply.Error(err);
  // SETLKW that conflicts: park it (nothing here blocks the worker), unless it would deadlock.
  if (parked_.size() >= kMaxParked) return reply.Error(ENOLCK);
  fuse_lk_in arg{};
  std::memcpy(&arg, lk.data(), sizeof(arg));
  if (!(arg.lk_flags & FUSE_LK_FLOCK)) {
    struct flock fl {};
    CheckLock(arg, true, &fl);  // TryLock checked it
    int fd = -1;
    if (auto h = GetHandle(arg.fh, false)) {
      auto own = OwnerFor(header.nodeid, arg.owner, **h, arg.fh, LockNeed::kExisting);
      fd = own && *own ? (*own)->fd.get() : (*h)->fd.get();
    }
    if (fd >= 0 && ::fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK) {
      if (auto holder = HolderOf(header.nodeid, arg.owner, fl); holder && WouldDeadlock(arg.owner, *holder)) {
        return reply.Error(EDEADLK);
      }
    }
  }
  Parked p;
  p.ticket = reply.ticket;
  p.header.resize(sizeof(header));
  std::memcpy(p.header.data(), &header, sizeof(header));
  p.lk.assign(lk.begin(), lk.end());
  parked_.push_back(std::move(p));
  reply.parked = true;
}

void PassthroughFs::DoFlush(std::span<const uint8_t> in, Reply& reply) {
  auto arg = Take<fuse_flush_in>(in);
  if (!arg) return reply.Error(EINVAL);
  auto h = GetHandle(arg->fh, false);
  if (!h) return reply.Error(h.error().error_number());
  // A close(2) in the guest: POSIX drops every lock the closing process (lock_owner) holds on the
  // file, through whichever fd it took them. Nothing is buffered here: writes went to the host
  // file when they were answered.
  lock_owners_.erase({(*h)->nodeid, arg->lock_owner});
  reply.OkEmpty();
}

void PassthroughFs::ForgetHandleLocks(uint64_t nodeid, uint64_t fh) {
  for (auto it = lock_owners_.lower_bound({nodeid, 0}); it != lock_owners_.end() && it->first.first == nodeid;) {
    auto& used = it->second.handles;
    used.erase(std::remove(used.begin(), used.end(), fh), used.end());
    // Only through released handles: a guest OFD lock's owner (that open file), or a process that
    // has closed every fd it locked through (its FLUSH already dropped it).
    it = used.empty() ? lock_owners_.erase(it) : std::next(it);
  }
}

void PassthroughFs::RetryParked(const std::function<void(uint64_t, std::span<const uint8_t>)>& answer) {
  std::vector<Parked> waiting;
  std::vector<Parked> now;
  now.swap(parked_);  // TryLock never parks; WouldDeadlock is not called from here
  for (Parked& p : now) {
    fuse_in_header header{};
    std::memcpy(&header, p.header.data(), sizeof(header));
    int err = p.error;
    if (err < 0) {
      if (auto who = CallerFor(header)) {
        ScopedCredentials creds(who->uid, who->gid, who->groups, host_groups_);
        err = creds.ok() ? TryLock(header.nodeid, p.lk) : EPERM;
      } else {
        err = TryLock(header.nodeid, p.lk);
      }
      if (err == EAGAIN) {
        waiting.push_back(std::move(p));
        continue;
      }
    }
    fuse_out_header out{};
    out.len = sizeof(out);
    out.error = -err;
    out.unique = header.unique;
    answer(p.ticket, std::span(reinterpret_cast<const uint8_t*>(&out), sizeof(out)));
  }
  // Anything parked meanwhile (nothing: answer() must not call Handle) goes after the waiting.
  waiting.insert(waiting.end(), std::make_move_iterator(parked_.begin()), std::make_move_iterator(parked_.end()));
  parked_ = std::move(waiting);
}

void PassthroughFs::AnswerParked(int error) {
  for (Parked& p : parked_) {
    if (p.error < 0) p.error = error;
  }
}

std::optional<std::string> PassthroughFs::RelativePath(int fd) const {
  char buf[PATH_MAX];
  ssize_t n = ::readlinkat(proc_fd_.get(), ProcName(fd).c_str(), buf, sizeof(buf) - 1);
  if (n <= 0) return std::nullopt;
  std::string path(buf, static_cast<size_t>(n));
  if (path == root_path_) return std::string();
  std::string prefix = root_path_ == "/" ? "/" : root_path_ + "/";
  if (path.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  std::string rel = path.substr(prefix.size());
  // An unlinked file reads "<path> (deleted)": it cannot be found again by path.
  struct stat st {};
  if (StatFd(fd, &st) != 0 || st.st_nlink == 0) return std::nullopt;
  return rel;
}

nlohmann::json PassthroughFs::SaveState() const {
  nlohmann::json inodes = nlohmann::json::array();
  for (const auto& [nodeid, inode] : inodes_) {
    nlohmann::json entry = {{"nodeid", nodeid}, {"lookups", inode.lookups}};
    std::optional<std::string> path = inode.fd ? RelativePath(inode.fd.get()) : std::nullopt;
    if (path) {
      entry["path"] = *path;
    } else {
      entry["stale"] = true;
    }
    inodes.push_back(std::move(entry));
  }
  nlohmann::json handles = nlohmann::json::array();
  for (const auto& [fh, handle] : handles_) {
    handles.push_back({{"fh", fh}, {"nodeid", handle.nodeid}, {"flags", handle.flags}, {"dir", handle.dir}});
  }
  return {{"version", kStateVersion},  {"initialized", initialized_}, {"minor", minor_},
          {"init_flags", init_flags_}, {"max_write", max_write_},     {"next_nodeid", next_nodeid_},
          {"next_fh", next_fh_},       {"inodes", std::move(inodes)}, {"handles", std::move(handles)}};
}

Result<void> PassthroughFs::RestoreState(const nlohmann::json& state) {
  JsonReader in(state, "server");
  CLONE_TRY(in.Version(kStateVersion, "virtio-fs"));
  bool initialized = CLONE_TRY(in.Bool("initialized"));
  auto minor = CLONE_TRY(in.Uint<uint32_t>("minor"));
  auto init_flags = CLONE_TRY(in.Uint<uint32_t>("init_flags"));
  auto max_write = CLONE_TRY(in.Uint<uint32_t>("max_write"));
  auto next_nodeid = CLONE_TRY(in.Uint("next_nodeid"));
  auto next_fh = CLONE_TRY(in.Uint("next_fh"));
  if (initialized && (minor > kOurMinor || max_write > options_.max_write || max_write == 0)) {
    return Fail("virtio-fs state: minor {} / max_write {} exceed this server's {} / {}", minor, max_write, kOurMinor,
                options_.max_write);
  }
  if (!in.Has("inodes")) return Fail("virtio-fs state: no inode table");
  std::vector<JsonReader> inodes = CLONE_TRY(in.Array("inodes", kMaxInodes));
  std::vector<JsonReader> handles = CLONE_TRY(in.Array("handles", kMaxHandles));
  std::unordered_map<uint64_t, Inode> new_inodes;
  std::map<std::pair<dev_t, ino_t>, uint64_t> new_by_host;
  size_t stale = 0;
  for (const auto& entry : inodes) {
    auto nodeid = CLONE_TRY(entry.Uint("nodeid"));
    auto lookups = CLONE_TRY(entry.Uint("lookups"));
    if (nodeid == 0 || nodeid >= next_nodeid || new_inodes.count(nodeid) != 0) {
      return Fail("virtio-fs state: bad or duplicate nodeid {}", nodeid);
    }
    Inode inode;
    inode.lookups = lookups;
    if (std::optional<std::string> path_field = CLONE_TRY(entry.OptString("path", PATH_MAX))) {
      const std::string& path = *path_field;
      long fd;
      if (path.empty()) {
        fd = ::openat(root_fd_.get(), ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
      } else {
        fd = OpenAt2(root_fd_.get(), path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC,
                     RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
      }
      if (fd >= 0) {
        inode.fd.reset(static_cast<int>(fd));
        struct stat st {};
        if (StatFd(inode.fd.get(), &st) == 0) {
          inode.dev = st.st_dev;
          inode.ino = st.st_ino;
          inode.type = st.st_mode & S_IFMT;
          new_by_host.emplace(std::make_pair(st.st_dev, st.st_ino), nodeid);
        } else {
          inode.fd.reset();
        }
      }
    }
    if (nodeid == kRootNodeId && !inode.fd) return Fail("virtio-fs state: the shared root cannot be reopened");
    if (!inode.fd) ++stale;
    new_inodes.emplace(nodeid, std::move(inode));
  }
  if (new_inodes.count(kRootNodeId) == 0) return Fail("virtio-fs state: no root inode");
  std::unordered_map<uint64_t, OpenFile> new_handles;
  for (const auto& entry : handles) {
    auto fh = CLONE_TRY(entry.Uint("fh"));
    OpenFile handle;
    handle.nodeid = CLONE_TRY(entry.Uint("nodeid"));
    handle.flags = CLONE_TRY(entry.Uint<uint32_t>("flags"));
    handle.dir = CLONE_TRY(entry.Bool("dir"));
    if (fh == 0 || fh >= next_fh || new_handles.count(fh) != 0)
      return Fail("virtio-fs state: bad or duplicate fh {}", fh);
    auto inode = new_inodes.find(handle.nodeid);
    if (inode == new_inodes.end()) return Fail("virtio-fs state: fh {} names unknown nodeid {}", fh, handle.nodeid);
    if (inode->second.fd) {
      int flags = handle.dir ? O_RDONLY | O_DIRECTORY
                             : static_cast<int>(handle.flags) & ~(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY | O_PATH);
      if (options_.read_only && !handle.dir && (flags & O_ACCMODE) != O_RDONLY) {
        flags = (flags & ~O_ACCMODE) | O_RDONLY;  // writes through it answer EROFS anyway
      }
      if (auto fd = ReopenInode(inode->second, flags)) handle.fd = std::move(*fd);
    }
    if (!handle.fd) ++stale;
    new_handles.emplace(fh, std::move(handle));
  }
  inodes_ = std::move(new_inodes);
  by_host_inode_ = std::move(new_by_host);
  handles_ = std::move(new_handles);
  lock_owners_.clear();  // a restored server holds no locks (none are in the state)
  initialized_ = initialized;
  minor_ = minor;
  init_flags_ = init_flags;
  max_write_ = max_write;
  next_nodeid_ = next_nodeid;
  next_fh_ = next_fh;
  stale_entries_ = stale;
  return {};
}

}  // namespace clonevm::fs

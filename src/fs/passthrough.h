// PassthroughFs: an in-process FUSE server that exports one host directory (the server behind
// virtio-fs, devices/virtio/fs.h; no external virtiofsd).
//
//   auto fs = CLONE_TRY(fs::PassthroughFs::Create("/srv/share", {.read_only = false}));
//   size_t n = fs->Handle(request_bytes, reply_buffer);   // one FUSE request -> its reply (0: none)
//
// Protocol: linux/fuse.h, major 7, minor negotiated down to the kernel's (at most
// FUSE_KERNEL_MINOR_VERSION of our headers). Served: INIT, DESTROY, LOOKUP, FORGET, BATCH_FORGET,
// GETATTR, SETATTR (mode, uid/gid, size, atime/mtime, set-id clearing), READLINK, SYMLINK, MKNOD
// (regular files, FIFOs, sockets; character and block devices only on a nodev host mount), MKDIR,
// UNLINK, RMDIR, RENAME, RENAME2 (NOREPLACE, EXCHANGE, WHITEOUT), LINK, OPEN, CREATE, READ, WRITE,
// STATFS, RELEASE, FLUSH, FSYNC, OPENDIR, READDIR, READDIRPLUS, RELEASEDIR, FSYNCDIR, ACCESS,
// FALLOCATE, LSEEK, GETXATTR, SETXATTR, LISTXATTR, REMOVEXATTR, GETLK, SETLK, SETLKW. Everything
// else (ioctl, ...) is answered -ENOSYS, which makes the kernel stop asking or fall back.
// INIT negotiates FUSE_DONT_MASK (new inodes get mode & ~the guest's umask; the worker thread's
// own umask is 0), FUSE_HANDLE_KILLPRIV_V2 (a WRITE, truncate or O_TRUNC open the guest marks
// clears set-uid, and set-gid with group execute; chown's clearing is the host's own),
// FUSE_SETXATTR_EXT (the 16-byte setxattr header with FUSE_SETXATTR_ACL_KILL_SGID),
// FUSE_POSIX_LOCKS and FUSE_FLOCK_LOCKS (see "Locks"), and FUSE_POSIX_ACL only when the shared
// directory's file system has POSIX ACLs (probed once at Create: getxattr of
// system.posix_acl_access on the root answers ENODATA or a value, not EOPNOTSUPP).
//
// POSIX ACLs (with FUSE_POSIX_ACL): the guest kernel enforces them (its permission checks read
// system.posix_acl_access through GETXATTR) and sets them as xattrs; the server passes
// system.posix_acl_{access,default} through to the host inode, whose kernel validates them and
// updates the mode from an access ACL (and the ACL from a chmod). FUSE_SETXATTR_ACL_KILL_SGID
// (the caller is neither in the file's group nor has CAP_FSETID, as the guest decided) clears
// set-gid after an access ACL is set. A new inode in a directory with a default ACL gets the
// guest's mode without the umask (the host kernel then applies the inherited ACL, as a local
// file system does); without one, mode & ~umask. When the creating request runs as the caller
// (kCreatorOwns), the named groups of the parent's access ACL are added to the parent's group as
// supplementary groups: the guest has checked the caller's membership, the host sees the group
// that granted it. Without FUSE_POSIX_ACL, system.posix_acl_* changes are refused (EOPNOTSUPP).
//
// Locks (FUSE_POSIX_LOCKS, FUSE_FLOCK_LOCKS): guest locks are host locks, visible to host
// processes and coherent with them. POSIX record locks (GETLK/SETLK/SETLKW) are host OFD locks
// (F_OFD_GETLK/F_OFD_SETLK) on one host open file description per (inode, lock_owner), opened
// by reopening the inode (O_RDWR, else the handle's access mode): the guest's lock owner (a
// process's files_struct, or the file for guest OFD locks) is what owns the host lock, so two
// guest processes conflict with each other as they would locally, and one process's locks through
// two fds of the file are one owner's. A FLUSH (a close(2) in the guest) drops its lock_owner's
// description on that inode (POSIX: any close releases the process's locks on the file); a
// RELEASE drops the descriptions used only through that handle. GETLK reports the holder's guest
// pid when the holder is a guest owner (found by probing the other owners' descriptions), 0 when
// it is a host process or another guest. flock (SETLK/SETLKW with FUSE_LK_FLOCK) is flock(2) on
// the handle's own fd (one handle = one guest open file, flock's owner), released when the handle
// is. Nothing ever blocks the worker: every attempt is non-blocking (F_OFD_SETLK, LOCK_NB); a
// SETLKW that conflicts is parked (Handle returns kParked), retried by RetryParked() (the device
// calls it every few ms and after each lock-changing request) and answered when granted, with
// EDEADLK at once when it would close a cycle of guest owners waiting for each other (as the
// Linux POSIX lock code does), with EBADF when its handle is released, ENOLCK by
// AnswerParked() (snapshots), dropped by DESTROY/EndSession (device reset). Checked fields: type
// (F_RDLCK/F_WRLCK/F_UNLCK), start <= end <= INT64_MAX, lk_flags (FUSE_LK_FLOCK only), pid <=
// PID_MAX_LIMIT, the handle belongs to the nodeid; anything else is EINVAL. Limits: kMaxParked
// waits and max_handles descriptions (ENOLCK beyond); an owner whose description was opened
// read-only (its first lock came through a read-only open) gets ENOLCK for a write lock while
// the file has any lock. Snapshots hold no locks: SaveState records
// none and a restored server holds none (the guest's processes believe they still do).
//
// Confinement (virtiofsd's design): every inode the guest knows is an O_PATH|O_NOFOLLOW fd opened
// relative to its parent's fd, starting from the shared root; no host path is ever built from a
// guest string. Names from the guest must be single components: empty, ".", "..", a '/' or a name
// longer than NAME_MAX is refused (EINVAL / ENAMETOOLONG) before any syscall. Symlinks are never
// followed by the server: a LOOKUP of a symlink returns the link itself, READLINK returns its text
// (the guest resolves it in its own namespace), and OPEN of a symlink fails with ELOOP. OPEN and
// CREATE open regular files only (EACCES otherwise): a device node in the share is not a host
// device for the guest, and a FIFO cannot block the server. Operations
// on the inode itself (open, chmod, truncate, utimes, link) go through /proc/self/fd/N of that
// O_PATH fd, which names the inode, not a path. A host process moving directories around under a
// running guest cannot make the server leave the tree through these fds.
//
// Tables: nodeids (1 = the root) map to inodes with a lookup count; the same host inode (st_dev,
// st_ino) always gets the same nodeid while the guest remembers it. FORGET/BATCH_FORGET subtract
// from the count (never below zero) and drop the inode at zero. File handles (fh) map to an open
// fd, its nodeid and its open flags. An unknown nodeid or fh is EBADF; at most kMaxInodes inodes
// and kMaxHandles handles exist at once (ENFILE beyond), and never more than a quarter and a
// sixteenth of the process's fd limit (raised to its hard limit at Create): a guest that looks up
// without forgetting must not leave the VMM's other devices and snapshots without fds.
//
// Read-only (`read_only`): every modifying request (SETATTR, SYMLINK, MKNOD, MKDIR, UNLINK, RMDIR,
// RENAME(2), LINK, CREATE, WRITE, FALLOCATE, and OPEN for writing or with O_TRUNC) fails with EROFS.
//
// Hostile input: Handle() takes the request as bytes the guest wrote (already copied out of guest
// memory). The caller guarantees only that it starts with a whole fuse_in_header whose len equals
// the request's size (the transport's check). Every argument struct and string is length-checked
// here; a short or malformed argument is an EINVAL reply, never a crash or a read past the bytes.
// Replies never exceed the reply buffer: READ/READDIR are cut to fit, a fixed-size reply that does
// not fit becomes -EIO (-ERANGE for READLINK).
//
// State (snapshots and forks): SaveState() records the negotiated INIT parameters, each inode as
// (nodeid, lookup count, path relative to the root, from /proc/self/fd) and each handle as (fh,
// nodeid, open flags, dir). RestoreState() — on a fresh server, possibly over a different root —
// reopens them with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS) under
// the root; an entry that no longer exists (or was already unlinked when saved) becomes stale: it
// keeps its nodeid/fh so the guest's FORGET/RELEASE work, and every other use answers ESTALE.
//
// Credentials (docs/virtiofs.md): virtio-fs guests mount with default_permissions, so the guest
// kernel checks every permission with the caller's uid, gid and all its groups before asking.
// Which host credentials a request then runs with (CallerFor, switched per request on the calling
// thread with the raw setfsuid/setfsgid/setgroups syscalls, and put back after it):
//  - VMM not root (kVmm): every request runs as the VMM; new inodes are the VMM user's.
//  - VMM root (kCreatorOwns, the default): CREATE, MKDIR, MKNOD and SYMLINK run as the caller's
//    fsuid/fsgid with the parent directory's group as the only supplementary group (the guest
//    has checked the caller may write the parent), so the host kernel itself gives the new inode
//    its owner, the set-gid parent's group and bit, and strips set-gid; ACCESS is answered for
//    the caller. Everything else runs as root, as the guest kernel allowed: guest root is root
//    on the share (chown, device nodes on nodev mounts, trusted.*/security.* xattrs).
//  - VMM root with root_squash (kCaller; --shared-dir HOST:TAG:squash-root): every request runs
//    as the caller, uid/gid 0 mapped to squash_uid/squash_gid, no supplementary groups: the host
//    checks each request again as that user, so neither guest root nor a guest kernel forging
//    uids gets more than a host user of that uid; security.* and trusted.* xattrs are refused
//    (fsuid switching keeps CAP_SETFCAP and CAP_SYS_ADMIN effective).
//
// Thread-safety: none. One thread (the device's fs worker) calls Handle() and RetryParked();
// SaveState() and RestoreState() must not run concurrently with it.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/fd.h"
#include "base/result.h"

struct fuse_in_header;  // linux/fuse.h

namespace clonevm::fs {

struct FsOptions {
  bool read_only = false;
  // Squash root (see "Credentials" above): every request runs as its caller, uid/gid 0 as these.
  bool root_squash = false;
  uid_t squash_uid = 65534;  // nobody
  gid_t squash_gid = 65534;  // nogroup
  // Largest WRITE payload (and READ the kernel is told to expect), 4 KiB..kMaxIoBytes.
  uint32_t max_write = 1u << 20;
};

class PassthroughFs {
 public:
  static constexpr uint32_t kMaxIoBytes = 1u << 20;  // max_write/max_pages ceiling (256 pages)
  static constexpr size_t kMaxInodes = 1u << 16;
  static constexpr size_t kMaxHandles = 1u << 14;
  static constexpr uint64_t kRootNodeId = 1;
  static constexpr double kCacheSeconds = 1.0;  // entry and attribute timeouts given to the kernel
  static constexpr size_t kMaxParked = 128;     // SETLKW waits at once (ENOLCK beyond)
  // Handle()'s answer for a FUSE_SETLKW that waits: no reply yet (RetryParked() gives it).
  static constexpr size_t kParked = static_cast<size_t>(-1);

  // Opens `root` (must be a directory). Fails when it cannot be opened.
  [[nodiscard]] static Result<std::unique_ptr<PassthroughFs>> Create(const std::string& root, FsOptions options);

  // Serves one request (see the header comment) and writes its reply into `reply`. Returns the
  // reply's length (fuse_out_header included), or 0 for requests without a reply (FORGET,
  // BATCH_FORGET) and when `reply` cannot even hold a fuse_out_header.
  // A FUSE_SETLKW that must wait returns kParked: the server keeps it under `ticket` (the
  // caller's name for the request, e.g. its descriptor chain) until RetryParked() answers it.
  size_t Handle(std::span<const uint8_t> request, std::span<uint8_t> reply, uint64_t ticket = 0);

  // Tries every parked SETLKW again (non-blocking) and calls `answer(ticket, reply)` for each one
  // answered (granted, failed, or given up by AnswerParked/EndSession/DESTROY): `reply` is the
  // whole reply, a fuse_out_header.
  void RetryParked(const std::function<void(uint64_t ticket, std::span<const uint8_t> reply)>& answer);
  // Gives up every parked SETLKW with `error` (answered by the next RetryParked()).
  void AnswerParked(int error);
  size_t parked_count() const { return parked_.size(); }
  bool has_posix_acl() const { return acl_supported_; }
  size_t lock_owner_count() const { return lock_owners_.size(); }

  // Ends the FUSE session as DESTROY does (the device was reset): every inode but the root and
  // every handle is forgotten, and the next request must be INIT.
  // Parked SETLKWs are dropped without an answer (the device abandons their requests).
  void EndSession() {
    DoDestroy();
    parked_.clear();
  }

  [[nodiscard]] nlohmann::json SaveState() const;
  [[nodiscard]] Result<void> RestoreState(const nlohmann::json& state);

  // For tests and logs.
  bool initialized() const { return initialized_; }
  uint32_t negotiated_minor() const { return minor_; }
  size_t inode_count() const { return inodes_.size(); }
  size_t handle_count() const { return handles_.size(); }
  // The lookup count of `nodeid` (0 when unknown).
  uint64_t lookup_count(uint64_t nodeid) const;
  const std::string& root() const { return root_path_; }
  // Inodes and handles the last RestoreState() could not reopen (now stale).
  size_t stale_entries() const { return stale_entries_; }

 private:
  struct Inode {
    Fd fd;  // O_PATH | O_NOFOLLOW; invalid when stale
    uint64_t lookups = 0;
    dev_t dev = 0;
    ino_t ino = 0;
    mode_t type = 0;  // S_IFMT bits
  };
  struct OpenFile {
    Fd fd;  // invalid when stale
    uint64_t nodeid = 0;
    uint32_t flags = 0;
    bool dir = false;
  };
  struct Reply;
  // The host open file description holding one guest lock owner's POSIX locks on one inode.
  struct LockOwner {
    Fd fd;
    uint32_t pid = 0;               // the guest tgid of its last lock request (GETLK's l_pid)
    std::vector<uint64_t> handles;  // fhs it was used through (dropped when all are released)
  };
  // A FUSE_SETLKW waiting for its lock (RetryParked). lk is the fuse_lk_in, checked.
  struct Parked {
    uint64_t ticket = 0;
    std::vector<uint8_t> header;  // the fuse_in_header bytes (unique, nodeid, the caller)
    std::vector<uint8_t> lk;      // the fuse_lk_in bytes
    int error = -1;               // >= 0: answered with this errno (0 granted) at the next RetryParked
  };
  // Whose host credentials the server takes for requests (the header comment's "Credentials").
  enum class CredentialModel {
    kVmm,          // the VMM is not root: every request runs as the VMM
    kCreatorOwns,  // root: creating requests (and ACCESS) as the caller, the rest as root
    kCaller,       // root with root_squash: every request as the caller, root squashed
  };
  struct Caller {
    uid_t uid;
    gid_t gid;
    std::vector<gid_t> groups;
  };

  PassthroughFs(Fd root, std::string root_path, FsOptions options, Fd proc_fd);

  // The credentials `header`'s request runs with, or nullopt for the VMM's own.
  std::optional<Caller> CallerFor(const fuse_in_header& header) const;
  // Runs one request of an initialized session (every opcode but INIT, FORGET and BATCH_FORGET).
  void Dispatch(const fuse_in_header& header, std::span<const uint8_t> in, Reply& reply);
  // Dispatch() with the request's credentials (CallerFor) switched in.
  void DispatchAsCaller(const fuse_in_header& header, std::span<const uint8_t> in, Reply& reply);
  // The handlers: `in` is the argument bytes after fuse_in_header.
  void DoInit(std::span<const uint8_t> in, Reply& reply);
  void DoLookup(uint64_t parent, std::span<const uint8_t> in, Reply& reply);
  void DoForget(uint64_t nodeid, uint64_t nlookup);
  void DoBatchForget(std::span<const uint8_t> in);
  void DoGetattr(uint64_t nodeid, Reply& reply);
  void DoSetattr(uint64_t nodeid, std::span<const uint8_t> in, Reply& reply);
  void DoReadlink(uint64_t nodeid, Reply& reply);
  void DoSymlink(uint64_t parent, std::span<const uint8_t> in, Reply& reply);
  void DoMknod(uint64_t parent, std::span<const uint8_t> in, Reply& reply);
  void DoMkdir(uint64_t parent, std::span<const uint8_t> in, Reply& reply);
  void DoUnlink(uint64_t parent, std::span<const uint8_t> in, bool dir, Reply& reply);
  void DoRename(uint64_t parent, std::span<const uint8_t> in, bool rename2, Reply& reply);
  void DoLink(uint64_t nodeid, std::span<const uint8_t> in, Reply& reply);
  void DoOpen(uint64_t nodeid, std::span<const uint8_t> in, bool dir, Reply& reply);
  void DoCreate(uint64_t parent, std::span<const uint8_t> in, Reply& reply);
  void DoRead(std::span<const uint8_t> in, Reply& reply);
  void DoWrite(std::span<const uint8_t> in, Reply& reply);
  void DoStatfs(uint64_t nodeid, Reply& reply);
  void DoRelease(std::span<const uint8_t> in, bool dir, Reply& reply);
  void DoFsync(std::span<const uint8_t> in, bool dir, Reply& reply);
  void DoReaddir(std::span<const uint8_t> in, bool plus, Reply& reply);
  void DoAccess(uint64_t nodeid, std::span<const uint8_t> in, Reply& reply);
  void DoFallocate(std::span<const uint8_t> in, Reply& reply);
  void DoLseek(std::span<const uint8_t> in, Reply& reply);
  void DoGetxattr(uint64_t nodeid, std::span<const uint8_t> in, Reply& reply);
  void DoListxattr(uint64_t nodeid, std::span<const uint8_t> in, Reply& reply);
  void DoSetxattr(uint64_t nodeid, std::span<const uint8_t> in, Reply& reply);
  void DoRemovexattr(uint64_t nodeid, std::span<const uint8_t> in, Reply& reply);
  void DoGetlk(uint64_t nodeid, std::span<const uint8_t> in, Reply& reply);
  // SETLK/SETLKW: 0 granted, EAGAIN would block, else an errno. `parked`: a retry, where no new
  // wait is counted and deadlock was already checked.
  // One non-blocking attempt at a SETLK(W): 0 granted, EAGAIN conflicting, else an errno. `lk`
  // is the fuse_lk_in (checked here).
  int TryLock(uint64_t nodeid, std::span<const uint8_t> lk);
  void DoSetlk(const fuse_in_header& header, std::span<const uint8_t> in, bool wait, Reply& reply);
  void DoFlush(std::span<const uint8_t> in, Reply& reply);
  // The description of (nodeid, owner). kExisting: the one there is, or nullptr. kRead/kWrite:
  // opened (reopening `handle`'s file) if needed, able to take read/write locks, `fh` recorded as
  // used through.
  enum class LockNeed { kExisting, kRead, kWrite };
  Result<LockOwner*> OwnerFor(uint64_t nodeid, uint64_t owner, const OpenFile& handle, uint64_t fh, LockNeed need);
  // The guest owner (other than `except`) holding a lock that conflicts over `conflict` (as
  // F_OFD_GETLK returned it) on nodeid, or nullopt (none known: a host process, another guest).
  std::optional<uint64_t> HolderOf(uint64_t nodeid, uint64_t except, const struct flock& conflict);
  // Whether `owner` waiting for `holder` would close a cycle of parked guest owners.
  bool WouldDeadlock(uint64_t owner, uint64_t holder);
  // Drops descriptions of `nodeid` whose every handle was released (fh now gone).
  void ForgetHandleLocks(uint64_t nodeid, uint64_t fh);
  // The mode for a new inode under `dir` (the guest's umask unless dir has a default ACL).
  mode_t NewMode(const Inode& dir, uint32_t mode, uint32_t umask) const;
  // FUSE_POSIX_ACL was negotiated.
  bool posix_acl() const;
  // "/proc/self/fd/N" as an absolute path, for the *xattr calls that have no *at form; the link
  // names the inode itself.
  static std::string ProcPath(int fd);
  void DoDestroy();

  // The inode of `nodeid` with a usable fd, or an errno (EBADF unknown, ESTALE stale).
  Result<Inode*> GetInode(uint64_t nodeid);
  // The directory `parent` in which the guest names an entry `name` (`change`: to create or remove
  // it, so a read-only share refuses). Checks, in this order: the name was there (EINVAL) and is
  // one plain component (CheckName), the inode, then read-only (EROFS). On failure it answers
  // `reply` with that errno and returns null.
  enum class Access { kLookup, kChange };
  Inode* DirFor(uint64_t parent, const std::optional<std::string>& name, Access access, Reply& reply);
  Result<OpenFile*> GetHandle(uint64_t fh, bool dir);
  // Looks `name` up under `parent`: a new or existing nodeid with its lookup count + 1 and the
  // entry written to `out` (a fuse_entry_out). Returns an errno on failure.
  int LookupEntry(Inode& parent, const char* name, void* entry_out);
  // After creating `name` in `parent` (owned by whoever the request ran as): looks it up.
  void FinishCreate(Inode& parent, const char* name, Reply& reply);
  // "/proc/self/fd/N" relative to proc_fd_: the name of inode `fd`.
  static std::string ProcName(int fd);
  // Opens the inode's file itself (not O_PATH) with `flags`.
  Result<Fd> ReopenInode(const Inode& inode, int flags) const;
  uint64_t AddHandle(Fd fd, uint64_t nodeid, uint32_t flags, bool dir);
  // The path of an inode fd relative to the root ("" = the root), or nullopt when it is outside
  // the root or deleted.
  std::optional<std::string> RelativePath(int fd) const;

  Fd root_fd_;
  std::string root_path_;  // canonical, from /proc/self/fd
  FsOptions options_;
  size_t max_inodes_ = kMaxInodes;  // kMaxInodes, or less under a low RLIMIT_NOFILE
  size_t max_handles_ = kMaxHandles;
  Fd proc_fd_;  // /proc/self/fd, O_PATH
  CredentialModel model_ = CredentialModel::kVmm;
  std::vector<gid_t> host_groups_;  // the VMM's supplementary groups, put back after each request

  bool initialized_ = false;
  uint32_t minor_ = 0;
  uint32_t init_flags_ = 0;
  uint32_t max_write_ = 0;

  std::unordered_map<uint64_t, Inode> inodes_;
  std::map<std::pair<dev_t, ino_t>, uint64_t> by_host_inode_;
  uint64_t next_nodeid_ = kRootNodeId + 1;
  std::unordered_map<uint64_t, OpenFile> handles_;
  uint64_t next_fh_ = 1;
  size_t stale_entries_ = 0;
  bool acl_supported_ = false;  // the root's file system has POSIX ACLs (probed at Create)

  std::map<std::pair<uint64_t, uint64_t>, LockOwner> lock_owners_;  // (nodeid, lock_owner)
  std::vector<Parked> parked_;                                      // FIFO
};

}  // namespace clonevm::fs

// PassthroughFs unit tests: FUSE requests built as bytes (as the guest kernel sends them) against
// a temporary host directory, without KVM or a guest.
#include "fs/passthrough.h"

#include <fcntl.h>
#include <linux/fuse.h>
#include <sys/file.h>
#include <sys/fsuid.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/testing/host_tools.h"
#include "fs/testing/fuse_args.h"
#include "gtest/gtest.h"

namespace clonevm::fs {
namespace {

namespace stdfs = std::filesystem;
using host_tools::TempDir;

std::string ReadHost(const stdfs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
void WriteHost(const stdfs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

struct Answer {
  int error = 0;  // errno (positive) or 0
  std::vector<uint8_t> payload;
  size_t length = 0;    // 0: no reply
  bool parked = false;  // a SETLKW left waiting (ticket = the request's unique)
  template <typename T>
  T As() const {
    T value{};
    EXPECT_GE(payload.size(), sizeof(T));
    std::memcpy(&value, payload.data(), std::min(sizeof(T), payload.size()));
    return value;
  }
  std::string Text() const { return std::string(payload.begin(), payload.end()); }
};

class FsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    root_ = dir_.path() / "share";
    stdfs::create_directory(root_);
    WriteHost(root_ / "hello.txt", "hello from the host\n");
    stdfs::create_directory(root_ / "sub");
    WriteHost(root_ / "sub" / "inner", "inner");
    WriteHost(dir_.path() / "secret", "outside");
    stdfs::create_symlink("/etc/passwd", root_ / "abs-link");
    stdfs::create_symlink("../secret", root_ / "rel-link");
  }

  void Make(FsOptions options = {}) {
    auto fs = PassthroughFs::Create(root_.string(), options);
    ASSERT_TRUE(fs) << fs.error().message();
    fs_ = std::move(*fs);
  }

  // Sends opcode with `args` (raw bytes) on `nodeid`; `reply_size` bounds the reply.
  Answer Send(uint32_t opcode, uint64_t nodeid, const std::vector<uint8_t>& args, size_t reply_size = 1 << 21) {
    fuse_in_header h{};
    h.len = static_cast<uint32_t>(sizeof(h) + args.size());
    h.opcode = opcode;
    h.unique = ++unique_;
    h.nodeid = nodeid;
    h.uid = guest_uid_;
    h.gid = guest_gid_ == kSameAsUid ? guest_uid_ : guest_gid_;
    std::vector<uint8_t> req(sizeof(h));
    std::memcpy(req.data(), &h, sizeof(h));
    req.insert(req.end(), args.begin(), args.end());
    std::vector<uint8_t> reply(reply_size);
    Answer a;
    a.length = fs_->Handle(req, reply, unique_);
    if (a.length == PassthroughFs::kParked) {
      a.parked = true;
      a.length = 0;
      return a;
    }
    if (a.length == 0) return a;
    fuse_out_header out;
    std::memcpy(&out, reply.data(), sizeof(out));
    EXPECT_EQ(out.len, a.length);
    EXPECT_EQ(out.unique, unique_);
    a.error = -out.error;
    a.payload.assign(reply.begin() + sizeof(out), reply.begin() + static_cast<long>(a.length));
    return a;
  }

  template <typename T>
  static std::vector<uint8_t> Bytes(const T& v, const std::vector<std::string>& strings = {},
                                    const std::string& tail = {}) {
    return testing::FuseArgs(v, strings, tail);
  }
  static std::vector<uint8_t> Name(const std::string& s) {
    std::vector<uint8_t> b(s.begin(), s.end());
    b.push_back(0);
    return b;
  }

  void Init(uint32_t extra_flags = 0) {
    fuse_init_in in{};
    in.major = 7;
    in.minor = 31;
    in.max_readahead = 65536;
    in.flags = FUSE_ASYNC_READ | FUSE_DO_READDIRPLUS | FUSE_MAX_PAGES | FUSE_POSIX_ACL | extra_flags;
    Answer a = Send(FUSE_INIT, 0, Bytes(in));
    ASSERT_EQ(a.error, 0);
    auto out = a.As<fuse_init_out>();
    EXPECT_EQ(out.major, 7u);
    EXPECT_EQ(out.minor, 31u);
    EXPECT_EQ(out.max_write, 1u << 20);
    EXPECT_EQ(out.max_pages, 256u);
    // Granted exactly when the host file system has ACLs (probed at Create).
    EXPECT_EQ(out.flags & FUSE_POSIX_ACL, fs_->has_posix_acl() ? FUSE_POSIX_ACL : 0u);
    EXPECT_NE(out.flags & FUSE_DO_READDIRPLUS, 0u);
  }

  Answer Lookup(uint64_t parent, const std::string& name) { return Send(FUSE_LOOKUP, parent, Name(name)); }
  uint64_t LookupId(uint64_t parent, const std::string& name) {
    Answer a = Lookup(parent, name);
    EXPECT_EQ(a.error, 0) << name;
    return a.error == 0 ? a.As<fuse_entry_out>().nodeid : 0;
  }
  uint64_t Open(uint64_t node, uint32_t flags, int* error = nullptr) {
    fuse_open_in in{};
    in.flags = flags;
    Answer a = Send(FUSE_OPEN, node, Bytes(in));
    if (error) *error = a.error;
    return a.error == 0 ? a.As<fuse_open_out>().fh : 0;
  }
  Answer Read(uint64_t fh, uint64_t offset, uint32_t size, size_t reply_size = 1 << 21) {
    fuse_read_in in{};
    in.fh = fh;
    in.offset = offset;
    in.size = size;
    return Send(FUSE_READ, 0, Bytes(in), reply_size);
  }
  Answer Write(uint64_t fh, uint64_t offset, const std::string& data) {
    fuse_write_in in{};
    in.fh = fh;
    in.offset = offset;
    in.size = static_cast<uint32_t>(data.size());
    return Send(FUSE_WRITE, 0, Bytes(in, {}, data));
  }
  // (fh of the new file, nodeid)
  std::pair<uint64_t, uint64_t> Create(uint64_t parent, const std::string& name, int* error = nullptr) {
    fuse_create_in in{};
    in.flags = O_RDWR | O_CREAT | O_EXCL;
    in.mode = S_IFREG | 0644;
    Answer a = Send(FUSE_CREATE, parent, Bytes(in, {name}));
    if (error) *error = a.error;
    if (a.error != 0) return {0, 0};
    struct {
      fuse_entry_out entry;
      fuse_open_out open;
    } out{};
    EXPECT_EQ(a.payload.size(), sizeof(out));
    std::memcpy(&out, a.payload.data(), sizeof(out));
    return {out.open.fh, out.entry.nodeid};
  }
  // Names returned by READDIR(PLUS) over the whole directory.
  std::set<std::string> List(uint64_t dir_node, bool plus, size_t reply_size = 4096) {
    fuse_open_in oin{};
    Answer o = Send(FUSE_OPENDIR, dir_node, Bytes(oin));
    EXPECT_EQ(o.error, 0);
    uint64_t fh = o.As<fuse_open_out>().fh;
    std::set<std::string> names;
    uint64_t offset = 0;
    for (int round = 0; round < 100; ++round) {
      fuse_read_in in{};
      in.fh = fh;
      in.offset = offset;
      in.size = static_cast<uint32_t>(reply_size - sizeof(fuse_out_header));
      Answer a = Send(plus ? FUSE_READDIRPLUS : FUSE_READDIR, dir_node, Bytes(in), reply_size);
      EXPECT_EQ(a.error, 0);
      if (a.payload.empty()) break;
      size_t pos = 0;
      while (pos < a.payload.size()) {
        fuse_dirent d;
        size_t skip = plus ? sizeof(fuse_entry_out) : 0;
        std::memcpy(&d, a.payload.data() + pos + skip, sizeof(d));
        std::string name(reinterpret_cast<const char*>(a.payload.data() + pos + skip + FUSE_NAME_OFFSET), d.namelen);
        EXPECT_TRUE(names.insert(name).second) << "duplicate " << name;
        offset = d.off;
        pos += plus ? FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET_DIRENTPLUS + d.namelen)
                    : FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + d.namelen);
      }
    }
    fuse_release_in rin{};
    rin.fh = fh;
    EXPECT_EQ(Send(FUSE_RELEASEDIR, dir_node, Bytes(rin)).error, 0);
    return names;
  }

  TempDir dir_{"clone-fs-test"};
  stdfs::path root_;
  std::unique_ptr<PassthroughFs> fs_;
  uint64_t unique_ = 0;
  static constexpr uint32_t kSameAsUid = UINT32_MAX;
  uint32_t guest_uid_ = 0;  // the caller's uid and gid in every request
  uint32_t guest_gid_ = kSameAsUid;
};

TEST_F(FsTest, RequestsBeforeInitFailAndInitNegotiatesDown) {
  Make();
  EXPECT_EQ(Lookup(1, "hello.txt").error, EIO);
  Init();
  EXPECT_TRUE(fs_->initialized());
  EXPECT_EQ(fs_->negotiated_minor(), 31u);
  fuse_init_in again{};
  again.major = 7;
  again.minor = 31;
  EXPECT_EQ(Send(FUSE_INIT, 0, Bytes(again)).error, EPROTO);
}

TEST_F(FsTest, MaxWriteOptionIsBoundedAndAdvertised) {
  EXPECT_FALSE(PassthroughFs::Create(root_.string(), {.max_write = 1024}));
  EXPECT_FALSE(PassthroughFs::Create(root_.string(), {.max_write = (1u << 20) + 4096}));
  EXPECT_FALSE(PassthroughFs::Create((root_ / "hello.txt").string(), {}));
  EXPECT_FALSE(PassthroughFs::Create((root_ / "missing").string(), {}));
}

TEST_F(FsTest, LookupGetattrReadHostFile) {
  Make();
  Init();
  Answer a = Lookup(1, "hello.txt");
  ASSERT_EQ(a.error, 0);
  auto entry = a.As<fuse_entry_out>();
  EXPECT_GE(entry.nodeid, 2u);
  EXPECT_EQ(entry.attr.size, 20u);
  EXPECT_TRUE(S_ISREG(entry.attr.mode));
  EXPECT_EQ(LookupId(1, "hello.txt"), entry.nodeid);  // same host inode, same nodeid
  EXPECT_EQ(fs_->lookup_count(entry.nodeid), 2u);
  Answer attr = Send(FUSE_GETATTR, entry.nodeid, Bytes(fuse_getattr_in{}));
  ASSERT_EQ(attr.error, 0);
  EXPECT_EQ(attr.As<fuse_attr_out>().attr.size, 20u);

  uint64_t fh = Open(entry.nodeid, O_RDONLY);
  ASSERT_NE(fh, 0u);
  EXPECT_EQ(Read(fh, 0, 4096).Text(), "hello from the host\n");
  EXPECT_EQ(Read(fh, 6, 4).Text(), "from");
  // A reply buffer smaller than the request: the data is cut to fit, never overflows.
  EXPECT_EQ(Read(fh, 0, 4096, sizeof(fuse_out_header) + 5).Text(), "hello");
  EXPECT_EQ(Read(fh, 100, 10).payload.size(), 0u);
  EXPECT_EQ(Lookup(1, "missing").error, ENOENT);
  EXPECT_EQ(Read(999, 0, 10).error, EBADF);
  EXPECT_EQ(Send(FUSE_GETATTR, 12345, Bytes(fuse_getattr_in{})).error, EBADF);

  // FORGET: the count drops, the nodeid disappears at zero; the root is never forgotten.
  fuse_forget_in f{};
  f.nlookup = 1;
  EXPECT_EQ(Send(FUSE_FORGET, entry.nodeid, Bytes(f)).length, 0u);
  EXPECT_EQ(fs_->lookup_count(entry.nodeid), 1u);
  f.nlookup = 100;  // more than it has: clamps at zero
  Send(FUSE_FORGET, entry.nodeid, Bytes(f));
  EXPECT_EQ(fs_->lookup_count(entry.nodeid), 0u);
  EXPECT_EQ(Send(FUSE_GETATTR, entry.nodeid, {}).error, EBADF);
  Send(FUSE_FORGET, 1, Bytes(f));
  EXPECT_EQ(Send(FUSE_GETATTR, 1, {}).error, 0);
}

TEST_F(FsTest, CreateWriteMkdirRenameLinkUnlinkSymlink) {
  Make();
  Init();
  auto [fh, node] = Create(1, "new.txt");
  ASSERT_NE(fh, 0u);
  Answer w = Write(fh, 0, "written by the guest");
  ASSERT_EQ(w.error, 0);
  EXPECT_EQ(w.As<fuse_write_out>().size, 20u);
  fuse_fsync_in sync{};
  sync.fh = fh;
  EXPECT_EQ(Send(FUSE_FSYNC, node, Bytes(sync)).error, 0);
  EXPECT_EQ(ReadHost(root_ / "new.txt"), "written by the guest");
  int err = 0;
  Create(1, "new.txt", &err);
  EXPECT_EQ(err, EEXIST);

  // SETATTR: size and mode.
  fuse_setattr_in sa{};
  sa.valid = FATTR_SIZE | FATTR_MODE;
  sa.size = 7;
  sa.mode = 0600;
  Answer s = Send(FUSE_SETATTR, node, Bytes(sa));
  ASSERT_EQ(s.error, 0);
  EXPECT_EQ(s.As<fuse_attr_out>().attr.size, 7u);
  EXPECT_EQ(ReadHost(root_ / "new.txt"), "written");
  EXPECT_EQ(stdfs::status(root_ / "new.txt").permissions(), stdfs::perms::owner_read | stdfs::perms::owner_write);

  fuse_mkdir_in mk{};
  mk.mode = 0755;
  Answer d = Send(FUSE_MKDIR, 1, Bytes(mk, {"dir"}));
  ASSERT_EQ(d.error, 0);
  uint64_t dir = d.As<fuse_entry_out>().nodeid;
  EXPECT_TRUE(stdfs::is_directory(root_ / "dir"));

  fuse_rename_in rn{};
  rn.newdir = dir;
  EXPECT_EQ(Send(FUSE_RENAME, 1, Bytes(rn, {"new.txt", "moved.txt"})).error, 0);
  EXPECT_EQ(ReadHost(root_ / "dir" / "moved.txt"), "written");
  fuse_rename2_in rn2{};
  rn2.newdir = 1;
  rn2.flags = RENAME_NOREPLACE;
  EXPECT_EQ(Send(FUSE_RENAME2, dir, Bytes(rn2, {"moved.txt", "hello.txt"})).error, EEXIST);
  rn2.flags = 1u << 3;  // no such flag
  EXPECT_EQ(Send(FUSE_RENAME2, dir, Bytes(rn2, {"moved.txt", "x"})).error, EINVAL);

  fuse_link_in ln{};
  ln.oldnodeid = node;
  Answer l = Send(FUSE_LINK, 1, Bytes(ln, {"hard"}));
  ASSERT_EQ(l.error, 0);
  EXPECT_EQ(l.As<fuse_entry_out>().nodeid, node);  // same inode
  EXPECT_EQ(l.As<fuse_entry_out>().attr.nlink, 2u);

  std::vector<uint8_t> sym_args = Name("link");
  for (uint8_t c : Name("dir/moved.txt")) sym_args.push_back(c);
  Answer sym = Send(FUSE_SYMLINK, 1, sym_args);
  ASSERT_EQ(sym.error, 0);
  EXPECT_EQ(stdfs::read_symlink(root_ / "link"), "dir/moved.txt");
  Answer rl = Send(FUSE_READLINK, sym.As<fuse_entry_out>().nodeid, {});
  EXPECT_EQ(rl.Text(), "dir/moved.txt");

  fuse_mknod_in mn{};
  mn.mode = S_IFIFO | 0644;
  Answer fifo = Send(FUSE_MKNOD, 1, Bytes(mn, {"fifo"}));
  EXPECT_EQ(fifo.error, 0);
  EXPECT_TRUE(stdfs::is_fifo(root_ / "fifo"));
  // Neither OPEN nor CREATE opens it (either would block the server or reach a non-file).
  int open_err = 0;
  EXPECT_EQ(Open(fifo.As<fuse_entry_out>().nodeid, O_WRONLY, &open_err), 0u);
  EXPECT_EQ(open_err, EACCES);
  fuse_create_in cf{};
  cf.flags = O_WRONLY | O_CREAT;
  cf.mode = S_IFREG | 0644;
  EXPECT_NE(Send(FUSE_CREATE, 1, Bytes(cf, {"fifo"})).error, 0);  // ENXIO (no reader) or EACCES
  // Nor does truncating it through SETATTR (an O_WRONLY open of a FIFO would block for ever).
  fuse_setattr_in trunc{};
  trunc.valid = FATTR_SIZE;
  EXPECT_EQ(Send(FUSE_SETATTR, fifo.As<fuse_entry_out>().nodeid, Bytes(trunc)).error, EACCES);
  mn.mode = S_IFCHR | 0644;
  mn.rdev = makedev(1, 3);
  EXPECT_EQ(Send(FUSE_MKNOD, 1, Bytes(mn, {"null"})).error, EPERM);
  EXPECT_FALSE(stdfs::exists(root_ / "null"));

  EXPECT_EQ(Send(FUSE_RMDIR, 1, Name("dir")).error, ENOTEMPTY);
  EXPECT_EQ(Send(FUSE_UNLINK, dir, Name("moved.txt")).error, 0);
  EXPECT_EQ(Send(FUSE_RMDIR, 1, Name("dir")).error, 0);
  EXPECT_FALSE(stdfs::exists(root_ / "dir"));
  EXPECT_EQ(ReadHost(root_ / "hard"), "written");  // the other link is still there

  fuse_release_in rel{};
  rel.fh = fh;
  EXPECT_EQ(Send(FUSE_RELEASE, node, Bytes(rel)).error, 0);
  EXPECT_EQ(Send(FUSE_RELEASE, node, Bytes(rel)).error, EBADF);
  EXPECT_EQ(fs_->handle_count(), 0u);

  fuse_statfs_out st = Send(FUSE_STATFS, 1, {}).As<fuse_statfs_out>();
  EXPECT_GT(st.st.bsize, 0u);
}

TEST_F(FsTest, ReaddirAndReaddirplusListEverythingOnceAcrossSmallBuffers) {
  for (int i = 0; i < 50; ++i) WriteHost(root_ / ("file-" + std::to_string(i)), "x");
  Make();
  Init();
  std::set<std::string> expected = {".", "..", "hello.txt", "sub", "abs-link", "rel-link"};
  for (int i = 0; i < 50; ++i) expected.insert("file-" + std::to_string(i));
  EXPECT_EQ(List(1, false, 512), expected);
  EXPECT_EQ(List(1, true, 1024), expected);
  // READDIRPLUS looked every entry up (but not . and ..): each now has a lookup count of 1.
  EXPECT_EQ(fs_->inode_count(), 1u + expected.size() - 2);
}

TEST_F(FsTest, GuestCannotLeaveTheSharedDirectory) {
  Make();
  Init();
  EXPECT_EQ(Lookup(1, "..").error, EINVAL);
  EXPECT_EQ(Lookup(1, ".").error, EINVAL);
  EXPECT_EQ(Lookup(1, "sub/../../secret").error, EINVAL);
  EXPECT_EQ(Lookup(1, "").error, EINVAL);
  EXPECT_EQ(Lookup(1, std::string(300, 'a')).error, ENAMETOOLONG);
  uint64_t sub = LookupId(1, "sub");
  EXPECT_EQ(Lookup(sub, "..").error, EINVAL);
  fuse_mkdir_in mk{};
  mk.mode = 0755;
  EXPECT_EQ(Send(FUSE_MKDIR, 1, Bytes(mk, {"../escaped"})).error, EINVAL);
  EXPECT_FALSE(stdfs::exists(dir_.path() / "escaped"));
  fuse_rename_in rn{};
  rn.newdir = 1;
  EXPECT_EQ(Send(FUSE_RENAME, 1, Bytes(rn, {"hello.txt", "../stolen"})).error, EINVAL);

  // Symlinks pointing outside: the lookup returns the link itself, never its target.
  for (const char* link : {"abs-link", "rel-link"}) {
    Answer a = Lookup(1, link);
    ASSERT_EQ(a.error, 0);
    auto entry = a.As<fuse_entry_out>();
    EXPECT_TRUE(S_ISLNK(entry.attr.mode)) << link;
    int err = 0;
    EXPECT_EQ(Open(entry.nodeid, O_RDONLY, &err), 0u);
    EXPECT_EQ(err, ELOOP) << link;
    fuse_setattr_in sa{};
    sa.valid = FATTR_SIZE;
    EXPECT_NE(Send(FUSE_SETATTR, entry.nodeid, Bytes(sa)).error, 0);
    fuse_open_in oin{};
    EXPECT_EQ(Send(FUSE_OPENDIR, entry.nodeid, Bytes(oin)).error, ENOTDIR);
  }
  EXPECT_EQ(ReadHost(dir_.path() / "secret"), "outside");
  // Creating through a symlinked directory name is refused by O_NOFOLLOW / the lookup rules.
  stdfs::create_directory_symlink(dir_.path(), root_ / "up");
  uint64_t up = LookupId(1, "up");
  int err = 0;
  Create(up, "planted", &err);
  EXPECT_NE(err, 0);
  EXPECT_FALSE(stdfs::exists(dir_.path() / "planted"));
}

// As root the server gives what a guest creates to the guest's uid/gid, and only that: CREATE
// without O_EXCL on a name that exists opens the host's file and leaves its owner alone.
TEST_F(FsTest, CreateChownsOnlyWhatItMade) {
  if (::geteuid() != 0) GTEST_SKIP() << "chown needs root";
  Make();
  Init();
  ASSERT_EQ(::chmod(root_.c_str(), 0777), 0);
  guest_uid_ = 4321;
  fuse_create_in in{};
  in.flags = O_RDWR | O_CREAT;
  in.mode = S_IFREG | 0644;
  // An existing file under the name is opened as the caller: the host refuses 4321 root's 0644.
  EXPECT_EQ(Send(FUSE_CREATE, 1, Bytes(in, {"hello.txt"})).error, EACCES);
  struct stat st {};
  ASSERT_EQ(::stat((root_ / "hello.txt").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(ReadHost(root_ / "hello.txt"), "hello from the host\n");
  in.flags = O_RDONLY | O_CREAT;
  EXPECT_EQ(Send(FUSE_CREATE, 1, Bytes(in, {"hello.txt"})).error, 0);
  ASSERT_EQ(::stat((root_ / "hello.txt").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0u);
  in.flags = O_RDWR | O_CREAT;
  EXPECT_EQ(Send(FUSE_CREATE, 1, Bytes(in, {"mine.txt"})).error, 0);
  ASSERT_EQ(::stat((root_ / "mine.txt").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 4321u);
  in.flags |= O_EXCL;
  EXPECT_EQ(Send(FUSE_CREATE, 1, Bytes(in, {"mine.txt"})).error, EEXIST);
}

// Under a low fd limit the inode table stops at a quarter of it (ENFILE), leaving the rest of the
// VMM its fds. In a child: the limit is lowered for good there.
TEST_F(FsTest, InodesStopAtAQuarterOfTheFdLimit) {
  for (int i = 0; i < 40; ++i) WriteHost(root_ / fmt::format("f{}", i), "x");
  auto child = [this] {
    rlimit low{128, 128};
    if (::setrlimit(RLIMIT_NOFILE, &low) != 0) std::_Exit(2);
    Make();
    Init();
    int ok = 0;
    int enfile = 0;
    for (int i = 0; i < 40; ++i) {
      int err = Lookup(1, fmt::format("f{}", i)).error;
      ok += err == 0;
      enfile += err == ENFILE;
    }
    // 128 / 4 = 32 inodes, the root among them.
    std::_Exit(ok == 31 && enfile == 9 ? 0 : 1);
  };
  EXPECT_EXIT(child(), ::testing::ExitedWithCode(0), "");
}

TEST_F(FsTest, MalformedArgumentsAreErrnoRepliesNotCrashes) {
  Make();
  Init();
  EXPECT_EQ(Send(FUSE_LOOKUP, 1, {'a', 'b'}).error, EINVAL);  // no NUL
  EXPECT_EQ(Send(FUSE_OPEN, 1, {1, 2}).error, EINVAL);        // short fuse_open_in
  EXPECT_EQ(Send(FUSE_READ, 1, {}).error, EINVAL);
  EXPECT_EQ(Send(FUSE_SETATTR, 1, {0}).error, EINVAL);
  EXPECT_EQ(Send(FUSE_RENAME, 1, Bytes(fuse_rename_in{}, {"only-one"})).error, EINVAL);
  EXPECT_EQ(Send(9999, 1, {}).error, ENOSYS);
  EXPECT_EQ(Send(FUSE_GETXATTR, 1, {}).error, EINVAL);
  EXPECT_EQ(Send(FUSE_SETLKW, 1, {}).error, EINVAL);  // short fuse_lk_in
  EXPECT_EQ(Send(FUSE_IOCTL, 1, {}).error, ENOSYS);
  // A WRITE whose size claims more data than the request carries.
  auto [fh, node] = Create(1, "w");
  ASSERT_NE(fh, 0u);
  fuse_write_in win{};
  win.fh = fh;
  win.size = 1000;
  EXPECT_EQ(Send(FUSE_WRITE, node, Bytes(win, {}, "short")).error, EINVAL);
  // BATCH_FORGET with a count larger than its entries: forgets what is there, no reply.
  fuse_batch_forget_in bf{};
  bf.count = 1000000;
  EXPECT_EQ(Send(FUSE_BATCH_FORGET, 0, Bytes(bf)).length, 0u);
  // A reply buffer too small for a fixed-size reply.
  EXPECT_EQ(Send(FUSE_GETATTR, 1, {}, sizeof(fuse_out_header) + 8).error, EIO);
  EXPECT_EQ(Send(FUSE_GETATTR, 1, {}, 4).length, 0u);
}

TEST_F(FsTest, ReadOnlyRefusesEveryChange) {
  Make({.read_only = true});
  Init();
  int err = 0;
  Create(1, "x", &err);
  EXPECT_EQ(err, EROFS);
  uint64_t hello = LookupId(1, "hello.txt");
  Open(hello, O_RDWR, &err);
  EXPECT_EQ(err, EROFS);
  Open(hello, O_RDONLY | O_TRUNC, &err);
  EXPECT_EQ(err, EROFS);
  uint64_t fh = Open(hello, O_RDONLY);
  ASSERT_NE(fh, 0u);
  EXPECT_EQ(Read(fh, 0, 5).Text(), "hello");
  EXPECT_EQ(Write(fh, 0, "x").error, EROFS);
  fuse_mkdir_in mk{};
  EXPECT_EQ(Send(FUSE_MKDIR, 1, Bytes(mk, {"d"})).error, EROFS);
  EXPECT_EQ(Send(FUSE_UNLINK, 1, Name("hello.txt")).error, EROFS);
  fuse_setattr_in sa{};
  sa.valid = FATTR_SIZE;
  EXPECT_EQ(Send(FUSE_SETATTR, hello, Bytes(sa)).error, EROFS);
  fuse_access_in acc{};
  acc.mask = W_OK;
  EXPECT_EQ(Send(FUSE_ACCESS, hello, Bytes(acc)).error, EROFS);
  EXPECT_EQ(ReadHost(root_ / "hello.txt"), "hello from the host\n");
}

TEST_F(FsTest, StateRoundTripsIntoAnotherRootAndMissingEntriesGoStale) {
  Make();
  Init();
  uint64_t sub = LookupId(1, "sub");
  uint64_t inner = LookupId(sub, "inner");
  uint64_t hello = LookupId(1, "hello.txt");
  uint64_t fh = Open(inner, O_RDWR);
  uint64_t hello_fh = Open(hello, O_RDONLY);
  ASSERT_NE(fh, 0u);
  nlohmann::json state = fs_->SaveState();
  EXPECT_EQ(state["version"], 1);

  // A copy of the tree elsewhere (a fork's new shared directory), minus hello.txt.
  stdfs::path other = dir_.path() / "other";
  stdfs::copy(root_, other, stdfs::copy_options::recursive | stdfs::copy_options::copy_symlinks);
  WriteHost(other / "sub" / "inner", "INNER-COPY");
  stdfs::remove(other / "hello.txt");
  auto restored = PassthroughFs::Create(other.string(), {});
  ASSERT_TRUE(restored);
  // Through JSON text, as a snapshot stores it.
  ASSERT_TRUE((*restored)->RestoreState(nlohmann::json::parse(state.dump())));
  fs_ = std::move(*restored);
  EXPECT_TRUE(fs_->initialized());
  EXPECT_EQ(fs_->negotiated_minor(), 31u);
  EXPECT_EQ(fs_->lookup_count(inner), 1u);
  EXPECT_EQ(fs_->stale_entries(), 2u);  // hello.txt's inode and its handle
  EXPECT_EQ(Read(fh, 0, 100).Text(), "INNER-COPY");
  EXPECT_EQ(Write(fh, 0, "inner").error, 0);
  EXPECT_EQ(ReadHost(other / "sub" / "inner"), "inner-COPY");
  EXPECT_EQ(ReadHost(root_ / "sub" / "inner"), "inner");  // the old root is untouched
  EXPECT_EQ(Read(hello_fh, 0, 10).error, ESTALE);
  EXPECT_EQ(Send(FUSE_GETATTR, hello, {}).error, ESTALE);
  fuse_release_in rel{};
  rel.fh = hello_fh;
  EXPECT_EQ(Send(FUSE_RELEASE, hello, Bytes(rel)).error, 0);  // stale handles still release
  // New lookups get fresh nodeids above the saved ones.
  WriteHost(other / "fresh", "f");
  uint64_t fresh = LookupId(1, "fresh");
  EXPECT_GT(fresh, std::max({sub, inner, hello}));
  // A symlink planted where a directory was cannot redirect a restore outside the root.
  nlohmann::json state2 = fs_->SaveState();
  stdfs::path third = dir_.path() / "third";
  stdfs::create_directory(third);
  stdfs::create_directory_symlink(dir_.path(), third / "sub");
  auto again = PassthroughFs::Create(third.string(), {});
  ASSERT_TRUE(again);
  ASSERT_TRUE((*again)->RestoreState(state2));
  EXPECT_EQ((*again)->lookup_count(inner), 1u);
  fs_ = std::move(*again);
  EXPECT_EQ(Read(fh, 0, 10).error, ESTALE);

  // Garbage is refused, not crashed on.
  auto fresh_fs = PassthroughFs::Create(root_.string(), {});
  ASSERT_TRUE(fresh_fs);
  EXPECT_FALSE((*fresh_fs)->RestoreState(nlohmann::json{{"version", 2}}));
  EXPECT_FALSE((*fresh_fs)->RestoreState(nlohmann::json{{"version", 1}, {"inodes", 3}}));
  nlohmann::json bad = state;
  bad["inodes"].push_back({{"nodeid", 0}, {"lookups", 1}, {"path", "x"}});
  EXPECT_FALSE((*fresh_fs)->RestoreState(bad));
}

// ---- POSIX semantics: per-request credentials (root VMM), umask, set-id, rename flags, xattrs ----

// A root-only test: the credential model needs the VMM to be root (else every request runs as it).
#define REQUIRE_ROOT() \
  if (::geteuid() != 0) GTEST_SKIP() << "per-request credentials need root"

struct stat HostStat(const stdfs::path& p) {
  struct stat st {};
  EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p;
  return st;
}

TEST_F(FsTest, EveryCreatePathGivesTheCallerOwnership) {
  REQUIRE_ROOT();
  Make();
  Init();
  ASSERT_EQ(::chmod(root_.c_str(), 0777), 0);
  guest_uid_ = 4321;
  guest_gid_ = 4322;
  ASSERT_NE(Create(1, "file").first, 0u);
  fuse_mkdir_in mk{};
  mk.mode = 0755;
  EXPECT_EQ(Send(FUSE_MKDIR, 1, Bytes(mk, {"dir"})).error, 0);
  fuse_mknod_in mn{};
  mn.mode = S_IFIFO | 0644;
  EXPECT_EQ(Send(FUSE_MKNOD, 1, Bytes(mn, {"fifo"})).error, 0);
  mn.mode = S_IFSOCK | 0755;
  EXPECT_EQ(Send(FUSE_MKNOD, 1, Bytes(mn, {"sock"})).error, 0);
  std::vector<uint8_t> sym = Name("sym");
  for (uint8_t c : Name("file")) sym.push_back(c);
  EXPECT_EQ(Send(FUSE_SYMLINK, 1, sym).error, 0);
  for (const char* name : {"file", "dir", "fifo", "sock", "sym"}) {
    struct stat st = HostStat(root_ / name);
    EXPECT_EQ(st.st_uid, 4321u) << name;
    EXPECT_EQ(st.st_gid, 4322u) << name;
  }
  EXPECT_TRUE(S_ISSOCK(HostStat(root_ / "sock").st_mode));
  // The thread is root again after each request (capabilities back): a root request may chown.
  EXPECT_EQ(::setfsuid(static_cast<uid_t>(-1)), 0);
  EXPECT_EQ(::setfsgid(static_cast<gid_t>(-1)), 0);
}

TEST_F(FsTest, HostChecksCreatesAsTheCaller) {
  REQUIRE_ROOT();
  Make();
  Init();
  ASSERT_EQ(::chmod(root_.c_str(), 0755), 0);  // root's, not writable by others
  guest_uid_ = 4321;
  int err = 0;
  Create(1, "nope", &err);
  EXPECT_EQ(err, EACCES);
  fuse_mkdir_in mk{};
  EXPECT_EQ(Send(FUSE_MKDIR, 1, Bytes(mk, {"nope"})).error, EACCES);
  EXPECT_FALSE(stdfs::exists(root_ / "nope"));
  // ACCESS is answered for the caller, not for the VMM's root.
  fuse_access_in acc{};
  acc.mask = W_OK;
  uint64_t hello = LookupId(1, "hello.txt");
  EXPECT_EQ(Send(FUSE_ACCESS, hello, Bytes(acc)).error, EACCES);
  acc.mask = R_OK;
  EXPECT_EQ(Send(FUSE_ACCESS, hello, Bytes(acc)).error, 0);
  guest_uid_ = 0;
  acc.mask = W_OK;
  EXPECT_EQ(Send(FUSE_ACCESS, hello, Bytes(acc)).error, 0);
  // A directory writable through its group: the guest checked the caller is a member, the host
  // sees the parent's group among the request's groups.
  stdfs::create_directory(root_ / "team");
  ASSERT_EQ(::chown((root_ / "team").c_str(), 0, 5000), 0);
  ASSERT_EQ(::chmod((root_ / "team").c_str(), 0770), 0);
  uint64_t team = LookupId(1, "team");
  guest_uid_ = 4321;
  guest_gid_ = 4321;
  ASSERT_NE(Create(team, "ours").first, 0u);
  EXPECT_EQ(HostStat(root_ / "team" / "ours").st_gid, 4321u);
}

TEST_F(FsTest, SetgidDirectoryGivesItsGroupAndBit) {
  REQUIRE_ROOT();
  Make();
  Init();
  stdfs::create_directory(root_ / "sg");
  ASSERT_EQ(::chown((root_ / "sg").c_str(), 0, 777), 0);
  ASSERT_EQ(::chmod((root_ / "sg").c_str(), 02777), 0);
  uint64_t sg = LookupId(1, "sg");
  guest_uid_ = 4321;
  ASSERT_NE(Create(sg, "f").first, 0u);
  fuse_mkdir_in mk{};
  mk.mode = 0755;
  EXPECT_EQ(Send(FUSE_MKDIR, sg, Bytes(mk, {"d"})).error, 0);
  EXPECT_EQ(HostStat(root_ / "sg" / "f").st_gid, 777u);
  struct stat d = HostStat(root_ / "sg" / "d");
  EXPECT_EQ(d.st_gid, 777u);
  EXPECT_EQ(d.st_uid, 4321u);
  EXPECT_NE(d.st_mode & S_ISGID, 0u);  // directories inherit the bit
}

TEST_F(FsTest, GuestUmaskAppliesAndTheVmmUmaskDoesNot) {
  mode_t old = ::umask(0);  // as the fs worker runs (devices/virtio/fs.cc)
  Make();
  Init(FUSE_DONT_MASK);
  fuse_create_in in{};
  in.flags = O_RDWR | O_CREAT | O_EXCL;
  in.mode = S_IFREG | 0777;
  in.umask = 027;
  EXPECT_EQ(Send(FUSE_CREATE, 1, Bytes(in, {"masked"})).error, 0);
  in.umask = 0;
  EXPECT_EQ(Send(FUSE_CREATE, 1, Bytes(in, {"open"})).error, 0);
  fuse_mkdir_in mk{};
  mk.mode = 0777;
  mk.umask = 022;
  EXPECT_EQ(Send(FUSE_MKDIR, 1, Bytes(mk, {"d"})).error, 0);
  fuse_mknod_in mn{};
  mn.mode = S_IFIFO | 0666;
  mn.umask = 077;
  EXPECT_EQ(Send(FUSE_MKNOD, 1, Bytes(mn, {"p"})).error, 0);
  ::umask(old);
  EXPECT_EQ(HostStat(root_ / "masked").st_mode & 07777, 0750u);
  EXPECT_EQ(HostStat(root_ / "open").st_mode & 07777, 0777u);
  EXPECT_EQ(HostStat(root_ / "d").st_mode & 07777, 0755u);
  EXPECT_EQ(HostStat(root_ / "p").st_mode & 07777, 0600u);
}

TEST_F(FsTest, InitOffersDontMaskAndKillprivV2) {
  Make();
  fuse_init_in in{};
  in.major = 7;
  in.minor = 37;
  in.flags = FUSE_DONT_MASK | FUSE_HANDLE_KILLPRIV_V2 | FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS | FUSE_SETXATTR_EXT;
  auto out = Send(FUSE_INIT, 0, Bytes(in)).As<fuse_init_out>();
  EXPECT_NE(out.flags & FUSE_DONT_MASK, 0u);
  EXPECT_NE(out.flags & FUSE_HANDLE_KILLPRIV_V2, 0u);
  // Locks are host locks (the worker never blocks: SETLKW parks), setxattr has its flags.
  EXPECT_EQ(out.flags & (FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS), FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS);
  EXPECT_NE(out.flags & FUSE_SETXATTR_EXT, 0u);
  EXPECT_EQ(out.flags & FUSE_POSIX_ACL, 0u);  // not offered by this kernel: not granted
}

TEST_F(FsTest, PosixAclIsOfferedOnlyWhereTheHostFileSystemHasAcls) {
  errno = 0;
  const bool host_acls = ::getxattr(root_.c_str(), "system.posix_acl_access", nullptr, 0) >= 0 || errno == ENODATA;
  Make();
  EXPECT_EQ(fs_->has_posix_acl(), host_acls);
  fuse_init_in in{};
  in.major = 7;
  in.minor = 38;
  in.flags = FUSE_POSIX_ACL;
  auto out = Send(FUSE_INIT, 0, Bytes(in)).As<fuse_init_out>();
  EXPECT_EQ((out.flags & FUSE_POSIX_ACL) != 0, host_acls);
}

TEST_F(FsTest, SetIdBitsAreClearedOnWriteTruncateAndChown) {
  REQUIRE_ROOT();
  Make();
  Init(FUSE_HANDLE_KILLPRIV_V2);
  WriteHost(root_ / "suid", "x");
  ASSERT_EQ(::chmod((root_ / "suid").c_str(), 06755), 0);
  uint64_t node = LookupId(1, "suid");
  uint64_t fh = Open(node, O_RDWR);
  ASSERT_NE(fh, 0u);
  // A write the guest marks (writer without CAP_FSETID) clears both (set-gid: group-executable).
  fuse_write_in w{};
  w.fh = fh;
  w.size = 1;
  w.write_flags = FUSE_WRITE_KILL_SUIDGID;
  EXPECT_EQ(Send(FUSE_WRITE, node, Bytes(w, {}, "y")).error, 0);
  EXPECT_EQ(HostStat(root_ / "suid").st_mode & 07777, 0755u);
  // An unmarked write (root in the guest) keeps them.
  ASSERT_EQ(::chmod((root_ / "suid").c_str(), 06755), 0);
  EXPECT_EQ(Write(fh, 0, "z").error, 0);
  EXPECT_EQ(HostStat(root_ / "suid").st_mode & 07777, 06755u);
  // Truncate marked FATTR_KILL_SUIDGID.
  fuse_setattr_in sa{};
  sa.valid = FATTR_SIZE | FATTR_KILL_SUIDGID;
  sa.size = 0;
  EXPECT_EQ(Send(FUSE_SETATTR, node, Bytes(sa)).error, 0);
  EXPECT_EQ(HostStat(root_ / "suid").st_mode & 07777, 0755u);
  // Set-gid without group execute is not a set-gid program: it stays.
  ASSERT_EQ(::chmod((root_ / "suid").c_str(), 02644), 0);
  EXPECT_EQ(Send(FUSE_WRITE, node, Bytes(w, {}, "y")).error, 0);
  EXPECT_EQ(HostStat(root_ / "suid").st_mode & 07777, 02644u);
  // O_TRUNC open marked FUSE_OPEN_KILL_SUIDGID.
  ASSERT_EQ(::chmod((root_ / "suid").c_str(), 04755), 0);
  fuse_open_in oin{};
  oin.flags = O_WRONLY | O_TRUNC;
  oin.open_flags = FUSE_OPEN_KILL_SUIDGID;
  EXPECT_EQ(Send(FUSE_OPEN, node, Bytes(oin)).error, 0);
  EXPECT_EQ(HostStat(root_ / "suid").st_mode & 07777, 0755u);
  // chown: the host clears set-uid itself.
  ASSERT_EQ(::chmod((root_ / "suid").c_str(), 04755), 0);
  sa = {};
  sa.valid = FATTR_UID;
  sa.uid = 4321;
  EXPECT_EQ(Send(FUSE_SETATTR, node, Bytes(sa)).error, 0);
  struct stat st = HostStat(root_ / "suid");
  EXPECT_EQ(st.st_uid, 4321u);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
}

TEST_F(FsTest, RenameFlagsExchangeNoreplaceWhiteout) {
  REQUIRE_ROOT();  // RENAME_WHITEOUT makes a 0:0 character device: CAP_MKNOD
  Make();
  Init();
  WriteHost(root_ / "a", "A");
  WriteHost(root_ / "b", "B");
  fuse_rename2_in rn{};
  rn.newdir = 1;
  rn.flags = RENAME_EXCHANGE;
  EXPECT_EQ(Send(FUSE_RENAME2, 1, Bytes(rn, {"a", "b"})).error, 0);
  EXPECT_EQ(ReadHost(root_ / "a"), "B");
  EXPECT_EQ(ReadHost(root_ / "b"), "A");
  rn.flags = RENAME_EXCHANGE;
  EXPECT_EQ(Send(FUSE_RENAME2, 1, Bytes(rn, {"a", "missing"})).error, ENOENT);
  rn.flags = RENAME_NOREPLACE;
  EXPECT_EQ(Send(FUSE_RENAME2, 1, Bytes(rn, {"a", "b"})).error, EEXIST);
  rn.flags = RENAME_NOREPLACE | RENAME_EXCHANGE;
  EXPECT_EQ(Send(FUSE_RENAME2, 1, Bytes(rn, {"a", "b"})).error, EINVAL);
  rn.flags = RENAME_WHITEOUT;
  int err = Send(FUSE_RENAME2, 1, Bytes(rn, {"a", "c"})).error;
  if (err == EINVAL) GTEST_SKIP() << "the host file system has no RENAME_WHITEOUT";
  ASSERT_EQ(err, 0);
  EXPECT_EQ(ReadHost(root_ / "c"), "B");
  struct stat st = HostStat(root_ / "a");
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(st.st_rdev, makedev(0, 0));
}

TEST_F(FsTest, SetattrTimesNowAndOmit) {
  Make();
  Init();
  uint64_t hello = LookupId(1, "hello.txt");
  timespec fixed[2] = {{1000000000, 1}, {1100000000, 2}};
  ASSERT_EQ(::utimensat(AT_FDCWD, (root_ / "hello.txt").c_str(), fixed, 0), 0);
  fuse_setattr_in sa{};
  sa.valid = FATTR_MTIME;  // atime omitted
  sa.mtime = 1200000000;
  sa.mtimensec = 3;
  ASSERT_EQ(Send(FUSE_SETATTR, hello, Bytes(sa)).error, 0);
  struct stat st = HostStat(root_ / "hello.txt");
  EXPECT_EQ(st.st_atim.tv_sec, 1000000000);
  EXPECT_EQ(st.st_atim.tv_nsec, 1);
  EXPECT_EQ(st.st_mtim.tv_sec, 1200000000);
  EXPECT_EQ(st.st_mtim.tv_nsec, 3);
  sa = {};
  sa.valid = FATTR_ATIME | FATTR_ATIME_NOW;  // atime now, mtime omitted
  ASSERT_EQ(Send(FUSE_SETATTR, hello, Bytes(sa)).error, 0);
  st = HostStat(root_ / "hello.txt");
  EXPECT_GT(st.st_atim.tv_sec, 1600000000);
  EXPECT_EQ(st.st_mtim.tv_sec, 1200000000);
}

TEST_F(FsTest, SymlinkTimesAreTheLinksOwn) {
  Make();
  Init();
  uint64_t link = LookupId(1, "rel-link");
  struct stat target_before = HostStat(dir_.path() / "secret");
  fuse_setattr_in sa{};
  sa.valid = FATTR_MTIME | FATTR_ATIME;
  sa.mtime = 1100000000;
  sa.mtimensec = 7;
  sa.atime = 1000000000;
  Answer a = Send(FUSE_SETATTR, link, Bytes(sa));
  ASSERT_EQ(a.error, 0);
  EXPECT_EQ(a.As<fuse_attr_out>().attr.mtime, 1100000000u);
  struct stat st = HostStat(root_ / "rel-link");
  EXPECT_EQ(st.st_mtim.tv_sec, 1100000000);
  EXPECT_EQ(st.st_mtim.tv_nsec, 7);
  EXPECT_EQ(HostStat(dir_.path() / "secret").st_mtim.tv_sec, target_before.st_mtim.tv_sec);  // not followed
  sa.valid = FATTR_MODE;
  EXPECT_EQ(Send(FUSE_SETATTR, link, Bytes(sa)).error, EOPNOTSUPP);
}

TEST_F(FsTest, DeviceNodesOnlyOnNodevHostMounts) {
  Make();
  Init();
  struct statvfs vfs {};
  ASSERT_EQ(::statvfs(root_.c_str(), &vfs), 0);
  fuse_mknod_in mn{};
  mn.mode = S_IFCHR | 0666;
  mn.rdev = makedev(1, 3);
  int err = Send(FUSE_MKNOD, 1, Bytes(mn, {"null"})).error;
  if (vfs.f_flag & ST_NODEV) {
    EXPECT_EQ(err, ::geteuid() == 0 ? 0 : EPERM);
  } else {
    EXPECT_EQ(err, EPERM);  // it would be the host's /dev/null (or its disk) for host users
    EXPECT_FALSE(stdfs::exists(root_ / "null"));
  }
  mn.mode = 0170000 | 0644;  // no such type
  EXPECT_EQ(Send(FUSE_MKNOD, 1, Bytes(mn, {"odd"})).error, EINVAL);
}

TEST_F(FsTest, ExtendedAttributesGetSetListRemove) {
  Make();
  Init();
  uint64_t hello = LookupId(1, "hello.txt");
  auto set = [&](uint64_t node, const std::string& name, const std::string& value, uint32_t flags = 0) {
    struct {
      uint32_t size;
      uint32_t flags;
    } in{static_cast<uint32_t>(value.size()), flags};
    return Send(FUSE_SETXATTR, node, Bytes(in, {name}, value)).error;
  };
  auto get = [&](uint64_t node, const std::string& name, uint32_t size) {
    fuse_getxattr_in in{};
    in.size = size;
    return Send(FUSE_GETXATTR, node, Bytes(in, {name}));
  };
  int err = set(hello, "user.color", "blue");
  if (err == EOPNOTSUPP) GTEST_SKIP() << "the host file system has no user xattrs";
  ASSERT_EQ(err, 0);
  char buf[16] = {};
  ASSERT_EQ(::getxattr((root_ / "hello.txt").c_str(), "user.color", buf, sizeof(buf)), 4);
  EXPECT_STREQ(buf, "blue");
  EXPECT_EQ(get(hello, "user.color", 0).As<fuse_getxattr_out>().size, 4u);
  EXPECT_EQ(get(hello, "user.color", 64).Text(), "blue");
  EXPECT_EQ(get(hello, "user.color", 2).error, ERANGE);
  EXPECT_EQ(get(hello, "user.none", 64).error, ENODATA);
  EXPECT_EQ(set(hello, "user.color", "red", XATTR_CREATE), EEXIST);
  EXPECT_EQ(set(hello, "user.new", "v", XATTR_REPLACE), ENODATA);
  EXPECT_EQ(set(hello, "user.color", "v", 0x80), EINVAL);
  EXPECT_EQ(set(hello, "", "v"), ERANGE);
  EXPECT_EQ(set(hello, "user.two", "2"), 0);
  fuse_getxattr_in lin{};
  EXPECT_EQ(Send(FUSE_LISTXATTR, hello, Bytes(lin)).As<fuse_getxattr_out>().size, 20u);  // two names + NULs
  lin.size = 64;
  std::string list = Send(FUSE_LISTXATTR, hello, Bytes(lin)).Text();
  EXPECT_NE(list.find(std::string("user.color\0", 11)), std::string::npos);
  EXPECT_NE(list.find(std::string("user.two\0", 9)), std::string::npos);
  lin.size = 3;
  EXPECT_EQ(Send(FUSE_LISTXATTR, hello, Bytes(lin)).error, ERANGE);
  EXPECT_EQ(Send(FUSE_REMOVEXATTR, hello, Name("user.color")).error, 0);
  EXPECT_EQ(Send(FUSE_REMOVEXATTR, hello, Name("user.color")).error, ENODATA);
  // security.capability as guest root (the default model): the host stores it.
  if (::geteuid() == 0) {
    const std::string cap("\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", 20);
    EXPECT_EQ(set(hello, "security.capability", cap), 0);
    EXPECT_EQ(get(hello, "security.capability", 64).payload.size(), 20u);
  }
  // Symlinks: nothing to show, nothing taken (no race-free way through the O_PATH fd).
  uint64_t link = LookupId(1, "rel-link");
  EXPECT_EQ(get(link, "user.x", 64).error, ENODATA);
  EXPECT_EQ(set(link, "user.x", "1"), EPERM);
  EXPECT_EQ(Send(FUSE_LISTXATTR, link, Bytes(lin)).payload.size(), 0u);
  // Malformed: a value longer than the request, no name.
  struct {
    uint32_t size;
    uint32_t flags;
  } bad{100, 0};
  EXPECT_EQ(Send(FUSE_SETXATTR, hello, Bytes(bad, {"user.x"}, "short")).error, EINVAL);
  EXPECT_EQ(Send(FUSE_SETXATTR, hello, Bytes(bad)).error, EINVAL);
  EXPECT_EQ(Send(FUSE_GETXATTR, hello, {}).error, EINVAL);
}

TEST_F(FsTest, ReadOnlyRefusesXattrChanges) {
  Make({.read_only = true});
  Init();
  uint64_t hello = LookupId(1, "hello.txt");
  struct {
    uint32_t size;
    uint32_t flags;
  } in{1, 0};
  EXPECT_EQ(Send(FUSE_SETXATTR, hello, Bytes(in, {"user.x"}, "1")).error, EROFS);
  EXPECT_EQ(Send(FUSE_REMOVEXATTR, hello, Name("user.x")).error, EROFS);
}

TEST_F(FsTest, RootSquashRunsEveryRequestAsTheCaller) {
  REQUIRE_ROOT();
  Make({.root_squash = true});
  Init();
  guest_uid_ = 0;
  ASSERT_EQ(::chmod(root_.c_str(), 0755), 0);
  int err = 0;
  Create(1, "nope", &err);
  EXPECT_EQ(err, EACCES);  // root's directory: nobody may not write it
  uint64_t hello = LookupId(1, "hello.txt");
  fuse_setattr_in sa{};
  sa.valid = FATTR_MODE;
  sa.mode = 0777;
  EXPECT_EQ(Send(FUSE_SETATTR, hello, Bytes(sa)).error, EPERM);
  EXPECT_EQ(Send(FUSE_UNLINK, 1, Name("hello.txt")).error, EACCES);
  EXPECT_TRUE(stdfs::exists(root_ / "hello.txt"));
  ASSERT_EQ(::chmod(root_.c_str(), 0777), 0);
  ASSERT_NE(Create(1, "squashed").first, 0u);
  EXPECT_EQ(HostStat(root_ / "squashed").st_uid, 65534u);
  EXPECT_EQ(HostStat(root_ / "squashed").st_gid, 65534u);
  uint64_t mine = LookupId(1, "squashed");
  struct {
    uint32_t size;
    uint32_t flags;
  } in{1, 0};
  EXPECT_EQ(Send(FUSE_SETXATTR, mine, Bytes(in, {"security.capability"}, "1")).error, EPERM);
  EXPECT_EQ(Send(FUSE_SETXATTR, mine, Bytes(in, {"trusted.x"}, "1")).error, EPERM);
  // Other users are checked by the host too: 4321 may not unlink nobody's file in a sticky dir.
  ASSERT_EQ(::chmod(root_.c_str(), 01777), 0);
  guest_uid_ = 4321;
  EXPECT_EQ(Send(FUSE_UNLINK, 1, Name("squashed")).error, EPERM);
  guest_uid_ = 0;
  EXPECT_EQ(Send(FUSE_UNLINK, 1, Name("squashed")).error, 0);
}

// ---- Locks: guest locks are host locks (OFD for POSIX records, flock for flock) ----

fuse_lk_in Lk(uint64_t fh, uint64_t owner, uint32_t type, uint64_t start, uint64_t end, uint32_t pid = 0,
              uint32_t flags = 0) {
  fuse_lk_in in{};
  in.fh = fh;
  in.owner = owner;
  in.lk.type = type;
  in.lk.start = start;
  in.lk.end = end;
  in.lk.pid = pid;
  in.lk_flags = flags;
  return in;
}
constexpr uint64_t kEof = INT64_MAX;  // OFFSET_MAX: "to the end of the file"

struct flock HostRange(short type, off_t start, off_t len) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = start;
  fl.l_len = len;
  return fl;
}

// What a host process sees: F_OFD_GETLK through its own open of the file.
struct flock HostProbe(const stdfs::path& p, short type, off_t start, off_t len) {
  struct flock fl = HostRange(type, start, len);
  Fd fd(::open(p.c_str(), O_RDWR | O_CLOEXEC));
  EXPECT_TRUE(fd);
  EXPECT_EQ(::fcntl(fd.get(), F_OFD_GETLK, &fl), 0);
  return fl;
}

// A host process's lock: its own open of the file holding an OFD lock (closing it drops the lock).
Fd HostLock(const stdfs::path& p, short type, off_t start, off_t len) {
  Fd fd(::open(p.c_str(), O_RDWR | O_CLOEXEC));
  struct flock fl = HostRange(type, start, len);
  EXPECT_TRUE(fd);
  EXPECT_EQ(::fcntl(fd.get(), F_OFD_SETLK, &fl), 0);
  return fd;
}

class LockTest : public FsTest {
 protected:
  void SetUp() override {
    FsTest::SetUp();
    Make();
    Init();
    file_ = LookupId(1, "hello.txt");
    fh_ = Open(file_, O_RDWR);
    ASSERT_NE(fh_, 0u);
  }
  Answer SetLk(const fuse_lk_in& in, bool wait = false) {
    return Send(wait ? FUSE_SETLKW : FUSE_SETLK, file_, Bytes(in));
  }
  Answer GetLk(const fuse_lk_in& in) { return Send(FUSE_GETLK, file_, Bytes(in)); }
  // RetryParked(): the parked requests answered now, as (ticket, errno).
  std::vector<std::pair<uint64_t, int>> Retry() {
    std::vector<std::pair<uint64_t, int>> answered;
    fs_->RetryParked([&](uint64_t ticket, std::span<const uint8_t> reply) {
      fuse_out_header out{};
      EXPECT_EQ(reply.size(), sizeof(out));
      std::memcpy(&out, reply.data(), sizeof(out));
      EXPECT_EQ(out.unique, ticket);  // the tests use unique as the ticket
      answered.emplace_back(ticket, -out.error);
    });
    return answered;
  }
  Answer Flush(uint64_t fh, uint64_t owner) {
    fuse_flush_in in{};
    in.fh = fh;
    in.lock_owner = owner;
    return Send(FUSE_FLUSH, file_, Bytes(in));
  }
  Answer Release(uint64_t fh) {
    fuse_release_in in{};
    in.fh = fh;
    return Send(FUSE_RELEASE, file_, Bytes(in));
  }
  stdfs::path path() const { return root_ / "hello.txt"; }

  uint64_t file_ = 0;
  uint64_t fh_ = 0;
};

TEST_F(LockTest, PosixLocksAreHostOfdLocksOwnedPerGuestOwner) {
  const uint64_t a = 0xA, b = 0xB;
  EXPECT_EQ(SetLk(Lk(fh_, a, F_WRLCK, 0, 9, 100)).error, 0);
  // A host process sees the guest's lock and conflicts with it.
  struct flock host = HostProbe(path(), F_RDLCK, 0, 1);
  EXPECT_EQ(host.l_type, F_WRLCK);
  EXPECT_EQ(host.l_start, 0);
  EXPECT_EQ(host.l_len, 10);
  EXPECT_EQ(HostProbe(path(), F_WRLCK, 10, 5).l_type, F_UNLCK);
  // Another guest owner conflicts (on the same handle: the owner decides, not the fh).
  EXPECT_EQ(SetLk(Lk(fh_, b, F_RDLCK, 5, 5, 200)).error, EAGAIN);
  Answer got = GetLk(Lk(fh_, b, F_WRLCK, 0, kEof));
  ASSERT_EQ(got.error, 0);
  fuse_lk_out out = got.As<fuse_lk_out>();
  EXPECT_EQ(out.lk.type, static_cast<uint32_t>(F_WRLCK));
  EXPECT_EQ(out.lk.start, 0u);
  EXPECT_EQ(out.lk.end, 9u);
  EXPECT_EQ(out.lk.pid, 100u);  // the holder's guest pid
  // Its own lock never conflicts with the owner, and it may change it (split, downgrade).
  EXPECT_EQ(GetLk(Lk(fh_, a, F_WRLCK, 0, kEof)).As<fuse_lk_out>().lk.type, static_cast<uint32_t>(F_UNLCK));
  EXPECT_EQ(SetLk(Lk(fh_, a, F_RDLCK, 0, 4, 100)).error, 0);
  EXPECT_EQ(SetLk(Lk(fh_, b, F_RDLCK, 0, 4, 200)).error, 0);       // two readers
  EXPECT_EQ(SetLk(Lk(fh_, b, F_RDLCK, 5, 5, 200)).error, EAGAIN);  // a's write lock on 5..9 stays
  // A second open of the file by the same owner is the same owner (POSIX: per process).
  uint64_t fh2 = Open(file_, O_RDWR);
  EXPECT_EQ(SetLk(Lk(fh2, a, F_WRLCK, 20, kEof, 100)).error, 0);
  EXPECT_EQ(SetLk(Lk(fh2, a, F_UNLCK, 5, 9)).error, 0);
  EXPECT_EQ(SetLk(Lk(fh_, b, F_WRLCK, 5, 9, 200)).error, 0);
  // A host lock: the guest sees it (pid 0: a host pid means nothing there) and cannot take it.
  Fd host_fd = HostLock(path(), F_WRLCK, 12, 2);
  out = GetLk(Lk(fh_, b, F_RDLCK, 10, 15)).As<fuse_lk_out>();
  EXPECT_EQ(out.lk.type, static_cast<uint32_t>(F_WRLCK));
  EXPECT_EQ(out.lk.start, 12u);
  EXPECT_EQ(out.lk.end, 13u);
  EXPECT_EQ(out.lk.pid, 0u);
  EXPECT_EQ(SetLk(Lk(fh_, b, F_RDLCK, 13, 13, 200)).error, EAGAIN);
  // FLUSH (a close in the guest) drops every lock of that owner on the file, whichever fh.
  EXPECT_EQ(fs_->lock_owner_count(), 2u);
  EXPECT_EQ(Flush(fh_, a).error, 0);
  EXPECT_EQ(HostProbe(path(), F_WRLCK, 20, 0).l_type, F_UNLCK);
  EXPECT_EQ(HostProbe(path(), F_WRLCK, 0, 5).l_type, F_RDLCK);  // b's
  EXPECT_EQ(fs_->lock_owner_count(), 1u);
  // RELEASE of the last handle used drops the rest (a guest OFD lock's owner is its file).
  EXPECT_EQ(Release(fh2).error, 0);
  EXPECT_EQ(fs_->lock_owner_count(), 1u);  // b locked through fh_ only
  EXPECT_EQ(Release(fh_).error, 0);
  EXPECT_EQ(fs_->lock_owner_count(), 0u);
  EXPECT_EQ(HostProbe(path(), F_WRLCK, 0, 12).l_type, F_UNLCK);
}

TEST_F(LockTest, FlockIsHostFlockOnTheHandle) {
  uint64_t fh2 = Open(file_, O_RDONLY);
  EXPECT_EQ(SetLk(Lk(fh_, 1, F_WRLCK, 0, kEof, 0, FUSE_LK_FLOCK)).error, 0);
  Fd host(::open(path().c_str(), O_RDONLY | O_CLOEXEC));
  EXPECT_EQ(::flock(host.get(), LOCK_SH | LOCK_NB), -1);
  EXPECT_EQ(errno, EWOULDBLOCK);
  EXPECT_EQ(SetLk(Lk(fh2, 2, F_RDLCK, 0, kEof, 0, FUSE_LK_FLOCK)).error, EAGAIN);
  // flock and POSIX locks do not interact (Linux): a record lock is still free.
  EXPECT_EQ(SetLk(Lk(fh2, 2, F_RDLCK, 0, kEof, 7)).error, 0);
  EXPECT_EQ(SetLk(Lk(fh_, 1, F_RDLCK, 0, kEof, 0, FUSE_LK_FLOCK)).error, 0);  // downgrade
  EXPECT_EQ(::flock(host.get(), LOCK_SH | LOCK_NB), 0);
  EXPECT_EQ(::flock(host.get(), LOCK_UN), 0);
  EXPECT_EQ(SetLk(Lk(fh_, 1, F_WRLCK, 0, kEof, 0, FUSE_LK_FLOCK)).error, 0);
  EXPECT_EQ(Release(fh_).error, 0);  // the handle's close releases its flock
  EXPECT_EQ(::flock(host.get(), LOCK_EX | LOCK_NB), 0);
  EXPECT_EQ(SetLk(Lk(fh2, 2, F_RDLCK, 0, kEof, 0, FUSE_LK_FLOCK)).error, EAGAIN);  // the host's now
}

TEST_F(LockTest, SetlkwParksAndIsAnsweredWhenTheLockIsFree) {
  EXPECT_EQ(SetLk(Lk(fh_, 1, F_WRLCK, 0, kEof, 10)).error, 0);
  Answer wait = SetLk(Lk(fh_, 2, F_WRLCK, 0, 0, 20), true);
  ASSERT_TRUE(wait.parked);
  const uint64_t ticket = unique_;
  EXPECT_EQ(fs_->parked_count(), 1u);
  EXPECT_TRUE(Retry().empty());
  // Other requests are served meanwhile (the worker is not blocked).
  EXPECT_EQ(Lookup(1, "sub").error, 0);
  EXPECT_EQ(SetLk(Lk(fh_, 1, F_UNLCK, 0, kEof)).error, 0);
  auto answered = Retry();
  ASSERT_EQ(answered.size(), 1u);
  EXPECT_EQ(answered[0], std::make_pair(ticket, 0));
  EXPECT_EQ(fs_->parked_count(), 0u);
  EXPECT_EQ(HostProbe(path(), F_RDLCK, 0, 1).l_type, F_WRLCK);  // granted: owner 2 holds it
  // A host holder: parked until the host unlocks.
  Fd host = HostLock(path(), F_WRLCK, 100, 1);
  ASSERT_TRUE(SetLk(Lk(fh_, 3, F_RDLCK, 100, 100, 30), true).parked);
  EXPECT_EQ(SetLk(Lk(fh_, 4, F_WRLCK, 0, kEof, 40, FUSE_LK_FLOCK), true).error, 0);  // flock: free
  EXPECT_EQ(SetLk(Lk(fh_, 4, F_UNLCK, 0, kEof, 0, FUSE_LK_FLOCK)).error, 0);
  EXPECT_TRUE(Retry().empty());
  host.reset();  // the host process closes: its lock goes
  EXPECT_EQ(Retry().size(), 1u);
}

TEST_F(LockTest, FlockWaitsParkToo) {
  Fd host(::open(path().c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_EQ(::flock(host.get(), LOCK_EX), 0);
  ASSERT_TRUE(SetLk(Lk(fh_, 1, F_RDLCK, 0, kEof, 0, FUSE_LK_FLOCK), true).parked);
  EXPECT_TRUE(Retry().empty());
  ASSERT_EQ(::flock(host.get(), LOCK_UN), 0);
  auto answered = Retry();
  ASSERT_EQ(answered.size(), 1u);
  EXPECT_EQ(answered[0].second, 0);
  EXPECT_EQ(::flock(host.get(), LOCK_EX | LOCK_NB), -1);  // the guest's shared lock now
}

TEST_F(LockTest, AWaitThatClosesACycleOfGuestOwnersIsEdeadlk) {
  EXPECT_EQ(SetLk(Lk(fh_, 1, F_WRLCK, 0, 9, 10)).error, 0);
  EXPECT_EQ(SetLk(Lk(fh_, 2, F_WRLCK, 10, 19, 20)).error, 0);
  ASSERT_TRUE(SetLk(Lk(fh_, 2, F_WRLCK, 0, 0, 20), true).parked);          // 2 waits for 1
  EXPECT_EQ(SetLk(Lk(fh_, 1, F_WRLCK, 10, 10, 10), true).error, EDEADLK);  // 1 would wait for 2
  // Three owners: 3 holds 20..29 and waits for 2; 1 waiting for 3 waits (via 2) for itself.
  EXPECT_EQ(SetLk(Lk(fh_, 3, F_WRLCK, 20, 29, 30)).error, 0);
  ASSERT_TRUE(SetLk(Lk(fh_, 3, F_WRLCK, 15, 15, 30), true).parked);
  EXPECT_EQ(SetLk(Lk(fh_, 1, F_WRLCK, 25, 25, 10), true).error, EDEADLK);
  // Not a cycle: 4 waits for 1, which waits for nobody.
  ASSERT_TRUE(SetLk(Lk(fh_, 4, F_WRLCK, 5, 5, 40), true).parked);
  EXPECT_EQ(fs_->parked_count(), 3u);
  EXPECT_EQ(Flush(fh_, 1).error, 0);  // 1 closes: 2 gets 0..0, then 4 gets 5
  auto answered = Retry();
  EXPECT_EQ(answered.size(), 2u);
  EXPECT_EQ(fs_->parked_count(), 1u);  // 3 still waits for 2
}

TEST_F(LockTest, ParkedWaitsEndOnReleaseSnapshotDestroyAndReset) {
  EXPECT_EQ(SetLk(Lk(fh_, 1, F_WRLCK, 0, kEof, 10)).error, 0);
  uint64_t fh2 = Open(file_, O_RDWR);
  ASSERT_TRUE(SetLk(Lk(fh2, 2, F_WRLCK, 0, 0, 20), true).parked);
  EXPECT_EQ(Release(fh2).error, 0);  // only a hostile guest releases a handle with a wait on it
  auto answered = Retry();
  ASSERT_EQ(answered.size(), 1u);
  EXPECT_EQ(answered[0].second, EBADF);
  ASSERT_TRUE(SetLk(Lk(fh_, 2, F_WRLCK, 0, 0, 20), true).parked);
  fs_->AnswerParked(ENOLCK);  // a snapshot
  answered = Retry();
  ASSERT_EQ(answered.size(), 1u);
  EXPECT_EQ(answered[0].second, ENOLCK);
  // Snapshots hold no locks: the state names none, a restored server holds none.
  nlohmann::json state = fs_->SaveState();
  EXPECT_EQ(state.dump().find("lock"), std::string::npos);
  ASSERT_TRUE(SetLk(Lk(fh_, 2, F_WRLCK, 0, 0, 20), true).parked);
  EXPECT_EQ(Send(FUSE_DESTROY, 0, {}).error, 0);  // the guest unmounts
  answered = Retry();
  ASSERT_EQ(answered.size(), 1u);
  EXPECT_EQ(answered[0].second, EIO);
  EXPECT_EQ(HostProbe(path(), F_WRLCK, 0, 0).l_type, F_UNLCK);  // DESTROY closed everything
  Init();
  file_ = LookupId(1, "hello.txt");
  fh_ = Open(file_, O_RDWR);
  EXPECT_EQ(SetLk(Lk(fh_, 1, F_WRLCK, 0, kEof, 10)).error, 0);
  ASSERT_TRUE(SetLk(Lk(fh_, 2, F_WRLCK, 0, 0, 20), true).parked);
  fs_->EndSession();  // a device reset: the device abandons the requests, nothing is answered
  EXPECT_EQ(fs_->parked_count(), 0u);
  EXPECT_TRUE(Retry().empty());
  EXPECT_EQ(HostProbe(path(), F_WRLCK, 0, 0).l_type, F_UNLCK);
}

TEST_F(LockTest, ParkedWaitsAreBounded) {
  EXPECT_EQ(SetLk(Lk(fh_, 1, F_WRLCK, 0, kEof, 10)).error, 0);
  for (size_t i = 0; i < PassthroughFs::kMaxParked; ++i) {
    ASSERT_TRUE(SetLk(Lk(fh_, 100 + i, F_RDLCK, i, i, 20), true).parked) << i;
  }
  EXPECT_EQ(SetLk(Lk(fh_, 99, F_RDLCK, 0, 0, 20), true).error, ENOLCK);
  EXPECT_EQ(SetLk(Lk(fh_, 1, F_UNLCK, 0, kEof)).error, 0);
  EXPECT_EQ(Retry().size(), PassthroughFs::kMaxParked);
}

TEST_F(LockTest, MalformedLockRequestsAreEinval) {
  EXPECT_EQ(Send(FUSE_SETLK, file_, {1, 2, 3}).error, EINVAL);
  EXPECT_EQ(Send(FUSE_GETLK, file_, {1, 2, 3}).error, EINVAL);
  EXPECT_EQ(SetLk(Lk(fh_, 1, 7, 0, 0)).error, EINVAL);               // no such type
  EXPECT_EQ(SetLk(Lk(fh_, 1, F_WRLCK, 10, 9)).error, EINVAL);        // start > end
  EXPECT_EQ(SetLk(Lk(fh_, 1, F_WRLCK, 0, kEof + 1)).error, EINVAL);  // past OFFSET_MAX
  EXPECT_EQ(SetLk(Lk(fh_, 1, F_WRLCK, kEof + 1, UINT64_MAX)).error, EINVAL);
  EXPECT_EQ(SetLk(Lk(fh_, 1, F_WRLCK, 0, 0, 0, 2)).error, EINVAL);      // unknown lk_flags
  EXPECT_EQ(SetLk(Lk(fh_, 1, F_WRLCK, 0, 0, 1u << 31)).error, EINVAL);  // no such pid
  EXPECT_EQ(GetLk(Lk(fh_, 1, F_UNLCK, 0, 0)).error, EINVAL);            // GETLK of nothing
  EXPECT_EQ(GetLk(Lk(fh_, 1, F_WRLCK, 0, 0, 0, FUSE_LK_FLOCK)).error, EINVAL);
  EXPECT_EQ(SetLk(Lk(999, 1, F_WRLCK, 0, 0)).error, EBADF);                                         // unknown fh
  EXPECT_EQ(Send(FUSE_SETLK, LookupId(1, "sub"), Bytes(Lk(fh_, 1, F_WRLCK, 0, 0))).error, EINVAL);  // fh of another
  fuse_open_in oin{};
  uint64_t dir_fh = Send(FUSE_OPENDIR, 1, Bytes(oin)).As<fuse_open_out>().fh;
  EXPECT_EQ(Send(FUSE_SETLK, 1, Bytes(Lk(dir_fh, 1, F_WRLCK, 0, 0))).error, EBADF);  // directories: guest-local
  uint64_t ro = Open(file_, O_RDONLY);
  EXPECT_EQ(SetLk(Lk(ro, 1, F_WRLCK, 0, 0)).error, EBADF);  // a write lock needs a writable open
  EXPECT_EQ(SetLk(Lk(ro, 1, F_RDLCK, 0, 0)).error, 0);
  EXPECT_EQ(fs_->parked_count(), 0u);
  EXPECT_EQ(HostProbe(path(), F_WRLCK, 1, 0).l_type, F_UNLCK);  // nothing else was taken
}

TEST_F(FsTest, LocksWorkOnAReadOnlyShare) {
  Make({.read_only = true});
  Init();
  uint64_t file = LookupId(1, "hello.txt");
  uint64_t fh = Open(file, O_RDONLY);
  ASSERT_NE(fh, 0u);
  EXPECT_EQ(Send(FUSE_SETLK, file, Bytes(Lk(fh, 1, F_RDLCK, 0, kEof, 5))).error, 0);  // not a change
  EXPECT_EQ(Send(FUSE_SETLK, file, Bytes(Lk(fh, 1, F_WRLCK, 0, kEof, 5))).error, EBADF);
  EXPECT_EQ(Send(FUSE_SETLK, file, Bytes(Lk(fh, 1, F_WRLCK, 0, kEof, 5, FUSE_LK_FLOCK))).error, 0);
  EXPECT_EQ(HostProbe(root_ / "hello.txt", F_WRLCK, 0, 0).l_type, F_RDLCK);
  Fd host(::open((root_ / "hello.txt").c_str(), O_RDONLY | O_CLOEXEC));
  EXPECT_EQ(::flock(host.get(), LOCK_SH | LOCK_NB), -1);
}

TEST_F(LockTest, AnOwnerMovesFromReadOnlyToWritableOpensWhileHoldingNothing) {
  uint64_t ro = Open(file_, O_RDONLY);
  EXPECT_EQ(SetLk(Lk(ro, 1, F_RDLCK, 0, 0, 10)).error, 0);
  EXPECT_EQ(SetLk(Lk(fh_, 1, F_WRLCK, 5, 5, 10)).error, ENOLCK);  // its read lock is on a read-only open
  EXPECT_EQ(SetLk(Lk(ro, 1, F_UNLCK, 0, kEof)).error, 0);
  EXPECT_EQ(SetLk(Lk(fh_, 1, F_WRLCK, 5, 5, 10)).error, 0);
  EXPECT_EQ(SetLk(Lk(ro, 1, F_RDLCK, 0, 0, 10)).error, 0);  // the new description reads too
  EXPECT_EQ(HostProbe(path(), F_WRLCK, 0, 1).l_type, F_RDLCK);
  EXPECT_EQ(HostProbe(path(), F_RDLCK, 5, 1).l_type, F_WRLCK);
}

// ---- POSIX ACLs (FUSE_POSIX_ACL where the host file system has them) ----

// A system.posix_acl_* value: {le32 version 2} then {le16 tag, le16 perm, le32 id} entries.
std::string AclBlob(std::initializer_list<std::tuple<uint16_t, uint16_t, uint32_t>> entries) {
  std::string blob(4, '\0');
  blob[0] = 2;
  for (auto [tag, perm, id] : entries) {
    char e[8];
    std::memcpy(e, &tag, 2);
    std::memcpy(e + 2, &perm, 2);
    std::memcpy(e + 4, &id, 4);
    blob.append(e, 8);
  }
  return blob;
}
constexpr uint16_t kUserObj = 0x01, kUser = 0x02, kGroupObj = 0x04, kGroup = 0x08, kMask = 0x10, kOther = 0x20;
constexpr uint32_t kNoId = UINT32_MAX;

class AclTest : public FsTest {
 protected:
  void SetUp() override {
    FsTest::SetUp();
    Make();
    if (!fs_->has_posix_acl()) GTEST_SKIP() << "the host file system has no POSIX ACLs";
    Init(FUSE_DONT_MASK | FUSE_SETXATTR_EXT);
  }
  int SetAcl(uint64_t node, const char* name, const std::string& blob, uint32_t setxattr_flags = 0) {
    fuse_setxattr_in in{};
    in.size = static_cast<uint32_t>(blob.size());
    in.setxattr_flags = setxattr_flags;
    return Send(FUSE_SETXATTR, node, Bytes(in, {name}, blob)).error;
  }
};

TEST_F(AclTest, AclsPassThroughAndTheHostUpdatesTheMode) {
  uint64_t hello = LookupId(1, "hello.txt");
  ASSERT_EQ(::chmod((root_ / "hello.txt").c_str(), 0644), 0);
  std::string acl =
      AclBlob({{kUserObj, 6, kNoId}, {kUser, 6, 4321}, {kGroupObj, 4, kNoId}, {kMask, 6, kNoId}, {kOther, 0, kNoId}});
  ASSERT_EQ(SetAcl(hello, "system.posix_acl_access", acl), 0);
  char buf[128];
  ssize_t n = ::getxattr((root_ / "hello.txt").c_str(), "system.posix_acl_access", buf, sizeof(buf));
  ASSERT_EQ(n, static_cast<ssize_t>(acl.size()));
  EXPECT_EQ(std::string(buf, static_cast<size_t>(n)), acl);
  EXPECT_EQ(HostStat(root_ / "hello.txt").st_mode & 0777, 0660u);  // group bits are the mask, other none
  fuse_getxattr_in gin{};
  gin.size = 128;
  EXPECT_EQ(Send(FUSE_GETXATTR, hello, Bytes(gin, {"system.posix_acl_access"})).Text(), acl);
  // chmod changes the ACL's mask (the host's posix_acl_chmod).
  fuse_setattr_in sa{};
  sa.valid = FATTR_MODE;
  sa.mode = 0640;
  ASSERT_EQ(Send(FUSE_SETATTR, hello, Bytes(sa)).error, 0);
  n = ::getxattr((root_ / "hello.txt").c_str(), "system.posix_acl_access", buf, sizeof(buf));
  ASSERT_EQ(n, static_cast<ssize_t>(acl.size()));
  uint16_t mask_perm;
  std::memcpy(&mask_perm, buf + 4 + 8 * 3 + 2, 2);
  EXPECT_EQ(mask_perm, 4);
  EXPECT_EQ(Send(FUSE_REMOVEXATTR, hello, Name("system.posix_acl_access")).error, 0);
  EXPECT_EQ(::getxattr((root_ / "hello.txt").c_str(), "system.posix_acl_access", buf, sizeof(buf)), -1);
  // A malformed ACL is the host's to refuse.
  EXPECT_EQ(SetAcl(hello, "system.posix_acl_access", std::string("\x02\0\0\0xyz", 7)), EINVAL);
  EXPECT_EQ(SetAcl(hello, "system.posix_acl_access", "junk"), EOPNOTSUPP);  // not version 2
}

TEST_F(AclTest, NewInodesInheritTheDefaultAclWithoutTheUmask) {
  stdfs::create_directory(root_ / "inh");
  uint64_t inh = LookupId(1, "inh");
  ASSERT_EQ(SetAcl(inh, "system.posix_acl_default",
                   AclBlob({{kUserObj, 7, kNoId}, {kGroupObj, 5, kNoId}, {kOther, 5, kNoId}})),
            0);
  fuse_create_in in{};
  in.flags = O_RDWR | O_CREAT | O_EXCL;
  in.mode = S_IFREG | 0666;
  in.umask = 077;
  ASSERT_EQ(Send(FUSE_CREATE, inh, Bytes(in, {"f"})).error, 0);
  ASSERT_EQ(Send(FUSE_CREATE, 1, Bytes(in, {"plain"})).error, 0);
  fuse_mkdir_in mk{};
  mk.mode = 0777;
  mk.umask = 077;
  ASSERT_EQ(Send(FUSE_MKDIR, inh, Bytes(mk, {"d"})).error, 0);
  fuse_mknod_in mn{};
  mn.mode = S_IFIFO | 0666;
  mn.umask = 077;
  ASSERT_EQ(Send(FUSE_MKNOD, inh, Bytes(mn, {"p"})).error, 0);
  EXPECT_EQ(HostStat(root_ / "inh" / "f").st_mode & 07777, 0644u);  // 0666 & the ACL, no umask
  EXPECT_EQ(HostStat(root_ / "inh" / "d").st_mode & 07777, 0755u);
  EXPECT_EQ(HostStat(root_ / "inh" / "p").st_mode & 07777, 0644u);
  EXPECT_EQ(HostStat(root_ / "plain").st_mode & 07777, 0600u);  // no default ACL: the umask
  // The new directory inherits the default ACL as its own default.
  EXPECT_GT(::getxattr((root_ / "inh" / "d").c_str(), "system.posix_acl_default", nullptr, 0), 0);
}

TEST_F(AclTest, KillSgidFlagClearsSetGidWhenTheAccessAclIsSet) {
  uint64_t hello = LookupId(1, "hello.txt");
  const std::string acl = AclBlob({{kUserObj, 7, kNoId}, {kGroupObj, 5, kNoId}, {kOther, 0, kNoId}});
  ASSERT_EQ(::chmod((root_ / "hello.txt").c_str(), 02755), 0);
  ASSERT_EQ(SetAcl(hello, "system.posix_acl_access", acl), 0);
  EXPECT_EQ(HostStat(root_ / "hello.txt").st_mode & 07777, 02750u);  // root may keep it
  ASSERT_EQ(SetAcl(hello, "system.posix_acl_access", acl, FUSE_SETXATTR_ACL_KILL_SGID), 0);
  EXPECT_EQ(HostStat(root_ / "hello.txt").st_mode & 07777, 0750u);
  EXPECT_EQ(SetAcl(hello, "system.posix_acl_access", acl, 0x80), EINVAL);  // unknown flag
  fuse_setxattr_in in{};
  in.size = 1;
  std::vector<uint8_t> short_ext = Bytes(in);
  short_ext.resize(12);  // 12 of the 16 bytes
  EXPECT_EQ(Send(FUSE_SETXATTR, hello, short_ext).error, EINVAL);
}

TEST_F(AclTest, WithoutPosixAclNegotiatedAclChangesAreRefused) {
  Make();
  fuse_init_in in{};
  in.major = 7;
  in.minor = 31;
  ASSERT_EQ(Send(FUSE_INIT, 0, Bytes(in)).error, 0);
  uint64_t hello = LookupId(1, "hello.txt");
  struct {
    uint32_t size;
    uint32_t flags;
  } set{28, 0};
  std::string acl = AclBlob({{kUserObj, 6, kNoId}, {kGroupObj, 4, kNoId}, {kOther, 0, kNoId}});
  EXPECT_EQ(Send(FUSE_SETXATTR, hello, Bytes(set, {"system.posix_acl_access"}, acl)).error, EOPNOTSUPP);
  EXPECT_EQ(Send(FUSE_REMOVEXATTR, hello, Name("system.posix_acl_default")).error, EOPNOTSUPP);
}

TEST_F(AclTest, ANamedGroupOfTheParentsAclLetsTheCallerCreate) {
  REQUIRE_ROOT();
  stdfs::create_directory(root_ / "team");
  ASSERT_EQ(::chmod((root_ / "team").c_str(), 0755), 0);  // root:root, not writable by the group
  uint64_t team = LookupId(1, "team");
  ASSERT_EQ(
      SetAcl(
          team, "system.posix_acl_access",
          AclBlob(
              {{kUserObj, 7, kNoId}, {kGroupObj, 5, kNoId}, {kGroup, 7, 5000}, {kMask, 7, kNoId}, {kOther, 5, kNoId}})),
      0);
  guest_uid_ = 4321;  // the guest checked its membership in 5000
  guest_gid_ = 4321;
  int err = 0;
  ASSERT_NE(Create(team, "ours", &err).first, 0u) << err;
  EXPECT_EQ(HostStat(root_ / "team" / "ours").st_uid, 4321u);
  EXPECT_EQ(HostStat(root_ / "team" / "ours").st_gid, 4321u);
  // Without write for that group the host still refuses (the ACL is what grants it).
  stdfs::create_directory(root_ / "closed");
  ASSERT_EQ(::chmod((root_ / "closed").c_str(), 0755), 0);
  Create(LookupId(1, "closed"), "nope", &err);
  EXPECT_EQ(err, EACCES);
}

TEST_F(AclTest, RootSquashStillLetsOnlyTheOwnerSetAcls) {
  REQUIRE_ROOT();
  Make({.root_squash = true});
  Init(FUSE_DONT_MASK | FUSE_SETXATTR_EXT);
  uint64_t hello = LookupId(1, "hello.txt");  // root's
  const std::string acl = AclBlob({{kUserObj, 6, kNoId}, {kGroupObj, 6, kNoId}, {kOther, 6, kNoId}});
  guest_uid_ = 0;  // squashed to nobody
  EXPECT_EQ(SetAcl(hello, "system.posix_acl_access", acl), EPERM);
  EXPECT_EQ(Send(FUSE_REMOVEXATTR, hello, Name("system.posix_acl_access")).error, EPERM);
  ASSERT_EQ(::chown((root_ / "hello.txt").c_str(), 4321, 4321), 0);
  guest_uid_ = 4321;
  EXPECT_EQ(SetAcl(hello, "system.posix_acl_access", acl), 0);
  EXPECT_EQ(HostStat(root_ / "hello.txt").st_mode & 0777, 0666u);
}

}  // namespace
}  // namespace clonevm::fs

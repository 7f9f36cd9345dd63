// fsposix — a compact POSIX file-system conformance suite (Clone's own test data, for
// tests/e2e/fsposix_test.sh). Usage: fsposix DIR   (run as root; DIR is created, must not exist)
//
// Covers what a local Linux file system does and a network/FUSE passthrough often gets wrong:
// permission checks as unprivileged users (forked children that setgroups/setgid/setuid), owner
// and group of every kind of new inode (setgid directories included), umask, set-uid/set-gid
// clearing on write/chown/chmod, sticky-directory rules for unlink and rename, rename semantics
// and flags (NOREPLACE, EXCHANGE, WHITEOUT), link counts, c/m/atime updates, utimensat with
// UTIME_NOW/UTIME_OMIT, extended attributes (user.*, security.capability), POSIX ACLs (access
// and default, inheritance without the umask, the mask, named users and groups), flock, fcntl
// record and OFD locks (conflicts, F_GETLK's holder, blocking waits, EDEADLK, close semantics),
// mknod/mkfifo, open flags. With a second argument "host", locks are also checked against a host
// process (`fsposix hostside DIR` on the host, run by tests/e2e/fsposix_test.sh). Each assertion
// prints "ok|FAIL <n> <what>"; the last line is "N passed, M failed". The exit status is 0 when
// the suite ran to the end. Build: gcc -static -O1 -o fsposix fsposix.c
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#define RENAME_EXCHANGE (1 << 1)
#define RENAME_WHITEOUT (1 << 2)
#endif

// Counters shared with the forked children that run as other users.
static struct { int passed, failed, n; } * g;
static const char* section = "";

static void result(int ok, const char* fmt, ...) {
  va_list ap;
  char what[256];
  va_start(ap, fmt);
  vsnprintf(what, sizeof(what), fmt, ap);
  va_end(ap);
  int n = __atomic_add_fetch(&g->n, 1, __ATOMIC_SEQ_CST);
  if (ok) {
    __atomic_add_fetch(&g->passed, 1, __ATOMIC_SEQ_CST);
    printf("ok %d %s: %s\n", n, section, what);
  } else {
    __atomic_add_fetch(&g->failed, 1, __ATOMIC_SEQ_CST);
    printf("FAIL %d %s: %s (errno %d %s)\n", n, section, what, errno, strerror(errno));
  }
  fflush(stdout);
}
// The call succeeded (returned >= 0).
#define OK(call) result((call) >= 0, "%s", #call)
// The call failed with errno E.
#define ERR(E, call)                                      \
  do {                                                    \
    errno = 0;                                            \
    long r_ = (long)(call);                               \
    int e_ = errno;                                       \
    result(r_ == -1 && e_ == (E), "%s -> %s", #call, #E); \
  } while (0)
#define IS(cond) result((cond), "%s", #cond)

enum { U1 = 1001, U2 = 1002, G1 = 1001, G2 = 1002, G3 = 3000 };

// Runs fn as uid/gid with the given supplementary groups in a child; waits.
static void as_user(uid_t uid, gid_t gid, int ngroups, const gid_t* groups, void (*fn)(void)) {
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    if (setgroups(ngroups, groups) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
      result(0, "switch to %u:%u", uid, gid);
      _exit(1);
    }
    fn();
    fflush(stdout);
    _exit(0);
  }
  int status;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status)) result(0, "child as %u died", uid);
}
static void as_u1(void (*fn)(void)) { as_user(U1, G1, 0, NULL, fn); }
static void as_u2(void (*fn)(void)) { as_user(U2, G2, 0, NULL, fn); }

static struct stat st_of(const char* p) {
  struct stat st;
  memset(&st, 0, sizeof(st));
  if (lstat(p, &st) != 0) st.st_mode = 0;
  return st;
}
static mode_t mode_of(const char* p) { return st_of(p).st_mode & 07777; }
static int ts_after(struct timespec a, struct timespec b) {  // a > b
  return a.tv_sec > b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec > b.tv_nsec);
}
static int ts_eq(struct timespec a, struct timespec b) { return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec; }
static void pause_clock(void) { usleep(20000); }  // so the next timestamp differs
static int touch(const char* p, mode_t mode) {
  int fd = open(p, O_CREAT | O_WRONLY | O_TRUNC, mode);
  if (fd < 0) return -1;
  return close(fd);
}
static int write_str(const char* p, const char* s) {
  int fd = open(p, O_WRONLY | O_APPEND);
  if (fd < 0) return -1;
  ssize_t n = write(fd, s, strlen(s));
  close(fd);
  return n == (ssize_t)strlen(s) ? 0 : -1;
}
static int mksock(const char* p) {
  int s = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  snprintf(a.sun_path, sizeof(a.sun_path), "%s", p);
  int r = bind(s, (struct sockaddr*)&a, sizeof(a));
  close(s);
  return r;
}
// Makes an inode of kind k at p: 0 file, 1 dir, 2 fifo, 3 symlink, 4 socket.
static const char* kinds[] = {"file", "dir", "fifo", "symlink", "socket"};
static int make_kind(int k, const char* p) {
  switch (k) {
    case 0:
      return touch(p, 0644);
    case 1:
      return mkdir(p, 0755);
    case 2:
      return mkfifo(p, 0644);
    case 3:
      return symlink("target", p);
    default:
      return mksock(p);
  }
}
static int remove_kind(int k, const char* p) { return k == 1 ? rmdir(p) : unlink(p); }

// ---- ownership of new inodes ----
static void own_u1(void) {
  for (int k = 0; k < 5; ++k) {
    char p[64];
    snprintf(p, sizeof(p), "own/u1-%s", kinds[k]);
    result(make_kind(k, p) == 0, "user creates a %s", kinds[k]);
    struct stat st = st_of(p);
    result(st.st_uid == U1 && st.st_gid == G1, "new %s owned by the creator %u:%u", kinds[k], st.st_uid, st.st_gid);
  }
  for (int k = 0; k < 5; ++k) {
    char p[64];
    snprintf(p, sizeof(p), "own/sg/u1-%s", kinds[k]);
    result(make_kind(k, p) == 0, "user creates a %s in a set-gid dir", kinds[k]);
    struct stat st = st_of(p);
    result(st.st_uid == U1 && st.st_gid == G3, "%s in set-gid dir gets the dir's group (%u)", kinds[k], st.st_gid);
  }
  IS(mode_of("own/sg/u1-dir") & S_ISGID);
  ERR(EACCES, touch("own/rootonly/x", 0644));
  ERR(EACCES, mkdir("own/rootonly/d", 0755));
  ERR(EACCES, mkfifo("own/rootonly/p", 0644));
  ERR(EACCES, symlink("t", "own/rootonly/l"));
  ERR(EPERM, mknod("own/u1-chr", S_IFCHR | 0644, makedev(1, 3)));
}
static void test_ownership(void) {
  section = "ownership";
  OK(mkdir("own", 0777));
  OK(chmod("own", 0777));
  OK(mkdir("own/sg", 0777));
  OK(chown("own/sg", 0, G3));
  OK(chmod("own/sg", 02777));
  OK(mkdir("own/rootonly", 0755));
  for (int k = 0; k < 5; ++k) {
    char p[64];
    snprintf(p, sizeof(p), "own/root-%s", kinds[k]);
    result(make_kind(k, p) == 0, "root creates a %s", kinds[k]);
    struct stat st = st_of(p);
    IS(st.st_uid == 0 && st.st_gid == 0);
  }
  OK(mknod("own/chr", S_IFCHR | 0644, makedev(1, 3)));
  struct stat st = st_of("own/chr");
  IS(S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3));
  OK(mknod("own/blk", S_IFBLK | 0600, makedev(7, 0)));
  IS(S_ISBLK(st_of("own/blk").st_mode));
  as_u1(own_u1);
}

// ---- umask ----
static void test_umask(void) {
  section = "umask";
  OK(mkdir("um", 0777));
  mode_t old = umask(022);
  OK(touch("um/f022", 0777));
  IS(mode_of("um/f022") == 0755);
  OK(mkdir("um/d022", 0777));
  IS(mode_of("um/d022") == 0755);
  OK(mkfifo("um/p022", 0666));
  IS(mode_of("um/p022") == 0644);
  umask(0);
  OK(touch("um/f000", 0777));
  IS(mode_of("um/f000") == 0777);
  OK(mkdir("um/d000", 0777));
  IS(mode_of("um/d000") == 0777);
  umask(077);
  OK(touch("um/f077", 0666));
  IS(mode_of("um/f077") == 0600);
  OK(mknod("um/n077", S_IFIFO | 0666, 0));
  IS(mode_of("um/n077") == 0600);
  umask(old);
}

// ---- permission checks as users ----
static void perm_u1(void) {
  ERR(EACCES, open("perm/secret", O_RDONLY));
  ERR(EACCES, open("perm/rootfile", O_WRONLY));
  ERR(EACCES, open("perm/rootfile", O_RDWR));
  OK(close(open("perm/rootfile", O_RDONLY)));
  ERR(EACCES, truncate("perm/rootfile", 0));
  ERR(EPERM, chmod("perm/rootfile", 0777));
  ERR(EPERM, chown("perm/rootfile", U1, G1));
  ERR(EACCES, unlink("perm/ro/f"));
  ERR(EACCES, rename("perm/ro/f", "perm/moved"));
  ERR(EACCES, mkdir("perm/ro/d", 0755));
  ERR(EACCES, open("perm/closed/x", O_RDONLY));
  ERR(EACCES, opendir("perm/closed") ? 0 : -1);
  ERR(EACCES, access("perm/rootfile", W_OK));
  OK(access("perm/rootfile", R_OK));
  ERR(EACCES, access("perm/secret", R_OK));
  ERR(EACCES, utimensat(AT_FDCWD, "perm/rootfile", NULL, 0));
  OK(utimensat(AT_FDCWD, "perm/shared", NULL, 0));  // writable: "now" is allowed
  struct timespec t[2] = {{1000, 0}, {2000, 0}};
  ERR(EPERM, utimensat(AT_FDCWD, "perm/shared", t, 0));  // explicit times: owner only
  OK(write_str("perm/shared", "u1"));
  OK(touch("perm/open/mine", 0600));
  OK(chmod("perm/open/mine", 0640));
  IS(mode_of("perm/open/mine") == 0640);
  ERR(EPERM, chown("perm/open/mine", U2, -1));
  ERR(EPERM, chown("perm/open/mine", -1, G2));
  OK(chown("perm/open/mine", -1, G1));
  OK(utimensat(AT_FDCWD, "perm/open/mine", t, 0));
  IS(st_of("perm/open/mine").st_mtim.tv_sec == 2000);
  ERR(EPERM, link("perm/secret", "perm/open/stolen"));  // protected_hardlinks (set by main)
  ERR(EPERM, chmod("perm/u2file", 0666));
}
static void perm_u1_groups(void) {
  OK(chown("perm/open/mine", -1, G3));  // a supplementary group the user has
  IS(st_of("perm/open/mine").st_gid == G3);
  OK(close(open("perm/groupfile", O_RDWR)));  // group-writable through a supplementary group
  OK(write_str("perm/groupfile", "g"));
  OK(touch("perm/groupdir/new", 0644));  // a directory writable through that group
  IS(st_of("perm/groupdir/new").st_uid == U1);
}
static void perm_u2(void) { OK(touch("perm/u2file", 0644)); }
static void test_permissions(void) {
  section = "permissions";
  OK(mkdir("perm", 0755));
  OK(touch("perm/secret", 0600));
  OK(touch("perm/rootfile", 0644));
  OK(touch("perm/shared", 0666));
  OK(chmod("perm/shared", 0666));
  OK(mkdir("perm/ro", 0755));
  OK(touch("perm/ro/f", 0644));
  OK(mkdir("perm/closed", 0700));
  OK(touch("perm/closed/x", 0644));
  OK(mkdir("perm/open", 0777));
  OK(chmod("perm/open", 0777));
  OK(chmod("perm", 0777));
  OK(touch("perm/groupfile", 0660));
  OK(chown("perm/groupfile", 0, G3));
  OK(chmod("perm/groupfile", 0660));
  OK(mkdir("perm/groupdir", 0770));
  OK(chown("perm/groupdir", 0, G3));
  OK(chmod("perm/groupdir", 0770));
  as_u2(perm_u2);
  as_u1(perm_u1);
  gid_t groups[] = {G3};
  as_user(U1, G1, 1, groups, perm_u1_groups);
}

// ---- set-uid / set-gid clearing ----
static void setid_u1(void) {
  OK(write_str("setid/w", "x"));  // the owner writes
  IS((mode_of("setid/w") & (S_ISUID | S_ISGID)) == 0);
  OK(write_str("setid/gw", "x"));  // a group member writes someone else's set-gid file
  IS((mode_of("setid/gw") & (S_ISUID | S_ISGID)) == 0);
  OK(truncate("setid/t", 0));
  IS((mode_of("setid/t") & S_ISUID) == 0);
  OK(chmod("setid/m", 02755));  // not in group G3: the set-gid bit is dropped
  IS(mode_of("setid/m") == 0755);
  OK(chmod("setid/m", 04755));
  IS(mode_of("setid/m") == 04755);
  OK(chown("setid/m", -1, G1));  // chown by the owner clears set-uid
  IS(mode_of("setid/m") == 0755);
}
static void test_setid(void) {
  section = "set-id";
  OK(mkdir("setid", 0777));
  OK(chmod("setid", 0777));
  const char* files[] = {"setid/w", "setid/t", "setid/m", "setid/c", "setid/gw"};
  for (int i = 0; i < 5; ++i) {
    OK(touch(files[i], 0644));
    OK(chown(files[i], U1, i == 4 ? G1 : G3));
    OK(chmod(files[i], i == 4 ? 02775 : 06755));
  }
  OK(chown("setid/gw", 0, G1));
  OK(chmod("setid/gw", 02775));
  IS(mode_of("setid/c") == 06755);
  OK(chown("setid/c", U2, -1));  // chown by root clears set-uid and set-gid (group-executable)
  IS(mode_of("setid/c") == 0755);
  OK(chmod("setid/c", 06755));
  OK(write_str("setid/c", "root"));  // root's write keeps them
  IS(mode_of("setid/c") == 06755);
  as_u1(setid_u1);
  OK(chmod("setid/c", 02644));  // set-gid without group execute
  OK(chown("setid/c", U1, -1));
  IS(mode_of("setid/c") & S_ISGID);
}

// ---- sticky directories ----
static void sticky_u1(void) {
  OK(touch("sticky/u1", 0666));
  OK(chmod("sticky/u1", 0666));
  OK(touch("sticky/u1b", 0666));
  OK(mkdir("sticky/u1d", 0777));
}
static void sticky_u2(void) {
  ERR(EPERM, unlink("sticky/u1"));
  ERR(EPERM, rename("sticky/u1", "sticky/taken"));
  ERR(EPERM, rmdir("sticky/u1d"));
  ERR(EPERM, unlink("sticky/rootfile"));
  OK(touch("sticky/u2", 0644));
  ERR(EPERM, rename("sticky/u2", "sticky/u1b"));  // replacing another's file
  OK(unlink("sticky/u2"));
  OK(write_str("sticky/u1", "writable is not deletable"));
}
static void sticky_u1_again(void) {
  OK(unlink("sticky/u1"));
  OK(rename("sticky/u1b", "sticky/u1c"));
  OK(rmdir("sticky/u1d"));
}
static void sticky_owner(void) {
  OK(unlink("sticky/rootfile"));
  OK(unlink("sticky/x"));
}
static void test_sticky(void) {
  section = "sticky";
  OK(mkdir("sticky", 0777));
  OK(chmod("sticky", 01777));
  OK(touch("sticky/rootfile", 0666));
  as_u1(sticky_u1);
  as_u2(sticky_u2);
  as_u1(sticky_u1_again);
  OK(touch("sticky/x", 0644));
  OK(chown("sticky", U2, 0));  // the directory's owner may delete anything in it
  as_u2(sticky_owner);
  IS(access("sticky/rootfile", F_OK) != 0 && access("sticky/x", F_OK) != 0);
}

// ---- rename ----
static void test_rename(void) {
  section = "rename";
  OK(mkdir("ren", 0755));
  for (int k = 0; k < 5; ++k) {
    char a[64], b[64], c[64];
    snprintf(a, sizeof(a), "ren/%s-a", kinds[k]);
    snprintf(b, sizeof(b), "ren/%s-b", kinds[k]);
    snprintf(c, sizeof(c), "ren/sub-%s", kinds[k]);
    OK(make_kind(k, a));
    struct stat before = st_of(a);
    pause_clock();
    result(rename(a, b) == 0, "rename a %s", kinds[k]);
    struct stat after = st_of(b);
    result(after.st_ino == before.st_ino, "renamed %s keeps its inode", kinds[k]);
    result(access(a, F_OK) != 0 && errno == ENOENT, "old %s name gone", kinds[k]);
    result(ts_after(after.st_ctim, before.st_ctim), "rename updates the %s's ctime", kinds[k]);
    OK(mkdir(c, 0755));
    char d[80];
    snprintf(d, sizeof(d), "%s/x", c);
    struct stat pb = st_of(c);
    pause_clock();
    result(rename(b, d) == 0, "rename a %s into another directory", kinds[k]);
    struct stat pa = st_of(c);
    result(ts_after(pa.st_mtim, pb.st_mtim) && ts_after(pa.st_ctim, pb.st_ctim), "new parent m/ctime updated (%s)",
           kinds[k]);
    if (k == 1) {
      char dd[96];
      snprintf(dd, sizeof(dd), "%s/..", d);
      result(st_of(dd).st_ino == pa.st_ino, "moved dir's .. is its new parent");
      result(st_of(c).st_nlink == 3, "new parent gains a link (%u)", (unsigned)st_of(c).st_nlink);
    }
    OK(remove_kind(k, d));
    OK(rmdir(c));
  }
  OK(touch("ren/f1", 0644));
  OK(touch("ren/f2", 0644));
  OK(link("ren/f2", "ren/f2link"));
  IS(st_of("ren/f2").st_nlink == 2);
  ino_t f1 = st_of("ren/f1").st_ino;
  OK(rename("ren/f1", "ren/f2"));  // replaces: the old f2 loses a link
  IS(st_of("ren/f2").st_ino == f1);
  IS(st_of("ren/f2link").st_nlink == 1);
  OK(rename("ren/f2", "ren/f2link"));
  IS(access("ren/f2", F_OK) != 0);
  OK(link("ren/f2link", "ren/same"));
  OK(rename("ren/f2link", "ren/same"));  // two links to one inode: nothing happens
  IS(access("ren/f2link", F_OK) == 0 && st_of("ren/same").st_nlink == 2);
  OK(mkdir("ren/d1", 0755));
  OK(mkdir("ren/d2", 0755));
  OK(touch("ren/d2/x", 0644));
  OK(mkdir("ren/d3", 0755));
  ERR(ENOTEMPTY, rename("ren/d1", "ren/d2"));
  OK(rename("ren/d1", "ren/d3"));
  ERR(EISDIR, rename("ren/same", "ren/d3"));
  ERR(ENOTDIR, rename("ren/d3", "ren/same"));
  ERR(EINVAL, rename("ren/d3", "ren/d3/inside"));
  ERR(ENOENT, rename("ren/none", "ren/x"));
  ERR(ENOTDIR, rename("ren/same/x", "ren/y"));
  OK(touch("ren/p", 0644));
  OK(touch("ren/q", 0600));
  ino_t p = st_of("ren/p").st_ino, q = st_of("ren/q").st_ino;
  ERR(EEXIST, renameat2(AT_FDCWD, "ren/p", AT_FDCWD, "ren/q", RENAME_NOREPLACE));
  OK(renameat2(AT_FDCWD, "ren/p", AT_FDCWD, "ren/new", RENAME_NOREPLACE));
  OK(renameat2(AT_FDCWD, "ren/new", AT_FDCWD, "ren/q", RENAME_EXCHANGE));
  IS(st_of("ren/q").st_ino == p && st_of("ren/new").st_ino == q);
  OK(renameat2(AT_FDCWD, "ren/new", AT_FDCWD, "ren/d2", RENAME_EXCHANGE));  // file <-> directory
  IS(S_ISDIR(st_of("ren/new").st_mode) && S_ISREG(st_of("ren/d2").st_mode));
  ERR(ENOENT, renameat2(AT_FDCWD, "ren/q", AT_FDCWD, "ren/absent", RENAME_EXCHANGE));
  ERR(EINVAL, renameat2(AT_FDCWD, "ren/q", AT_FDCWD, "ren/z", RENAME_EXCHANGE | RENAME_NOREPLACE));
  OK(renameat2(AT_FDCWD, "ren/q", AT_FDCWD, "ren/wh", RENAME_WHITEOUT));
  struct stat wh = st_of("ren/q");
  IS(S_ISCHR(wh.st_mode) && wh.st_rdev == makedev(0, 0));
  IS(st_of("ren/wh").st_ino == p);
}

// ---- link ----
static void link_u1(void) {
  OK(link("lnk/mine", "lnk/mine2"));
  ERR(EPERM, link("lnk/rootonly", "lnk/hard-rootonly"));  // protected_hardlinks: not readable+writable
}
static void test_link(void) {
  section = "link";
  OK(mkdir("lnk", 0777));
  OK(chmod("lnk", 0777));
  for (int k = 0; k < 5; ++k) {
    if (k == 1) continue;
    char a[64], b[64];
    snprintf(a, sizeof(a), "lnk/%s", kinds[k]);
    snprintf(b, sizeof(b), "lnk/%s-2", kinds[k]);
    OK(make_kind(k, a));
    struct stat before = st_of(a);
    pause_clock();
    result(link(a, b) == 0, "hard link to a %s", kinds[k]);
    struct stat after = st_of(a);
    result(after.st_nlink == 2, "%s nlink 2 (%u)", kinds[k], (unsigned)after.st_nlink);
    result(st_of(b).st_ino == after.st_ino, "%s link shares the inode", kinds[k]);
    result(ts_after(after.st_ctim, before.st_ctim), "link updates the %s's ctime", kinds[k]);
    OK(unlink(a));
    result(st_of(b).st_nlink == 1, "%s nlink back to 1", kinds[k]);
  }
  OK(mkdir("lnk/dir", 0755));
  ERR(EPERM, link("lnk/dir", "lnk/dir2"));
  ERR(EEXIST, link("lnk/file-2", "lnk/fifo-2"));
  ERR(ENOENT, link("lnk/none", "lnk/x"));
  IS(st_of("lnk/dir").st_nlink == 2);
  OK(mkdir("lnk/dir/sub", 0755));
  IS(st_of("lnk/dir").st_nlink == 3);
  OK(rmdir("lnk/dir/sub"));
  IS(st_of("lnk/dir").st_nlink == 2);
  OK(touch("lnk/mine", 0644));
  OK(chown("lnk/mine", U1, G1));
  OK(touch("lnk/rootonly", 0600));
  as_u1(link_u1);
  int fd = open("lnk/open-unlinked", O_CREAT | O_RDWR, 0644);
  OK(fd);
  OK(unlink("lnk/open-unlinked"));
  struct stat st;
  OK(fstat(fd, &st));
  IS(st.st_nlink == 0);
  OK(write(fd, "still", 5));
  close(fd);
}

// ---- timestamps ----
static void times_u1(void) {
  OK(utimensat(AT_FDCWD, "tm/shared", NULL, 0));
  struct timespec now_now[2] = {{0, UTIME_NOW}, {0, UTIME_NOW}};
  OK(utimensat(AT_FDCWD, "tm/shared", now_now, 0));  // both "now": write permission suffices
  struct timespec now_omit[2] = {{0, UTIME_NOW}, {0, UTIME_OMIT}};
  ERR(EPERM, utimensat(AT_FDCWD, "tm/shared", now_omit, 0));  // anything else: the owner only
  struct timespec set[2] = {{5, 0}, {0, UTIME_OMIT}};
  ERR(EPERM, utimensat(AT_FDCWD, "tm/shared", set, 0));
}
static void test_times(void) {
  section = "times";
  OK(mkdir("tm", 0777));
  OK(touch("tm/f", 0644));
  struct stat a = st_of("tm/f"), b;
  pause_clock();
  OK(write_str("tm/f", "data"));
  b = st_of("tm/f");
  IS(ts_after(b.st_mtim, a.st_mtim));
  IS(ts_after(b.st_ctim, a.st_ctim));
  a = b;
  pause_clock();
  OK(chmod("tm/f", 0600));
  b = st_of("tm/f");
  IS(ts_after(b.st_ctim, a.st_ctim));
  IS(ts_eq(b.st_mtim, a.st_mtim));
  a = b;
  pause_clock();
  OK(truncate("tm/f", 1));
  b = st_of("tm/f");
  IS(ts_after(b.st_mtim, a.st_mtim) && ts_after(b.st_ctim, a.st_ctim));
  a = b;
  pause_clock();
  OK(truncate("tm/f", 1));  // same size: POSIX says truncate() still updates them
  b = st_of("tm/f");
  IS(ts_after(b.st_mtim, a.st_mtim));
  struct timespec t[2] = {{1000000000, 123456789}, {1100000000, 987654321}};
  OK(utimensat(AT_FDCWD, "tm/f", t, 0));
  b = st_of("tm/f");
  IS(ts_eq(b.st_atim, t[0]) && ts_eq(b.st_mtim, t[1]));
  struct timespec omit_set[2] = {{0, UTIME_OMIT}, {1200000000, 5}};
  OK(utimensat(AT_FDCWD, "tm/f", omit_set, 0));
  b = st_of("tm/f");
  IS(ts_eq(b.st_atim, t[0]) && b.st_mtim.tv_sec == 1200000000 && b.st_mtim.tv_nsec == 5);
  struct timespec now_omit[2] = {{0, UTIME_NOW}, {0, UTIME_OMIT}};
  OK(utimensat(AT_FDCWD, "tm/f", now_omit, 0));
  b = st_of("tm/f");
  IS(b.st_atim.tv_sec > 1600000000 && b.st_mtim.tv_sec == 1200000000);
  struct timespec omit_omit[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
  a = st_of("tm/f");
  OK(utimensat(AT_FDCWD, "tm/f", omit_omit, 0));
  b = st_of("tm/f");
  IS(ts_eq(a.st_atim, b.st_atim) && ts_eq(a.st_mtim, b.st_mtim));
  OK(utimensat(AT_FDCWD, "tm/f", NULL, 0));
  b = st_of("tm/f");
  IS(b.st_mtim.tv_sec > 1600000000);
  OK(symlink("f", "tm/l"));
  OK(utimensat(AT_FDCWD, "tm/l", t, AT_SYMLINK_NOFOLLOW));  // the link's own times
  IS(ts_eq(st_of("tm/l").st_mtim, t[1]) && !ts_eq(st_of("tm/f").st_mtim, t[1]));
  a = st_of("tm");
  pause_clock();
  OK(touch("tm/new", 0644));
  b = st_of("tm");
  IS(ts_after(b.st_mtim, a.st_mtim) && ts_after(b.st_ctim, a.st_ctim));
  a = b;
  pause_clock();
  OK(unlink("tm/new"));
  b = st_of("tm");
  IS(ts_after(b.st_mtim, a.st_mtim));
  OK(touch("tm/shared", 0666));
  OK(chmod("tm/shared", 0666));
  as_u1(times_u1);
  a = st_of("tm/f");
  pause_clock();
  OK(chown("tm/f", U1, -1));
  b = st_of("tm/f");
  IS(ts_after(b.st_ctim, a.st_ctim));
}

// ---- extended attributes ----
static void xattr_u1(void) {
  ERR(EACCES, setxattr("xa/f", "user.u1", "1", 1, 0));  // not writable by u1
  char buf[8];
  OK(getxattr("xa/f", "user.color", buf, sizeof(buf)));
  ERR(EPERM, setxattr("xa/f", "trusted.t", "1", 1, 0));
  ERR(EPERM, setxattr("xa/f", "security.capability", "\1\0\0\2\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 20, 0));
}
static void test_xattr(void) {
  section = "xattr";
  OK(mkdir("xa", 0777));
  OK(touch("xa/f", 0644));
  char buf[64];
  OK(setxattr("xa/f", "user.color", "blue", 4, 0));
  IS(getxattr("xa/f", "user.color", buf, sizeof(buf)) == 4 && memcmp(buf, "blue", 4) == 0);
  IS(getxattr("xa/f", "user.color", NULL, 0) == 4);
  ERR(ERANGE, getxattr("xa/f", "user.color", buf, 2));
  ERR(ENODATA, getxattr("xa/f", "user.none", buf, sizeof(buf)));
  ERR(EEXIST, setxattr("xa/f", "user.color", "red", 3, XATTR_CREATE));
  ERR(ENODATA, setxattr("xa/f", "user.new", "x", 1, XATTR_REPLACE));
  OK(setxattr("xa/f", "user.color", "red", 3, XATTR_REPLACE));
  IS(getxattr("xa/f", "user.color", buf, sizeof(buf)) == 3);
  OK(setxattr("xa/f", "user.empty", "", 0, 0));
  IS(getxattr("xa/f", "user.empty", buf, sizeof(buf)) == 0);
  ssize_t n = listxattr("xa/f", buf, sizeof(buf));
  IS(n > 0 && memmem(buf, (size_t)n, "user.color", 11) != NULL && memmem(buf, (size_t)n, "user.empty", 11) != NULL);
  IS(listxattr("xa/f", NULL, 0) == n);
  ERR(ERANGE, listxattr("xa/f", buf, 3));
  OK(removexattr("xa/f", "user.empty"));
  ERR(ENODATA, removexattr("xa/f", "user.empty"));
  OK(mkdir("xa/d", 0755));
  OK(setxattr("xa/d", "user.dir", "yes", 3, 0));
  IS(getxattr("xa/d", "user.dir", buf, sizeof(buf)) == 3);
  // A file capability (VFS_CAP_REVISION_2, cap_net_bind_service permitted), as setcap writes.
  const char cap[20] = {0, 0, 0, 2, 0, 4, 0, 0};
  OK(setxattr("xa/f", "security.capability", cap, sizeof(cap), 0));
  IS(getxattr("xa/f", "security.capability", buf, sizeof(buf)) == 20);
  OK(chown("xa/f", 0, 0));  // chown drops file capabilities
  ERR(ENODATA, getxattr("xa/f", "security.capability", buf, sizeof(buf)));
  struct stat a = st_of("xa/f");
  pause_clock();
  OK(setxattr("xa/f", "user.t", "1", 1, 0));
  IS(ts_after(st_of("xa/f").st_ctim, a.st_ctim));
  as_u1(xattr_u1);
}

// ---- locks ----
static void test_locks(void) {
  section = "locks";
  OK(mkdir("lk", 0777));
  int fd = open("lk/f", O_CREAT | O_RDWR, 0666);
  OK(fd);
  OK(flock(fd, LOCK_EX));
  fflush(stdout);
  if (fork() == 0) {
    int fd2 = open("lk/f", O_RDWR);
    ERR(EWOULDBLOCK, flock(fd2, LOCK_EX | LOCK_NB));
    ERR(EWOULDBLOCK, flock(fd2, LOCK_SH | LOCK_NB));
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
    OK(fcntl(fd2, F_GETLK, &fl));
    IS(fl.l_type == F_WRLCK && fl.l_pid == getppid());
    fl.l_type = F_WRLCK;
    ERR(EAGAIN, fcntl(fd2, F_SETLK, &fl));
    fl = (struct flock){.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 20, .l_len = 5};
    OK(fcntl(fd2, F_SETLK, &fl));  // a range the parent does not hold
    fflush(stdout);
    _exit(0);
  }
  struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
  OK(fcntl(fd, F_SETLK, &fl));
  wait(NULL);
  fl.l_type = F_UNLCK;
  OK(fcntl(fd, F_SETLK, &fl));
  OK(flock(fd, LOCK_UN));
  fflush(stdout);
  if (fork() == 0) {
    int fd2 = open("lk/f", O_RDWR);
    OK(flock(fd2, LOCK_EX | LOCK_NB));
    struct flock f2 = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
    OK(fcntl(fd2, F_SETLK, &f2));
    fflush(stdout);
    _exit(0);
  }
  wait(NULL);
  close(fd);
}

// ---- POSIX ACLs (system.posix_acl_* blobs built here, as setfacl writes them) ----
// posix_acl_xattr_header {le32 version = 2}, then entries {le16 tag, le16 perm, le32 id}.
enum { A_USER_OBJ = 1, A_USER = 2, A_GROUP_OBJ = 4, A_GROUP = 8, A_MASK = 0x10, A_OTHER = 0x20 };
struct acl_entry {
  unsigned short tag, perm;
  unsigned id;
};
static int set_acl(const char* p, const char* name, const struct acl_entry* e, int n) {
  unsigned char buf[4 + 8 * 16];
  unsigned version = 2;
  memcpy(buf, &version, 4);
  for (int i = 0; i < n; ++i) memcpy(buf + 4 + 8 * i, &e[i], 8);
  return setxattr(p, name, buf, (size_t)(4 + 8 * n), 0);
}
#define SET_ACL(p, name, ...)                               \
  set_acl(p, name, (const struct acl_entry[]){__VA_ARGS__}, \
          (int)(sizeof((const struct acl_entry[]){__VA_ARGS__}) / sizeof(struct acl_entry)))
static const unsigned NO_ID = 0xffffffffu;
static int open_close(const char* p, int flags) {
  int fd = open(p, flags);
  if (fd < 0) return -1;
  return close(fd);
}
static void acl_u1(void) {
  OK(open_close("acl/f", O_RDWR));  // granted by its ACL_USER entry
  OK(write_str("acl/f", "u1"));
  OK(open_close("acl/d/new", O_RDWR));     // the inherited ACL grants it too
  ERR(EACCES, touch("acl/g/nope", 0644));  // the named group is not u1's
  ERR(EPERM, SET_ACL("acl/f", "system.posix_acl_access", {A_USER_OBJ, 7, NO_ID}, {A_GROUP_OBJ, 7, NO_ID},
                     {A_OTHER, 7, NO_ID}));  // not the owner
  // An owner not in the file's group sets an access ACL: set-gid is cleared, as by chmod.
  OK(SET_ACL("acl/sg", "system.posix_acl_access", {A_USER_OBJ, 7, NO_ID}, {A_GROUP_OBJ, 5, NO_ID},
             {A_OTHER, 0, NO_ID}));
  IS(mode_of("acl/sg") == 0750);
}
static void acl_u2(void) {
  ERR(EACCES, open_close("acl/f", O_RDONLY));  // no entry: "other" has nothing
  ERR(EACCES, open_close("acl/d/new", O_WRONLY));
}
static void acl_u1_after_chmod(void) { ERR(EACCES, open_close("acl/f", O_RDONLY)); }  // the mask says none
static void acl_u1_group(void) {
  OK(touch("acl/g/byg", 0644));  // a directory writable through a named group of its ACL
  IS(st_of("acl/g/byg").st_uid == U1);
}
static void test_acl(void) {
  section = "acl";
  OK(mkdir("acl", 0777));
  OK(chmod("acl", 0777));
  OK(touch("acl/f", 0600));
  char buf[256];
  ERR(ENODATA, getxattr("acl/f", "system.posix_acl_access", buf, sizeof(buf)));
  OK(SET_ACL("acl/f", "system.posix_acl_access", {A_USER_OBJ, 6, NO_ID}, {A_USER, 6, U1}, {A_GROUP_OBJ, 0, NO_ID},
             {A_MASK, 6, NO_ID}, {A_OTHER, 0, NO_ID}));
  IS(getxattr("acl/f", "system.posix_acl_access", buf, sizeof(buf)) == 4 + 8 * 5);
  IS(mode_of("acl/f") == 0660);  // the group class shows the mask
  ERR(EINVAL, setxattr("acl/f", "system.posix_acl_access", "\2\0\0\0xyz", 7, 0));
  OK(mkdir("acl/d", 0777));
  OK(SET_ACL("acl/d", "system.posix_acl_default", {A_USER_OBJ, 7, NO_ID}, {A_USER, 6, U1}, {A_GROUP_OBJ, 5, NO_ID},
             {A_MASK, 7, NO_ID}, {A_OTHER, 5, NO_ID}));
  mode_t old = umask(077);  // a default ACL replaces the umask
  OK(touch("acl/d/new", 0666));
  OK(mkdir("acl/d/sub", 0777));
  umask(old);
  IS(mode_of("acl/d/new") == 0664);
  IS(mode_of("acl/d/sub") == 0775);
  IS(getxattr("acl/d/new", "system.posix_acl_access", buf, sizeof(buf)) == 4 + 8 * 5);
  IS(getxattr("acl/d/sub", "system.posix_acl_default", buf, sizeof(buf)) == 4 + 8 * 5);
  OK(mkdir("acl/g", 0755));
  OK(SET_ACL("acl/g", "system.posix_acl_access", {A_USER_OBJ, 7, NO_ID}, {A_GROUP_OBJ, 5, NO_ID}, {A_GROUP, 7, G3},
             {A_MASK, 7, NO_ID}, {A_OTHER, 5, NO_ID}));
  OK(touch("acl/sg", 0644));
  OK(chown("acl/sg", U1, G3));
  OK(chmod("acl/sg", 02750));
  as_u1(acl_u1);
  as_u2(acl_u2);
  gid_t groups[] = {G3};
  as_user(U1, G1, 1, groups, acl_u1_group);
  OK(chmod("acl/f", 0600));
  as_u1(acl_u1_after_chmod);
  OK(removexattr("acl/f", "system.posix_acl_access"));
  ERR(ENODATA, getxattr("acl/f", "system.posix_acl_access", buf, sizeof(buf)));
}

// ---- locks across processes: blocking waits, deadlock, close semantics ----
static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}
static int lock_range(int fd, int cmd, short type, off_t start, off_t len) {
  struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
  return fcntl(fd, cmd, &fl);
}
static void test_lock_waits(void) {
  section = "lock waits";
  int fd = open("lk/w", O_CREAT | O_RDWR, 0666);
  OK(fd);
  OK(lock_range(fd, F_SETLK, F_WRLCK, 0, 10));
  int go[2], ready[2];
  if (pipe(go) != 0 || pipe(ready) != 0) return;
  fflush(stdout);
  pid_t child = fork();
  if (child == 0) {
    int fd2 = open("lk/w", O_RDWR);
    OK(lock_range(fd2, F_SETLK, F_WRLCK, 10, 10));  // B
    if (write(ready[1], "r", 1) != 1) _exit(1);
    double t0 = now_s();
    OK(lock_range(fd2, F_SETLKW, F_WRLCK, 0, 1));  // waits for the parent's A
    result(now_s() - t0 > 0.2, "F_SETLKW waited for the holder (%.2f s)", now_s() - t0);
    fflush(stdout);
    _exit(0);
  }
  char c;
  if (read(ready[0], &c, 1) != 1) return;
  usleep(100000);  // the child is waiting now
  errno = 0;
  ERR(EDEADLK, lock_range(fd, F_SETLKW, F_WRLCK, 10, 1));  // waiting for B would close the cycle
  usleep(200000);
  OK(lock_range(fd, F_SETLK, F_UNLCK, 0, 10));  // the child's wait ends
  waitpid(child, NULL, 0);
  // flock waits too.
  OK(flock(fd, LOCK_EX));
  fflush(stdout);
  child = fork();
  if (child == 0) {
    int fd2 = open("lk/w", O_RDONLY);
    double t0 = now_s();
    OK(flock(fd2, LOCK_SH));
    result(now_s() - t0 > 0.2, "flock(LOCK_SH) waited (%.2f s)", now_s() - t0);
    fflush(stdout);
    _exit(0);
  }
  usleep(300000);
  OK(flock(fd, LOCK_UN));
  waitpid(child, NULL, 0);
  // POSIX: closing any fd of the file drops the process's locks, taken through another fd.
  int other = open("lk/w", O_RDONLY);
  OK(lock_range(fd, F_SETLK, F_WRLCK, 0, 0));
  OK(close(other));
  fflush(stdout);
  if (fork() == 0) {
    int fd2 = open("lk/w", O_RDWR);
    OK(lock_range(fd2, F_SETLK, F_WRLCK, 1 << 20, 1));  // free again
    fflush(stdout);
    _exit(0);
  }
  wait(NULL);
  // One owner per process: locked through one fd, unlocked through another.
  other = open("lk/w", O_RDWR);
  OK(lock_range(fd, F_SETLK, F_WRLCK, 0, 0));
  OK(lock_range(other, F_SETLK, F_UNLCK, 0, 0));
  fflush(stdout);
  if (fork() == 0) {
    int fd2 = open("lk/w", O_RDWR);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    OK(fcntl(fd2, F_GETLK, &fl));
    IS(fl.l_type == F_UNLCK);
    fflush(stdout);
    _exit(0);
  }
  wait(NULL);
  // Open file description locks: two opens in one process conflict; closing one releases (on a
  // FUSE file system when the release arrives: it is sent after close(2) returns).
  OK(lock_range(fd, F_OFD_SETLK, F_WRLCK, 0, 5));
  ERR(EAGAIN, lock_range(other, F_OFD_SETLK, F_RDLCK, 4, 1));
  OK(close(fd));
  int got = -1;
  for (int i = 0; i < 40 && got != 0; ++i) {
    got = lock_range(other, F_OFD_SETLK, F_RDLCK, 4, 1);
    if (got != 0) usleep(50000);
  }
  result(got == 0, "the closed description's OFD lock is gone");
  close(other);
}

// ---- locks seen by the host (`fsposix DIR host`: tests/e2e/fsposix_test.sh runs `fsposix hostside
// DIR` on the host meanwhile) ----
static int wait_for(const char* p, int seconds) {
  for (int i = 0; i < seconds * 20; ++i) {
    if (access(p, F_OK) == 0) return 0;
    usleep(50000);
  }
  return -1;
}
static void test_host_locks(void) {
  section = "host locks";
  OK(mkdir("hostlk", 0777));
  int fl_fd = open("hostlk/f", O_CREAT | O_RDWR, 0666);
  int rec_fd = open("hostlk/f", O_RDWR);
  OK(flock(fl_fd, LOCK_EX));
  OK(lock_range(rec_fd, F_SETLK, F_WRLCK, 0, 100));
  OK(touch("hostlk/h", 0666));
  OK(touch("hostlk/ready", 0644));
  OK(wait_for("hostlk/seen", 250));
  char buf[256] = {0};
  int fd = open("hostlk/seen", O_RDONLY);
  if (fd >= 0) {
    if (read(fd, buf, sizeof(buf) - 1) < 0) buf[0] = 0;
    close(fd);
  }
  buf[strcspn(buf, "\n")] = 0;
  result(strstr(buf, "flock=held") != NULL, "the host sees the guest's flock (%s)", buf);
  result(strstr(buf, "fcntl=1:0:100") != NULL, "the host sees the guest's record lock");
  int h = open("hostlk/h", O_RDWR);
  ERR(EWOULDBLOCK, flock(h, LOCK_EX | LOCK_NB));  // the host process holds flock and a record lock
  struct flock q = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1};
  OK(fcntl(h, F_GETLK, &q));
  IS(q.l_type == F_WRLCK);
  ERR(EAGAIN, lock_range(h, F_SETLK, F_RDLCK, 0, 1));
  close(h);
  close(rec_fd);
  close(fl_fd);
  OK(touch("hostlk/done", 0644));
}

// The host side of test_host_locks: waits for DIR/hostlk/ready, writes what it sees of the guest's
// locks on hostlk/f into hostlk/seen, holds flock and a record lock on hostlk/h until hostlk/done,
// then prints whether the guest's locks on hostlk/f are gone.
static int hostside(const char* dir) {
  if (chdir(dir) != 0 && (wait_for(dir, 250) != 0 || chdir(dir) != 0)) return 2;
  if (wait_for("hostlk/ready", 280) != 0) return 3;
  int f = open("hostlk/f", O_RDWR);
  int probe = flock(f, LOCK_EX | LOCK_NB);
  struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
  if (fcntl(f, F_GETLK, &fl) != 0) fl.l_type = -1;
  char line[128];
  snprintf(line, sizeof(line), "flock=%s fcntl=%d:%lld:%lld\n", probe != 0 ? "held" : "free", fl.l_type,
           (long long)fl.l_start, (long long)fl.l_len);
  if (probe == 0) flock(f, LOCK_UN);
  int h1 = open("hostlk/h", O_RDWR), h2 = open("hostlk/h", O_RDWR);
  if (flock(h1, LOCK_EX) != 0 || lock_range(h2, F_SETLK, F_WRLCK, 0, 0) != 0) return 4;
  int out = open("hostlk/seen.tmp", O_CREAT | O_WRONLY | O_TRUNC, 0644);
  if (out < 0 || write(out, line, strlen(line)) != (ssize_t)strlen(line) || close(out) != 0) return 5;
  if (rename("hostlk/seen.tmp", "hostlk/seen") != 0) return 6;
  printf("HOSTSIDE saw %s", line);
  if (wait_for("hostlk/done", 120) != 0) return 7;
  int after = -1;  // the flock goes with the guest's release, sent after its close(2) returns
  for (int i = 0; i < 40 && after != 0; ++i) {
    after = flock(f, LOCK_EX | LOCK_NB);
    if (after != 0) usleep(50000);
  }
  struct flock fl2 = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
  fcntl(f, F_GETLK, &fl2);
  printf("HOSTSIDE after flock=%s fcntl=%d\n", after == 0 ? "free" : "held", fl2.l_type);
  return 0;
}

// ---- open, mkfifo, mknod, chmod, truncate/fallocate ----
static void misc_u1(void) {
  ERR(EPERM, mknod("misc/u1blk", S_IFBLK | 0600, makedev(7, 0)));
  OK(mkfifo("misc/u1fifo", 0600));
  OK(mknod("misc/u1reg", S_IFREG | 0600, 0));
  IS(st_of("misc/u1reg").st_uid == U1);
}
static void test_misc(void) {
  section = "open/mknod/chmod";
  OK(mkdir("misc", 0777));
  OK(chmod("misc", 0777));
  OK(touch("misc/f", 0644));
  ERR(EEXIST, open("misc/f", O_CREAT | O_EXCL | O_RDWR, 0644));
  ERR(ENOTDIR, open("misc/f", O_RDONLY | O_DIRECTORY));
  ERR(EISDIR, open("misc", O_WRONLY));
  ERR(ENOENT, open("misc/none", O_RDONLY));
  ERR(ENOTDIR, open("misc/f/x", O_RDONLY));
  OK(symlink("f", "misc/l"));
  ERR(ELOOP, open("misc/l", O_RDONLY | O_NOFOLLOW));
  OK(close(open("misc/l", O_RDONLY)));
  char longname[300];
  memset(longname, 'x', sizeof(longname));
  memcpy(longname, "misc/", 5);
  longname[299] = 0;
  ERR(ENAMETOOLONG, open(longname, O_CREAT | O_RDWR, 0644));
  OK(write_str("misc/f", "0123456789"));
  struct stat a = st_of("misc/f");
  pause_clock();
  int fd = open("misc/f", O_WRONLY | O_TRUNC);
  OK(fd);
  close(fd);
  struct stat b = st_of("misc/f");
  IS(b.st_size == 0 && ts_after(b.st_mtim, a.st_mtim));
  OK(mkfifo("misc/p", 0640));
  IS(S_ISFIFO(st_of("misc/p").st_mode) && mode_of("misc/p") == 0640);
  ERR(EEXIST, mkfifo("misc/p", 0640));
  ERR(EEXIST, mknod("misc/f", S_IFREG | 0644, 0));
  OK(mknod("misc/c", S_IFCHR | 0600, makedev(1, 5)));
  IS(st_of("misc/c").st_rdev == makedev(1, 5));
  OK(mknod("misc/s", S_IFSOCK | 0600, 0));
  IS(S_ISSOCK(st_of("misc/s").st_mode));
  as_u1(misc_u1);
  static const mode_t modes[] = {0, 0700, 0644, 0755, 01777, 04755, 02755, 06777, 0111};
  for (unsigned i = 0; i < sizeof(modes) / sizeof(modes[0]); ++i) {
    OK(chmod("misc/f", modes[i]));
    result(mode_of("misc/f") == modes[i], "chmod %o reads back %o", modes[i], mode_of("misc/f"));
  }
  OK(chmod("misc/l", 0600));  // follows the link
  IS(mode_of("misc/f") == 0600);
  fd = open("misc/f", O_RDWR);
  OK(ftruncate(fd, 4096));
  IS(st_of("misc/f").st_size == 4096);
  OK(posix_fallocate(fd, 0, 65536) == 0 ? 0 : -1);
  IS(st_of("misc/f").st_size == 65536);
  OK(pwrite(fd, "end", 3, 70000));
  IS(st_of("misc/f").st_size == 70003);
  close(fd);
  OK(mkdir("misc/d", 0755));
  ERR(EEXIST, mkdir("misc/d", 0755));
  ERR(ENOTDIR, rmdir("misc/f"));
  ERR(EISDIR, unlink("misc/d"));
  ERR(ENOENT, mkdir("misc/none/d", 0755));
}

int main(int argc, char** argv) {
  if (argc == 3 && strcmp(argv[1], "hostside") == 0) return hostside(argv[2]);
  if (argc != 2 && !(argc == 3 && strcmp(argv[2], "host") == 0)) {
    fprintf(stderr, "usage: fsposix DIR [host] | fsposix hostside DIR\n");
    return 2;
  }
  g = mmap(NULL, sizeof(*g), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (g == MAP_FAILED || mkdir(argv[1], 0755) != 0 || chdir(argv[1]) != 0) {
    perror(argv[1]);
    return 2;
  }
  umask(022);
  int fd = open("/proc/sys/fs/protected_hardlinks", O_WRONLY);  // as Debian's systemd sets it
  if (fd >= 0) {
    if (write(fd, "1", 1) != 1) perror("protected_hardlinks");
    close(fd);
  }
  test_ownership();
  test_umask();
  test_permissions();
  test_setid();
  test_sticky();
  test_rename();
  test_link();
  test_times();
  test_xattr();
  test_locks();
  test_lock_waits();
  test_acl();
  test_misc();
  if (argc == 3) test_host_locks();
  printf("%d passed, %d failed\n", g->passed, g->failed);
  return 0;
}

#include "snapshot/disks.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>

#include "block/file_io.h"
#include "block/qcow2.h"
#include "block/qcow2_format.h"

namespace clonevm::snapshot {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kOverlayClusterBytes = 64 * 1024;
constexpr uint64_t kMaxQcow2HeaderRead = 2 << 20;  // the largest cluster: the header lives in cluster 0
constexpr size_t kCopyChunk = 1 << 20;

std::string Normal(const std::string& path) {
  std::string n = fs::path(path).lexically_normal().string();
  while (n.size() > 1 && n.back() == '/') n.pop_back();
  return n;
}

Result<std::string> NormalAbsolute(std::string_view path, std::string_view spec, std::string_view side) {
  if (path.empty() || path[0] != '/') {
    return Fail("--block '{}': {} \"{}\" must be an absolute path", spec, side, path);
  }
  return Normal(std::string(path));
}

bool Matches(const std::string& path, const std::string& from) {
  if (from == "/") return path.starts_with('/');
  return path.starts_with(from) && (path.size() == from.size() || path[from.size()] == '/');
}

Result<FileStamp> StampOf(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return FailErrno("stat", path);
  return FileStamp{static_cast<uint64_t>(st.st_size),
                   static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec,
                   static_cast<uint64_t>(st.st_ino)};
}

// `what` names the file for people ("read-only disk 1"); `recorded` is the path the snapshot holds
// when it was rewritten to `path`.
Result<void> CheckStamp(const std::string& path, const FileStamp& expected, const std::string& what,
                        const std::string& recorded) {
  std::string where = recorded == path ? path : fmt::format("{} (rewritten from {})", path, recorded);
  auto stamp = StampOf(path);
  if (!stamp) {
    if (stamp.error().error_number() == ENOENT) return Fail("{} {} is missing", what, where);
    return Fail(stamp.error().Wrap(what));
  }
  auto changed = [&](std::string_view how) {
    return Fail("{} {} changed since the snapshot was taken ({}); restoring on it would corrupt the guest's disk", what,
                where, how);
  };
  if (stamp->size != expected.size) return changed(fmt::format("size {} bytes, was {}", stamp->size, expected.size));
  if (stamp->mtime_ns != expected.mtime_ns) return changed("modification time differs; copy templates with cp -a");
  // An inode is only meaningful where the file was recorded; 0: not recorded (frozen copies).
  if (expected.inode != 0 && recorded == path && stamp->inode != expected.inode) return changed("replaced: new inode");
  return {};
}

Result<qcow2::Header> ReadQcow2Header(const std::string& path) {
  Fd fd = CLONE_TRY(OpenFile(path, O_RDONLY));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return FailErrno("fstat", path);
  std::vector<uint8_t> first(std::min<uint64_t>(static_cast<uint64_t>(st.st_size), kMaxQcow2HeaderRead));
  CLONE_TRY_VOID(PreadFull(fd.get(), 0, first, PastEof::kFail, path));
  auto header = qcow2::ParseHeader(first, static_cast<uint64_t>(st.st_size));
  if (!header) return Fail(header.error().Wrap(path));
  return header;
}

// The backing chain of a writable qcow2 disk, top first. Its top's backing name must be absolute:
// the frozen copy lives elsewhere, and its header keeps the name as written.
Result<std::vector<BackingFile>> BackingChain(const std::string& top) {
  std::vector<BackingFile> chain;
  std::string image = top;
  for (int depth = 0;; ++depth) {
    qcow2::Header header = CLONE_TRY(ReadQcow2Header(image));
    if (header.backing_file.empty()) break;
    if (depth == 0 && !header.backing_file.starts_with('/')) {
      return Fail(
          "disk {}: its backing file name \"{}\" is relative, which a frozen copy in the snapshot directory "
          "cannot resolve; make it absolute first (qemu-img rebase -u -b ABSOLUTE-PATH -F FORMAT {})",
          top, header.backing_file, top);
    }
    if (depth >= kMaxBackingDepth)
      return Fail("disk {}: backing chain is deeper than {} images", top, kMaxBackingDepth);
    std::string backing = Normal(ResolveRelativeTo(image, header.backing_file));
    auto stamp = StampOf(backing);
    if (!stamp) return Fail(stamp.error().Wrap(fmt::format("disk {}: backing file", top)));
    chain.push_back({backing, *stamp});
    Format format = header.backing_format.empty() ? CLONE_TRY(ProbeFormat(backing))
                                                  : CLONE_TRY(ParseFormatName(header.backing_format));
    if (format == Format::kRaw) break;
    image = backing;
  }
  return chain;
}

// Where a frozen disk's base is for this restore.
std::string FrozenBasePath(const std::string& snapshot_path, const SnapshotDisk& disk,
                           std::span<const PathRewrite> rewrites) {
  std::error_code ec;
  fs::path absolute = fs::absolute(fs::path(snapshot_path) / disk.path, ec);
  return RewritePath(Normal(ec ? snapshot_path + "/" + disk.path : absolute.string()), rewrites);
}

std::string RecordedBasePath(const std::string& snapshot_path, const SnapshotDisk& disk) {
  return FrozenBasePath(snapshot_path, disk, {});
}

// Copies [offset, offset + length) between the files at the same offsets: copy_file_range, or
// pread/pwrite where the kernel or file systems cannot.
Result<void> CopyRange(int in, int out, uint64_t offset, uint64_t length, const std::string& from) {
  bool use_cfr = true;
  std::vector<uint8_t> buffer;
  while (length > 0) {
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(length, use_cfr ? (1ull << 30) : kCopyChunk));
    if (use_cfr) {
      loff_t in_off = static_cast<loff_t>(offset), out_off = static_cast<loff_t>(offset);
      ssize_t n = ::copy_file_range(in, &in_off, out, &out_off, chunk, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) {
        use_cfr = false;
        continue;
      }
      if (n < 0) return FailErrno("copy_file_range", from);
      if (n == 0) return Fail("{}: the file shrank while it was copied", from);
      offset += static_cast<uint64_t>(n);
      length -= static_cast<uint64_t>(n);
      continue;
    }
    buffer.resize(chunk);
    CLONE_TRY_VOID(PreadFull(in, offset, std::span(buffer.data(), chunk), PastEof::kFail, from));
    CLONE_TRY_VOID(PwriteFull(out, offset, std::span<const uint8_t>(buffer.data(), chunk), from));
    offset += chunk;
    length -= chunk;
  }
  return {};
}

// The data extents of `in` (size bytes) copied to `out`; holes stay holes (out is already sized).
Result<uint64_t> CopyExtents(int in, int out, uint64_t size, const std::string& from) {
  uint64_t copied = 0;
  uint64_t offset = 0;
  while (offset < size) {
    off_t data = ::lseek(in, static_cast<off_t>(offset), SEEK_DATA);
    if (data < 0 && errno == ENXIO) break;  // only a hole is left
    if (data < 0 && errno == EINVAL) {      // no SEEK_DATA here: copy the rest as data
      CLONE_TRY_VOID(CopyRange(in, out, offset, size - offset, from));
      return copied + (size - offset);
    }
    if (data < 0) return FailErrno("lseek(SEEK_DATA)", from);
    off_t hole = ::lseek(in, data, SEEK_HOLE);
    if (hole < 0) return FailErrno("lseek(SEEK_HOLE)", from);
    uint64_t end = std::min<uint64_t>(static_cast<uint64_t>(hole), size);
    if (static_cast<uint64_t>(data) >= end) break;
    CLONE_TRY_VOID(CopyRange(in, out, static_cast<uint64_t>(data), end - static_cast<uint64_t>(data), from));
    copied += end - static_cast<uint64_t>(data);
    offset = end;
  }
  return copied;
}

}  // namespace

// --- Path rewrites ---

Result<PathRewrite> ParsePathRewrite(std::string_view spec) {
  size_t eq = spec.find('=');
  if (eq == std::string_view::npos) return Fail("--block '{}': expected FROM=TO (two absolute paths)", spec);
  PathRewrite rewrite;
  rewrite.from = CLONE_TRY(NormalAbsolute(spec.substr(0, eq), spec, "FROM"));
  rewrite.to = CLONE_TRY(NormalAbsolute(spec.substr(eq + 1), spec, "TO"));
  return rewrite;
}

Result<std::vector<PathRewrite>> ParsePathRewrites(std::span<const std::string> specs) {
  std::vector<PathRewrite> rewrites;
  for (const auto& spec : specs) {
    PathRewrite rewrite = CLONE_TRY(ParsePathRewrite(spec));
    for (const auto& other : rewrites) {
      if (other.from == rewrite.from)
        return Fail("--block '{}': {} is already rewritten to {}", spec, other.from, other.to);
    }
    rewrites.push_back(std::move(rewrite));
  }
  return rewrites;
}

std::string RewritePath(const std::string& path, std::span<const PathRewrite> rewrites) {
  const PathRewrite* best = nullptr;
  for (const auto& r : rewrites) {
    if (Matches(path, r.from) && (best == nullptr || r.from.size() > best->from.size())) best = &r;
  }
  if (best == nullptr) return path;
  std::string rest;  // "" for an exact match, else "/..." (the components below FROM)
  if (path.size() != best->from.size()) rest = best->from == "/" ? path : path.substr(best->from.size());
  if (rest.empty()) return best->to;
  return best->to == "/" ? rest : best->to + rest;
}

// --- Taking ---

Result<std::vector<SnapshotDisk>> DescribeDisks(std::span<const DiskImage> disks, int64_t frozen_mtime_ns) {
  std::vector<SnapshotDisk> described;
  for (size_t i = 0; i < disks.size(); ++i) {
    const DiskImage& image = disks[i];
    std::error_code ec;
    std::string path = Normal(fs::absolute(image.path, ec).string());
    if (ec) return Fail("disk {}: {}", image.path, ec.message());
    SnapshotDisk d;
    d.read_only = image.read_only;
    d.format = image.format;
    d.serial = image.serial;
    if (image.read_only) {
      d.path = path;
      auto stamp = StampOf(path);
      if (!stamp) return Fail(stamp.error().Wrap(fmt::format("read-only disk {}", i)));
      d.stamp = *stamp;
    } else {
      struct stat st {};
      if (::stat(path.c_str(), &st) != 0) return FailErrno("stat", path);
      if (!S_ISREG(st.st_mode)) {
        return Fail("disk {} ({}) is writable and not a regular file: snapshots can freeze only image files", i, path);
      }
      d.path = fmt::format("disk{}.{}", i, FormatName(image.format));
      d.stamp = FileStamp{static_cast<uint64_t>(st.st_size), frozen_mtime_ns, 0};
      if (image.format == Format::kQcow2) d.backing = CLONE_TRY(BackingChain(path));
    }
    described.push_back(std::move(d));
  }
  return described;
}

Result<uint64_t> FreezeDisks(std::span<const DiskImage> disks, std::span<const SnapshotDisk> described,
                             const std::string& dir) {
  if (disks.size() != described.size())
    return Fail("freezing disks: {} disks, {} described", disks.size(), described.size());
  uint64_t copied = 0;
  for (size_t i = 0; i < disks.size(); ++i) {
    if (described[i].read_only) continue;
    std::error_code ec;
    std::string from = Normal(fs::absolute(disks[i].path, ec).string());
    std::string to = dir + "/" + described[i].path;
    auto bytes = CopySparse(from, to);
    if (!bytes) return Fail(bytes.error().Wrap(fmt::format("freezing disk {} ({})", i, from)));
    copied += *bytes;
    Fd fd = CLONE_TRY(OpenFile(to, O_RDONLY));
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return FailErrno("fstat", to);
    if (static_cast<uint64_t>(st.st_size) != described[i].stamp.size) {
      return Fail("freezing disk {} ({}): {} bytes copied, {} expected (the image changed while paused?)", i, from,
                  st.st_size, described[i].stamp.size);
    }
    int64_t ns = described[i].stamp.mtime_ns;
    timespec times[2] = {{ns / 1'000'000'000, ns % 1'000'000'000}, {ns / 1'000'000'000, ns % 1'000'000'000}};
    if (::futimens(fd.get(), times) != 0) return FailErrno("futimens", to);
    if (::fsync(fd.get()) != 0) return FailErrno("fsync", to);
  }
  return copied;
}

Result<uint64_t> CopySparse(const std::string& from, const std::string& to) {
  Fd in = CLONE_TRY(OpenFile(from, O_RDONLY));
  struct stat st {};
  if (::fstat(in.get(), &st) != 0) return FailErrno("fstat", from);
  if (!S_ISREG(st.st_mode)) return Fail("{} is not a regular file", from);
  Fd out = CLONE_TRY(OpenFile(to, O_WRONLY | O_CREAT | O_EXCL, 0600));
  auto copied = [&]() -> Result<uint64_t> {
    uint64_t size = static_cast<uint64_t>(st.st_size);
    uint64_t bytes = size;
    if (::ioctl(out.get(), FICLONE, in.get()) != 0) {
      if (::ftruncate(out.get(), static_cast<off_t>(size)) != 0) return FailErrno("ftruncate", to);
      bytes = CLONE_TRY(CopyExtents(in.get(), out.get(), size, from));
    }
    if (::fsync(out.get()) != 0) return FailErrno("fsync", to);
    return bytes;
  }();
  if (!copied) ::unlink(to.c_str());
  return copied;
}

// --- Restoring ---

Result<void> CheckDisks(const SnapshotConfig& config, const std::string& snapshot_path,
                        std::span<const PathRewrite> rewrites) {
  for (size_t i = 0; i < config.disks.size(); ++i) {
    const SnapshotDisk& d = config.disks[i];
    if (d.read_only) {
      CLONE_TRY_VOID(CheckStamp(RewritePath(d.path, rewrites), d.stamp, fmt::format("read-only disk {}", i), d.path));
      continue;
    }
    std::string what = fmt::format("the frozen base of disk {}", i);
    CLONE_TRY_VOID(
        CheckStamp(FrozenBasePath(snapshot_path, d, rewrites), d.stamp, what, RecordedBasePath(snapshot_path, d)));
    for (const auto& b : d.backing) {
      CLONE_TRY_VOID(CheckStamp(b.path, b.stamp, fmt::format("backing file of disk {}", i), b.path));
    }
  }
  return {};
}

Result<std::vector<DiskConfig>> OpenDisks(const SnapshotConfig& config, const std::string& snapshot_path,
                                          const DiskPlan& plan) {
  CLONE_TRY_VOID(CheckDisks(config, snapshot_path, plan.rewrites));
  std::vector<std::string> created;
  auto opened = [&]() -> Result<std::vector<DiskConfig>> {
    std::vector<DiskConfig> disks;
    for (size_t i = 0; i < config.disks.size(); ++i) {
      const SnapshotDisk& d = config.disks[i];
      if (d.read_only) {
        std::string path = RewritePath(d.path, plan.rewrites);
        auto backend = OpenImage(path, OpenMode{.read_only = true}, d.format);
        if (!backend) return Fail(backend.error().Wrap(fmt::format("read-only disk {}", i)));
        disks.push_back({std::move(*backend), DiskImage{path, true, d.format, d.serial}});
        continue;
      }
      std::string base = FrozenBasePath(snapshot_path, d, plan.rewrites);
      std::string overlay = fmt::format("{}/disk{}.qcow2", plan.overlay_dir, i);
      auto made = Qcow2Create(overlay, 0, kOverlayClusterBytes, base, d.format);
      if (!made)
        return Fail(made.error().Wrap(fmt::format("disk {}: cannot create its overlay in {}", i, plan.overlay_dir)));
      created.push_back(overlay);
      auto backend = OpenImage(overlay, OpenMode{}, Format::kQcow2);
      if (!backend) return Fail(backend.error().Wrap(fmt::format("disk {}: cannot open its overlay", i)));
      disks.push_back({std::move(*backend), DiskImage{overlay, false, Format::kQcow2, d.serial}});
    }
    return disks;
  }();
  if (!opened) {
    for (const auto& path : created) ::unlink(path.c_str());
  }
  return opened;
}

}  // namespace clonevm::snapshot

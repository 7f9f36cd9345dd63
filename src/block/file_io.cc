#include "block/file_io.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>

#include "block/block_backend.h"

namespace clonevm {

std::string FormatBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int unit = 0;
  uint64_t whole = bytes;
  while (whole >= 1024 && unit < 6) {
    whole /= 1024;
    ++unit;
  }
  if (unit == 0 || (bytes & ((uint64_t{1} << (10 * unit)) - 1)) == 0) return fmt::format("{} {}", whole, kUnits[unit]);
  return fmt::format("{:.1f} {}", static_cast<double>(bytes) / static_cast<double>(uint64_t{1} << (10 * unit)),
                     kUnits[unit]);
}

Result<void> PreadFull(int fd, uint64_t offset, std::span<uint8_t> out, PastEof past_eof, std::string_view path) {
  while (!out.empty()) {
    ssize_t n = ::pread(fd, out.data(), out.size(), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return tl::unexpected(Error::FromErrno("pread", errno, fmt::format("{} at 0x{:x}", path, offset)));
    }
    if (n == 0) {
      if (past_eof == PastEof::kZeroFill) {
        std::memset(out.data(), 0, out.size());
        return {};
      }
      return tl::unexpected(Error(
          fmt::format("pread: unexpected end of file ({} at 0x{:x}, 0x{:x} bytes missing)", path, offset, out.size()),
          EIO));
    }
    offset += static_cast<uint64_t>(n);
    out = out.subspan(static_cast<size_t>(n));
  }
  return {};
}

Result<void> PwriteFull(int fd, uint64_t offset, std::span<const uint8_t> data, std::string_view path) {
  while (!data.empty()) {
    ssize_t n = ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return tl::unexpected(Error::FromErrno("pwrite", errno, fmt::format("{} at 0x{:x}", path, offset)));
    }
    offset += static_cast<uint64_t>(n);
    data = data.subspan(static_cast<size_t>(n));
  }
  return {};
}

Result<void> PwritevFull(int fd, uint64_t offset, std::span<iovec> iov, std::string_view path) {
  while (!iov.empty() && iov.front().iov_len == 0) iov = iov.subspan(1);
  while (!iov.empty()) {
    ssize_t n =
        ::pwritev(fd, iov.data(), static_cast<int>(std::min<size_t>(iov.size(), IOV_MAX)), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return tl::unexpected(Error::FromErrno("pwritev", errno, fmt::format("{} at 0x{:x}", path, offset)));
    }
    offset += static_cast<uint64_t>(n);
    AdvanceIovecs(iov, static_cast<size_t>(n));
  }
  return {};
}

void AdvanceIovecs(std::span<iovec>& iov, size_t bytes) {
  while (!iov.empty() && bytes >= iov.front().iov_len) {
    bytes -= iov.front().iov_len;
    iov = iov.subspan(1);
  }
  if (bytes > 0 && !iov.empty()) {
    iov.front().iov_base = static_cast<uint8_t*>(iov.front().iov_base) + bytes;
    iov.front().iov_len -= bytes;
  }
  while (!iov.empty() && iov.front().iov_len == 0) iov = iov.subspan(1);
}

Result<void> PreadvFull(int fd, uint64_t offset, std::span<iovec> iov, std::string_view path) {
  while (!iov.empty() && iov.front().iov_len == 0) iov = iov.subspan(1);
  while (!iov.empty()) {
    ssize_t n =
        ::preadv(fd, iov.data(), static_cast<int>(std::min<size_t>(iov.size(), IOV_MAX)), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return tl::unexpected(Error::FromErrno("preadv", errno, fmt::format("{} at 0x{:x}", path, offset)));
    }
    if (n == 0) {
      return tl::unexpected(Error(fmt::format("preadv: unexpected end of file ({} at 0x{:x})", path, offset), EIO));
    }
    offset += static_cast<uint64_t>(n);
    AdvanceIovecs(iov, static_cast<size_t>(n));
  }
  return {};
}

Result<void> SyncData(int fd, std::string_view path) {
  while (::fdatasync(fd) != 0) {
    if (errno != EINTR) return tl::unexpected(Error::FromErrno("fdatasync", errno, path));
  }
  return {};
}

Result<bool> PunchHole(int fd, uint64_t offset, uint64_t length, std::string_view path) {
  if (length == 0) return true;
  for (;;) {
    if (::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                    static_cast<off_t>(length)) == 0) {
      return true;
    }
    if (errno == EINTR) continue;
    if (errno == EOPNOTSUPP || errno == ENOSYS) return false;
    return tl::unexpected(
        Error::FromErrno("fallocate(PUNCH_HOLE)", errno, fmt::format("{} at 0x{:x}+0x{:x}", path, offset, length)));
  }
}

std::string ResolveRelativeTo(const std::string& image_path, const std::string& name) {
  const std::filesystem::path relative(name);
  if (relative.is_absolute()) return name;
  const std::filesystem::path dir = std::filesystem::path(image_path).parent_path();
  return dir.empty() ? name : (dir / relative).string();
}

Result<ImageFile> OpenImageFile(const std::string& path, Access access) {
  ImageFile file;
  file.path = path;
  const int flags = access == Access::kReadOnly ? O_RDONLY : O_RDWR;
  int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return tl::unexpected(Error::FromErrno("open", errno, path));
  file.fd = Fd(fd);
  struct stat st {};
  if (::fstat(file.fd.get(), &st) != 0) return tl::unexpected(Error::FromErrno("fstat", errno, path));
  file.device = st.st_dev;
  file.inode = st.st_ino;
  if (S_ISREG(st.st_mode)) {
    file.size = static_cast<uint64_t>(st.st_size);
  } else if (S_ISBLK(st.st_mode)) {
    file.block_device = true;
    uint64_t bytes = 0;
    if (::ioctl(file.fd.get(), BLKGETSIZE64, &bytes) != 0) {
      return tl::unexpected(Error::FromErrno("ioctl(BLKGETSIZE64)", errno, path));
    }
    file.size = bytes;
  } else {
    return tl::unexpected(Error(fmt::format("{}: not a regular file or block device", path), EINVAL));
  }
  return file;
}

Result<void> LockImageFile(const ImageFile& file, Access access) {
  const int op = (access == Access::kReadOnly ? LOCK_SH : LOCK_EX) | LOCK_NB;
  while (::flock(file.fd.get(), op) != 0) {
    if (errno == EINTR) continue;
    if (errno == EWOULDBLOCK) {
      return tl::unexpected(
          Error(fmt::format("{}: image is locked by another user ({}); a writable image cannot be shared, and a "
                            "base image cannot be opened read-only while something writes it",
                            file.path, access == Access::kReadOnly ? "a writer holds it" : "it is already open"),
                EBUSY));
    }
    return tl::unexpected(Error::FromErrno("flock", errno, file.path));
  }
  return {};
}

}  // namespace clonevm

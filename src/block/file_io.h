// Positioned file I/O shared by the image formats: full-length pread/pwrite loops (EINTR and short
// transfers retried), hole punching, and opening + locking an image file.
//
// Every error names the call, the errno text and the image path.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "base/fd.h"
#include "base/result.h"

namespace clonevm {

enum class Access { kReadWrite, kReadOnly };

// What a read that reaches end of file does with the rest of the buffer.
enum class PastEof {
  kFail,      // an error: the file is shorter than the structure that points into it
  kZeroFill,  // zeros, as for a sparse tail (qcow2 data clusters, which QEMU also reads this way)
};

[[nodiscard]] Result<void> PreadFull(int fd, uint64_t offset, std::span<uint8_t> out, PastEof past_eof,
                                     std::string_view path);
[[nodiscard]] Result<void> PwriteFull(int fd, uint64_t offset, std::span<const uint8_t> data, std::string_view path);
// pwritev of all of `iov` (consumed: entries are advanced on short writes), IOV_MAX entries per call.
[[nodiscard]] Result<void> PwritevFull(int fd, uint64_t offset, std::span<iovec> iov, std::string_view path);
// preadv into all of `iov` (consumed like PwritevFull's). End of file is an error (EIO).
[[nodiscard]] Result<void> PreadvFull(int fd, uint64_t offset, std::span<iovec> iov, std::string_view path);
// Advances `iov` past its first `bytes` bytes (dropping whole entries, trimming the next one).
void AdvanceIovecs(std::span<iovec>& iov, size_t bytes);
[[nodiscard]] Result<void> SyncData(int fd, std::string_view path);

// fallocate(PUNCH_HOLE | KEEP_SIZE): the range then reads as zeros and its blocks are freed.
// Returns false (and changes nothing) when the file system or device does not support it.
[[nodiscard]] Result<bool> PunchHole(int fd, uint64_t offset, uint64_t length, std::string_view path);

// `name` as a path: absolute names as they are, relative names relative to the directory of
// `image_path` (how qcow2 backing file names are resolved).
std::string ResolveRelativeTo(const std::string& image_path, const std::string& name);

// An open image file, not yet locked. For a block device `size` comes from BLKGETSIZE64.
struct ImageFile {
  Fd fd;
  std::string path;
  uint64_t size = 0;
  bool block_device = false;
  dev_t device = 0;
  ino_t inode = 0;
};

// Opens a regular file or block device with O_CLOEXEC (O_RDONLY for kReadOnly); anything else
// (a directory, a FIFO) is an error naming the path.
[[nodiscard]] Result<ImageFile> OpenImageFile(const std::string& path, Access access);

// Takes a non-blocking flock: exclusive for kReadWrite, shared for kReadOnly, so one writer excludes
// every other user while any number of readers (VMs sharing a base image) coexist. The lock lives
// as long as the file descriptor. A taken lock is an error that says who may hold it.
[[nodiscard]] Result<void> LockImageFile(const ImageFile& file, Access access);

}  // namespace clonevm

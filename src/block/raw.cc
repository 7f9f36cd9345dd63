#include "block/raw.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cerrno>

#include "base/log.h"

namespace clonevm {
namespace {

constexpr size_t kZeroChunk = 256 * 1024;

}  // namespace

std::unique_ptr<RawBackend> RawBackend::FromFile(ImageFile file, Access access) {
  return std::unique_ptr<RawBackend>(new RawBackend(std::move(file), access));
}

RawBackend::RawBackend(ImageFile file, Access access) : file_(std::move(file)), access_(access), size_(file_.size) {}

RawBackend::~RawBackend() {
  if (!dirty_) return;
  if (auto r = Flush(); !r) Log(LogLevel::kError, "closing {}: {}", file_.path, r.error().message());
}

Result<void> RawBackend::Read(uint64_t offset, std::span<uint8_t> out) {
  CLONE_TRY_VOID(CheckRange("read", offset, out.size(), size_));
  return PreadFull(file_.fd.get(), offset, out, PastEof::kFail, file_.path);
}

Result<void> RawBackend::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (read_only()) return FailReadOnly("write", file_.path);
  CLONE_TRY_VOID(CheckRange("write", offset, data.size(), size_));
  dirty_ = true;
  return PwriteFull(file_.fd.get(), offset, data, file_.path);
}

Result<void> RawBackend::Flush() {
  if (read_only() || !dirty_) return {};
  CLONE_TRY_VOID(SyncData(file_.fd.get(), file_.path));
  dirty_ = false;
  return {};
}

Result<void> RawBackend::Discard(uint64_t offset, uint64_t length) {
  if (read_only()) return FailReadOnly("discard", file_.path);
  CLONE_TRY_VOID(CheckRange("discard", offset, length, size_));
  if (length == 0) return {};
  dirty_ = true;
  if (punch_supported_) {
    punch_supported_ = CLONE_TRY(PunchHole(file_.fd.get(), offset, length, file_.path));
    if (punch_supported_) return {};
  }
  if (file_.block_device) {
    uint64_t range[2] = {offset, length};
    // A device without discard support keeps the data, which Discard allows.
    if (::ioctl(file_.fd.get(), BLKDISCARD, &range) != 0 && errno != EOPNOTSUPP) {
      return tl::unexpected(Error::FromErrno("ioctl(BLKDISCARD)", errno, file_.path));
    }
  }
  return {};
}

Result<void> RawBackend::WriteZeroes(uint64_t offset, uint64_t length) {
  if (read_only()) return FailReadOnly("write-zeroes", file_.path);
  CLONE_TRY_VOID(CheckRange("write-zeroes", offset, length, size_));
  if (length == 0) return {};
  dirty_ = true;
  if (punch_supported_) {
    punch_supported_ = CLONE_TRY(PunchHole(file_.fd.get(), offset, length, file_.path));
    if (punch_supported_) return {};
  }
  if (zero_range_supported_) {
    int rc;
    do {
      rc = ::fallocate(file_.fd.get(), FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                       static_cast<off_t>(length));
    } while (rc != 0 && errno == EINTR);
    if (rc == 0) return {};
    if (errno != EOPNOTSUPP && errno != ENOSYS) {
      return tl::unexpected(Error::FromErrno("fallocate(ZERO_RANGE)", errno, file_.path));
    }
    zero_range_supported_ = false;
  }
  return WriteZeroBytes(offset, length);
}

Result<void> RawBackend::WriteZeroBytes(uint64_t offset, uint64_t length) {
  if (zeros_.empty()) zeros_.resize(kZeroChunk);
  // Up to 64 iovecs that all point at the same zero buffer: 16 MiB per system call.
  iovec iov[64];
  while (length > 0) {
    size_t count = 0;
    uint64_t batch = 0;
    while (count < std::size(iov) && batch < length) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(kZeroChunk, length - batch));
      iov[count++] = {zeros_.data(), n};
      batch += n;
    }
    CLONE_TRY_VOID(PwritevFull(file_.fd.get(), offset, std::span(iov, count), file_.path));
    offset += batch;
    length -= batch;
  }
  return {};
}

std::string RawBackend::Describe() const {
  return fmt::format("raw {} ({}, {}{})", file_.path, FormatBytes(size_), read_only() ? "read-only" : "read-write",
                     file_.block_device ? ", block device" : "");
}

}  // namespace clonevm

// RawBackend: a raw disk image (regular file or block device) — virtual disk byte N is file byte N.
//
// Reads and writes are single pread/pwrite calls (retried on EINTR and short transfers). Discard and
// WriteZeroes punch holes (fallocate PUNCH_HOLE | KEEP_SIZE), so a sparse image stays thin; where
// the file system or device cannot punch, WriteZeroes falls back to ZERO_RANGE and then to writing
// zeros, and Discard becomes a no-op (allowed: discarded data may keep its old contents).
// The size is fixed at open (fstat, or BLKGETSIZE64 for a block device); the image never grows.
// Thread-safety: see block_backend.h (one I/O thread).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "block/block_backend.h"
#include "block/file_io.h"

namespace clonevm {

class RawBackend final : public BlockBackend {
 public:
  // Takes an opened and locked image file (see OpenImage in image.h, the usual entry point).
  static std::unique_ptr<RawBackend> FromFile(ImageFile file, Access access);
  ~RawBackend() override;

  uint64_t size() const override { return size_; }
  bool read_only() const override { return access_ == Access::kReadOnly; }
  [[nodiscard]] Result<void> Read(uint64_t offset, std::span<uint8_t> out) override;
  [[nodiscard]] Result<void> Write(uint64_t offset, std::span<const uint8_t> data) override;
  [[nodiscard]] Result<void> Flush() override;
  [[nodiscard]] Result<void> Discard(uint64_t offset, uint64_t length) override;
  [[nodiscard]] Result<void> WriteZeroes(uint64_t offset, uint64_t length) override;
  int direct_fd() const override { return file_.fd.get(); }
  void NoteDirectWrite() override { dirty_ = !read_only(); }
  std::string Describe() const override;

 private:
  RawBackend(ImageFile file, Access access);
  [[nodiscard]] Result<void> WriteZeroBytes(uint64_t offset, uint64_t length);

  ImageFile file_;
  Access access_;
  uint64_t size_;
  bool punch_supported_ = true;
  bool zero_range_supported_ = true;
  bool dirty_ = false;          // written since the last Flush()
  std::vector<uint8_t> zeros_;  // allocated on first use by WriteZeroBytes
};

}  // namespace clonevm

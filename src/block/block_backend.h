// BlockBackend: the host side of a virtual disk — the byte store virtio-blk reads and writes.
//
// A backend presents `size()` bytes of virtual disk. Offsets and lengths passed to it come from the
// guest (a virtio-blk request's sector and data length): every call range-checks them against
// size() without overflow and returns an Error for a range that leaves the disk, so a guest can
// never make a backend touch bytes outside its image. A failed request leaves the image consistent
// (it may have written part of the data, as a real disk may).
//
// Durability: Write() may sit in the host page cache (and, for qcow2, in metadata caches) until
// Flush(), which makes everything written before it durable (fdatasync of every file written,
// metadata included). This is the write-back cache a guest sees when VIRTIO_BLK_F_FLUSH is offered;
// a device that does not offer it must call Flush() after each write.
//
// Thread-safety: none. A backend (and the backing files it owns) is used by one I/O thread — the
// VM's event loop or the device's worker — and must not be shared between threads without a lock.
// Destroying a writable backend flushes it (errors are logged); call Flush() first to see them.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "base/result.h"

namespace clonevm {

class BlockBackend {
 public:
  virtual ~BlockBackend() = default;

  // Virtual disk size in bytes (fixed while open).
  virtual uint64_t size() const = 0;
  virtual bool read_only() const = 0;

  // Reads [offset, offset + out.size()) into out.
  [[nodiscard]] virtual Result<void> Read(uint64_t offset, std::span<uint8_t> out) = 0;
  // Writes data at offset. Fails with EROFS on a read-only backend.
  [[nodiscard]] virtual Result<void> Write(uint64_t offset, std::span<const uint8_t> data) = 0;
  // Makes every completed write durable. A no-op on a read-only backend.
  [[nodiscard]] virtual Result<void> Flush() = 0;
  // Tells the backend the guest no longer needs [offset, offset + length): space may be returned
  // to the host. Afterwards the range reads as zeros or as its old contents, never as anything
  // else (and never as a backing file's data hidden by earlier writes).
  [[nodiscard]] virtual Result<void> Discard(uint64_t offset, uint64_t length) = 0;
  // Makes [offset, offset + length) read as zeros, releasing space where the format allows.
  [[nodiscard]] virtual Result<void> WriteZeroes(uint64_t offset, uint64_t length) = 0;

  // Direct access for asynchronous I/O: a file descriptor whose byte N is virtual disk byte N (raw
  // images), which the device may read and write itself (e.g. through io_uring) after checking each
  // range against size() — and, for writes, read_only(). -1 when every request must go through
  // Read()/Write() (qcow2: cluster mapping and metadata). A caller that writes through it calls
  // NoteDirectWrite() first, so Flush() and the destructor know the file needs a sync.
  virtual int direct_fd() const { return -1; }
  virtual void NoteDirectWrite() {}

  // One line for logs and `clone status`: format, path, size, mode, backing chain.
  virtual std::string Describe() const = 0;

 protected:
  BlockBackend() = default;
  BlockBackend(const BlockBackend&) = delete;
  BlockBackend& operator=(const BlockBackend&) = delete;
};

// Fails unless [offset, offset + length) lies inside [0, size); overflow-safe for any guest values.
[[nodiscard]] inline Result<void> CheckRange(std::string_view op, uint64_t offset, uint64_t length, uint64_t size) {
  if (offset > size || length > size - offset) [[unlikely]] {
    return tl::unexpected(Error(
        fmt::format("{}: range 0x{:x}+0x{:x} is outside the disk (size 0x{:x})", op, offset, length, size), EINVAL));
  }
  return {};
}

// The error every mutating call returns on a read-only backend.
[[nodiscard]] inline tl::unexpected<Error> FailReadOnly(std::string_view op, std::string_view path) {
  return tl::unexpected(Error(fmt::format("{}: image {} is open read-only", op, path), EROFS));
}

// "512 B", "64 KiB", "1.5 GiB": sizes in messages.
std::string FormatBytes(uint64_t bytes);

}  // namespace clonevm

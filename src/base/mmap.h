// Mmap: a move-only owner of a memory mapping.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "base/result.h"

namespace clonevm {

class Mmap {
 public:
  Mmap() = default;
  ~Mmap() { reset(); }
  Mmap(Mmap&& o) noexcept : addr_(std::exchange(o.addr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  Mmap& operator=(Mmap&& o) noexcept {
    if (this != &o) {
      reset();
      addr_ = std::exchange(o.addr_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  Mmap(const Mmap&) = delete;
  Mmap& operator=(const Mmap&) = delete;

  // mmap(2); the error names the size.
  [[nodiscard]] static Result<Mmap> Map(size_t size, int prot, int flags, int fd = -1, off_t offset = 0);
  // Anonymous, private, MAP_NORESERVE memory: pages are committed on first touch.
  [[nodiscard]] static Result<Mmap> Anonymous(size_t size);

  uint8_t* data() const { return static_cast<uint8_t*>(addr_); }
  size_t size() const { return size_; }
  void reset();

 private:
  Mmap(void* addr, size_t size) : addr_(addr), size_(size) {}
  void* addr_ = nullptr;
  size_t size_ = 0;
};

}  // namespace clonevm

#include "base/mmap.h"

namespace clonevm {

Result<Mmap> Mmap::Map(size_t size, int prot, int flags, int fd, off_t offset) {
  void* addr = ::mmap(nullptr, size, prot, flags, fd, offset);
  if (addr == MAP_FAILED) return FailErrno("mmap", fmt::format("{} bytes", size));
  return Mmap(addr, size);
}

Result<Mmap> Mmap::Anonymous(size_t size) {
  return Map(size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
}

void Mmap::reset() {
  if (addr_ != nullptr) ::munmap(addr_, size_);
  addr_ = nullptr;
  size_ = 0;
}

}  // namespace clonevm

#include "memory/guest_memory.h"

#include <sys/mman.h>
#include <sys/stat.h>

#include "base/log.h"

namespace clonevm {
namespace {

Result<MemoryRegion> MapRegion(uint64_t gpa, uint64_t size) {
  MemoryRegion region;
  region.gpa = gpa;
  region.size = size;
  region.mapping = CLONE_TRY(Mmap::Anonymous(size));
  // KSM may be compiled out or disabled; memory still works without merging.
  if (::madvise(region.host(), size, MADV_MERGEABLE) != 0) {
    Log(LogLevel::kDebug, "madvise(MADV_MERGEABLE) failed: {}", errno);
  }
  return region;
}

Result<MemoryRegion> MapFileRegion(int file, uint64_t offset, uint64_t gpa, uint64_t size) {
  MemoryRegion region;
  region.gpa = gpa;
  region.size = size;
  region.mapping = CLONE_TRY(Mmap::Map(size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, file,
                                       static_cast<off_t>(offset)));
  // Copies made on write are anonymous pages: let KSM merge those across forks.
  if (::madvise(region.host(), size, MADV_MERGEABLE) != 0) {
    Log(LogLevel::kDebug, "madvise(MADV_MERGEABLE) failed: {}", errno);
  }
  return region;
}

}  // namespace

Result<GuestMemory> GuestMemory::CreateFromFile(int file, uint64_t ram_bytes, uint64_t hole_start, uint64_t high_start) {
  if (ram_bytes == 0 || ram_bytes % 4096 != 0) return Fail("guest RAM size {} is not a positive multiple of 4 KiB", ram_bytes);
  struct stat st {};
  if (::fstat(file, &st) != 0) return FailErrno("fstat", "memory file");
  if (static_cast<uint64_t>(st.st_size) < ram_bytes) {
    return Fail("the memory file holds {} bytes, the guest has {} (truncated?)", st.st_size, ram_bytes);
  }
  GuestMemory mem;
  mem.ram_bytes_ = ram_bytes;
  uint64_t low = std::min(ram_bytes, hole_start);
  mem.regions_.push_back(CLONE_TRY(MapFileRegion(file, 0, 0, low)));
  if (ram_bytes > low) mem.regions_.push_back(CLONE_TRY(MapFileRegion(file, low, high_start, ram_bytes - low)));
  return mem;
}

uint64_t GuestMemory::FileOffset(size_t index) const {
  uint64_t offset = 0;
  for (size_t i = 0; i < index && i < regions_.size(); ++i) offset += regions_[i].size;
  return offset;
}

Result<GuestMemory> GuestMemory::Create(uint64_t ram_bytes, uint64_t hole_start, uint64_t high_start) {
  if (ram_bytes == 0 || ram_bytes % 4096 != 0) return Fail("guest RAM size {} is not a positive multiple of 4 KiB", ram_bytes);
  GuestMemory mem;
  mem.ram_bytes_ = ram_bytes;
  uint64_t low = std::min(ram_bytes, hole_start);
  mem.regions_.push_back(CLONE_TRY(MapRegion(0, low)));
  if (ram_bytes > low) mem.regions_.push_back(CLONE_TRY(MapRegion(high_start, ram_bytes - low)));
  return mem;
}

std::span<uint8_t> GuestMemory::Span(uint64_t gpa, uint64_t len) const {
  for (const auto& r : regions_) {
    if (gpa < r.gpa || gpa >= r.end()) continue;
    uint64_t offset = gpa - r.gpa;
    if (len > r.size - offset) return {};
    return std::span(r.host() + offset, len);
  }
  return {};
}

Result<void> GuestMemory::WriteBytes(uint64_t gpa, std::span<const uint8_t> data) const {
  auto dst = Span(gpa, data.size());
  if (dst.empty() && !data.empty()) return Fail("guest address range {:#x}+{:#x} is outside RAM", gpa, data.size());
  if (!data.empty()) std::memcpy(dst.data(), data.data(), data.size());
  return {};
}

Result<void> GuestMemory::ReadBytes(uint64_t gpa, std::span<uint8_t> out) const {
  auto src = Span(gpa, out.size());
  if (src.empty() && !out.empty()) return Fail("guest address range {:#x}+{:#x} is outside RAM", gpa, out.size());
  if (!out.empty()) std::memcpy(out.data(), src.data(), out.size());
  return {};
}

}  // namespace clonevm

#include "memory/guest_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/log.h"

namespace clonevm {
namespace {

// Overlay mappings allowed for one image in total, far below vm.max_map_count (65530 by default)
// so the VMM keeps room for its other mappings; layers beyond it are copied in instead.
constexpr size_t kMaxOverlayMappings = 16384;

// Offers the region to KSM unless --no-ksm. KSM may be compiled out or disabled; memory still
// works without merging.
void MarkMergeable(const MemoryRegion& region, Ksm ksm) {
  if (ksm == Ksm::kOff) return;
  if (::madvise(region.host(), region.size, MADV_MERGEABLE) != 0) {
    Log(LogLevel::kDebug, "madvise(MADV_MERGEABLE) failed: {}", errno);
  }
}

Result<MemoryRegion> MapRegion(uint64_t gpa, uint64_t size, Ksm ksm) {
  MemoryRegion region;
  region.gpa = gpa;
  region.size = size;
  region.mapping = CLONE_TRY(Mmap::Anonymous(size));
  MarkMergeable(region, ksm);
  return region;
}

Result<MemoryRegion> MapFileRegion(int file, uint64_t offset, uint64_t gpa, uint64_t size, Ksm ksm) {
  MemoryRegion region;
  region.gpa = gpa;
  region.size = size;
  region.mapping =
      CLONE_TRY(Mmap::Map(size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, file, static_cast<off_t>(offset)));
  region.backing = MemoryBacking::kFilePrivate;
  // Copies made on write are anonymous pages: let KSM merge those across forks.
  MarkMergeable(region, ksm);
  return region;
}

Result<MemoryRegion> MapSharedRegion(int memfd, uint64_t offset, uint64_t gpa, uint64_t size) {
  MemoryRegion region;
  region.gpa = gpa;
  region.size = size;
  region.mapping = CLONE_TRY(Mmap::Map(size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, static_cast<off_t>(offset)));
  region.backing = MemoryBacking::kSharedMemfd;
  // KSM merges only private anonymous pages; shared pages are not offered to it.
  return region;
}

}  // namespace

Result<GuestMemory> GuestMemory::CreateShared(uint64_t ram_bytes, uint64_t hole_start, uint64_t high_start) {
  if (ram_bytes == 0 || ram_bytes % 4096 != 0)
    return Fail("guest RAM size {} is not a positive multiple of 4 KiB", ram_bytes);
  Fd memfd(::memfd_create("clone-guest-ram", MFD_CLOEXEC));
  if (!memfd) return FailErrno("memfd_create", "guest RAM");
  if (::ftruncate(memfd.get(), static_cast<off_t>(ram_bytes)) != 0) return FailErrno("ftruncate", "guest RAM memfd");
  GuestMemory mem;
  mem.ram_bytes_ = ram_bytes;
  uint64_t low = std::min(ram_bytes, hole_start);
  mem.regions_.push_back(CLONE_TRY(MapSharedRegion(memfd.get(), 0, 0, low)));
  if (ram_bytes > low)
    mem.regions_.push_back(CLONE_TRY(MapSharedRegion(memfd.get(), low, high_start, ram_bytes - low)));
  CLONE_TRY_VOID(mem.CreateDirtyLog());
  return mem;  // the mappings keep the memfd's pages; the fd itself closes here
}

Result<GuestMemory> GuestMemory::CreateFromFile(int file, uint64_t ram_bytes, uint64_t hole_start, uint64_t high_start,
                                                Ksm ksm) {
  if (ram_bytes == 0 || ram_bytes % 4096 != 0)
    return Fail("guest RAM size {} is not a positive multiple of 4 KiB", ram_bytes);
  struct stat st {};
  if (::fstat(file, &st) != 0) return FailErrno("fstat", "memory file");
  if (static_cast<uint64_t>(st.st_size) < ram_bytes) {
    return Fail("the memory file holds {} bytes, the guest has {} (truncated?)", st.st_size, ram_bytes);
  }
  GuestMemory mem;
  mem.ram_bytes_ = ram_bytes;
  uint64_t low = std::min(ram_bytes, hole_start);
  mem.regions_.push_back(CLONE_TRY(MapFileRegion(file, 0, 0, low, ksm)));
  if (ram_bytes > low) mem.regions_.push_back(CLONE_TRY(MapFileRegion(file, low, high_start, ram_bytes - low, ksm)));
  CLONE_TRY_VOID(mem.CreateDirtyLog());
  return mem;
}

Result<GuestMemory> GuestMemory::CreateFromImage(const MemoryImage& image, uint64_t ram_bytes, uint64_t hole_start,
                                                 uint64_t high_start, Ksm ksm) {
  GuestMemory mem = CLONE_TRY(CreateFromFile(image.base.get(), ram_bytes, hole_start, high_start, ksm));
  size_t map_budget = kMaxOverlayMappings;
  for (size_t i = 0; i < image.layers.size(); ++i) {
    auto applied = mem.ApplyLayer(image.layers[i], &map_budget);
    if (!applied) return Fail(applied.error().Wrap(fmt::format("incremental layer {}", i + 1)));
  }
  if (!image.layers.empty()) {
    // MAP_FIXED overlays are new mappings without the region's MADV_MERGEABLE.
    for (const auto& r : mem.regions_) MarkMergeable(r, ksm);
  }
  return mem;
}

Result<void> GuestMemory::ApplyLayer(const MemoryLayer& layer, size_t* map_budget) {
  struct stat st {};
  if (::fstat(layer.file.get(), &st) != 0) return FailErrno("fstat", "memory file");
  if (static_cast<uint64_t>(st.st_size) < ram_bytes_) {
    return Fail("the memory file holds {} bytes, the guest has {} (truncated?)", st.st_size, ram_bytes_);
  }
  if (layer.pages.pages() != ram_bytes_ / kDirtyPageSize) return Fail("the page bitmap does not match the RAM size");
  // Runs split at region boundaries: (file page, count, host address).
  struct Piece {
    uint64_t file_page, count;
    uint8_t* host;
  };
  std::vector<Piece> pieces;
  for (auto [first, count] : layer.pages.Runs()) {
    for (size_t r = 0; r < regions_.size() && count > 0; ++r) {
      uint64_t region_first = FileOffset(r) / kDirtyPageSize;
      uint64_t region_end = region_first + regions_[r].size / kDirtyPageSize;
      if (first >= region_end) continue;
      uint64_t n = std::min(count, region_end - first);
      pieces.push_back({first, n, regions_[r].host() + (first - region_first) * kDirtyPageSize});
      first += n;
      count -= n;
    }
  }
  bool map = pieces.size() <= *map_budget;
  if (map) *map_budget -= pieces.size();
  for (const Piece& p : pieces) {
    uint64_t offset = p.file_page * kDirtyPageSize, len = p.count * kDirtyPageSize;
    if (map) {
      void* at = ::mmap(p.host, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, layer.file.get(),
                        static_cast<off_t>(offset));
      if (at == MAP_FAILED) return FailErrno("mmap", fmt::format("overlay {:#x}+{:#x}", offset, len));
      continue;
    }
    uint8_t* dst = p.host;
    while (len > 0) {
      ssize_t n = ::pread(layer.file.get(), dst, len, static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return FailErrno("pread", fmt::format("memory file at {:#x}", offset));
      dst += n;
      offset += static_cast<uint64_t>(n);
      len -= static_cast<uint64_t>(n);
    }
  }
  return {};
}

Result<void> GuestMemory::CreateDirtyLog() {
  uint64_t limit = regions_.empty() ? 0 : regions_.back().end();
  dirty_log_ = CLONE_TRY(DirtyLog::Create(limit));
  return {};
}

PageBitmap GuestMemory::FilePages(const PageBitmap& gpa_pages) const {
  PageBitmap out(ram_bytes_ / kDirtyPageSize);
  for (size_t r = 0; r < regions_.size(); ++r) {
    uint64_t gpa_first = regions_[r].gpa / kDirtyPageSize, file_first = FileOffset(r) / kDirtyPageSize;
    for (uint64_t i = 0; i < regions_[r].size / kDirtyPageSize; ++i) {
      if (gpa_pages.Test(gpa_first + i)) out.Set(file_first + i);
    }
  }
  return out;
}

PageBitmap GuestMemory::GpaPages(const PageBitmap& file_pages) const {
  PageBitmap out(dirty_log_->pages());
  for (size_t r = 0; r < regions_.size(); ++r) {
    uint64_t gpa_first = regions_[r].gpa / kDirtyPageSize, file_first = FileOffset(r) / kDirtyPageSize;
    for (uint64_t i = 0; i < regions_[r].size / kDirtyPageSize; ++i) {
      if (file_pages.Test(file_first + i)) out.Set(gpa_first + i);
    }
  }
  return out;
}

uint64_t GuestMemory::FileOffset(size_t index) const {
  uint64_t offset = 0;
  for (size_t i = 0; i < index && i < regions_.size(); ++i) offset += regions_[i].size;
  return offset;
}

Result<GuestMemory> GuestMemory::Create(uint64_t ram_bytes, uint64_t hole_start, uint64_t high_start, Ksm ksm) {
  if (ram_bytes == 0 || ram_bytes % 4096 != 0)
    return Fail("guest RAM size {} is not a positive multiple of 4 KiB", ram_bytes);
  GuestMemory mem;
  mem.ram_bytes_ = ram_bytes;
  uint64_t low = std::min(ram_bytes, hole_start);
  mem.regions_.push_back(CLONE_TRY(MapRegion(0, low, ksm)));
  if (ram_bytes > low) mem.regions_.push_back(CLONE_TRY(MapRegion(high_start, ram_bytes - low, ksm)));
  CLONE_TRY_VOID(mem.CreateDirtyLog());
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

Result<void> GuestMemory::Discard(uint64_t gpa, uint64_t len) const {
  if (gpa % kDirtyPageSize != 0 || len % kDirtyPageSize != 0)
    return Fail("discard {:#x}+{:#x}: not 4 KiB aligned", gpa, len);
  if (len == 0) return {};
  const MemoryRegion* region = nullptr;
  for (const auto& r : regions_) {
    if (gpa >= r.gpa && gpa < r.end() && len <= r.end() - gpa) region = &r;
  }
  if (region == nullptr) return Fail("discard {:#x}+{:#x}: outside guest RAM", gpa, len);
  uint8_t* host = region->host() + (gpa - region->gpa);
  // MADV_DONTNEED on a private mapping drops its pages (anonymous: zero on the next touch; file:
  // the file's page again). On a shared mapping it would only unmap them from this process, so the
  // memfd's pages are freed with MADV_REMOVE, which punches a hole in the file.
  int advice = region->backing == MemoryBacking::kSharedMemfd ? MADV_REMOVE : MADV_DONTNEED;
  if (::madvise(host, len, advice) != 0) {
    return FailErrno("madvise",
                     fmt::format("{} {:#x}+{:#x}", advice == MADV_REMOVE ? "MADV_REMOVE" : "MADV_DONTNEED", gpa, len));
  }
  MarkDirty(gpa, len);
  return {};
}

Result<void> GuestMemory::WriteBytes(uint64_t gpa, std::span<const uint8_t> data) const {
  auto dst = Span(gpa, data.size());
  if (dst.empty() && !data.empty()) return Fail("guest address range {:#x}+{:#x} is outside RAM", gpa, data.size());
  if (!data.empty()) std::memcpy(dst.data(), data.data(), data.size());
  MarkDirty(gpa, data.size());
  return {};
}

Result<void> GuestMemory::ReadBytes(uint64_t gpa, std::span<uint8_t> out) const {
  auto src = Span(gpa, out.size());
  if (src.empty() && !out.empty()) return Fail("guest address range {:#x}+{:#x} is outside RAM", gpa, out.size());
  if (!out.empty()) std::memcpy(out.data(), src.data(), out.size());
  return {};
}

}  // namespace clonevm

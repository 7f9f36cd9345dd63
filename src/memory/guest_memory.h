// GuestMemory: the guest's RAM as host mappings, with checked guest-physical accessors.
//
// RAM is anonymous MAP_NORESERVE memory (pages are committed on first touch) marked
// MADV_MERGEABLE for KSM. It is split around the 32-bit MMIO hole: [0, low_end) and, when the
// guest has more RAM than fits below the hole, [4 GiB, 4 GiB + rest).
//
// Every access by guest physical address is range-checked: a guest-controlled address that falls
// outside RAM (or straddles two regions) yields an empty span / an error, never a host fault.
// Thread-safety: the region table is immutable after Create(); the bytes are shared with the guest
// and with other threads, so callers copy guest-controlled data before validating it.
//
// Dirty tracking (incremental snapshots): every GuestMemory owns a DirtyLog (dirty_bitmap.h) over its
// guest-physical range. While it is enabled, VMM code that writes guest memory on the guest's behalf
// marks what it wrote: WriteBytes()/Write() do it themselves, virtqueues call MarkDirty() for used
// rings and device-writable buffers, vhost devices get the log as their kernel log. vCPU writes are
// KVM's to log (vmm/vm_dirty.cc merges the two).
//
// Giving pages back (virtio-balloon, free page reporting): Discard() releases the host memory behind
// a page-aligned guest range with the call that suits the region's backing — MADV_DONTNEED for
// private mappings (anonymous RAM then reads as zeros; a snapshot file's private mapping drops its
// copies and reads the file's page again), MADV_REMOVE (a hole punched in the file) for shared memfd
// RAM. The next guest access faults a page in again. Discarded pages are marked dirty: an incremental
// snapshot must record their new (zero or file) content, not keep the parent's.
//
// Snapshot images: CreateFromImage() maps a full memory file and then overlays incremental layers
// (only their listed pages) with MAP_FIXED private mappings of the layer files, so restoring an
// incremental snapshot still shares every file's page cache.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <type_traits>
#include <vector>

#include "base/fd.h"
#include "base/mmap.h"
#include "base/result.h"
#include "memory/dirty_bitmap.h"

namespace clonevm {

// Whether guest RAM is offered to KSM (MADV_MERGEABLE, the default) or not (--no-ksm).
enum class Ksm { kMergeable, kOff };

// What backs a region's host mapping (what Discard() must do to give its pages back).
enum class MemoryBacking {
  kAnonymous,    // MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE (Create)
  kFilePrivate,  // MAP_PRIVATE of a snapshot's memory file (CreateFromFile, CreateFromImage)
  kSharedMemfd,  // MAP_SHARED of a memfd (CreateShared): another process may map the same pages
};

struct MemoryRegion {
  uint64_t gpa = 0;
  uint64_t size = 0;
  Mmap mapping;
  MemoryBacking backing = MemoryBacking::kAnonymous;

  uint64_t end() const { return gpa + size; }
  uint8_t* host() const { return mapping.data(); }
};

// One incremental layer of a snapshot's memory: a file laid out like a full memory file, of which
// only the pages set in `pages` (memory-file page indices) are the layer's; the others come from below.
struct MemoryLayer {
  Fd file;
  PageBitmap pages;
};
// A snapshot's memory as files: a full memory file, then incremental layers applied oldest first.
struct MemoryImage {
  Fd base;
  std::vector<MemoryLayer> layers;
  void reset() {
    base.reset();
    layers.clear();
  }
};

class GuestMemory {
 public:
  // Lays out `ram_bytes` of RAM: below `hole_start`, then from `high_start` upward.
  [[nodiscard]] static Result<GuestMemory> Create(uint64_t ram_bytes, uint64_t hole_start, uint64_t high_start,
                                                  Ksm ksm = Ksm::kMergeable);
  // The same layout in one memfd mapped MAP_SHARED (regions back to back in the memfd, as in a
  // memory file): for backends that map guest RAM themselves. The memfd lives as long as the mappings.
  [[nodiscard]] static Result<GuestMemory> CreateShared(uint64_t ram_bytes, uint64_t hole_start, uint64_t high_start);
  // The same layout backed by `file` (a snapshot's memory file): the regions lie back to back in
  // the file (region k at the sum of the sizes before it, i.e. RAM in guest-physical order without
  // the hole) and are mapped MAP_PRIVATE | MAP_NORESERVE: reads share the file's page cache with
  // every other VM mapping it, the first write to a page copies it (the file never changes).
  // The file must hold at least `ram_bytes` bytes (holes read as zeros).
  [[nodiscard]] static Result<GuestMemory> CreateFromFile(int file, uint64_t ram_bytes, uint64_t hole_start,
                                                          uint64_t high_start, Ksm ksm = Ksm::kMergeable);
  // CreateFromFile(image.base), then each layer's pages mapped over it (MAP_PRIVATE | MAP_FIXED runs
  // of the layer file; a layer with too many runs for the mapping budget is copied in with pread).
  // Every layer file must hold at least `ram_bytes` bytes and its bitmap cover ram_bytes / 4 KiB pages.
  [[nodiscard]] static Result<GuestMemory> CreateFromImage(const MemoryImage& image, uint64_t ram_bytes,
                                                           uint64_t hole_start, uint64_t high_start,
                                                           Ksm ksm = Ksm::kMergeable);
  // Offset of region `index` in a memory file laid out as CreateFromFile expects.
  uint64_t FileOffset(size_t index) const;

  const std::vector<MemoryRegion>& regions() const { return regions_; }
  uint64_t ram_bytes() const { return ram_bytes_; }
  // End of the RAM below the MMIO hole.
  uint64_t low_end() const { return regions_.empty() ? 0 : regions_[0].end(); }

  // The host bytes for [gpa, gpa+len), or an empty span if any byte is outside one RAM region.
  std::span<uint8_t> Span(uint64_t gpa, uint64_t len) const;
  bool Contains(uint64_t gpa, uint64_t len) const { return len == 0 || !Span(gpa, len).empty(); }

  // The dirty log (see above). Never null.
  DirtyLog& dirty_log() const { return *dirty_log_; }
  // Marks [gpa, gpa + len) dirty when tracking is enabled. Any thread.
  void MarkDirty(uint64_t gpa, uint64_t len) const {
    if (dirty_log_->enabled()) dirty_log_->Mark(gpa, len);
  }
  // Converts a guest-physical page bitmap (DirtyLog::TakeAll) to memory-file pages, and back.
  PageBitmap FilePages(const PageBitmap& gpa_pages) const;
  PageBitmap GpaPages(const PageBitmap& file_pages) const;

  // Releases the host memory of [gpa, gpa + len) (see "Giving pages back" above) and marks it dirty.
  // gpa and len must be multiples of 4 KiB and the range inside one RAM region, else an error and
  // nothing is touched. Any thread; the guest may access the range concurrently (it then reads a
  // zero or file page, or keeps a page it wrote after the discard).
  [[nodiscard]] Result<void> Discard(uint64_t gpa, uint64_t len) const;

  // Marks what it writes (MarkDirty).
  [[nodiscard]] Result<void> WriteBytes(uint64_t gpa, std::span<const uint8_t> data) const;
  [[nodiscard]] Result<void> ReadBytes(uint64_t gpa, std::span<uint8_t> out) const;

  template <typename T>
  [[nodiscard]] Result<void> Write(uint64_t gpa, const T& value) const {
    static_assert(std::is_trivially_copyable_v<T>);
    // SAFETY: T is trivially copyable; its object representation is its bytes.
    return WriteBytes(gpa, std::span(reinterpret_cast<const uint8_t*>(&value), sizeof(T)));
  }

  template <typename T>
  [[nodiscard]] Result<T> Read(uint64_t gpa) const {
    static_assert(std::is_trivially_copyable_v<T>);
    T value;
    // SAFETY: T is trivially copyable; any byte pattern read from the guest is copied, not aliased.
    CLONE_TRY_VOID(ReadBytes(gpa, std::span(reinterpret_cast<uint8_t*>(&value), sizeof(T))));
    return value;
  }

 private:
  [[nodiscard]] Result<void> CreateDirtyLog();
  [[nodiscard]] Result<void> ApplyLayer(const MemoryLayer& layer, size_t* map_budget);

  std::vector<MemoryRegion> regions_;
  uint64_t ram_bytes_ = 0;
  std::unique_ptr<DirtyLog> dirty_log_;  // heap: stays put when the GuestMemory moves
};

}  // namespace clonevm

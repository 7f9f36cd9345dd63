// Page bitmaps for incremental snapshots.
//
// PageBitmap: a plain bitmap of 4 KiB pages (bit i = page i), used for the set of memory-file pages
// an incremental snapshot holds and for merging dirty sets. Not thread-safe.
//
// DirtyLog: the VMM-side dirty log of one GuestMemory, indexed by guest-physical page (bit i =
// [i * 4 KiB, (i + 1) * 4 KiB)), covering every RAM region up to the highest RAM address. It has two
// writers, both only while tracking is enabled:
//   * the VMM's own device code (virtqueue used rings and device-writable buffers, GuestMemory
//     writes), through Mark() — lock-free atomic ORs, callable from any thread;
//   * the kernel's vhost workers: the words are laid out exactly as vhost's log (VHOST_SET_LOG_BASE:
//     little-endian u64 words, bit = guest page / 4 KiB, set atomically by the kernel), so the same
//     memory is handed to every vhost device as its log base (vhost.h).
// Writes by vCPUs are not here: KVM logs them (KVM_MEM_LOG_DIRTY_PAGES), and vmm/ merges the two.
// TakeAll() atomically exchanges every word with zero, so a page marked concurrently lands either in
// this collection or in the next, never in neither.
//
// The words live in their own anonymous mapping (page-aligned, never moved or resized), so the
// address given to vhost stays valid for the DirtyLog's lifetime; whoever handed it to a vhost
// device must disable vhost logging before the DirtyLog is destroyed (GuestMemory outlives devices).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "base/mmap.h"
#include "base/result.h"

namespace clonevm {

inline constexpr uint64_t kDirtyPageSize = 4096;

class PageBitmap {
 public:
  PageBitmap() = default;
  explicit PageBitmap(uint64_t pages) : pages_(pages), words_((pages + 63) / 64, 0) {}
  // From little-endian u64 words (a snapshot's stored bitmap); fails when the size does not match
  // `pages` or a bit past the last page is set.
  [[nodiscard]] static Result<PageBitmap> FromBytes(std::span<const uint8_t> bytes, uint64_t pages);
  std::vector<uint8_t> ToBytes() const;

  uint64_t pages() const { return pages_; }
  bool Test(uint64_t page) const { return page < pages_ && (words_[page / 64] >> (page % 64)) & 1; }
  void Set(uint64_t page) {
    if (page < pages_) words_[page / 64] |= uint64_t{1} << (page % 64);
  }
  void Clear(uint64_t page) {
    if (page < pages_) words_[page / 64] &= ~(uint64_t{1} << (page % 64));
  }
  // Sets [first, first + count), clipped to the bitmap.
  void SetRange(uint64_t first, uint64_t count);
  // ORs `other` in; sizes must match (checked).
  void Or(const PageBitmap& other);
  uint64_t Count() const;
  // Runs of consecutive set pages, as (first page, page count), in ascending order.
  std::vector<std::pair<uint64_t, uint64_t>> Runs() const;
  std::span<uint64_t> words() { return words_; }
  std::span<const uint64_t> words() const { return words_; }
  bool operator==(const PageBitmap&) const = default;

 private:
  uint64_t pages_ = 0;
  std::vector<uint64_t> words_;
};

class DirtyLog {
 public:
  // A log for guest-physical pages [0, limit_gpa) (rounded up to whole pages).
  [[nodiscard]] static Result<std::unique_ptr<DirtyLog>> Create(uint64_t limit_gpa);
  DirtyLog(const DirtyLog&) = delete;
  DirtyLog& operator=(const DirtyLog&) = delete;

  bool enabled() const { return enabled_.load(std::memory_order_acquire); }
  void Enable() { enabled_.store(true, std::memory_order_release); }
  void Disable() {
    enabled_.store(false, std::memory_order_release);
    incomplete_.store(false, std::memory_order_release);
  }
  // Marks the pages of [gpa, gpa + len); addresses past the log are ignored. Any thread. Marks even
  // when disabled: callers check enabled() first (the hot path pays one load).
  void Mark(uint64_t gpa, uint64_t len);
  // Some writer (a vhost device that could not log) may write pages nobody marks: from now on,
  // until Disable(), TakeAll() reports every page. Any thread.
  void SetIncomplete() { incomplete_.store(true, std::memory_order_release); }
  bool incomplete() const { return incomplete_.load(std::memory_order_acquire); }
  // Returns every page marked since the last TakeAll() (by Mark() or vhost) and clears them.
  PageBitmap TakeAll();

  uint64_t pages() const { return pages_; }
  // For VHOST_SET_LOG_BASE: the first word's address and the log's size in bytes.
  uint64_t* base() const { return reinterpret_cast<uint64_t*>(words_.data()); }  // SAFETY: page-aligned mapping of u64s
  uint64_t size_bytes() const { return (pages_ + 63) / 64 * 8; }

 private:
  DirtyLog(Mmap words, uint64_t pages) : words_(std::move(words)), pages_(pages) {}
  std::atomic_ref<uint64_t> Word(uint64_t index) const { return std::atomic_ref<uint64_t>(base()[index]); }

  Mmap words_;
  uint64_t pages_ = 0;
  std::atomic<bool> enabled_{false};
  std::atomic<bool> incomplete_{false};
};

}  // namespace clonevm

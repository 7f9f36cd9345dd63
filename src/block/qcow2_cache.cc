#include "block/qcow2_cache.h"

#include <algorithm>
#include <cstring>

#include "base/check.h"
#include "block/file_io.h"

namespace clonevm::qcow2 {

TableCache::TableCache(int fd, std::string path, size_t table_bytes, size_t capacity, BeforeWriteback before_writeback)
    : fd_(fd),
      path_(std::move(path)),
      table_bytes_(table_bytes),
      capacity_(std::max<size_t>(capacity, 1)),
      before_writeback_(std::move(before_writeback)) {
  slots_.reserve(capacity_);
  index_.reserve(capacity_ * 2);
}

Result<TableCache::Slot> TableCache::Get(uint64_t offset) {
  if (last_ < slots_.size() && slots_[last_].in_use && slots_[last_].offset == offset) [[likely]] {
    slots_[last_].last_use = ++clock_;
    return last_;
  }
  if (auto it = index_.find(offset); it != index_.end()) {
    last_ = it->second;
    slots_[last_].last_use = ++clock_;
    return last_;
  }
  const Slot slot = CLONE_TRY(TakeSlot(offset));
  Entry& e = slots_[slot];
  if (auto r = PreadFull(fd_, offset, std::span(e.bytes.get(), table_bytes_), PastEof::kZeroFill, path_); !r) {
    index_.erase(offset);
    e.in_use = false;
    return tl::unexpected(r.error());
  }
  return slot;
}

Result<TableCache::Slot> TableCache::Create(uint64_t offset) {
  CLONE_CHECK(index_.find(offset) == index_.end());
  const Slot slot = CLONE_TRY(TakeSlot(offset));
  std::memset(slots_[slot].bytes.get(), 0, table_bytes_);
  MarkDirty(slot, 0, table_bytes_);
  return slot;
}

void TableCache::MarkDirty(Slot slot, size_t begin, size_t end) {
  Entry& e = slots_[slot];
  if (e.dirty_begin == e.dirty_end) {
    ++dirty_count_;
    e.dirty_begin = begin;
    e.dirty_end = end;
  } else {
    e.dirty_begin = std::min(e.dirty_begin, begin);
    e.dirty_end = std::max(e.dirty_end, end);
  }
}

Result<void> TableCache::WriteDirty() {
  for (Entry& e : slots_) {
    if (e.in_use && e.dirty_end != e.dirty_begin) CLONE_TRY_VOID(WriteBack(e));
  }
  return {};
}

Result<void> TableCache::WriteBack(Entry& e) {
  CLONE_TRY_VOID(PwriteFull(fd_, e.offset + e.dirty_begin,
                            std::span<const uint8_t>(e.bytes.get() + e.dirty_begin, e.dirty_end - e.dirty_begin),
                            path_));
  e.dirty_begin = e.dirty_end = 0;
  --dirty_count_;
  return {};
}

// A slot for a table not in the cache: a fresh one while below capacity, else the least recently
// used one, written back first if dirty. The slot is registered under `offset` on return.
Result<TableCache::Slot> TableCache::TakeSlot(uint64_t offset) {
  Slot slot;
  if (slots_.size() < capacity_) {
    slots_.emplace_back();
    slots_.back().bytes = std::make_unique<uint8_t[]>(table_bytes_);
    slot = static_cast<Slot>(slots_.size() - 1);
  } else {
    slot = 0;
    for (Slot i = 1; i < slots_.size(); ++i) {
      if (!slots_[i].in_use || (slots_[slot].in_use && slots_[i].last_use < slots_[slot].last_use)) slot = i;
    }
    Entry& victim = slots_[slot];
    if (victim.in_use) {
      if (victim.dirty_end != victim.dirty_begin) {
        if (before_writeback_) CLONE_TRY_VOID(before_writeback_());
        CLONE_TRY_VOID(WriteBack(victim));
      }
      index_.erase(victim.offset);
      victim.in_use = false;
    }
  }
  Entry& e = slots_[slot];
  e.offset = offset;
  e.in_use = true;
  e.last_use = ++clock_;
  e.dirty_begin = e.dirty_end = 0;
  index_.emplace(offset, slot);
  last_ = slot;
  return slot;
}

}  // namespace clonevm::qcow2

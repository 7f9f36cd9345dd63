// TableCache: a bounded LRU cache of one image file's cluster-sized metadata tables (L2 tables or
// refcount blocks), keyed by the table's host offset.
//
// Tables are kept as raw on-disk (big-endian) bytes. Modified tables stay in memory, marked dirty
// with the byte range that changed, until WriteDirty() (called by the owner's Flush in the order
// crash safety needs) or until eviction. Evicting a dirty table first runs the owner's
// `before_writeback` hook — for L2 tables it makes the data and refcounts they point to durable —
// then writes the table back.
//
// Hot path: a hit is a hash lookup (or a compare, for the most recent table) and allocates nothing;
// table buffers are allocated once per slot, up to `capacity` slots.
// A Slot stays valid until the next Get()/Create() on the same cache.
// Thread-safety: one thread (the owning backend's).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/result.h"

namespace clonevm::qcow2 {

class TableCache {
 public:
  using Slot = uint32_t;
  using BeforeWriteback = std::function<Result<void>()>;

  TableCache(int fd, std::string path, size_t table_bytes, size_t capacity, BeforeWriteback before_writeback = {});

  // The table at host `offset`, read from the file on a miss (bytes past end of file read as zero).
  [[nodiscard]] Result<Slot> Get(uint64_t offset);
  // A new all-zero table at host `offset`, not read from disk and entirely dirty.
  [[nodiscard]] Result<Slot> Create(uint64_t offset);

  uint8_t* data(Slot slot) { return slots_[slot].bytes.get(); }
  uint64_t offset(Slot slot) const { return slots_[slot].offset; }
  // Records that bytes [begin, end) of the table changed.
  void MarkDirty(Slot slot, size_t begin, size_t end);

  bool has_dirty() const { return dirty_count_ > 0; }
  // Writes every dirty table back (no sync); they stay cached, clean.
  [[nodiscard]] Result<void> WriteDirty();

  size_t table_bytes() const { return table_bytes_; }
  size_t capacity() const { return capacity_; }

 private:
  struct Entry {
    uint64_t offset = 0;
    uint64_t last_use = 0;
    size_t dirty_begin = 0;
    size_t dirty_end = 0;  // == dirty_begin when clean
    bool in_use = false;
    std::unique_ptr<uint8_t[]> bytes;
  };

  [[nodiscard]] Result<Slot> TakeSlot(uint64_t offset);
  [[nodiscard]] Result<void> WriteBack(Entry& entry);

  int fd_;
  std::string path_;
  size_t table_bytes_;
  size_t capacity_;
  BeforeWriteback before_writeback_;
  std::vector<Entry> slots_;
  std::unordered_map<uint64_t, Slot> index_;
  uint64_t clock_ = 0;
  Slot last_ = 0;
  size_t dirty_count_ = 0;
};

}  // namespace clonevm::qcow2

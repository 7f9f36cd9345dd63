#include "block/qcow2_refcount.h"

#include <algorithm>

#include "block/file_io.h"

namespace clonevm::qcow2 {
namespace {

// Host offsets must fit the 56-bit offset fields of L1/L2 entries.
constexpr uint64_t kMaxHostOffset = uint64_t{1} << 56;

}  // namespace

Refcounts::Refcounts(int fd, std::string path, const Header& h, size_t cache_capacity)
    : fd_(fd),
      path_(std::move(path)),
      cluster_bits_(h.cluster_bits),
      order_(h.refcount_order),
      block_bits_(h.cluster_bits + 3 - h.refcount_order),
      max_refcount_(h.refcount_order == 6 ? ~uint64_t{0} : (uint64_t{1} << (1u << h.refcount_order)) - 1),
      table_offset_(h.refcount_table_offset),
      table_clusters_(h.refcount_table_clusters),
      blocks_(fd, path_, h.cluster_size(), cache_capacity) {}

Result<std::unique_ptr<Refcounts>> Refcounts::Load(int fd, const std::string& path, const Header& h, uint64_t file_size,
                                                   size_t cache_bytes) {
  const uint64_t cs = h.cluster_size();
  std::unique_ptr<Refcounts> r(new Refcounts(fd, path, h, std::max<size_t>(4, cache_bytes / cs)));
  std::vector<uint8_t> raw(h.refcount_table_clusters * cs);
  CLONE_TRY_VOID(PreadFull(fd, h.refcount_table_offset, raw, PastEof::kFail, path));
  r->table_.resize(raw.size() / 8);
  for (size_t i = 0; i < r->table_.size(); ++i) {
    const uint64_t e = LoadBe64(&raw[i * 8]);
    if (e == 0) continue;
    if ((e & kRefTableReservedMask) != 0 || (e & (cs - 1)) != 0 || e >= file_size) {
      return Fail("corrupt refcount table entry {}: 0x{:x} (misaligned or past the end of the file)", i, e);
    }
    r->table_[i] = e;
  }
  r->next_free_ = CLONE_TRY(r->FindEnd(file_size));
  return r;
}

// max(end of file rounded up to a cluster, end of the last cluster with a non-zero refcount).
Result<uint64_t> Refcounts::FindEnd(uint64_t file_size) {
  const uint64_t cs = uint64_t{1} << cluster_bits_;
  uint64_t end = (file_size + cs - 1) & ~(cs - 1);
  for (size_t ti = table_.size(); ti-- > 0;) {
    if (table_[ti] == 0) continue;
    const TableCache::Slot slot = CLONE_TRY(blocks_.Get(table_[ti]));
    const uint8_t* block = blocks_.data(slot);
    for (uint64_t bi = uint64_t{1} << block_bits_; bi-- > 0;) {
      if (GetEntry(block, bi) != 0) return std::max(end, (((ti << block_bits_) + bi + 1) << cluster_bits_));
    }
  }
  return end;
}

Result<uint64_t> Refcounts::Allocate(uint64_t count) {
  const uint64_t bytes = count << cluster_bits_;
  if (next_free_ > kMaxHostOffset - bytes)
    return Fail("{}: image file would exceed the qcow2 maximum of 64 PiB", path_);
  const uint64_t offset = next_free_;
  next_free_ += bytes;
  for (uint64_t i = 0; i < count; ++i) CLONE_TRY(Adjust((offset >> cluster_bits_) + i, +1));
  return offset;
}

void Refcounts::QueueFree(uint64_t offset, uint64_t length) {
  if (length == 0) return;
  const uint64_t first = offset >> cluster_bits_;
  const uint64_t count = ((offset + length - 1) >> cluster_bits_) - first + 1;
  if (!pending_.empty() && pending_.back().first + pending_.back().second == first) {
    pending_.back().second += count;
  } else {
    pending_.emplace_back(first, count);
  }
}

Result<void> Refcounts::ApplyPendingFrees() {
  // Whatever happens, a batch is applied at most once: after an error its rest leaks.
  struct ClearPending {
    std::vector<std::pair<uint64_t, uint64_t>>& pending;
    ~ClearPending() { pending.clear(); }  // keeps the capacity for the next batch
  } clear_pending{pending_};
  uint64_t run_start = 0;
  uint64_t run_length = 0;  // consecutive clusters that reached zero, punched together
  auto punch_run = [&]() -> Result<void> {
    if (run_length > 0) CLONE_TRY(PunchHole(fd_, run_start << cluster_bits_, run_length << cluster_bits_, path_));
    run_length = 0;
    return {};
  };
  for (const auto& [first, count] : pending_) {
    for (uint64_t c = first; c < first + count; ++c) {
      if (CLONE_TRY(Adjust(c, -1)) != 0) continue;
      if (run_length > 0 && run_start + run_length == c) {
        ++run_length;
        continue;
      }
      CLONE_TRY_VOID(punch_run());
      run_start = c;
      run_length = 1;
    }
  }
  return punch_run();
}

Result<void> Refcounts::WriteDirtyTable() {
  if (!table_dirty()) return {};
  std::vector<uint8_t> raw((table_dirty_end_ - table_dirty_begin_) * 8);
  for (size_t i = table_dirty_begin_; i < table_dirty_end_; ++i)
    StoreBe64(&raw[(i - table_dirty_begin_) * 8], table_[i]);
  CLONE_TRY_VOID(PwriteFull(fd_, table_offset_ + table_dirty_begin_ * 8, raw, path_));
  table_dirty_begin_ = table_dirty_end_ = 0;
  return {};
}

Result<uint64_t> Refcounts::Get(uint64_t offset) {
  const uint64_t cluster = offset >> cluster_bits_;
  const uint64_t ti = cluster >> block_bits_;
  if (ti >= table_.size() || table_[ti] == 0) return 0;
  const TableCache::Slot slot = CLONE_TRY(blocks_.Get(table_[ti]));
  return GetEntry(blocks_.data(slot), cluster & ((uint64_t{1} << block_bits_) - 1));
}

// Adds `delta` (+1 or -1) to a cluster's refcount and returns the new value.
Result<uint64_t> Refcounts::Adjust(uint64_t cluster, int delta) {
  const uint64_t ti = cluster >> block_bits_;
  const uint64_t bi = cluster & ((uint64_t{1} << block_bits_) - 1);
  if (ti >= table_.size() || table_[ti] == 0) {
    if (delta < 0)
      return Fail("{}: corrupt image: freeing cluster 0x{:x} that has no refcount", path_, cluster << cluster_bits_);
    CLONE_TRY_VOID(EnsureBlock(ti));
  }
  const TableCache::Slot slot = CLONE_TRY(blocks_.Get(table_[ti]));
  uint8_t* block = blocks_.data(slot);
  const uint64_t value = GetEntry(block, bi);
  if (delta < 0 && value == 0) {
    return Fail("{}: corrupt image: refcount of cluster 0x{:x} is already zero", path_, cluster << cluster_bits_);
  }
  if (delta > 0 && value == max_refcount_) {
    return Fail("{}: refcount of cluster 0x{:x} would overflow", path_, cluster << cluster_bits_);
  }
  const uint64_t updated = delta > 0 ? value + 1 : value - 1;
  SetEntry(block, bi, updated);
  const auto [begin, end] = EntryBytes(bi);
  blocks_.MarkDirty(slot, begin, end);
  return updated;
}

// Makes sure refcount block `table_index` exists. A new block is placed at the end of the file and
// counts its own cluster (if that falls in another block, that block is made the same way).
Result<void> Refcounts::EnsureBlock(uint64_t table_index) {
  if (table_index >= table_.size()) CLONE_TRY_VOID(GrowTable(table_index));
  if (table_[table_index] != 0) return {};
  const uint64_t offset = next_free_;
  if (offset >= kMaxHostOffset) return Fail("{}: image file would exceed the qcow2 maximum of 64 PiB", path_);
  next_free_ += uint64_t{1} << cluster_bits_;
  table_[table_index] = offset;
  MarkTableDirty(table_index);
  CLONE_TRY(blocks_.Create(offset));
  CLONE_TRY(Adjust(offset >> cluster_bits_, +1));
  return {};
}

// Moves the refcount table to a larger one at the end of the file. Synchronous: dirty blocks are
// written, the new table is written and synced, then the header is switched and synced; only then
// is the old table freed.
Result<void> Refcounts::GrowTable(uint64_t min_index) {
  if (growing_) return Fail("{}: internal error: refcount table growth did not converge", path_);
  growing_ = true;
  struct Reset {
    bool& flag;
    ~Reset() { flag = false; }
  } reset{growing_};

  const uint64_t cs = uint64_t{1} << cluster_bits_;
  // Cover everything allocated so far plus the new table and its blocks, with room to grow.
  const uint64_t needed = std::max(min_index, (next_free_ >> cluster_bits_) >> block_bits_) + 3;
  const uint64_t entries = std::max<uint64_t>(needed, table_.size() * 2);
  const uint64_t clusters = (entries * 8 + cs - 1) / cs;
  if (clusters * cs > kMaxRefTableBytes)
    return Fail("{}: refcount table would exceed {} bytes", path_, kMaxRefTableBytes);
  const uint64_t old_offset = table_offset_;
  const uint64_t old_clusters = table_clusters_;

  const uint64_t new_offset = next_free_;
  next_free_ += clusters * cs;
  table_.resize(clusters * cs / 8, 0);
  table_offset_ = new_offset;
  table_clusters_ = clusters;
  for (uint64_t i = 0; i < clusters; ++i) CLONE_TRY(Adjust((new_offset >> cluster_bits_) + i, +1));

  CLONE_TRY_VOID(blocks_.WriteDirty());
  CLONE_TRY_VOID(SyncData(fd_, path_));
  table_dirty_begin_ = 0;
  table_dirty_end_ = table_.size();
  CLONE_TRY_VOID(WriteDirtyTable());
  CLONE_TRY_VOID(SyncData(fd_, path_));
  uint8_t field[12];
  StoreBe64(field, new_offset);
  StoreBe32(field + 8, static_cast<uint32_t>(clusters));
  CLONE_TRY_VOID(PwriteFull(fd_, kRefTableOffsetField, field, path_));
  CLONE_TRY_VOID(SyncData(fd_, path_));
  // The old table is unreferenced now.
  for (uint64_t i = 0; i < old_clusters; ++i) CLONE_TRY(Adjust((old_offset >> cluster_bits_) + i, -1));
  CLONE_TRY(PunchHole(fd_, old_offset, old_clusters * cs, path_));
  return {};
}

void Refcounts::MarkTableDirty(uint64_t index) {
  if (!table_dirty()) {
    table_dirty_begin_ = index;
    table_dirty_end_ = index + 1;
  } else {
    table_dirty_begin_ = std::min<size_t>(table_dirty_begin_, index);
    table_dirty_end_ = std::max<size_t>(table_dirty_end_, index + 1);
  }
}

uint64_t Refcounts::GetEntry(const uint8_t* block, uint64_t index) const {
  switch (order_) {
    case 3:
      return block[index];
    case 4:
      return LoadBe16(block + index * 2);
    case 5:
      return LoadBe32(block + index * 4);
    case 6:
      return LoadBe64(block + index * 8);
    default: {  // 1, 2 or 4 bits; entry 0 is in the least significant bits of byte 0
      const uint32_t bits = 1u << order_;
      const uint64_t bit = index * bits;
      return (block[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
    }
  }
}

void Refcounts::SetEntry(uint8_t* block, uint64_t index, uint64_t value) const {
  switch (order_) {
    case 3:
      block[index] = static_cast<uint8_t>(value);
      return;
    case 4:
      StoreBe16(block + index * 2, static_cast<uint16_t>(value));
      return;
    case 5:
      StoreBe32(block + index * 4, static_cast<uint32_t>(value));
      return;
    case 6:
      StoreBe64(block + index * 8, value);
      return;
    default: {
      const uint32_t bits = 1u << order_;
      const uint64_t bit = index * bits;
      const uint8_t mask = static_cast<uint8_t>(((1u << bits) - 1) << (bit % 8));
      block[bit / 8] = static_cast<uint8_t>((block[bit / 8] & ~mask) | ((value << (bit % 8)) & mask));
      return;
    }
  }
}

std::pair<size_t, size_t> Refcounts::EntryBytes(uint64_t index) const {
  if (order_ < 3) {
    const size_t byte = static_cast<size_t>((index << order_) / 8);
    return {byte, byte + 1};
  }
  const size_t width = size_t{1} << (order_ - 3);
  return {static_cast<size_t>(index) * width, static_cast<size_t>(index + 1) * width};
}

}  // namespace clonevm::qcow2

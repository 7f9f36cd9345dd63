// Qcow2Backend: writes, discards and zeroing (see qcow2.h for the allocation and ordering rules).
#include <sys/uio.h>

#include <algorithm>
#include <cstring>

#include "block/qcow2.h"

namespace clonevm {

using qcow2::kOffsetMask;
using qcow2::kOflagCompressed;
using qcow2::kOflagCopied;
using qcow2::kOflagZero;
using qcow2::LoadBe64;
using qcow2::StoreBe64;

Result<void> Qcow2Backend::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (read_only()) return FailReadOnly("write", file_.path);
  CLONE_TRY_VOID(CheckRange("write", offset, data.size(), size()));
  return WriteAt(offset, data);
}

Result<void> Qcow2Backend::WriteAt(uint64_t offset, std::span<const uint8_t> data) {
  while (!data.empty()) {
    const uint64_t done = CLONE_TRY(WriteStep(offset, data));
    offset += done;
    data = data.subspan(done);
  }
  return {};
}

// A cluster can be overwritten in place when it is a plain data cluster with refcount one.
Result<bool> Qcow2Backend::WritableInPlace(uint64_t entry, uint64_t guest_offset) const {
  return CLONE_TRY(Classify(entry, guest_offset)) == Kind::kData && (entry & kOflagCopied) != 0;
}

// Guards against a corrupt image whose L2 entries point into its header or top-level tables, or
// past the allocated area (where later allocations would alias them).
Result<void> Qcow2Backend::CheckDataWrite(uint64_t host, uint64_t length) const {
  auto overlaps = [&](uint64_t start, uint64_t bytes) { return host < start + bytes && start < host + length; };
  if (overlaps(0, cluster_size_) || overlaps(header_.l1_table_offset, uint64_t{header_.l1_size} * 8) ||
      overlaps(refcounts_->table_offset(), refcounts_->table_bytes()) || host + length > refcounts_->end())
      [[unlikely]] {
    return tl::unexpected(Error(
        fmt::format(
            "{}: corrupt qcow2 image: data cluster at 0x{:x} overlaps image metadata or lies past the allocated area",
            file_.path, host),
        EIO));
  }
  return {};
}

// Writes the longest prefix of `data` that one L2 table maps and that is either all in-place
// clusters contiguous on the host (one pwrite) or all clusters needing allocation (one pwritev).
Result<uint64_t> Qcow2Backend::WriteStep(uint64_t offset, std::span<const uint8_t> data) {
  const uint64_t l1_index = offset >> l2_bits_;
  if (l1_index >= l1_.size()) [[unlikely]] {
    return Fail("{}: offset 0x{:x} is beyond the L1 table", file_.path, offset);
  }
  const uint64_t limit = std::min<uint64_t>(data.size(), ((l1_index + 1) << l2_bits_) - offset);
  const qcow2::TableCache::Slot slot = CLONE_TRY(L2ForWrite(l1_index));
  const uint8_t* table = l2_cache_.data(slot);
  const uint64_t l2_index = (offset >> cluster_bits_) & (l2_entries_ - 1);
  const uint64_t in_cluster = offset & (cluster_size_ - 1);
  const uint64_t entry = LoadBe64(table + l2_index * 8);
  uint64_t length = std::min(cluster_size_ - in_cluster, limit);
  uint64_t index = l2_index + 1;
  if (CLONE_TRY(WritableInPlace(entry, offset))) {
    const uint64_t host = (entry & kOffsetMask) + in_cluster;
    for (uint64_t next_host = (entry & kOffsetMask) + cluster_size_; length < limit; ++index) {
      const uint64_t next = LoadBe64(table + index * 8);
      if (!CLONE_TRY(WritableInPlace(next, offset + length)) || (next & kOffsetMask) != next_host) break;
      next_host += cluster_size_;
      length += std::min(cluster_size_, limit - length);
    }
    CLONE_TRY_VOID(CheckDataWrite(host, length));
    CLONE_TRY_VOID(PwriteFull(file_.fd.get(), host, data.first(length), file_.path));
    needs_sync_ = true;
    return length;
  }
  uint64_t clusters = 1;
  for (; length < limit; ++index, ++clusters) {
    if (CLONE_TRY(WritableInPlace(LoadBe64(table + index * 8), offset + length))) break;
    length += std::min(cluster_size_, limit - length);
  }
  return WriteNewClusters(offset, data.first(length), l1_index, l2_index, clusters);
}

// Writes `data` (starting inside cluster `l2_index` of table `l1_index`, spanning `clusters`
// clusters) into new clusters appended to the file, completing the first and last cluster with
// their old contents, then points the L2 entries at them and releases the old clusters.
// Old contents that are zeros are not written: a new cluster lies past everything ever written
// to the file, so the bytes left out are holes that read as zeros.
Result<uint64_t> Qcow2Backend::WriteNewClusters(uint64_t offset, std::span<const uint8_t> data, uint64_t l1_index,
                                                uint64_t l2_index, uint64_t clusters) {
  const uint8_t* old_table = l2_cache_.data(CLONE_TRY(l2_cache_.Get(l1_[l1_index] & kOffsetMask)));
  auto reads_as_zero = [&](uint64_t index) {
    const uint64_t entry = LoadBe64(old_table + index * 8);
    return (entry & kOflagCompressed) == 0 && ((entry & kOflagZero) || (entry == 0 && !backing_));
  };
  const bool head_is_zero = reads_as_zero(l2_index);
  const bool tail_is_zero = reads_as_zero(l2_index + clusters - 1);
  uint64_t head = offset & (cluster_size_ - 1);
  const uint64_t end_in_cluster = (offset + data.size()) & (cluster_size_ - 1);
  uint64_t tail = end_in_cluster == 0 ? 0 : cluster_size_ - end_in_cluster;
  const uint64_t skipped_head = head_is_zero ? head : 0;
  if (head_is_zero) head = 0;
  if (tail_is_zero) tail = 0;
  if (head > 0) CLONE_TRY_VOID(ReadAt(offset - head, std::span(cow_head_).first(head)));
  if (tail > 0) CLONE_TRY_VOID(ReadAt(offset + data.size(), std::span(cow_tail_).first(tail)));
  const uint64_t host = CLONE_TRY(refcounts_->Allocate(clusters));
  iovec iov[3] = {
      {cow_head_.data(), head},
      // SAFETY: pwritev only reads from the buffers; iovec has no const variant.
      {const_cast<uint8_t*>(data.data()), data.size()},
      {cow_tail_.data(), tail},
  };
  CLONE_TRY_VOID(PwritevFull(file_.fd.get(), host + skipped_head, iov, file_.path));
  needs_sync_ = true;

  // The reads above may have evicted the table; look it up again.
  const qcow2::TableCache::Slot slot = CLONE_TRY(l2_cache_.Get(l1_[l1_index] & kOffsetMask));
  uint8_t* table = l2_cache_.data(slot);
  for (uint64_t i = 0; i < clusters; ++i) {
    uint8_t* entry = table + (l2_index + i) * 8;
    const uint64_t old = LoadBe64(entry);
    StoreBe64(entry, (host + i * cluster_size_) | kOflagCopied);
    Release(old);
  }
  l2_cache_.MarkDirty(slot, l2_index * 8, (l2_index + clusters) * 8);
  if (decompressed_entry_ != 0) decompressed_entry_ = 0;
  return data.size();
}

// The L2 table for `l1_index`, ready to be modified: allocated if missing, copied if shared.
Result<qcow2::TableCache::Slot> Qcow2Backend::L2ForWrite(uint64_t l1_index) {
  const uint64_t l1_entry = l1_[l1_index];
  const uint64_t old_offset = l1_entry & kOffsetMask;
  if (old_offset != 0 && (l1_entry & kOflagCopied)) [[likely]] {
    return l2_cache_.Get(old_offset);
  }
  const uint64_t new_offset = CLONE_TRY(refcounts_->Allocate(1));
  qcow2::TableCache::Slot slot;
  if (old_offset == 0) {
    slot = CLONE_TRY(l2_cache_.Create(new_offset));
  } else {
    // A shared table (refcount > 1): its clusters are shared too, so the copy drops their COPIED flags.
    const qcow2::TableCache::Slot old_slot = CLONE_TRY(l2_cache_.Get(old_offset));
    std::memcpy(cow_head_.data(), l2_cache_.data(old_slot), cluster_size_);
    slot = CLONE_TRY(l2_cache_.Create(new_offset));
    uint8_t* table = l2_cache_.data(slot);
    for (uint64_t i = 0; i < l2_entries_; ++i) StoreBe64(table + i * 8, LoadBe64(&cow_head_[i * 8]) & ~kOflagCopied);
    refcounts_->QueueFree(old_offset, cluster_size_);
  }
  l1_[l1_index] = new_offset | kOflagCopied;
  MarkL1Dirty(l1_index);
  return slot;
}

// Drops this image's reference to the host cluster(s) an old L2 entry used (after the next flush).
void Qcow2Backend::Release(uint64_t entry) {
  if (entry & kOflagCompressed) {
    const uint64_t host = entry & coffset_mask_;
    const uint64_t sectors = ((entry >> csize_shift_) & csize_mask_) + 1;
    refcounts_->QueueFree(host & ~uint64_t{511}, sectors * 512);
    return;
  }
  if (const uint64_t host = entry & kOffsetMask; host != 0) refcounts_->QueueFree(host, cluster_size_);
}

// ---- Discard and write-zeroes ---------------------------------------------------------------

Result<void> Qcow2Backend::Discard(uint64_t offset, uint64_t length) {
  if (read_only()) return FailReadOnly("discard", file_.path);
  CLONE_TRY_VOID(CheckRange("discard", offset, length, size()));
  return ZeroRange(offset, length, ZeroMode::kDiscard);
}

Result<void> Qcow2Backend::WriteZeroes(uint64_t offset, uint64_t length) {
  if (read_only()) return FailReadOnly("write-zeroes", file_.path);
  CLONE_TRY_VOID(CheckRange("write-zeroes", offset, length, size()));
  return ZeroRange(offset, length, ZeroMode::kWriteZeroes);
}

// Whole clusters become zero clusters (or unallocated, without a backing file) and their host
// clusters are freed. Partial clusters at the edges are written with zeros (write-zeroes) or left
// alone (discard, which is advisory).
Result<void> Qcow2Backend::ZeroRange(uint64_t offset, uint64_t length, ZeroMode mode) {
  if (length == 0) return {};
  const uint64_t end = offset + length;
  const uint64_t mask = cluster_size_ - 1;
  const uint64_t full_begin = (offset + mask) & ~mask;
  // The disk's last cluster may extend past size(): zeroing up to size() covers all of it.
  const uint64_t full_end = end == size() ? (end + mask) & ~mask : end & ~mask;
  const uint64_t head_end = std::min(end, full_begin);
  const uint64_t tail_begin = std::max(full_end, head_end);
  if (mode == ZeroMode::kWriteZeroes && offset < head_end) CLONE_TRY_VOID(ZeroPartial(offset, head_end - offset));
  if (full_begin < full_end) CLONE_TRY_VOID(ZeroClusters(full_begin, (full_end - full_begin) >> cluster_bits_));
  if (mode == ZeroMode::kWriteZeroes && tail_begin < end) CLONE_TRY_VOID(ZeroPartial(tail_begin, end - tail_begin));
  return {};
}

// Writes zeros to part of one cluster, unless it already reads as zeros.
Result<void> Qcow2Backend::ZeroPartial(uint64_t offset, uint64_t length) {
  const Run run = CLONE_TRY(Map(offset, length));
  if (run.length == length && (run.kind == Kind::kZero || (run.kind == Kind::kUnallocated && !backing_))) return {};
  if (zeros_.empty()) zeros_.resize(cluster_size_);
  return WriteAt(offset, std::span(zeros_).first(length));
}

Result<void> Qcow2Backend::ZeroClusters(uint64_t offset, uint64_t count) {
  // Without a backing file an unallocated cluster reads as zeros; with one, the zero flag hides it.
  const uint64_t target = backing_ ? kOflagZero : 0;
  while (count > 0) {
    const uint64_t l1_index = offset >> l2_bits_;
    const uint64_t l2_index = (offset >> cluster_bits_) & (l2_entries_ - 1);
    const uint64_t n = std::min(count, l2_entries_ - l2_index);
    if ((l1_[l1_index] & kOffsetMask) != 0 || backing_) {
      const qcow2::TableCache::Slot slot = CLONE_TRY(L2ForWrite(l1_index));
      uint8_t* table = l2_cache_.data(slot);
      // Validate every entry first so that a corrupt one leaves the table untouched.
      for (uint64_t i = l2_index; i < l2_index + n; ++i) {
        CLONE_TRY(Classify(LoadBe64(table + i * 8), (l1_index << l2_bits_) + (i << cluster_bits_)));
      }
      uint64_t dirty_begin = l2_entries_;
      uint64_t dirty_end = 0;
      for (uint64_t i = l2_index; i < l2_index + n; ++i) {
        const uint64_t old = LoadBe64(table + i * 8);
        if (old == target || (old == kOflagZero && !backing_)) continue;
        StoreBe64(table + i * 8, target);
        Release(old);
        dirty_begin = std::min(dirty_begin, i);
        dirty_end = i + 1;
      }
      if (dirty_end > dirty_begin) l2_cache_.MarkDirty(slot, dirty_begin * 8, dirty_end * 8);
    }
    offset += n << cluster_bits_;
    count -= n;
  }
  decompressed_entry_ = 0;
  return {};
}

}  // namespace clonevm

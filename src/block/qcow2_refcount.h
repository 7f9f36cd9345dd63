// Refcounts: qcow2 host-cluster reference counting for a writable image.
//
// The refcount table is held in memory; refcount blocks go through a TableCache. Allocation is
// append-only: new clusters are taken from the end of the file (`end()`), never from holes, so a
// run of new clusters is contiguous and needs no search; freed clusters are punched out of the
// file so their space returns to the host, but their offsets are not reused.
//
// Crash-safety contract with the owner (Qcow2Backend):
//  * increments may reach the disk at any time (a crash then leaks clusters, which is harmless);
//  * a refcount block must be durable before the table entry that points to it, and both before
//    any L2/L1 entry that relies on them: the owner writes WriteDirtyBlocks(), syncs,
//    WriteDirtyTable(), syncs, and only then writes L2 tables;
//  * decrements are queued (QueueFree) and applied by ApplyPendingFrees() only after the L2/L1
//    updates that dropped the references are durable, so a crash can never leave a referenced
//    cluster with refcount zero.
// Growing the refcount table is rare and done synchronously (new table written and synced, then
// the header switched and synced).
// Thread-safety: one thread (the owning backend's).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "base/result.h"
#include "block/qcow2_cache.h"
#include "block/qcow2_format.h"

namespace clonevm::qcow2 {

class Refcounts {
 public:
  // Loads and validates the refcount table and finds the end of the allocated space.
  [[nodiscard]] static Result<std::unique_ptr<Refcounts>> Load(int fd, const std::string& path, const Header& header,
                                                               uint64_t file_size, size_t cache_bytes);

  // Takes `count` contiguous new clusters at the end of the file with refcount 1; returns the
  // host offset of the first. Their contents are not written.
  [[nodiscard]] Result<uint64_t> Allocate(uint64_t count);
  // Queues one reference drop for every cluster overlapping [offset, offset + length).
  void QueueFree(uint64_t offset, uint64_t length);
  bool has_pending_frees() const { return !pending_.empty(); }
  // Applies the queued drops; clusters reaching zero are punched out of the file.
  [[nodiscard]] Result<void> ApplyPendingFrees();

  bool blocks_dirty() const { return blocks_.has_dirty(); }
  bool table_dirty() const { return table_dirty_end_ > table_dirty_begin_; }
  [[nodiscard]] Result<void> WriteDirtyBlocks() { return blocks_.WriteDirty(); }
  [[nodiscard]] Result<void> WriteDirtyTable();

  // The refcount of the cluster containing host `offset` (tests and checks).
  [[nodiscard]] Result<uint64_t> Get(uint64_t offset);
  // First byte past every allocated cluster: where the next allocation goes.
  uint64_t end() const { return next_free_; }
  uint64_t table_offset() const { return table_offset_; }
  uint64_t table_bytes() const { return table_clusters_ << cluster_bits_; }

 private:
  Refcounts(int fd, std::string path, const Header& header, size_t cache_capacity);

  [[nodiscard]] Result<uint64_t> Adjust(uint64_t cluster, int delta);
  [[nodiscard]] Result<void> EnsureBlock(uint64_t table_index);
  [[nodiscard]] Result<void> GrowTable(uint64_t min_index);
  [[nodiscard]] Result<uint64_t> FindEnd(uint64_t file_size);
  uint64_t GetEntry(const uint8_t* block, uint64_t index) const;
  void SetEntry(uint8_t* block, uint64_t index, uint64_t value) const;
  std::pair<size_t, size_t> EntryBytes(uint64_t index) const;
  void MarkTableDirty(uint64_t index);

  int fd_;
  std::string path_;
  uint32_t cluster_bits_;
  uint32_t order_;       // refcount width is 1 << order_ bits
  uint32_t block_bits_;  // log2(refcount entries per block)
  uint64_t max_refcount_;
  std::vector<uint64_t> table_;  // host byte order
  uint64_t table_offset_;
  uint64_t table_clusters_;
  size_t table_dirty_begin_ = 0;
  size_t table_dirty_end_ = 0;
  TableCache blocks_;
  uint64_t next_free_ = 0;
  std::vector<std::pair<uint64_t, uint64_t>> pending_;  // (first cluster index, count)
  bool growing_ = false;
};

}  // namespace clonevm::qcow2

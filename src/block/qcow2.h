// Qcow2Backend: QEMU's copy-on-write image format, version 3 (read-write) and version 2
// (read-only). The format itself is in qcow2_format.h; see README.md for what is supported.
//
// Mapping: guest offset -> L1 entry (in memory) -> L2 table (bounded LRU TableCache) -> host
// cluster. A request is split into runs of clusters of one kind (allocated and contiguous on the
// host, unallocated, zero, compressed), each served by one pread/pwrite(v) or memset, so a
// sequential request costs one system call per run and no allocation.
//
// Reads: allocated clusters from this file; zero clusters as zeros; unallocated clusters from the
// backing file (zeros beyond its end, or without one); compressed clusters through zlib.
// Writes: clusters whose L2 entry has QCOW_OFLAG_COPIED are written in place. Others (unallocated,
// zero, compressed, shared) get new clusters appended at the end of the file, filled with the old
// contents around the written bytes (copy-on-write, e.g. from the backing file) in the same
// pwritev; L2 tables are allocated (or copied, if shared) on first write.
//
// Crash safety: data goes to the file first; metadata changes stay in memory (dirty L2 tables,
// refcount blocks, L1 entries) and Flush() writes them in dependency order with an fdatasync
// between the layers: data + refcount blocks | refcount table | L2 tables | L1 table | then the
// deferred refcount decrements. A crash at any point leaves an image whose metadata only points at
// durable data and whose refcounts are never too low (at worst clusters leak). Evicting a dirty L2
// table does the same ordering for that table.
//
// Thread-safety: one I/O thread (block_backend.h).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "block/block_backend.h"
#include "block/file_io.h"
#include "block/image.h"
#include "block/qcow2_cache.h"
#include "block/qcow2_format.h"
#include "block/qcow2_inflate.h"
#include "block/qcow2_refcount.h"

namespace clonevm {

class Qcow2Backend final : public BlockBackend {
 public:
  // Opens a backing file (already resolved against the image's directory) read-only in the given
  // format (kAuto: probe); supplied by OpenImage, which tracks chain depth and loops.
  using BackingOpener = std::function<Result<std::unique_ptr<BlockBackend>>(const std::string& path, Format format)>;

  // Takes an opened and locked image file. Errors are prefixed with the image path.
  [[nodiscard]] static Result<std::unique_ptr<Qcow2Backend>> Open(ImageFile file, Access access, size_t l2_cache_bytes,
                                                                  const BackingOpener& open_backing);
  ~Qcow2Backend() override;

  uint64_t size() const override { return header_.size; }
  bool read_only() const override { return access_ == Access::kReadOnly; }
  [[nodiscard]] Result<void> Read(uint64_t offset, std::span<uint8_t> out) override;
  [[nodiscard]] Result<void> Write(uint64_t offset, std::span<const uint8_t> data) override;
  [[nodiscard]] Result<void> Flush() override;
  [[nodiscard]] Result<void> Discard(uint64_t offset, uint64_t length) override;
  [[nodiscard]] Result<void> WriteZeroes(uint64_t offset, uint64_t length) override;
  std::string Describe() const override;

  const qcow2::Header& header() const { return header_; }
  const BlockBackend* backing() const { return backing_.get(); }

 private:
  enum class Kind { kUnallocated, kZero, kData, kCompressed };
  // A run of guest bytes that one operation serves.
  struct Run {
    Kind kind;
    uint64_t host;    // kData: host offset of the first byte
    uint64_t length;  // guest bytes
    uint64_t entry;   // the first cluster's L2 entry
  };
  enum class ZeroMode { kWriteZeroes, kDiscard };

  Qcow2Backend(ImageFile file, Access access, qcow2::Header header, size_t l2_cache_capacity);

  // Mapping (qcow2.cc).
  [[nodiscard]] Result<Kind> Classify(uint64_t entry, uint64_t guest_offset) const;
  [[nodiscard]] Result<Run> Map(uint64_t offset, uint64_t max_length);
  [[nodiscard]] Result<void> ReadAt(uint64_t offset, std::span<uint8_t> out);
  [[nodiscard]] Result<void> ReadBacking(uint64_t offset, std::span<uint8_t> out);
  [[nodiscard]] Result<void> ReadCompressed(uint64_t entry, uint64_t in_cluster, std::span<uint8_t> out);
  [[nodiscard]] Result<void> LoadL1();
  [[nodiscard]] Result<void> ClearAutoclearBits();

  // Metadata write-back (qcow2.cc).
  [[nodiscard]] Result<void> Barrier();
  [[nodiscard]] Result<void> WriteRefcounts();
  [[nodiscard]] Result<void> PrepareL2Writeback();
  [[nodiscard]] Result<void> WriteMetadata();
  [[nodiscard]] Result<void> WriteL1();
  void MarkL1Dirty(uint64_t index);

  // Writing (qcow2_write.cc).
  [[nodiscard]] Result<void> WriteAt(uint64_t offset, std::span<const uint8_t> data);
  [[nodiscard]] Result<uint64_t> WriteStep(uint64_t offset, std::span<const uint8_t> data);
  [[nodiscard]] Result<uint64_t> WriteNewClusters(uint64_t offset, std::span<const uint8_t> data, uint64_t l1_index,
                                                  uint64_t l2_index, uint64_t clusters);
  [[nodiscard]] Result<bool> WritableInPlace(uint64_t entry, uint64_t guest_offset) const;
  [[nodiscard]] Result<void> CheckDataWrite(uint64_t host, uint64_t length) const;
  [[nodiscard]] Result<qcow2::TableCache::Slot> L2ForWrite(uint64_t l1_index);
  void Release(uint64_t entry);
  [[nodiscard]] Result<void> ZeroRange(uint64_t offset, uint64_t length, ZeroMode mode);
  [[nodiscard]] Result<void> ZeroPartial(uint64_t offset, uint64_t length);
  [[nodiscard]] Result<void> ZeroClusters(uint64_t offset, uint64_t count);

  ImageFile file_;
  Access access_;
  qcow2::Header header_;
  uint32_t cluster_bits_;
  uint64_t cluster_size_;
  uint32_t l2_bits_;  // log2(guest bytes per L2 table)
  uint64_t l2_entries_;
  // Compressed cluster descriptor layout.
  uint32_t csize_shift_;
  uint64_t csize_mask_;
  uint64_t coffset_mask_;

  std::vector<uint64_t> l1_;  // host byte order
  size_t l1_dirty_begin_ = 0;
  size_t l1_dirty_end_ = 0;
  qcow2::TableCache l2_cache_;
  std::unique_ptr<qcow2::Refcounts> refcounts_;  // read-write only
  std::unique_ptr<BlockBackend> backing_;
  uint64_t backing_size_ = 0;
  bool needs_sync_ = false;  // bytes written since the last fdatasync

  // Scratch buffers, allocated once (read-write) or on first use, so requests do not allocate.
  std::vector<uint8_t> cow_head_;
  std::vector<uint8_t> cow_tail_;
  std::vector<uint8_t> zeros_;
  std::vector<uint8_t> compressed_;
  std::vector<uint8_t> decompressed_;
  uint64_t decompressed_entry_ = 0;  // L2 entry whose cluster `decompressed_` holds (0: none)
  qcow2::Inflater inflater_;
};

// Creates a new, empty qcow2 version 3 image at `path` (which must not exist): 16-bit refcounts,
// no preallocation, a power-of-two cluster size from 512 B to 2 MiB. With a backing file (stored
// as given; a relative name is relative to `path`'s directory) the backing image must exist; its
// format is recorded in the header, and a `size` of 0 means "the backing file's size". Sizes are
// rounded up to a multiple of 512. The result passes `qemu-img check`.
// `backing_format` is the format to record for the backing file; kAuto probes it, which is only
// safe for images no guest has written (a raw image a guest wrote may start with a qcow2 header
// naming a host file as its own backing file).
[[nodiscard]] Result<void> Qcow2Create(const std::string& path, uint64_t size, uint64_t cluster_size = 64 * 1024,
                                       const std::string& backing_file = "", Format backing_format = Format::kAuto);

}  // namespace clonevm

#include "block/qcow2.h"

#include <algorithm>
#include <cstring>

#include "base/log.h"

namespace clonevm {

using qcow2::kOffsetMask;
using qcow2::kOflagCompressed;
using qcow2::kOflagCopied;
using qcow2::kOflagZero;
using qcow2::LoadBe64;
using qcow2::StoreBe64;

namespace {

constexpr size_t kRefcountCacheBytes = 256 * 1024;  // refcount blocks; allocation is sequential

Error Corrupt(std::string_view path, std::string_view what) {
  return Error(fmt::format("{}: corrupt qcow2 image: {}", path, what), EIO);
}

Result<std::string> ResolveBackingPath(const std::string& image_path, const std::string& name) {
  if (name.starts_with("json:"))
    return Fail("backing file \"{}\" uses QEMU's json: syntax, which Clone does not support", name);
  return ResolveRelativeTo(image_path, name);
}

Result<qcow2::Header> ReadHeader(const ImageFile& file) {
  std::vector<uint8_t> bytes(std::min<uint64_t>(file.size, 4096));
  CLONE_TRY_VOID(PreadFull(file.fd.get(), 0, bytes, PastEof::kFail, file.path));
  if (bytes.size() >= 24) {
    const uint32_t bits = qcow2::LoadBe32(&bytes[20]);
    if (bits >= qcow2::kMinClusterBits && bits <= qcow2::kMaxClusterBits && (uint64_t{1} << bits) > bytes.size()) {
      bytes.resize(std::min<uint64_t>(file.size, uint64_t{1} << bits));
      CLONE_TRY_VOID(PreadFull(file.fd.get(), 0, bytes, PastEof::kFail, file.path));
    }
  }
  return qcow2::ParseHeader(bytes, file.size);
}

// Refuses feature states that forbid writing, with the command that fixes them.
Result<void> CheckWritable(const qcow2::Header& h, const std::string& path) {
  if (h.incompatible_features & qcow2::kIncompatDirty) {
    return Fail(
        "the image was not closed cleanly (dirty bit set, lazy refcounts) and its refcounts may be stale; "
        "repair it with `qemu-img check -r all {}` or open it read-only",
        path);
  }
  if (h.incompatible_features & qcow2::kIncompatCorrupt) {
    return Fail("the image is marked corrupt; repair it with `qemu-img check -r all {}` or open it read-only", path);
  }
  if (h.version == 2) {
    return Fail(
        "qcow2 version 2 images are supported read-only; upgrade with `qemu-img amend -f qcow2 -o compat=1.1 "
        "{}`",
        path);
  }
  if (h.nb_snapshots > 0) {
    return Fail("the image has {} internal snapshot(s); Clone opens such images read-only", h.nb_snapshots);
  }
  return {};
}

}  // namespace

Qcow2Backend::Qcow2Backend(ImageFile file, Access access, qcow2::Header header, size_t l2_cache_capacity)
    : file_(std::move(file)),
      access_(access),
      header_(std::move(header)),
      cluster_bits_(header_.cluster_bits),
      cluster_size_(header_.cluster_size()),
      l2_bits_(2 * header_.cluster_bits - 3),
      l2_entries_(header_.cluster_size() / 8),
      csize_shift_(62 - (header_.cluster_bits - 8)),
      csize_mask_((uint64_t{1} << (header_.cluster_bits - 8)) - 1),
      coffset_mask_((uint64_t{1} << (62 - (header_.cluster_bits - 8))) - 1),
      l2_cache_(file_.fd.get(), file_.path, header_.cluster_size(), l2_cache_capacity,
                [this]() { return PrepareL2Writeback(); }) {}

Result<std::unique_ptr<Qcow2Backend>> Qcow2Backend::Open(ImageFile file, Access access, size_t l2_cache_bytes,
                                                         const BackingOpener& open_backing) {
  const std::string path = file.path;
  auto wrap = [&](const Error& e) { return tl::unexpected(e.Wrap(path)); };
  auto header = ReadHeader(file);
  if (!header) return wrap(header.error());
  if (access == Access::kReadWrite) {
    if (auto r = CheckWritable(*header, path); !r) return wrap(r.error());
  }
  const uint64_t cs = header->cluster_size();
  const size_t capacity =
      static_cast<size_t>(std::clamp<uint64_t>(l2_cache_bytes / cs, 2, std::max<uint64_t>(header->l1_size, 1)));
  std::unique_ptr<Qcow2Backend> q(new Qcow2Backend(std::move(file), access, std::move(*header), capacity));
  CLONE_TRY_VOID(q->LoadL1());
  if (access == Access::kReadWrite) {
    auto refcounts = qcow2::Refcounts::Load(q->file_.fd.get(), path, q->header_, q->file_.size, kRefcountCacheBytes);
    if (!refcounts) return wrap(refcounts.error());
    q->refcounts_ = std::move(*refcounts);
    CLONE_TRY_VOID(q->ClearAutoclearBits());
    q->cow_head_.resize(cs);
    q->cow_tail_.resize(cs);
  }
  if (!q->header_.backing_file.empty()) {
    auto resolved = ResolveBackingPath(path, q->header_.backing_file);
    if (!resolved) return wrap(resolved.error());
    Format format = Format::kAuto;
    if (!q->header_.backing_format.empty()) {
      auto parsed = ParseFormatName(q->header_.backing_format);
      if (!parsed) return wrap(parsed.error().Wrap("backing file format"));
      format = *parsed;
    }
    auto backing = open_backing(*resolved, format);
    if (!backing) return wrap(backing.error().Wrap(fmt::format("backing file \"{}\"", q->header_.backing_file)));
    q->backing_ = std::move(*backing);
    q->backing_size_ = q->backing_->size();
  }
  return q;
}

Qcow2Backend::~Qcow2Backend() {
  if (read_only() || !refcounts_) return;  // read-only, or a failed Open()
  if (auto r = Flush(); !r) Log(LogLevel::kError, "closing {}: {}", file_.path, r.error().message());
}

// Reads the L1 table and checks every entry points at a cluster inside the file.
Result<void> Qcow2Backend::LoadL1() {
  std::vector<uint8_t> raw(uint64_t{header_.l1_size} * 8);
  CLONE_TRY_VOID(PreadFull(file_.fd.get(), header_.l1_table_offset, raw, PastEof::kFail, file_.path));
  l1_.resize(header_.l1_size);
  for (size_t i = 0; i < l1_.size(); ++i) {
    const uint64_t e = LoadBe64(&raw[i * 8]);
    const uint64_t offset = e & kOffsetMask;
    if ((e & qcow2::kL1ReservedMask) != 0 || (offset & (cluster_size_ - 1)) != 0) {
      return tl::unexpected(Corrupt(file_.path, fmt::format("L1 entry {} is invalid: 0x{:016x}", i, e)));
    }
    if (offset >= file_.size && offset != 0) {
      return tl::unexpected(Corrupt(
          file_.path, fmt::format("L1 entry {} points past the end of the file: L2 table at 0x{:x}", i, offset)));
    }
    l1_[i] = e;
  }
  return {};
}

// Autoclear bits describe data (e.g. dirty bitmaps) that Clone's writes would make stale: the
// format requires a writer that does not maintain them to clear them before writing.
Result<void> Qcow2Backend::ClearAutoclearBits() {
  if (header_.autoclear_features == 0) return {};
  uint8_t zero[8] = {};
  CLONE_TRY_VOID(PwriteFull(file_.fd.get(), qcow2::kAutoclearField, zero, file_.path));
  CLONE_TRY_VOID(SyncData(file_.fd.get(), file_.path));
  header_.autoclear_features = 0;
  return {};
}

Result<Qcow2Backend::Kind> Qcow2Backend::Classify(uint64_t entry, uint64_t guest_offset) const {
  if (entry & kOflagCompressed) return Kind::kCompressed;
  if ((entry & qcow2::kL2ReservedMask) != 0 || (entry & kOffsetMask & (cluster_size_ - 1)) != 0) [[unlikely]] {
    CLONE_LOG_RATELIMITED(LogLevel::kWarn, "{}: invalid L2 entry 0x{:016x} for guest offset 0x{:x}", file_.path, entry,
                          guest_offset);
    return tl::unexpected(
        Corrupt(file_.path, fmt::format("invalid L2 entry 0x{:016x} for guest offset 0x{:x}", entry, guest_offset)));
  }
  if (entry & kOflagZero) return Kind::kZero;
  if ((entry & kOffsetMask) == 0) {
    if (entry & kOflagCopied) [[unlikely]] {
      return tl::unexpected(Corrupt(
          file_.path, fmt::format("L2 entry for guest offset 0x{:x} maps host offset 0 (external data files are not "
                                  "supported)",
                                  guest_offset)));
    }
    return Kind::kUnallocated;
  }
  return Kind::kData;
}

// The longest run from `offset` (at most `max_length` bytes, within one L2 table) whose clusters
// are of one kind and, for data, contiguous on the host. A compressed run is one cluster.
Result<Qcow2Backend::Run> Qcow2Backend::Map(uint64_t offset, uint64_t max_length) {
  const uint64_t l1_index = offset >> l2_bits_;
  if (l1_index >= l1_.size()) [[unlikely]] {
    return tl::unexpected(Corrupt(file_.path, fmt::format("offset 0x{:x} is beyond the L1 table", offset)));
  }
  max_length = std::min(max_length, ((l1_index + 1) << l2_bits_) - offset);
  const uint64_t l2_offset = l1_[l1_index] & kOffsetMask;
  if (l2_offset == 0) return Run{Kind::kUnallocated, 0, max_length, 0};
  const qcow2::TableCache::Slot slot = CLONE_TRY(l2_cache_.Get(l2_offset));
  const uint8_t* table = l2_cache_.data(slot);
  uint64_t index = (offset >> cluster_bits_) & (l2_entries_ - 1);
  const uint64_t in_cluster = offset & (cluster_size_ - 1);
  const uint64_t entry = LoadBe64(table + index * 8);
  const Kind kind = CLONE_TRY(Classify(entry, offset));
  Run run{kind, (entry & kOffsetMask) + in_cluster, std::min(cluster_size_ - in_cluster, max_length), entry};
  if (kind == Kind::kCompressed) return run;
  uint64_t next_host = (entry & kOffsetMask) + cluster_size_;
  while (run.length < max_length) {
    const uint64_t next = LoadBe64(table + ++index * 8);
    if (CLONE_TRY(Classify(next, offset + run.length)) != kind) break;
    if (kind == Kind::kData) {
      if ((next & kOffsetMask) != next_host) break;
      next_host += cluster_size_;
    }
    run.length += std::min(cluster_size_, max_length - run.length);
  }
  return run;
}

Result<void> Qcow2Backend::Read(uint64_t offset, std::span<uint8_t> out) {
  CLONE_TRY_VOID(CheckRange("read", offset, out.size(), size()));
  return ReadAt(offset, out);
}

// Reads guest bytes without the size check: copy-on-write also reads the tail of the last cluster.
Result<void> Qcow2Backend::ReadAt(uint64_t offset, std::span<uint8_t> out) {
  while (!out.empty()) {
    const Run run = CLONE_TRY(Map(offset, out.size()));
    const std::span<uint8_t> part = out.first(run.length);
    switch (run.kind) {
      case Kind::kUnallocated:
        CLONE_TRY_VOID(ReadBacking(offset, part));
        break;
      case Kind::kZero:
        std::memset(part.data(), 0, part.size());
        break;
      case Kind::kData:
        CLONE_TRY_VOID(PreadFull(file_.fd.get(), run.host, part, PastEof::kZeroFill, file_.path));
        break;
      case Kind::kCompressed:
        CLONE_TRY_VOID(ReadCompressed(run.entry, offset & (cluster_size_ - 1), part));
        break;
    }
    offset += run.length;
    out = out.subspan(run.length);
  }
  return {};
}

Result<void> Qcow2Backend::ReadBacking(uint64_t offset, std::span<uint8_t> out) {
  const uint64_t available =
      backing_ && offset < backing_size_ ? std::min<uint64_t>(out.size(), backing_size_ - offset) : 0;
  if (available > 0) CLONE_TRY_VOID(backing_->Read(offset, out.first(available)));
  std::memset(out.data() + available, 0, out.size() - available);
  return {};
}

Result<void> Qcow2Backend::ReadCompressed(uint64_t entry, uint64_t in_cluster, std::span<uint8_t> out) {
  if (entry != decompressed_entry_) {
    const uint64_t host = entry & coffset_mask_;
    const uint64_t sectors = ((entry >> csize_shift_) & csize_mask_) + 1;
    const uint64_t length = sectors * 512 - (host & 511);
    if (compressed_.empty()) {
      compressed_.resize(2 * cluster_size_);
      decompressed_.resize(cluster_size_);
    }
    decompressed_entry_ = 0;
    CLONE_TRY_VOID(
        PreadFull(file_.fd.get(), host, std::span(compressed_).first(length), PastEof::kZeroFill, file_.path));
    if (auto r = inflater_.Inflate(std::span(compressed_).first(length), decompressed_); !r) {
      return tl::unexpected(
          Corrupt(file_.path, fmt::format("compressed cluster at 0x{:x}: {}", host, r.error().message())));
    }
    decompressed_entry_ = entry;
  }
  std::memcpy(out.data(), decompressed_.data() + in_cluster, out.size());
  return {};
}

// ---- Metadata write-back --------------------------------------------------------------------

// fdatasync if anything was written since the last one: the ordering point between layers.
Result<void> Qcow2Backend::Barrier() {
  if (!needs_sync_) return {};
  CLONE_TRY_VOID(SyncData(file_.fd.get(), file_.path));
  needs_sync_ = false;
  return {};
}

// Writes dirty refcount blocks, then (after a barrier) the refcount table entries that point to
// new blocks. Increments only: safe to write at any time.
Result<void> Qcow2Backend::WriteRefcounts() {
  if (refcounts_->blocks_dirty()) {
    CLONE_TRY_VOID(refcounts_->WriteDirtyBlocks());
    needs_sync_ = true;
  }
  if (refcounts_->table_dirty()) {
    CLONE_TRY_VOID(Barrier());
    CLONE_TRY_VOID(refcounts_->WriteDirtyTable());
    needs_sync_ = true;
  }
  return {};
}

// Run before the L2 cache evicts a dirty table: the data and refcounts it points to must be
// durable first.
Result<void> Qcow2Backend::PrepareL2Writeback() {
  CLONE_TRY_VOID(WriteRefcounts());
  CLONE_TRY_VOID(Barrier());
  needs_sync_ = true;  // the cache writes the table next
  return {};
}

// Data + refcount blocks | refcount table | L2 tables | L1 table, with a barrier between layers.
Result<void> Qcow2Backend::WriteMetadata() {
  CLONE_TRY_VOID(WriteRefcounts());
  if (l2_cache_.has_dirty()) {
    CLONE_TRY_VOID(Barrier());
    CLONE_TRY_VOID(l2_cache_.WriteDirty());
    needs_sync_ = true;
  }
  if (l1_dirty_end_ > l1_dirty_begin_) {
    CLONE_TRY_VOID(Barrier());
    CLONE_TRY_VOID(WriteL1());
    needs_sync_ = true;
  }
  return Barrier();
}

Result<void> Qcow2Backend::Flush() {
  if (read_only()) return {};
  CLONE_TRY_VOID(WriteMetadata());
  if (refcounts_->has_pending_frees()) {
    // The L2/L1 updates that dropped these references are durable now.
    CLONE_TRY_VOID(refcounts_->ApplyPendingFrees());
    CLONE_TRY_VOID(refcounts_->WriteDirtyBlocks());
    needs_sync_ = true;
    CLONE_TRY_VOID(Barrier());
  }
  return {};
}

Result<void> Qcow2Backend::WriteL1() {
  std::vector<uint8_t> raw((l1_dirty_end_ - l1_dirty_begin_) * 8);
  for (size_t i = l1_dirty_begin_; i < l1_dirty_end_; ++i) StoreBe64(&raw[(i - l1_dirty_begin_) * 8], l1_[i]);
  CLONE_TRY_VOID(PwriteFull(file_.fd.get(), header_.l1_table_offset + l1_dirty_begin_ * 8, raw, file_.path));
  l1_dirty_begin_ = l1_dirty_end_ = 0;
  return {};
}

void Qcow2Backend::MarkL1Dirty(uint64_t index) {
  if (l1_dirty_end_ == l1_dirty_begin_) {
    l1_dirty_begin_ = index;
    l1_dirty_end_ = index + 1;
  } else {
    l1_dirty_begin_ = std::min<size_t>(l1_dirty_begin_, index);
    l1_dirty_end_ = std::max<size_t>(l1_dirty_end_, index + 1);
  }
}

std::string Qcow2Backend::Describe() const {
  std::string s = fmt::format("qcow2 v{} {} ({}, cluster {}, {})", header_.version, file_.path, FormatBytes(size()),
                              FormatBytes(cluster_size_), read_only() ? "read-only" : "read-write");
  if (backing_) s += fmt::format("; backing: {}", backing_->Describe());
  return s;
}

}  // namespace clonevm

// Qcow2Create: a new empty qcow2 v3 image (header, refcount table, refcount blocks, L1 table).
#include <fcntl.h>
#include <unistd.h>

#include <bit>
#include <filesystem>

#include "block/qcow2.h"

namespace clonevm {
namespace {

constexpr uint32_t kRefcountOrder = 4;  // 16-bit refcounts, QEMU's default
constexpr uint64_t kMaxVirtualSize = uint64_t{1} << 56;

uint64_t DivRoundUp(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// Finds the size of a backing image and the format to record for it (`known`, else probed).
Result<std::pair<uint64_t, Format>> InspectBacking(const std::string& image_path, const std::string& backing,
                                                   Format known) {
  const std::string resolved = ResolveRelativeTo(image_path, backing);
  auto wrap = [&](const Error& e) { return e.Wrap(fmt::format("backing file \"{}\"", backing)); };
  auto format = known != Format::kAuto ? Result<Format>(known) : ProbeFormat(resolved);
  if (!format) return tl::unexpected(wrap(format.error()));
  auto image = OpenImage(resolved, OpenMode{.read_only = true}, *format);
  if (!image) return tl::unexpected(wrap(image.error()));
  return std::pair{(*image)->size(), *format};
}

Result<void> SyncParentDirectory(const std::string& path) {
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = ".";
  Fd fd = CLONE_TRY(OpenFile(dir.string(), O_RDONLY | O_DIRECTORY));
  if (::fsync(fd.get()) != 0) return FailErrno("fsync", dir.string());
  return {};
}

Result<void> WriteImage(int fd, const std::string& path, const qcow2::Header& h, uint64_t blocks, uint64_t total) {
  const uint64_t cs = h.cluster_size();
  const std::vector<uint8_t> header = CLONE_TRY(qcow2::SerializeHeaderCluster(h));
  // The file is all zeros first; then only the non-zero parts are written.
  if (::ftruncate(fd, static_cast<off_t>(total * cs)) != 0) return FailErrno("ftruncate", path);
  CLONE_TRY_VOID(PwriteFull(fd, 0, header, path));
  const uint64_t first_block = h.refcount_table_offset + h.refcount_table_clusters * cs;
  std::vector<uint8_t> table(blocks * 8);
  for (uint64_t i = 0; i < blocks; ++i) qcow2::StoreBe64(&table[i * 8], first_block + i * cs);
  CLONE_TRY_VOID(PwriteFull(fd, h.refcount_table_offset, table, path));
  // Refcount blocks are consecutive clusters, so the entries of clusters 0..total-1 are contiguous.
  std::vector<uint8_t> refcounts(total * 2);
  for (uint64_t c = 0; c < total; ++c) qcow2::StoreBe16(&refcounts[c * 2], 1);
  CLONE_TRY_VOID(PwriteFull(fd, first_block, refcounts, path));
  if (::fsync(fd) != 0) return FailErrno("fsync", path);
  return {};
}

}  // namespace

Result<void> Qcow2Create(const std::string& path, uint64_t size, uint64_t cluster_size, const std::string& backing_file,
                         Format backing_format) {
  if (!std::has_single_bit(cluster_size) || cluster_size < (uint64_t{1} << qcow2::kMinClusterBits) ||
      cluster_size > (uint64_t{1} << qcow2::kMaxClusterBits)) {
    return Fail("{}: invalid cluster size {} (a power of two from 512 B to 2 MiB)", path, cluster_size);
  }
  qcow2::Header h;
  h.cluster_bits = static_cast<uint32_t>(std::countr_zero(cluster_size));
  h.refcount_order = kRefcountOrder;
  if (!backing_file.empty()) {
    auto [backing_size, format] =
        CLONE_TRY(InspectBacking(path, backing_file, backing_format).map_error([&](const Error& e) {
          return e.Wrap(fmt::format("creating {}", path));
        }));
    if (size == 0) size = backing_size;
    h.backing_file = backing_file;
    h.backing_format = std::string(FormatName(format));
  }
  if (size > kMaxVirtualSize) return Fail("{}: virtual size {} is too large", path, size);
  h.size = (size + 511) & ~uint64_t{511};
  const uint64_t l1_entries = h.l1_entries_needed();
  if (l1_entries * 8 > qcow2::kMaxL1Bytes) {
    return Fail("{}: virtual size {} needs a larger cluster size than {}", path, FormatBytes(h.size),
                FormatBytes(cluster_size));
  }
  h.l1_size = static_cast<uint32_t>(l1_entries);

  // Layout: header | refcount table | refcount blocks | L1 table, sized so the refcount blocks
  // cover every one of these clusters.
  const uint64_t entries_per_block = cluster_size * 8 / (1u << kRefcountOrder);
  const uint64_t l1_clusters = DivRoundUp(l1_entries * 8, cluster_size);
  uint64_t table_clusters = 1;
  uint64_t blocks = 1;
  for (;;) {
    const uint64_t total = 1 + table_clusters + blocks + l1_clusters;
    const uint64_t need_blocks = DivRoundUp(total, entries_per_block);
    const uint64_t need_table = DivRoundUp(need_blocks * 8, cluster_size);
    if (need_blocks == blocks && need_table == table_clusters) break;
    blocks = need_blocks;
    table_clusters = need_table;
  }
  h.refcount_table_offset = cluster_size;
  h.refcount_table_clusters = static_cast<uint32_t>(table_clusters);
  h.l1_table_offset = l1_entries == 0 ? 0 : (1 + table_clusters + blocks) * cluster_size;
  const uint64_t total = 1 + table_clusters + blocks + l1_clusters;

  Fd fd = CLONE_TRY(OpenFile(path, O_WRONLY | O_CREAT | O_EXCL, 0644));
  if (auto r = WriteImage(fd.get(), path, h, blocks, total); !r) {
    ::unlink(path.c_str());
    return tl::unexpected(r.error());
  }
  fd.reset();
  return SyncParentDirectory(path);
}

}  // namespace clonevm

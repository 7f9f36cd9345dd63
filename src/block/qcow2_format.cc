#include "block/qcow2_format.h"

#include <algorithm>
#include <array>

namespace clonevm::qcow2 {
namespace {

constexpr size_t kFeatureNameEntryBytes = 48;
constexpr size_t kFeatureNameBytes = 46;

uint64_t RoundUp8(uint64_t n) { return (n + 7) & ~uint64_t{7}; }

// The feature names Clone writes into images it creates (the same table QEMU writes).
constexpr std::array<std::pair<std::array<uint8_t, 2>, const char*>, 8> kKnownFeatureNames = {{
    {{0, 0}, "dirty bit"},
    {{0, 1}, "corrupt bit"},
    {{0, 2}, "external data file"},
    {{0, 3}, "compression type"},
    {{0, 4}, "extended L2 entries"},
    {{1, 0}, "lazy refcounts"},
    {{2, 0}, "bitmaps"},
    {{2, 1}, "raw external data"},
}};

Result<void> ParseExtensions(std::span<const uint8_t> data, uint64_t start, uint64_t end, Header& h) {
  bool seen_backing_format = false;
  bool seen_feature_names = false;
  uint64_t pos = start;
  while (pos + 8 <= end) {
    const uint32_t type = LoadBe32(&data[pos]);
    const uint32_t length = LoadBe32(&data[pos + 4]);
    if (type == kExtEnd) return {};
    if (length > end - pos - 8) {
      return Fail("header extension 0x{:08x} at byte {} ({} bytes) overruns the header area (ends at byte {})", type,
                  pos, length, end);
    }
    const uint8_t* body = &data[pos + 8];
    switch (type) {
      case kExtBackingFormat:
        if (seen_backing_format) return Fail("duplicate backing file format header extension");
        seen_backing_format = true;
        h.backing_format.assign(reinterpret_cast<const char*>(body), length);
        // The string is not NUL-terminated, but tolerate writers that padded it with NULs.
        h.backing_format.erase(std::find(h.backing_format.begin(), h.backing_format.end(), '\0'),
                               h.backing_format.end());
        break;
      case kExtFeatureNameTable:
        if (seen_feature_names) return Fail("duplicate feature name table header extension");
        seen_feature_names = true;
        for (uint32_t off = 0; off + kFeatureNameEntryBytes <= length; off += kFeatureNameEntryBytes) {
          const char* name = reinterpret_cast<const char*>(body + off + 2);
          h.feature_names.push_back({body[off], body[off + 1], std::string(name, strnlen(name, kFeatureNameBytes))});
        }
        break;
      default:
        // Bitmaps (their autoclear bit is cleared before any write), the encryption pointer (refused
        // through crypt_method), the external data file name (refused through its incompatible bit)
        // and unknown extensions are skipped, as the format requires.
        break;
    }
    pos += 8 + RoundUp8(length);
  }
  return {};
}

Result<void> CheckFeatures(const Header& h) {
  if (uint64_t unknown = h.incompatible_features & ~kIncompatKnown; unknown != 0) {
    return Fail("unsupported qcow2 incompatible feature(s): {}", h.DescribeFeatureBits(0, unknown));
  }
  if (h.incompatible_features & kIncompatExternalData) {
    return Fail("the image keeps its data in an external data file, which Clone does not support");
  }
  if (h.incompatible_features & kIncompatExtendedL2) {
    return Fail("the image uses extended L2 entries (subclusters), which Clone does not support");
  }
  const bool compression_bit = (h.incompatible_features & kIncompatCompressionType) != 0;
  if (compression_bit && h.compression_type == 0) {
    return Fail("the compression type feature bit is set but compression_type is zlib (0) or absent");
  }
  if (!compression_bit && h.compression_type != 0) {
    return Fail("compression_type {} is set without the compression type feature bit", h.compression_type);
  }
  if (h.compression_type == 1) return Fail("the image uses zstd compression; Clone supports only zlib");
  if (h.compression_type != 0) return Fail("unknown compression type {}", h.compression_type);
  return {};
}

Result<void> CheckTables(const Header& h, uint64_t file_size) {
  const uint64_t cs = h.cluster_size();
  const uint64_t mask = cs - 1;
  if (h.l1_size > kMaxL1Bytes / 8)
    return Fail("L1 table size {} entries exceeds the limit of {}", h.l1_size, kMaxL1Bytes / 8);
  if (h.size > h.l1_size * h.l2_coverage()) {
    return Fail("L1 table has {} entries, too few for the virtual size {} (needs {})", h.l1_size, h.size,
                h.l1_entries_needed());
  }
  if (h.l1_size > 0) {
    if (h.l1_table_offset == 0 || (h.l1_table_offset & mask) != 0) {
      return Fail("L1 table offset 0x{:x} is not a non-zero multiple of the cluster size 0x{:x}", h.l1_table_offset,
                  cs);
    }
    if (h.l1_table_offset > file_size || h.l1_size * uint64_t{8} > file_size - h.l1_table_offset) {
      return Fail("L1 table 0x{:x}+0x{:x} lies past the end of the file (0x{:x} bytes)", h.l1_table_offset,
                  h.l1_size * uint64_t{8}, file_size);
    }
  }
  if (h.refcount_table_offset == 0 || (h.refcount_table_offset & mask) != 0) {
    return Fail("refcount table offset 0x{:x} is not a non-zero multiple of the cluster size 0x{:x}",
                h.refcount_table_offset, cs);
  }
  if (h.refcount_table_clusters == 0 || h.refcount_table_clusters > kMaxRefTableBytes / cs) {
    return Fail("refcount table size of {} clusters is invalid (1 to {} allowed)", h.refcount_table_clusters,
                kMaxRefTableBytes / cs);
  }
  if (h.refcount_table_offset > file_size || h.refcount_table_clusters * cs > file_size - h.refcount_table_offset) {
    return Fail("refcount table 0x{:x}+0x{:x} lies past the end of the file (0x{:x} bytes)", h.refcount_table_offset,
                h.refcount_table_clusters * cs, file_size);
  }
  if (h.nb_snapshots > 0 && ((h.snapshots_offset & mask) != 0 || h.snapshots_offset >= file_size)) {
    return Fail("snapshot table offset 0x{:x} is misaligned or past the end of the file", h.snapshots_offset);
  }
  return {};
}

}  // namespace

std::string Header::DescribeFeatureBits(uint8_t type, uint64_t bits) const {
  std::string out;
  for (uint8_t bit = 0; bit < 64; ++bit) {
    if ((bits & (uint64_t{1} << bit)) == 0) continue;
    if (!out.empty()) out += ", ";
    out += fmt::format("bit {}", bit);
    for (const FeatureName& f : feature_names) {
      if (f.type == type && f.bit == bit && !f.name.empty()) out += fmt::format(" (\"{}\")", f.name);
    }
  }
  return out;
}

Result<Header> ParseHeader(std::span<const uint8_t> data, uint64_t file_size) {
  data = data.first(std::min<uint64_t>(data.size(), file_size));
  if (data.size() < kV2HeaderLength) {
    return Fail("truncated qcow2 header: the file has {} bytes, a header needs at least {}", data.size(),
                kV2HeaderLength);
  }
  Header h;
  if (uint32_t magic = LoadBe32(&data[0]); magic != kMagic) {
    return Fail("not a qcow2 image: bad magic 0x{:08x} (expected 0x{:08x}, \"QFI\\xfb\")", magic, kMagic);
  }
  h.version = LoadBe32(&data[4]);
  if (h.version != 2 && h.version != 3) return Fail("unsupported qcow2 version {} (2 and 3 are supported)", h.version);
  h.backing_file_offset = LoadBe64(&data[8]);
  h.backing_file_size = LoadBe32(&data[16]);
  h.cluster_bits = LoadBe32(&data[20]);
  h.size = LoadBe64(&data[24]);
  h.crypt_method = LoadBe32(&data[32]);
  h.l1_size = LoadBe32(&data[36]);
  h.l1_table_offset = LoadBe64(&data[40]);
  h.refcount_table_offset = LoadBe64(&data[48]);
  h.refcount_table_clusters = LoadBe32(&data[56]);
  h.nb_snapshots = LoadBe32(&data[60]);
  h.snapshots_offset = LoadBe64(&data[64]);
  if (h.cluster_bits < kMinClusterBits || h.cluster_bits > kMaxClusterBits) {
    return Fail("invalid cluster_bits {}: must be {}..{} (512 B to 2 MiB clusters)", h.cluster_bits, kMinClusterBits,
                kMaxClusterBits);
  }
  const uint64_t cs = h.cluster_size();
  if (h.version == 2) {
    h.header_length = kV2HeaderLength;
    h.refcount_order = 4;
  } else {
    if (data.size() < kV3MinHeaderLength) {
      return Fail("truncated qcow2 header: the file has {} bytes, a version 3 header needs {}", data.size(),
                  kV3MinHeaderLength);
    }
    h.incompatible_features = LoadBe64(&data[72]);
    h.compatible_features = LoadBe64(&data[80]);
    h.autoclear_features = LoadBe64(&data[88]);
    h.refcount_order = LoadBe32(&data[96]);
    h.header_length = LoadBe32(&data[100]);
    if (h.header_length < kV3MinHeaderLength || h.header_length % 8 != 0 || h.header_length > cs) {
      return Fail("invalid header_length {}: must be a multiple of 8 from {} to the cluster size {}", h.header_length,
                  kV3MinHeaderLength, cs);
    }
    if (h.header_length > data.size()) {
      return Fail("truncated qcow2 header: header_length is {} but the file has {} bytes", h.header_length,
                  data.size());
    }
    if (h.header_length > 104) h.compression_type = data[104];
    if (h.refcount_order > kMaxRefcountOrder) {
      return Fail("invalid refcount_order {} (at most {}: 64-bit refcounts)", h.refcount_order, kMaxRefcountOrder);
    }
  }
  if (h.crypt_method != 0) return Fail("encrypted qcow2 images are not supported (crypt_method {})", h.crypt_method);

  const uint64_t area_end = std::min<uint64_t>(cs, data.size());
  uint64_t ext_end = area_end;
  if (h.backing_file_offset != 0) {
    if (h.backing_file_size == 0 || h.backing_file_size > kMaxBackingNameLength) {
      return Fail("invalid backing file name length {} (1 to {} allowed)", h.backing_file_size, kMaxBackingNameLength);
    }
    if (h.backing_file_offset < h.header_length || h.backing_file_offset > area_end ||
        h.backing_file_size > area_end - h.backing_file_offset) {
      return Fail("backing file name at byte {} ({} bytes) is outside the header cluster", h.backing_file_offset,
                  h.backing_file_size);
    }
    h.backing_file.assign(reinterpret_cast<const char*>(&data[h.backing_file_offset]), h.backing_file_size);
    if (h.backing_file.find('\0') != std::string::npos) return Fail("backing file name contains a NUL byte");
    ext_end = h.backing_file_offset;
  }
  CLONE_TRY_VOID(ParseExtensions(data, h.header_length, ext_end, h));
  CLONE_TRY_VOID(CheckFeatures(h));
  CLONE_TRY_VOID(CheckTables(h, file_size));
  return h;
}

Result<std::vector<uint8_t>> SerializeHeaderCluster(Header h) {
  const uint64_t cs = h.cluster_size();
  if (h.version != 3) return Fail("only version 3 images are created");
  if (h.backing_file.size() > kMaxBackingNameLength) {
    return Fail("backing file name is {} bytes, more than the {} qcow2 allows", h.backing_file.size(),
                kMaxBackingNameLength);
  }
  std::vector<uint8_t> out(cs, 0);
  h.header_length = 112;  // through compression_type, padded to a multiple of 8
  uint64_t pos = h.header_length;
  auto fits = [&](uint64_t bytes) { return pos + bytes + 8 /* end marker */ + h.backing_file.size() <= cs; };
  if (!h.backing_format.empty()) {
    const uint64_t n = 8 + RoundUp8(h.backing_format.size());
    if (!fits(n)) return Fail("backing file name and format do not fit in a {}-byte header cluster", cs);
    StoreBe32(&out[pos], kExtBackingFormat);
    StoreBe32(&out[pos + 4], static_cast<uint32_t>(h.backing_format.size()));
    std::memcpy(&out[pos + 8], h.backing_format.data(), h.backing_format.size());
    pos += n;
  }
  // The feature name table is optional: small clusters go without it, as with QEMU.
  if (const uint64_t n = 8 + kKnownFeatureNames.size() * kFeatureNameEntryBytes; fits(n)) {
    StoreBe32(&out[pos], kExtFeatureNameTable);
    StoreBe32(&out[pos + 4], static_cast<uint32_t>(n - 8));
    uint64_t entry = pos + 8;
    for (const auto& [type_bit, name] : kKnownFeatureNames) {
      out[entry] = type_bit[0];
      out[entry + 1] = type_bit[1];
      std::memcpy(&out[entry + 2], name, std::strlen(name));
      entry += kFeatureNameEntryBytes;
    }
    pos += n;
  }
  if (!fits(0)) return Fail("backing file name does not fit in a {}-byte header cluster", cs);
  pos += 8;  // end marker: already zero
  h.backing_file_offset = h.backing_file.empty() ? 0 : pos;
  h.backing_file_size = static_cast<uint32_t>(h.backing_file.size());
  std::memcpy(&out[pos], h.backing_file.data(), h.backing_file.size());

  StoreBe32(&out[0], kMagic);
  StoreBe32(&out[4], h.version);
  StoreBe64(&out[8], h.backing_file_offset);
  StoreBe32(&out[16], h.backing_file_size);
  StoreBe32(&out[20], h.cluster_bits);
  StoreBe64(&out[24], h.size);
  StoreBe32(&out[32], h.crypt_method);
  StoreBe32(&out[36], h.l1_size);
  StoreBe64(&out[40], h.l1_table_offset);
  StoreBe64(&out[48], h.refcount_table_offset);
  StoreBe32(&out[56], h.refcount_table_clusters);
  StoreBe32(&out[60], h.nb_snapshots);
  StoreBe64(&out[64], h.snapshots_offset);
  StoreBe64(&out[72], h.incompatible_features);
  StoreBe64(&out[80], h.compatible_features);
  StoreBe64(&out[88], h.autoclear_features);
  StoreBe32(&out[96], h.refcount_order);
  StoreBe32(&out[100], h.header_length);
  out[104] = h.compression_type;
  return out;
}

}  // namespace clonevm::qcow2

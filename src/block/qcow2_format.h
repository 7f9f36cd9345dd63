// The qcow2 on-disk format (QEMU docs/interop/qcow2.txt): constants, the parsed header, and the
// header parser/serializer. Everything here is pure (bytes in, values out) so that it can be
// tested and fuzzed without files.
//
// All numbers on disk are big-endian. Every header field comes from an untrusted file:
// ParseHeader validates each one and fails with a message naming the field and the bad value.
#pragma once

#include <endian.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "base/result.h"

namespace clonevm::qcow2 {

inline constexpr uint32_t kMagic = 0x514649fb;   // "QFI\xfb"
inline constexpr uint32_t kMinClusterBits = 9;   // 512 B
inline constexpr uint32_t kMaxClusterBits = 21;  // 2 MiB (QEMU's limit too)
inline constexpr uint32_t kV2HeaderLength = 72;
inline constexpr uint32_t kV3MinHeaderLength = 104;
inline constexpr uint32_t kMaxRefcountOrder = 6;        // 64-bit refcounts
inline constexpr uint64_t kMaxL1Bytes = 32 << 20;       // QEMU's implementation limits, adopted so that
inline constexpr uint64_t kMaxRefTableBytes = 8 << 20;  // a hostile header cannot make us allocate more
inline constexpr uint32_t kMaxBackingNameLength = 1023;

// Header field offsets that are rewritten in place.
inline constexpr uint64_t kRefTableOffsetField = 48;  // refcount_table_offset (8) + refcount_table_clusters (4)
inline constexpr uint64_t kAutoclearField = 88;

// incompatible_features
inline constexpr uint64_t kIncompatDirty = 1 << 0;
inline constexpr uint64_t kIncompatCorrupt = 1 << 1;
inline constexpr uint64_t kIncompatExternalData = 1 << 2;
inline constexpr uint64_t kIncompatCompressionType = 1 << 3;
inline constexpr uint64_t kIncompatExtendedL2 = 1 << 4;
inline constexpr uint64_t kIncompatKnown = (1 << 5) - 1;
// compatible_features
inline constexpr uint64_t kCompatLazyRefcounts = 1 << 0;
// autoclear_features
inline constexpr uint64_t kAutoclearBitmaps = 1 << 0;
inline constexpr uint64_t kAutoclearRawExternalData = 1 << 1;

// Header extension types.
inline constexpr uint32_t kExtEnd = 0;
inline constexpr uint32_t kExtBackingFormat = 0xe2792aca;
inline constexpr uint32_t kExtFeatureNameTable = 0x6803f857;
inline constexpr uint32_t kExtBitmaps = 0x23852875;
inline constexpr uint32_t kExtFullDiskEncryption = 0x0537be77;
inline constexpr uint32_t kExtExternalDataFile = 0x44415441;

// L1 / L2 / refcount-table entries.
inline constexpr uint64_t kOflagCopied = uint64_t{1} << 63;      // refcount is exactly one: write in place
inline constexpr uint64_t kOflagCompressed = uint64_t{1} << 62;  // L2 only
inline constexpr uint64_t kOflagZero = 1;                        // L2 standard entries, v3: reads as zeros
inline constexpr uint64_t kOffsetMask = 0x00fffffffffffe00;      // bits 9-55: host offset
inline constexpr uint64_t kL1ReservedMask = 0x7f000000000001ff;  // bits 0-8 and 56-62
inline constexpr uint64_t kL2ReservedMask = 0x3f000000000001fe;  // bits 1-8 and 56-61 (standard entries)
inline constexpr uint64_t kRefTableReservedMask = 0x1ff;         // bits 0-8

struct FeatureName {
  uint8_t type = 0;  // 0 incompatible, 1 compatible, 2 autoclear
  uint8_t bit = 0;
  std::string name;
};

struct Header {
  uint32_t version = 3;
  uint64_t backing_file_offset = 0;
  uint32_t backing_file_size = 0;
  uint32_t cluster_bits = 16;
  uint64_t size = 0;  // virtual disk bytes
  uint32_t crypt_method = 0;
  uint32_t l1_size = 0;  // entries
  uint64_t l1_table_offset = 0;
  uint64_t refcount_table_offset = 0;
  uint32_t refcount_table_clusters = 0;
  uint32_t nb_snapshots = 0;
  uint64_t snapshots_offset = 0;
  uint64_t incompatible_features = 0;
  uint64_t compatible_features = 0;
  uint64_t autoclear_features = 0;
  uint32_t refcount_order = 4;
  uint32_t header_length = 112;
  uint8_t compression_type = 0;  // 0 zlib, 1 zstd

  // From the header extensions and the area after them.
  std::string backing_file;    // as stored: relative names are relative to the image's directory
  std::string backing_format;  // "" when the image does not say
  std::vector<FeatureName> feature_names;

  uint64_t cluster_size() const { return uint64_t{1} << cluster_bits; }
  // Guest bytes one L2 table maps.
  uint64_t l2_coverage() const { return cluster_size() * (cluster_size() / 8); }
  // L1 entries needed to map `size` bytes.
  uint64_t l1_entries_needed() const { return (size + l2_coverage() - 1) / l2_coverage(); }
  // "bit 7" or `bit 0 ("dirty bit")` using the image's own feature name table.
  std::string DescribeFeatureBits(uint8_t type, uint64_t bits) const;
};

// Parses and validates the header, its extensions and the backing file name. `first_cluster` holds
// the file's first min(file_size, cluster size) bytes (the caller can read cluster_bits at byte 20
// to know how much that is; more bytes are ignored). Structures the header points to (L1 table,
// refcount table, snapshot table) must lie inside `file_size`. Feature bits that need a policy
// decision (dirty, corrupt, autoclear) are reported in the header, not refused here; features this
// implementation cannot handle (external data file, extended L2, non-zlib compression,
// encryption, unknown incompatible bits) are errors.
[[nodiscard]] Result<Header> ParseHeader(std::span<const uint8_t> first_cluster, uint64_t file_size);

// Serializes `header` (fields, backing format extension, feature name table when it fits, end
// marker, backing file name) into one cluster. Sets backing_file_offset/size and header_length.
[[nodiscard]] Result<std::vector<uint8_t>> SerializeHeaderCluster(Header header);

inline uint64_t LoadBe64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  return be64toh(v);
}
inline uint32_t LoadBe32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return be32toh(v);
}
inline uint16_t LoadBe16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return be16toh(v);
}
inline void StoreBe64(uint8_t* p, uint64_t v) {
  v = htobe64(v);
  std::memcpy(p, &v, sizeof(v));
}
inline void StoreBe32(uint8_t* p, uint32_t v) {
  v = htobe32(v);
  std::memcpy(p, &v, sizeof(v));
}
inline void StoreBe16(uint8_t* p, uint16_t v) {
  v = htobe16(v);
  std::memcpy(p, &v, sizeof(v));
}

}  // namespace clonevm::qcow2

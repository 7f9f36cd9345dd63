// Snapshot on disk: one directory per snapshot under a templates directory (default
// ~/.clone/templates, or $CLONE_TEMPLATES_DIR), written atomically, read with every check made
// before a VM is built. The format is documented in docs/snapshots.md; in short:
//
//   <dir>/<name>/memory  guest RAM, raw: the RAM regions back to back in guest-physical order
//                        (low RAM at offset 0, RAM above 4 GiB right after it), exactly
//                        mem_bytes long. All-zero 4 KiB pages are holes (sparse file). A restore
//                        maps it MAP_PRIVATE (GuestMemory::CreateFromFile), so every fork shares
//                        its page cache and the file never changes.
//   <dir>/<name>/state   a 32-byte header — magic "CLONESNP", u32 format version, u32 header size,
//                        u64 body length, u32 CRC-32 (zlib) of the body, u32 CRC-32 of the
//                        header's first 28 bytes, all little-endian — and a CBOR body:
//                        {"memory_bytes", "config_crc32", "components": VmStateToJson(...)}.
//                        An incremental snapshot's state file has format version 2 and its body a
//                        "memory_pages" bitmap (see below); full snapshots stay version 1.
//   <dir>/<name>/config  JSON (SnapshotConfig): what to rebuild — memory size, vCPUs, devices in
//                        slot order, disks by path, the vsock CID — plus facts for people
//                        (command line, kernel, source VM id, creation time). Its CRC-32 is in
//                        the state body, so an edited or damaged config is refused too.
//
// Incremental snapshots (docs/snapshots.md "Incremental snapshots"): `memory` has the same size and
// layout but holds only the pages written since the parent was taken (the rest are holes), and the
// state body's "memory_pages" (little-endian u64 words, bit i = memory-file page i, covered by the
// body CRC) says which pages are this snapshot's — a set page that reads as a hole is a zero page.
// The config names the parent and the parent's random id ("parent": {"name", "id"}); every
// snapshot's config has its own "id". Read() resolves the chain down to a full snapshot, checking
// each parent's id, and returns the full file plus the layers (MemoryImage). Readers older than
// version 2 refuse incremental snapshots instead of reading their holes as zeros.
//
// Writing: into <dir>/.<name>.tmp-<pid>, each file fsynced, the directory fsynced, renamed to
// <dir>/<name>, the parent fsynced. A crash leaves at most a ".*.tmp-*" directory (ignored by
// List and removed by the next write of that name), never a half snapshot under the name. An
// existing name is refused.
//
// Reading: a missing, truncated (state or memory shorter than recorded), corrupt (either CRC),
// newer-format or malformed snapshot gives one Error that names the snapshot and the problem.
// The state body is untrusted input: VmStateFromJson checks it.
//
// Thread-safety: free functions without shared state.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "block/image.h"
#include "memory/guest_memory.h"
#include "vmm/vm_state.h"

namespace clonevm::snapshot {

inline constexpr char kMagic[8] = {'C', 'L', 'O', 'N', 'E', 'S', 'N', 'P'};
inline constexpr uint32_t kFormatVersion = 1;             // full snapshots
inline constexpr uint32_t kIncrementalFormatVersion = 2;  // incremental snapshots (memory_pages)
inline constexpr size_t kMaxChainLength = 64;             // incremental snapshots over one full one
inline constexpr size_t kHeaderSize = 32;
inline constexpr uint64_t kPageSize = 4096;

// A file a restore depends on, as it was when the snapshot was taken. A restore refuses a file
// whose size or modification time differs, or whose inode differs when its path was not
// rewritten (snapshot/disks.h).
struct FileStamp {
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  uint64_t inode = 0;
  bool operator==(const FileStamp&) const = default;
};
struct BackingFile {
  std::string path;  // absolute
  FileStamp stamp;
};

// One disk, in attach order (docs/snapshots.md "Disks"; taken and restored by snapshot/disks.h).
// Read-only disks are referenced where they are; writable disks are frozen: copied into the
// snapshot directory while the VM is paused, and every restore gets its own qcow2 overlay on them.
struct SnapshotDisk {
  std::string path;  // read-only: the image's absolute path; writable: the frozen copy's file name
                     // in the snapshot directory (a plain name, e.g. "disk0.raw")
  bool read_only = false;
  Format format = Format::kRaw;  // as opened; a restore never probes
  std::string serial;
  FileStamp stamp;  // of `path`
  // A frozen qcow2 whose image had a backing file: its chain (absolute paths, top first), kept in
  // place and checked on restore.
  std::vector<BackingFile> backing;
};

// One shared directory (virtio-fs), in attach order. A restore or fork serves `host_path` unless
// it names another directory for the tag (the guest's device list and tags are fixed).
struct SnapshotSharedDir {
  std::string tag;
  std::string host_path;  // absolute
  bool read_only = false;
  bool squash_root = false;  // "squash_root", written only when true (absent in older snapshots)
  bool operator==(const SnapshotSharedDir&) const = default;
};

// A virtio-balloon as recorded: what its device offered (a restore must offer the same).
struct SnapshotBalloon {
  bool free_page_reporting = true;
  bool deflate_on_oom = true;
  uint32_t stats_interval_s = 0;
  bool operator==(const SnapshotBalloon&) const = default;
};

// The snapshot an incremental snapshot's memory is relative to.
struct SnapshotParent {
  std::string name;
  std::string id;  // the parent's SnapshotConfig::id when this snapshot was taken
  bool operator==(const SnapshotParent&) const = default;
};

// What a restore rebuilds (and what people want to know about a snapshot).
struct SnapshotConfig {
  std::string id;                        // random, unique per snapshot taken (kept by merge); "" in older snapshots
  std::optional<SnapshotParent> parent;  // set for incremental snapshots
  uint64_t mem_bytes = 0;
  uint32_t vcpus = 0;
  std::vector<uint32_t> virtio_types;  // virtio device ids in slot order
  bool rng = false;
  std::optional<uint64_t> vsock_cid;
  // The balloon's options, when the VM has one ("balloon"; absent in older snapshots).
  std::optional<SnapshotBalloon> balloon;
  std::vector<SnapshotDisk> disks;
  std::vector<SnapshotSharedDir> shared_dirs;  // "shared_dirs"; absent in older snapshots
  std::string cmdline;                         // for the record
  std::string source_vm;                       // the VM it was taken from
  int64_t created_unix = 0;
  nlohmann::json info = nlohmann::json::object();  // free-form facts (kernel path, ...)
};
nlohmann::json ConfigToJson(const SnapshotConfig& config);
[[nodiscard]] Result<SnapshotConfig> ConfigFromJson(const nlohmann::json& j);

// $CLONE_TEMPLATES_DIR, else $HOME/.clone/templates.
std::string DefaultTemplatesDir();
// Names are [A-Za-z0-9][A-Za-z0-9._-]{0,63}: they become directory names.
[[nodiscard]] Result<void> ValidateName(const std::string& name);

// The state file's bytes for `components` (VmStateToJson) and the rest of the body; with
// `memory_pages`, an incremental snapshot's (format version 2).
std::vector<uint8_t> EncodeStateFile(const nlohmann::json& components, uint64_t memory_bytes, uint32_t config_crc32,
                                     const PageBitmap* memory_pages = nullptr);
struct StateBody {
  nlohmann::json components;
  uint64_t memory_bytes = 0;
  uint32_t config_crc32 = 0;
  std::optional<PageBitmap> memory_pages;  // incremental snapshots
};
// Checks size, magic, version and CRCs, then decodes the CBOR body.
[[nodiscard]] Result<StateBody> DecodeStateFile(std::span<const uint8_t> bytes);

uint32_t Crc32(std::span<const uint8_t> bytes);

struct WriteResult {
  std::string path;           // <dir>/<name>
  uint64_t memory_bytes = 0;  // apparent size of the memory file
  uint64_t data_bytes = 0;    // bytes written (non-zero pages)
};
// Writes a snapshot of `memory` and `state` (the VM must be paused with its devices paused).
// `add_files`, when set, is called with the temporary directory after the memory file is written
// and before the config, to put more files in the snapshot (the frozen disks); its failure fails
// the write and removes the temporary directory.
// With `only_pages` (memory-file pages) the snapshot is incremental: only those pages are written
// and recorded, and config.parent must be set (and not otherwise).
using AddFiles = std::function<Result<void>(const std::string& tmp_dir)>;
[[nodiscard]] Result<WriteResult> Write(const std::string& dir, const std::string& name, const GuestMemory& memory,
                                        const VmState& state, const SnapshotConfig& config,
                                        const AddFiles& add_files = {}, const PageBitmap* only_pages = nullptr);

struct Loaded {
  std::string path;
  SnapshotConfig config;
  VmState state;
  // The memory files, open read-only: the full snapshot's, then (for an incremental snapshot) each
  // layer from the oldest to this snapshot's own. GuestMemory::CreateFromImage maps it.
  MemoryImage memory;
  std::vector<std::string> chain;  // names from this snapshot down to the full one
};
// Reads and checks `name` and, for an incremental snapshot, its parents: a missing parent, one whose
// id differs from the recorded one (removed and re-taken, or replaced), a loop or a chain longer
// than kMaxChainLength is an Error naming the snapshot and the parent.
[[nodiscard]] Result<Loaded> Read(const std::string& dir, const std::string& name);

// Rewrites incremental snapshot `name` as a full snapshot that no longer needs its parents: the
// resolved memory is written to a temporary directory (with the state, a config without parent but
// the same id, and hard links to — or copies of — its other files), fsynced, and exchanged with the
// old directory atomically (renameat2 RENAME_EXCHANGE), which is then removed. Children of `name`
// stay valid (same id). A failure leaves `name` as it was.
[[nodiscard]] Result<WriteResult> Merge(const std::string& dir, const std::string& name);

struct ListEntry {
  std::string name;
  std::string path;
  std::optional<SnapshotConfig> config;  // nullopt if the config is unreadable
  uint64_t disk_bytes = 0;               // space the directory's files take (sparse memory counted as allocated)
};
// Snapshots in `dir` sorted by name (temporary directories left by crashes are skipped).
std::vector<ListEntry> List(const std::string& dir);
// Refuses to remove a snapshot that an incremental snapshot in `dir` depends on (naming it).
[[nodiscard]] Result<void> Remove(const std::string& dir, const std::string& name);

}  // namespace clonevm::snapshot

// Disks in snapshots, restores and forks (docs/snapshots.md "Disks").
//
// The rule (issue #5): a VM made from a snapshot never shares a writable disk with another VM.
//
// Taking (on the VM's event-loop thread, vCPUs and devices paused, every block backend drained and
// flushed by Vm::PauseDevices, so the image files are complete and nothing writes them):
//   - a read-only disk is referenced by its absolute path, with its size, modification time and
//     inode recorded (FileStamp);
//   - a writable disk is frozen: copied into the snapshot directory as disk<i>.raw / disk<i>.qcow2
//     (a reflink where the file system shares extents, else a sparse copy of the data extents),
//     before the VM resumes. The copy's mtime is set to the snapshot's creation time and recorded
//     with its size. A qcow2 with a backing file is copied top only: its backing chain stays where
//     it is, by absolute path (recorded with stamps and checked on restore); a top whose backing
//     name is relative is refused (the copy would resolve it against the snapshot directory). A
//     writable block device is refused (only image files can be frozen).
//
// Restoring / forking: every frozen disk gets a new qcow2 overlay in the caller's overlay
// directory (the new VM's runtime directory, removed with the VM) whose backing file is the frozen
// base, recorded with its format (never probed: a raw base was written by a guest) and opened
// read-only with a shared lock — so any number of VMs restore one snapshot at once and the snapshot
// never changes. Read-only disks are reopened read-only. Before anything is created every file is
// checked: missing, or changed since the snapshot (size or mtime; inode too when the path was not
// rewritten) is one clear error. Any failure removes the overlays created so far.
//
// Path rewrites (`--block FROM=TO`): applied to read-only disk paths and to frozen bases (the
// snapshot directory's files), so a template moved to another directory or host still restores.
// FROM matches a path exactly or as a directory prefix on a component boundary ("/a/b" matches
// "/a/b" and "/a/b/c", never "/a/bc"); the longest matching FROM wins. Backing chains of frozen
// qcow2 tops are not rewritten (their absolute names are inside the frozen image).
//
// Thread-safety: free functions without shared state.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "snapshot/format.h"
#include "vmm/vm.h"

namespace clonevm::snapshot {

// --- Path rewrites ---

struct PathRewrite {
  std::string from;  // absolute, lexically normal, no trailing slash (except "/")
  std::string to;    // the same
  bool operator==(const PathRewrite&) const = default;
};

// Parses "FROM=TO" (the value of `--block FROM=TO`). Both sides must be absolute; "." and ".."
// are resolved lexically and trailing slashes dropped. The first '=' separates them.
[[nodiscard]] Result<PathRewrite> ParsePathRewrite(std::string_view spec);
[[nodiscard]] Result<std::vector<PathRewrite>> ParsePathRewrites(std::span<const std::string> specs);

// `path` with the longest matching FROM replaced by its TO (see above); unchanged when none matches.
std::string RewritePath(const std::string& path, std::span<const PathRewrite> rewrites);

// --- Taking ---

// What the snapshot's config records for `disks` (the VM's, in attach order): stamps of read-only
// images, names and sizes of the frozen copies (their mtime will be `frozen_mtime_ns`), backing
// chains. Fails for a disk that cannot be frozen. Call with the devices paused.
[[nodiscard]] Result<std::vector<SnapshotDisk>> DescribeDisks(std::span<const DiskImage> disks,
                                                              int64_t frozen_mtime_ns);

// Copies every writable disk into `dir` as `described` says (DescribeDisks of the same disks).
// Returns the bytes copied (reflinked extents count as copied). Devices paused, as above.
[[nodiscard]] Result<uint64_t> FreezeDisks(std::span<const DiskImage> disks, std::span<const SnapshotDisk> described,
                                           const std::string& dir);

// Copies the regular file `from` to the new file `to` (created 0600, fsynced): FICLONE when the
// file system can share extents, else only the data extents (SEEK_DATA/SEEK_HOLE, each copied
// with copy_file_range, falling back to read/write), so holes stay holes. Returns the bytes of
// data copied. On failure `to` is removed.
[[nodiscard]] Result<uint64_t> CopySparse(const std::string& from, const std::string& to);

// --- Restoring ---

struct DiskPlan {
  std::string overlay_dir;  // where the new VM's overlays go (must exist and be writable)
  std::vector<PathRewrite> rewrites;
};

// Checks every file the snapshot's disks need (read-only images, frozen bases, backing chains)
// without creating or opening anything for writing. `snapshot_path` is the snapshot's directory.
[[nodiscard]] Result<void> CheckDisks(const SnapshotConfig& config, const std::string& snapshot_path,
                                      std::span<const PathRewrite> rewrites);

// CheckDisks, then the disks in order: read-only images opened read-only; for each frozen disk a
// new qcow2 overlay <overlay_dir>/disk<i>.qcow2 on the frozen base, opened read-write. On failure
// nothing it created is left.
[[nodiscard]] Result<std::vector<DiskConfig>> OpenDisks(const SnapshotConfig& config, const std::string& snapshot_path,
                                                        const DiskPlan& plan);

}  // namespace clonevm::snapshot

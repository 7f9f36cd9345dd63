// The small initrd Clone generates for `clone run --rootfs`: it loads the kernel modules needed to
// reach the root disk, mounts it (read-write, or read-only under a tmpfs overlay) and switches
// root into its /sbin/init.
//
// Contents: a static busybox (the host's /bin/busybox from Debian's busybox-static, or
// $CLONE_BUSYBOX) with the applet links the init uses, /init, /dev/console, and the modules listed
// in kRootfsModules (required) and kOptionalRootfsModules (when the kernel has them) plus their
// dependencies, taken from modules.dep of the modules directory that matches the kernel's version
// string. Modules built into the kernel (modules.builtin) are skipped.
//
// The init mounts the disk (see RootMode), then — when the new root has /usr/bin/clone-agent —
// starts `clone-agent --daemon` chrooted into the new root with /dev, /proc and /sys already moved
// there, so the agent runs in the final root and survives switch_root. A root whose own init also
// starts the agent (the clone-agent.service `clone rootfs create` installs) gets a second
// instance that finds vsock port 1024 taken and exits 0.
//
// Cache: CachedRootfsInitrd() keeps built initrds in a directory (default ~/.cache/clone/initrd),
// one file per key, written atomically (temporary file + rename), at most kInitrdCacheEntries of
// them (the least recently used are removed when a new one is written).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/result.h"

namespace clonevm {

// The modules the generated init needs: the virtio-mmio transport, virtio-blk, ext4 (with the
// crc32c it needs for metadata checksums: a crypto soft dependency modules.dep does not list),
// overlayfs.
inline constexpr const char* kRootfsModules[] = {"virtio_mmio", "virtio_blk", "crc32c_generic", "ext4", "overlay"};
// Loaded when the kernel has them: vsock for the guest agent, virtio-net (and the failover modules
// it depends on).
inline constexpr const char* kOptionalRootfsModules[] = {
    "vsock",     "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport", "failover", "net_failover",
    "virtio_net"};

// Bumped whenever the generated initrd changes for the same inputs (init script, layout, module
// lists): it is part of the cache key.
inline constexpr int kRootfsInitrdVersion = 2;
inline constexpr size_t kInitrdCacheEntries = 8;

enum class MissingModule { kFail, kSkip };

// The kernel release ("6.1.0-56-cloud-amd64") from a bzImage's header, or from the
// "Linux version ..." banner of an ELF vmlinux.
[[nodiscard]] Result<std::string> KernelRelease(std::span<const uint8_t> kernel);

// Module files (paths relative to `modules_dir`) for `names` and everything they depend on,
// dependencies first, each once. Names compare with '-' and '_' as equal. A name that is neither
// in modules.dep nor in modules.builtin is an error (kFail) or left out (kSkip).
[[nodiscard]] Result<std::vector<std::string>> ResolveModules(const std::string& modules_dir,
                                                              std::span<const char* const> names,
                                                              MissingModule missing = MissingModule::kFail);

// kReadWrite: /dev/vda mounted read-write. kOverlayTmpfs: /dev/vda read-only under a tmpfs upper
// layer. kOverlayDisk: /dev/vda read-only under an upper layer on /dev/vdb, formatted (ext2, by
// the guest's busybox mke2fs) the first time it is used.
enum class RootMode { kReadWrite, kOverlayTmpfs, kOverlayDisk };

// Builds the initrd (an uncompressed newc cpio) for a kernel whose modules are in `modules_dir`.
[[nodiscard]] Result<std::vector<uint8_t>> BuildRootfsInitrd(const std::string& modules_dir);

// The kernel command line words that tell the generated init what to do.
std::string RootfsCmdline(RootMode mode);

// $XDG_CACHE_HOME/clone/initrd, else $HOME/.cache/clone/initrd (empty when neither is set).
std::string DefaultInitrdCacheDir();

// The cache key of the initrd BuildRootfsInitrd(modules_dir) would build: SHA-256 (hex) over
// kRootfsInitrdVersion, the modules directory's path, and the identity (path, size, mtime, inode)
// of busybox, modules.dep and modules.builtin. Stat-based, not content-based, so a cache hit
// reads no input: installing or rebuilding a kernel's modules reruns depmod, which rewrites
// modules.dep and so changes the key. (The root mode is not part of it: one initrd serves every
// mode, read from the kernel command line.)
[[nodiscard]] Result<std::string> RootfsInitrdKey(const std::string& modules_dir);

struct CachedInitrd {
  std::vector<uint8_t> bytes;
  bool hit = false;  // read from the cache
  std::string path;  // the cache file
};

// BuildRootfsInitrd through the cache in `cache_dir` (created if missing). A cache that cannot be
// read or written is not an error: the initrd is built and returned (with a warning logged).
[[nodiscard]] Result<CachedInitrd> CachedRootfsInitrd(const std::string& modules_dir, const std::string& cache_dir);

}  // namespace clonevm

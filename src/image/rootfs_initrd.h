// The small initrd Clone generates for `clone run --rootfs`: it loads the kernel modules needed to
// reach the root disk, mounts it (read-write, or read-only under a tmpfs overlay) and switches
// root into its /sbin/init.
//
// Contents: a static busybox (the host's /bin/busybox from Debian's busybox-static, or
// $CLONE_BUSYBOX) with the applet links the init uses, /init, /dev/console, and the modules listed
// in kRootfsModules plus their dependencies, taken from modules.dep of the modules directory that
// matches the kernel's version string. Modules built into the kernel (modules.builtin) are skipped.
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

// The kernel release ("6.1.0-56-cloud-amd64") from a bzImage's header, or from the
// "Linux version ..." banner of an ELF vmlinux.
[[nodiscard]] Result<std::string> KernelRelease(std::span<const uint8_t> kernel);

// Module files (paths relative to `modules_dir`) for `names` and everything they depend on,
// dependencies first, each once. Names compare with '-' and '_' as equal. A name that is neither
// in modules.dep nor in modules.builtin is an error.
[[nodiscard]] Result<std::vector<std::string>> ResolveModules(const std::string& modules_dir,
                                                              std::span<const char* const> names);

// kReadWrite: /dev/vda mounted read-write. kOverlayTmpfs: /dev/vda read-only under a tmpfs upper
// layer. kOverlayDisk: /dev/vda read-only under an upper layer on /dev/vdb, formatted (ext2, by
// the guest's busybox mke2fs) the first time it is used.
enum class RootMode { kReadWrite, kOverlayTmpfs, kOverlayDisk };

// Builds the initrd (an uncompressed newc cpio) for a kernel whose modules are in `modules_dir`.
[[nodiscard]] Result<std::vector<uint8_t>> BuildRootfsInitrd(const std::string& modules_dir);

// The kernel command line words that tell the generated init what to do.
std::string RootfsCmdline(RootMode mode);

}  // namespace clonevm

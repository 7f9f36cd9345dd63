// `clone rootfs create`: builds a bootable ext4 disk image (raw or qcow2) from a directory, a tar
// archive, an OCI image layout or a debootstrapped Debian or Ubuntu, without loop mounts or mount
// privileges.
//
// Steps, each announced through `progress`:
//  1. staging: a private directory next to the output (same filesystem) receives the tree:
//     `cp -a` of the directory (the user's directory is never modified), `tar -x --numeric-owner`
//     of the archive (compression detected by tar), the layers of an OCI image layout (each
//     verified, extracted with tar into its own temporary directory next to the output, then
//     applied with whiteouts: image/oci.h), or `debootstrap --variant=minbase` (root only; Ubuntu
//     with --keyring=kUbuntuKeyring, which must exist: Debian package ubuntu-keyring).
//  2. customisation of the staged tree (CustomizeRootfs).
//  3. `mkfs.ext4 -q -F -d STAGING -L rootfs TMP SIZE` into a sparse temporary file next to the output.
//  4. raw: fsync + rename. qcow2: Qcow2Create + copy of the non-zero 64 KiB chunks of the raw
//     file's data extents (SEEK_DATA/SEEK_HOLE), flush, fsync + rename.
// The output appears atomically: a failed or interrupted run leaves no output and removes its
// temporary files. An existing output is replaced only with `force`.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "block/image.h"

namespace clonevm {

enum class RootfsSource { kDirectory, kTar, kOci, kDebian, kUbuntu };

inline constexpr uint64_t kMinRootfsBytes = 16ull << 20;
inline constexpr uint64_t kMaxRootfsBytes = 16ull << 40;
inline constexpr const char* kDefaultDebianSuite = "bookworm";
inline constexpr const char* kDefaultDebianMirror = "http://deb.debian.org/debian";
inline constexpr const char* kDefaultUbuntuSuite = "jammy";
inline constexpr const char* kDefaultUbuntuMirror = "http://archive.ubuntu.com/ubuntu";
inline constexpr const char* kUbuntuKeyring = "/usr/share/keyrings/ubuntu-archive-keyring.gpg";
inline constexpr const char* kDefaultRootfsHostname = "clone";

struct RootfsCreateOptions {
  RootfsSource source = RootfsSource::kDirectory;
  std::string source_path;                  // kDirectory: the directory; kTar: the archive; kOci: the layout directory
  std::string suite = kDefaultDebianSuite;  // kDebian, kUbuntu (set kDefaultUbuntuSuite)
  std::string mirror = kDefaultDebianMirror;  // kDebian, kUbuntu (set kDefaultUbuntuMirror)
  uint64_t size_bytes = 0;                    // a multiple of 1 MiB, >= kMinRootfsBytes
  std::string output;
  Format format = Format::kRaw;  // kRaw or kQcow2
  std::string hostname = kDefaultRootfsHostname;
  bool force = false;      // replace an existing output
  std::string agent_path;  // installed as /usr/bin/clone-agent when non-empty (must exist)
  // root's password: "" (default: locked for kDebian/kUbuntu, unchanged otherwise), "locked", "none" or a
  // crypt(3) hash; see RootPasswordField.
  std::string root_password;
  // Set (e.g. by a SIGINT handler) to stop: the running tool is terminated, temporaries removed.
  const std::atomic<bool>* interrupted = nullptr;
  std::function<void(std::string_view)> progress;  // one line per step; may be empty
};

// "512M", "1G", "1GiB", "2048" (a bare number is MiB), "65536K", "1T". The result is a whole
// number of MiB between kMinRootfsBytes and kMaxRootfsBytes.
[[nodiscard]] Result<uint64_t> ParseRootfsSize(std::string_view text);

// A valid hostname: 1..63 characters of [A-Za-z0-9-], not starting or ending with '-'.
[[nodiscard]] Result<void> ValidateHostname(std::string_view name);

// The command lines of the external tools (argv[0] is the tool's name, resolved through PATH
// plus /usr/sbin and /sbin when run). A non-empty `keyring` (Ubuntu: kUbuntuKeyring) adds
// --keyring=KEYRING and --components=main (systemd-sysv and udev are in Ubuntu's main).
std::vector<std::string> DebootstrapArgv(const std::string& suite, const std::string& target, const std::string& mirror,
                                         const std::string& keyring = {});
std::vector<std::string> TarExtractArgv(const std::string& archive, const std::string& target);
std::vector<std::string> MkfsExt4Argv(const std::string& staging, const std::string& image, uint64_t size_bytes);

struct RootfsCustomization {
  std::string hostname = kDefaultRootfsHostname;
  std::string agent_path;                    // empty: no agent installed; otherwise it must exist
  std::optional<std::string> root_password;  // root's /etc/shadow password field; nullopt: unchanged
};

// The /etc/shadow password field for `option` (RootfsCreateOptions::root_password): "locked" →
// "*", "none" → "" (root logs in on the console without a password), "$..." → the hash as given;
// "" → "*" for a debootstrapped Debian or Ubuntu (locked, like `passwd -l`: Clone's access is the
// agent), nothing (keep the tree's) for --from-dir / --from-tar / --from-oci. Anything else is an error.
[[nodiscard]] Result<std::optional<std::string>> RootPasswordField(RootfsSource source, std::string_view option);

// Adapts a root tree for Clone, writing only inside `root` (symlinks in the tree are never
// followed out of it; a symlinked parent directory is an error):
//  - /etc/hostname;
//  - a serial console on ttyS0: serial-getty@ttyS0.service enabled in getty.target.wants when the
//    tree has systemd, or a getty line appended to /etc/inittab (busybox or sysvinit syntax) when
//    it has one without ttyS0;
//  - /etc/fstab "/dev/vda / ext4 defaults 0 1" if absent;
//  - eth0 networking placeholder, if absent: /etc/systemd/network/20-clone-eth0.network (systemd)
//    or /etc/network/interfaces (otherwise); the address is static, set by Clone, no DHCP;
//  - the guest agent as /usr/bin/clone-agent (0755) when customization.agent_path is set, and for
//    systemd trees /etc/systemd/system/clone-agent.service enabled in multi-user.target (it runs
//    `clone-agent` in the foreground; a second instance next to the one Clone's initrd started
//    cannot bind vsock port 1024 and exits: SuccessExitStatus=1, Restart=on-abnormal, no loop);
//  - root's password field in /etc/shadow when customization.root_password is set.
[[nodiscard]] Result<void> CustomizeRootfs(const std::string& root, const RootfsCustomization& customization);

// Writes the raw image `raw` as a new qcow2 image at `qcow2_path` (which must not exist), copying
// only the non-zero 64 KiB chunks of raw's data extents; flushed and fsynced on success.
[[nodiscard]] Result<void> ConvertRawToQcow2(const std::string& raw, const std::string& qcow2_path,
                                             const std::atomic<bool>* interrupted = nullptr);

// Runs all the steps. An error from an interrupt has the message "interrupted".
[[nodiscard]] Result<void> CreateRootfs(const RootfsCreateOptions& options);

}  // namespace clonevm

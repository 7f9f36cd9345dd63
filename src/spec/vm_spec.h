// VmSpec: what a VM is, below every way of asking for one (`clone run`/`clone fork` flags, the
// JSON body of an API request, the spec recorded in a snapshot).
//
// One typed value with three forms and one set of rules:
//   - flags:  the CLI fills a VmSpec from its flag strings with the Parse*Spec functions below;
//   - JSON:   SpecToJson / SpecFromJson (versioned: "version": kSpecVersion; an unknown field, a
//             wrong type or a newer version is an error naming the field);
//   - checks: ValidateSpec says what is wrong in one line, naming the field the way the caller's
//             user wrote it (Spelling::kFlags: "--mem-mb 8: too small"; kJson: "mem_mib 8: ...").
// ValidateSpec needs no file access; files (kernel, disks, shared directories) are checked when
// the VM process opens them (runtime/launch.h).
//
// Forks and restores start from a recorded spec (RecordedSpec: the snapshot's, with the snapshot's
// own facts — memory, vCPUs, shared directories — taking precedence) and apply ForkOverrides on
// top (ApplyOverrides). The rule for shared directories (forkvm): a writable directory is never
// served to a VM and its fork at once — a fork must name its own directory for every writable tag
// of its template, or serve the recorded one read-only (HOST:TAG:ro). A restore continues the same
// machine and keeps the recorded directories.
//
// Thread-safety: plain values and free functions.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"
#include "block/image.h"
#include "devices/virtio/net.h"
#include "snapshot/format.h"
#include "vmm/vm.h"

namespace clonevm::spec {

inline constexpr uint32_t kSpecVersion = 1;
inline constexpr const char* kDefaultCmdline = "console=ttyS0 quiet";
inline constexpr uint32_t kMaxVcpus = 254;  // xAPIC IDs 0..253; the IOAPIC takes the next ID

// A disk (virtio-blk, in order: the first is /dev/vda). Flag form: PATH[,ro][,format=raw|qcow2].
struct DiskSpec {
  std::string path;
  bool read_only = false;
  Format format = Format::kAuto;  // probed when kAuto
  bool operator==(const DiskSpec&) const = default;
};

// An existing TAP (virtio-net, in order). Flag form: NAME[,mac=XX:..][,vhost=on|off].
struct TapSpec {
  std::string name;
  std::optional<virtio::MacAddress> mac;  // default: a random locally administered MAC
  virtio::VhostMode vhost = virtio::VhostMode::kAuto;
  bool operator==(const TapSpec&) const = default;
};

// A shared host directory (virtio-fs). Flag form: HOST:TAG[:ro][:squash-root] (the options in
// either order); HOST made absolute.
struct ShareSpec {
  std::string host_path;
  std::string tag;  // 1..36 of [A-Za-z0-9._-]
  bool read_only = false;
  bool squash_root = false;  // every request as its caller, guest root as nobody (fs/passthrough.h)
  bool operator==(const ShareSpec&) const = default;
};

// Boot from a disk image through a generated initrd (--rootfs), optionally under an overlay.
struct RootfsSpec {
  std::string image;    // empty: no rootfs
  std::string overlay;  // "" (the image read-write), "tmpfs", "auto" (temporary qcow2) or a qcow2 PATH
  std::string modules;  // the kernel's modules directory (default /lib/modules/<release>)
  bool operator==(const RootfsSpec&) const = default;
};

// The memory balloon (issue #12, docs/density.md). off: no device; manual: the device, free page
// reporting and `clone balloon`; auto: manual plus the hysteresis policy (floor and times are its).
struct BalloonSpec {
  std::string mode = "manual";      // off | manual | auto
  std::string floor;                // e.g. "64M"
  std::string times;                // the policy's timings, as the balloon flags spell them
  bool free_page_reporting = true;  // pages the guest frees go back to the host
  uint32_t stats_interval_s = 5;    // the guest's memory statistics refresh; 0: none
  bool operator==(const BalloonSpec&) const = default;
};

struct VmSpec {
  std::string name;  // the VM id (empty: a random vm-xxxxxx)
  std::string kernel;
  std::string kernel_sha256;  // hex; empty: not checked
  std::string initrd;
  std::string cmdline = kDefaultCmdline;
  RootfsSpec rootfs;
  std::vector<DiskSpec> disks;
  bool net = false;  // automatic networking (a TAP on Clone's bridge, a leased address)
  std::vector<TapSpec> taps;
  std::vector<ShareSpec> shares;
  uint64_t cid = 0;  // vsock CID; 0: automatic
  uint32_t vcpus = 1;
  uint64_t mem_mib = 512;
  bool seccomp = false;
  bool ksm = true;  // guest RAM MADV_MERGEABLE (--no-ksm: not); host KSM settings are never changed
  BalloonSpec balloon;
  bool operator==(const VmSpec&) const = default;
};

// A VM id: 1..32 characters a-z, 0-9 and '-', not starting with '-' (it names directories).
bool IsValidVmId(const std::string& id);

// How error messages name fields: as `clone run`/`clone fork` flags or as JSON fields.
enum class Spelling { kFlags, kJson };

// The flag forms. Errors quote the value and say what is expected.
[[nodiscard]] Result<DiskSpec> ParseDiskSpec(const std::string& value);
[[nodiscard]] Result<TapSpec> ParseTapSpec(const std::string& value);
[[nodiscard]] Result<ShareSpec> ParseShareSpec(const std::string& value);
std::string FormatDiskSpec(const DiskSpec& disk);
std::string FormatTapSpec(const TapSpec& tap);
std::string FormatShareSpec(const ShareSpec& share);

// Every rule that needs no file access: sizes, counts, names, combinations, tags.
[[nodiscard]] Result<void> ValidateSpec(const VmSpec& spec, Spelling spelling);

nlohmann::json SpecToJson(const VmSpec& spec);
// Reads and validates (ValidateSpec with Spelling::kJson); errors name the field ("disks[1].format: ...").
[[nodiscard]] Result<VmSpec> SpecFromJson(const nlohmann::json& j);

// Shared directories as the VM config wants them; the checks that need the file system: every
// host path an existing directory (errors name HOST:TAG).
std::vector<SharedDirConfig> ToSharedDirs(const std::vector<ShareSpec>& shares);
[[nodiscard]] Result<void> CheckShares(const std::vector<ShareSpec>& shares);

// --- Restores and forks ---

enum class SnapshotUse { kRestore, kFork };

// What a restore or fork may change about its snapshot's VM (its devices are fixed).
struct ForkOverrides {
  std::string name;             // the new VM's id (empty: a random one)
  std::optional<uint64_t> cid;  // a fork without it gets the first free CID; a restore keeps the recorded one
  bool net = false;             // network devices are re-supplied: --net and/or TAPs, one per recorded device
  std::vector<TapSpec> taps;
  std::vector<ShareSpec> shares;           // a new directory (and mode) for a recorded tag
  std::vector<std::string> disk_rewrites;  // FROM=TO: a recorded disk (or directory of disks) opened elsewhere
  bool seccomp = false;                    // on top of the recorded spec's
  bool operator==(const ForkOverrides&) const = default;
};

// A --block value of `clone fork`/`clone restore` into `overrides`: FROM=TO re-points a recorded
// disk; a plain image path would add a disk, which a snapshot's guest cannot see (its device list
// is fixed): refused with that reason.
[[nodiscard]] Result<void> AddDiskOverride(const std::string& value, ForkOverrides* overrides);

// The spec a snapshot records (config info "spec", written by every VM since spec version 1), with
// the snapshot's own facts (memory, vCPUs, cmdline, shared directories) taking precedence; for older
// snapshots, those facts alone.
[[nodiscard]] Result<VmSpec> RecordedSpec(const snapshot::SnapshotConfig& config);

// The new VM's spec: `recorded` with `overrides` applied by the rules above (unknown tag, a tag
// given twice and, for forks, a writable recorded directory not given a new one are errors).
[[nodiscard]] Result<VmSpec> ApplyOverrides(const VmSpec& recorded, const ForkOverrides& overrides, SnapshotUse use);

nlohmann::json OverridesToJson(const ForkOverrides& overrides);
[[nodiscard]] Result<ForkOverrides> OverridesFromJson(const nlohmann::json& j);

}  // namespace clonevm::spec

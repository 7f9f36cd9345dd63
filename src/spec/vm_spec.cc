#include "spec/vm_spec.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <set>

#include "arch/x86/layout.h"
#include "base/json.h"
#include "base/sha256.h"
#include "devices/virtio/fs.h"
#include "devices/virtio/vsock.h"
#include "snapshot/disks.h"

namespace clonevm::spec {
namespace {

using nlohmann::json;

// The name of each validated field in the caller's spelling.
struct FieldNames {
  const char* mem;
  const char* vcpus;
  const char* cid;
  const char* name;
  const char* kernel;
  const char* kernel_sha256;
  const char* rootfs;
  const char* initrd;
  const char* overlay;
  const char* modules;
  const char* disk;
  const char* tap;
  const char* share;
  const char* balloon;
};
constexpr FieldNames kFlagNames{"--mem-mb",        "--vcpus",  "--cid",        "--name",    "--kernel",
                                "--kernel-sha256", "--rootfs", "--initrd",     "--overlay", "--modules",
                                "--block",         "--tap",    "--shared-dir", "--balloon"};
constexpr FieldNames kJsonNames{"mem_mib",       "vcpus",        "cid",    "name",           "kernel",
                                "kernel_sha256", "rootfs.image", "initrd", "rootfs.overlay", "rootfs.modules",
                                "disks",         "taps",         "shares", "balloon.mode"};

const FieldNames& Names(Spelling spelling) { return spelling == Spelling::kFlags ? kFlagNames : kJsonNames; }

std::string Absolute(const std::string& path) {
  std::error_code ec;
  std::filesystem::path absolute = std::filesystem::absolute(path, ec);
  std::string result = ec ? path : absolute.lexically_normal().string();
  if (result.size() > 1 && result.ends_with('/')) result.pop_back();
  return result;
}

// The comma-separated options after the first field of a flag value.
std::vector<std::string> Options(const std::string& value, size_t comma) {
  std::vector<std::string> options;
  while (comma != std::string::npos) {
    size_t next = value.find(',', comma + 1);
    options.push_back(value.substr(comma + 1, next == std::string::npos ? std::string::npos : next - comma - 1));
    comma = next;
  }
  return options;
}

Result<void> CheckTag(const std::string& what, const std::string& tag) {
  if (tag.empty() || tag.size() > virtio::Fs::kMaxTagLength) {
    return Fail("{}: the tag must be 1 to {} characters", what, virtio::Fs::kMaxTagLength);
  }
  for (char c : tag) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return Fail("{}: the tag '{}' may only use A-Z a-z 0-9 . _ -", what, tag);
    }
  }
  return {};
}

std::string_view VhostName(virtio::VhostMode mode) {
  switch (mode) {
    case virtio::VhostMode::kOn:
      return "on";
    case virtio::VhostMode::kOff:
      return "off";
    case virtio::VhostMode::kAuto:
      break;
  }
  return "auto";
}

// --- JSON reading: every accessor names the field it failed on ---

using Reader = JsonReader;

Result<DiskSpec> ReadDisk(const Reader& r) {
  CLONE_TRY_VOID(r.Expect({"path", "read_only", "format"}));
  DiskSpec disk;
  CLONE_TRY_VOID(r.Get("path", &disk.path));
  if (disk.path.empty()) return Fail("{}: missing the image path", r.Field("path"));
  CLONE_TRY_VOID(r.Get("read_only", &disk.read_only));
  std::string format = "auto";
  CLONE_TRY_VOID(r.Get("format", &format));
  if (format != "auto") {
    auto parsed = ParseFormatName(format);
    if (!parsed || *parsed == Format::kAuto) {
      return Fail("{}: unknown format '{}' (auto, raw or qcow2)", r.Field("format"), format);
    }
    disk.format = *parsed;
  }
  return disk;
}

Result<TapSpec> ReadTap(const Reader& r) {
  CLONE_TRY_VOID(r.Expect({"name", "mac", "vhost"}));
  TapSpec tap;
  CLONE_TRY_VOID(r.Get("name", &tap.name));
  if (tap.name.empty()) return Fail("{}: missing the TAP interface name", r.Field("name"));
  std::string mac;
  CLONE_TRY_VOID(r.Get("mac", &mac));
  if (!mac.empty()) {
    auto parsed = virtio::ParseMac(mac);
    if (!parsed) return Fail("{}: {}", r.Field("mac"), parsed.error().message());
    tap.mac = *parsed;
  }
  std::string vhost = "auto";
  CLONE_TRY_VOID(r.Get("vhost", &vhost));
  if (vhost == "on") {
    tap.vhost = virtio::VhostMode::kOn;
  } else if (vhost == "off") {
    tap.vhost = virtio::VhostMode::kOff;
  } else if (vhost != "auto") {
    return Fail("{}: '{}' (expected auto, on or off)", r.Field("vhost"), vhost);
  }
  return tap;
}

Result<ShareSpec> ReadShare(const Reader& r) {
  CLONE_TRY_VOID(r.Expect({"host_path", "tag", "read_only", "squash_root"}));
  ShareSpec share;
  CLONE_TRY_VOID(r.Get("host_path", &share.host_path));
  CLONE_TRY_VOID(r.Get("tag", &share.tag));
  CLONE_TRY_VOID(r.Get("read_only", &share.read_only));
  CLONE_TRY_VOID(r.Get("squash_root", &share.squash_root));
  if (share.host_path.empty()) return Fail("{}: missing the host directory", r.Field("host_path"));
  CLONE_TRY_VOID(CheckTag(r.Field("tag"), share.tag));
  share.host_path = Absolute(share.host_path);
  return share;
}

Result<std::string> ReadRewrite(const Reader& r) {
  if (!r.value().is_string()) return Fail("{}: expected a string FROM=TO", r.path());
  std::string value = r.value().get<std::string>();
  auto rewrite = snapshot::ParsePathRewrite(value);
  if (!rewrite) return Fail("{}: {}", r.path(), rewrite.error().message());
  return value;
}

json DiskToJson(const DiskSpec& d) {
  return {{"path", d.path}, {"read_only", d.read_only}, {"format", std::string(FormatName(d.format))}};
}
json TapToJson(const TapSpec& t) {
  json j = {{"name", t.name}, {"vhost", std::string(VhostName(t.vhost))}};
  if (t.mac) j["mac"] = virtio::FormatMac(*t.mac);
  return j;
}
json ShareToJson(const ShareSpec& s) {
  json j = {{"host_path", s.host_path}, {"tag", s.tag}, {"read_only", s.read_only}};
  if (s.squash_root) j["squash_root"] = true;
  return j;
}

}  // namespace

bool IsValidVmId(const std::string& id) {
  if (id.empty() || id.size() > 32) return false;
  auto ok = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'; };
  return id[0] != '-' && std::all_of(id.begin(), id.end(), ok);
}

Result<DiskSpec> ParseDiskSpec(const std::string& value) {
  DiskSpec spec;
  size_t comma = value.find(',');
  spec.path = value.substr(0, comma);
  if (spec.path.empty()) return Fail("--block '{}': missing the image path", value);
  for (const auto& option : Options(value, comma)) {
    if (option == "ro") {
      spec.read_only = true;
    } else if (option.starts_with("format=")) {
      auto format = ParseFormatName(option.substr(7));
      if (!format || *format == Format::kAuto)
        return Fail("--block '{}': unknown format '{}' (raw or qcow2)", value, option.substr(7));
      spec.format = *format;
    } else {
      return Fail("--block '{}': unknown option '{}' (expected ro or format=raw|qcow2)", value, option);
    }
  }
  return spec;
}

Result<TapSpec> ParseTapSpec(const std::string& value) {
  TapSpec spec;
  size_t comma = value.find(',');
  spec.name = value.substr(0, comma);
  if (spec.name.empty()) return Fail("--tap '{}': missing the TAP interface name", value);
  for (const auto& option : Options(value, comma)) {
    if (option.starts_with("mac=")) {
      auto mac = virtio::ParseMac(option.substr(4));
      if (!mac) return Fail("--tap '{}': {}", value, mac.error().message());
      spec.mac = *mac;
    } else if (option == "vhost=on" || option == "vhost=off") {
      spec.vhost = option == "vhost=on" ? virtio::VhostMode::kOn : virtio::VhostMode::kOff;
    } else {
      return Fail("--tap '{}': unknown option '{}' (expected mac=XX:XX:XX:XX:XX:XX or vhost=on|off)", value, option);
    }
  }
  return spec;
}

Result<ShareSpec> ParseShareSpec(const std::string& value) {
  ShareSpec share;
  std::string rest = value;
  // Trailing options, in either order (HOST may contain ':', TAG may not).
  for (bool more = true; more;) {
    more = false;
    for (auto [suffix, flag] : {std::pair{":ro", &share.read_only}, std::pair{":squash-root", &share.squash_root}}) {
      if (rest.ends_with(suffix) && !*flag) {
        *flag = true;
        rest.resize(rest.size() - std::strlen(suffix));
        more = true;
      }
    }
  }
  size_t colon = rest.rfind(':');
  if (colon == std::string::npos) return Fail("--shared-dir '{}': expected HOST:TAG[:ro][:squash-root]", value);
  std::string host = rest.substr(0, colon);
  share.tag = rest.substr(colon + 1);
  if (host.empty()) return Fail("--shared-dir '{}': missing the host directory", value);
  CLONE_TRY_VOID(CheckTag(fmt::format("--shared-dir '{}'", value), share.tag));
  share.host_path = Absolute(host);
  return share;
}

std::string FormatDiskSpec(const DiskSpec& disk) {
  std::string s = disk.path;
  if (disk.read_only) s += ",ro";
  if (disk.format != Format::kAuto) s += fmt::format(",format={}", FormatName(disk.format));
  return s;
}

std::string FormatTapSpec(const TapSpec& tap) {
  std::string s = tap.name;
  if (tap.mac) s += ",mac=" + virtio::FormatMac(*tap.mac);
  if (tap.vhost != virtio::VhostMode::kAuto) s += fmt::format(",vhost={}", VhostName(tap.vhost));
  return s;
}

std::string FormatShareSpec(const ShareSpec& share) {
  return share.host_path + ":" + share.tag + (share.read_only ? ":ro" : "") + (share.squash_root ? ":squash-root" : "");
}

Result<void> ValidateSpec(const VmSpec& s, Spelling spelling) {
  const FieldNames& n = Names(spelling);
  uint64_t min_mib = x86::kMinRamBytes / x86::kMiB;
  uint64_t max_mib = x86::kMaxRamBytes / x86::kMiB;
  if (s.kernel.empty()) return Fail("{}: required (the kernel image to boot)", n.kernel);
  if (s.mem_mib < min_mib) return Fail("{} {}: too small (minimum {})", n.mem, s.mem_mib, min_mib);
  if (s.mem_mib > max_mib) return Fail("{} {}: too large (maximum {})", n.mem, s.mem_mib, max_mib);
  if (s.vcpus == 0) return Fail("{} 0: a VM needs at least one vCPU", n.vcpus);
  if (s.vcpus > kMaxVcpus) return Fail("{} {}: too many (maximum {})", n.vcpus, s.vcpus, kMaxVcpus);
  if (s.cid != 0 && (s.cid < virtio::Vsock::kFirstGuestCid || s.cid > virtio::Vsock::kMaxGuestCid)) {
    return Fail("{} {}: use {}..{}", n.cid, s.cid, virtio::Vsock::kFirstGuestCid, virtio::Vsock::kMaxGuestCid);
  }
  if (!s.rootfs.image.empty() && !s.initrd.empty()) {
    return Fail("{} and {} cannot be used together", n.rootfs, n.initrd);
  }
  if (s.rootfs.image.empty() && (!s.rootfs.overlay.empty() || !s.rootfs.modules.empty())) {
    return Fail("{} and {} need {}", n.overlay, n.modules, n.rootfs);
  }
  if (!s.name.empty() && !IsValidVmId(s.name)) {
    return Fail("{} '{}': use up to 32 characters a-z, 0-9 and '-', not starting with '-'", n.name, s.name);
  }
  if (!s.kernel_sha256.empty() && !IsSha256Hex(s.kernel_sha256)) {
    return Fail("{}: expected 64 hexadecimal digits, got '{}'", n.kernel_sha256, s.kernel_sha256);
  }
  for (size_t i = 0; i < s.disks.size(); ++i) {
    if (s.disks[i].path.empty()) return Fail("{} #{}: missing the image path", n.disk, i);
  }
  for (size_t i = 0; i < s.taps.size(); ++i) {
    if (s.taps[i].name.empty()) return Fail("{} #{}: missing the TAP interface name", n.tap, i);
  }
  std::set<std::string> tags;
  for (const auto& share : s.shares) {
    std::string what = fmt::format("{} {}", n.share, FormatShareSpec(share));
    CLONE_TRY_VOID(CheckTag(what, share.tag));
    if (share.host_path.empty()) return Fail("{}: missing the host directory", what);
    if (!tags.insert(share.tag).second) return Fail("{}: the tag '{}' is used twice", n.share, share.tag);
  }
  if (s.balloon.mode != "off" && s.balloon.mode != "manual" && s.balloon.mode != "auto") {
    return Fail("{} '{}': expected off, manual or auto", n.balloon, s.balloon.mode);
  }
  if (s.balloon.stats_interval_s > 3600) {
    return Fail("balloon statistics interval {} s: at most 3600", s.balloon.stats_interval_s);
  }
  return {};
}

json SpecToJson(const VmSpec& s) {
  json disks = json::array(), taps = json::array(), shares = json::array();
  for (const auto& d : s.disks) disks.push_back(DiskToJson(d));
  for (const auto& t : s.taps) taps.push_back(TapToJson(t));
  for (const auto& sh : s.shares) shares.push_back(ShareToJson(sh));
  return {
      {"version", kSpecVersion},
      {"name", s.name},
      {"kernel", s.kernel},
      {"kernel_sha256", s.kernel_sha256},
      {"initrd", s.initrd},
      {"cmdline", s.cmdline},
      {"rootfs", {{"image", s.rootfs.image}, {"overlay", s.rootfs.overlay}, {"modules", s.rootfs.modules}}},
      {"disks", std::move(disks)},
      {"net", s.net},
      {"taps", std::move(taps)},
      {"shares", std::move(shares)},
      {"cid", s.cid},
      {"vcpus", s.vcpus},
      {"mem_mib", s.mem_mib},
      {"seccomp", s.seccomp},
      {"ksm", s.ksm},
      {"balloon",
       {{"mode", s.balloon.mode},
        {"floor", s.balloon.floor},
        {"times", s.balloon.times},
        {"free_page_reporting", s.balloon.free_page_reporting},
        {"stats_interval_s", s.balloon.stats_interval_s}}},
  };
}

Result<VmSpec> SpecFromJson(const json& j) {
  Reader r(j, "");
  CLONE_TRY_VOID(r.Expect({"version", "name", "kernel", "kernel_sha256", "initrd", "cmdline", "rootfs", "disks", "net",
                           "taps", "shares", "cid", "vcpus", "mem_mib", "seccomp", "ksm", "balloon"}));
  uint32_t version = kSpecVersion;
  CLONE_TRY_VOID(r.GetUnsigned("version", &version));
  if (version == 0 || version > kSpecVersion) {
    return Fail("version {}: this Clone reads VM specs up to version {}", version, kSpecVersion);
  }
  VmSpec s;
  CLONE_TRY_VOID(r.Get("name", &s.name));
  CLONE_TRY_VOID(r.Get("kernel", &s.kernel));
  CLONE_TRY_VOID(r.Get("kernel_sha256", &s.kernel_sha256));
  CLONE_TRY_VOID(r.Get("initrd", &s.initrd));
  CLONE_TRY_VOID(r.Get("cmdline", &s.cmdline));
  if (auto rootfs = r.Child("rootfs")) {
    CLONE_TRY_VOID(rootfs->Expect({"image", "overlay", "modules"}));
    CLONE_TRY_VOID(rootfs->Get("image", &s.rootfs.image));
    CLONE_TRY_VOID(rootfs->Get("overlay", &s.rootfs.overlay));
    CLONE_TRY_VOID(rootfs->Get("modules", &s.rootfs.modules));
  }
  CLONE_TRY_VOID(r.Each("disks", &ReadDisk, &s.disks));
  CLONE_TRY_VOID(r.Get("net", &s.net));
  CLONE_TRY_VOID(r.Each("taps", &ReadTap, &s.taps));
  CLONE_TRY_VOID(r.Each("shares", &ReadShare, &s.shares));
  CLONE_TRY_VOID(r.GetUnsigned("cid", &s.cid));
  CLONE_TRY_VOID(r.GetUnsigned("vcpus", &s.vcpus));
  CLONE_TRY_VOID(r.GetUnsigned("mem_mib", &s.mem_mib));
  CLONE_TRY_VOID(r.Get("seccomp", &s.seccomp));
  CLONE_TRY_VOID(r.Get("ksm", &s.ksm));
  if (auto balloon = r.Child("balloon")) {
    CLONE_TRY_VOID(balloon->Expect({"mode", "floor", "times", "free_page_reporting", "stats_interval_s"}));
    CLONE_TRY_VOID(balloon->Get("mode", &s.balloon.mode));
    CLONE_TRY_VOID(balloon->Get("floor", &s.balloon.floor));
    CLONE_TRY_VOID(balloon->Get("times", &s.balloon.times));
    CLONE_TRY_VOID(balloon->Get("free_page_reporting", &s.balloon.free_page_reporting));
    CLONE_TRY_VOID(balloon->GetUnsigned("stats_interval_s", &s.balloon.stats_interval_s));
  }
  CLONE_TRY_VOID(ValidateSpec(s, Spelling::kJson));
  return s;
}

std::vector<SharedDirConfig> ToSharedDirs(const std::vector<ShareSpec>& shares) {
  std::vector<SharedDirConfig> dirs;
  for (const auto& s : shares) dirs.push_back({s.host_path, s.tag, s.read_only, s.squash_root});
  return dirs;
}

Result<void> CheckShares(const std::vector<ShareSpec>& shares) {
  for (const auto& share : shares) {
    std::error_code ec;
    auto status = std::filesystem::status(share.host_path, ec);
    if (ec || !std::filesystem::exists(status)) {
      return Fail("--shared-dir {}:{}: {} does not exist", share.host_path, share.tag, share.host_path);
    }
    if (!std::filesystem::is_directory(status)) {
      return Fail("--shared-dir {}:{}: {} is not a directory", share.host_path, share.tag, share.host_path);
    }
  }
  return {};
}

Result<void> AddDiskOverride(const std::string& value, ForkOverrides* overrides) {
  if (value.find('=') == std::string::npos) {
    return Fail(
        "--block '{}': a VM made from a snapshot cannot get a new disk (its guest's devices are fixed); "
        "use FROM=TO to open a recorded disk elsewhere",
        value);
  }
  CLONE_TRY(snapshot::ParsePathRewrite(value));
  overrides->disk_rewrites.push_back(value);
  return {};
}

Result<VmSpec> RecordedSpec(const snapshot::SnapshotConfig& config) {
  VmSpec s;
  if (auto it = config.info.find("spec"); it != config.info.end()) {
    auto recorded = SpecFromJson(*it);
    if (!recorded) return Fail(recorded.error().Wrap("the snapshot's recorded spec"));
    s = std::move(*recorded);
  } else if (auto kernel = config.info.find("kernel"); kernel != config.info.end() && kernel->is_string()) {
    s.kernel = kernel->get<std::string>();
  }
  s.mem_mib = config.mem_bytes / x86::kMiB;
  s.vcpus = config.vcpus;
  s.cmdline = config.cmdline;
  s.cid = config.vsock_cid.value_or(0);
  s.shares.clear();
  for (const auto& d : config.shared_dirs) s.shares.push_back({d.host_path, d.tag, d.read_only, d.squash_root});
  if (auto seccomp = config.info.find("seccomp"); seccomp != config.info.end() && *seccomp == true) s.seccomp = true;
  return s;
}

Result<VmSpec> ApplyOverrides(const VmSpec& recorded, const ForkOverrides& o, SnapshotUse use) {
  VmSpec s = recorded;
  s.name = o.name;
  if (!s.name.empty() && !IsValidVmId(s.name)) {
    return Fail("--name '{}': use up to 32 characters a-z, 0-9 and '-', not starting with '-'", s.name);
  }
  if (o.cid) {
    s.cid = *o.cid;
  } else if (use == SnapshotUse::kFork) {
    s.cid = 0;  // the first free CID, never the template's
  }
  s.net = o.net;
  s.taps = o.taps;
  s.seccomp = recorded.seccomp || o.seccomp;
  std::set<std::string> given;
  for (const auto& share : o.shares) {
    auto it = std::find_if(s.shares.begin(), s.shares.end(), [&](const ShareSpec& d) { return d.tag == share.tag; });
    if (it == s.shares.end()) {
      std::string known;
      for (const auto& d : recorded.shares) known += (known.empty() ? "" : ", ") + d.tag;
      return Fail(
          "--shared-dir '{}': the snapshot has no shared directory tagged '{}' ({}); a restored guest's "
          "devices are fixed, so only a recorded tag can be given a new directory",
          FormatShareSpec(share), share.tag, known.empty() ? "it has none" : "it has: " + known);
    }
    if (!given.insert(share.tag).second) return Fail("--shared-dir: the tag '{}' is given twice", share.tag);
    *it = share;
  }
  if (use == SnapshotUse::kFork) {
    for (const auto& share : recorded.shares) {
      if (share.read_only || given.count(share.tag) != 0) continue;
      return Fail(
          "--shared-dir: the template serves {} writable as '{}'; a fork never shares a writable directory with "
          "its template: give it its own (--shared-dir DIR:{}) or serve it read-only (--shared-dir {}:{}:ro)",
          share.host_path, share.tag, share.tag, share.host_path, share.tag);
    }
  }
  CLONE_TRY_VOID(ValidateSpec(s, Spelling::kFlags));
  return s;
}

json OverridesToJson(const ForkOverrides& o) {
  json taps = json::array(), shares = json::array();
  for (const auto& t : o.taps) taps.push_back(TapToJson(t));
  for (const auto& sh : o.shares) shares.push_back(ShareToJson(sh));
  json j = {{"version", kSpecVersion},
            {"name", o.name},
            {"net", o.net},
            {"taps", std::move(taps)},
            {"shares", std::move(shares)},
            {"disk_rewrites", o.disk_rewrites},
            {"seccomp", o.seccomp}};
  if (o.cid) j["cid"] = *o.cid;
  return j;
}

Result<ForkOverrides> OverridesFromJson(const json& j) {
  Reader r(j, "");
  CLONE_TRY_VOID(r.Expect({"version", "name", "cid", "net", "taps", "shares", "disk_rewrites", "seccomp"}));
  uint32_t version = kSpecVersion;
  CLONE_TRY_VOID(r.GetUnsigned("version", &version));
  if (version == 0 || version > kSpecVersion) {
    return Fail("version {}: this Clone reads fork overrides up to version {}", version, kSpecVersion);
  }
  ForkOverrides o;
  CLONE_TRY_VOID(r.Get("name", &o.name));
  if (!o.name.empty() && !IsValidVmId(o.name)) {
    return Fail("name '{}': use up to 32 characters a-z, 0-9 and '-', not starting with '-'", o.name);
  }
  if (j.contains("cid")) {
    uint64_t cid = 0;
    CLONE_TRY_VOID(r.GetUnsigned("cid", &cid));
    if (cid != 0 && (cid < virtio::Vsock::kFirstGuestCid || cid > virtio::Vsock::kMaxGuestCid)) {
      return Fail("cid {}: use {}..{}", cid, virtio::Vsock::kFirstGuestCid, virtio::Vsock::kMaxGuestCid);
    }
    o.cid = cid;
  }
  CLONE_TRY_VOID(r.Get("net", &o.net));
  CLONE_TRY_VOID(r.Each("taps", &ReadTap, &o.taps));
  CLONE_TRY_VOID(r.Each("shares", &ReadShare, &o.shares));
  CLONE_TRY_VOID(r.Each("disk_rewrites", &ReadRewrite, &o.disk_rewrites));
  CLONE_TRY_VOID(r.Get("seccomp", &o.seccomp));
  return o;
}

}  // namespace clonevm::spec

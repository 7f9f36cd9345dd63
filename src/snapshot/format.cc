#include "snapshot/format.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstdio>  // renameat2
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "arch/x86/layout.h"
#include "devices/virtio/json_state.h"
#include "devices/virtio/virtio_spec.h"

namespace clonevm::snapshot {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using virtio::JsonBool;
using virtio::JsonString;
using virtio::JsonUint;

constexpr uint64_t kMaxStateBytes = 256ull << 20;  // far above any real state; bounds a crafted header
constexpr uint64_t kMaxConfigBytes = 1 << 20;

void PutLe(uint8_t* p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t GetLe(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

Result<void> WriteFileSynced(const std::string& path, std::span<const uint8_t> bytes) {
  Fd fd = CLONE_TRY(OpenFile(path, O_WRONLY | O_CREAT | O_EXCL, 0600));
  CLONE_TRY_VOID(WriteAll(fd.get(), bytes.data(), bytes.size()));
  if (::fsync(fd.get()) != 0) return FailErrno("fsync", path);
  return {};
}

Result<void> FsyncDir(const std::string& path) {
  Fd fd = CLONE_TRY(OpenFile(path, O_RDONLY | O_DIRECTORY));
  if (::fsync(fd.get()) != 0) return FailErrno("fsync", path);
  return {};
}

bool AllZero(const uint8_t* p, size_t n) {
  static const uint8_t kZero[kPageSize] = {};
  return std::memcmp(p, kZero, n) == 0;
}

// Writes the regions back to back; runs of all-zero pages are left as holes, and so are pages not
// in `only_pages` when it is given (memory-file pages). Returns bytes written.
Result<uint64_t> WriteMemory(const std::string& path, const GuestMemory& memory, const PageBitmap* only_pages) {
  Fd fd = CLONE_TRY(OpenFile(path, O_WRONLY | O_CREAT | O_EXCL, 0600));
  if (::ftruncate(fd.get(), static_cast<off_t>(memory.ram_bytes())) != 0) return FailErrno("ftruncate", path);
  uint64_t written = 0;
  for (size_t r = 0; r < memory.regions().size(); ++r) {
    const MemoryRegion& region = memory.regions()[r];
    uint64_t base = memory.FileOffset(r);
    auto wanted = [&](uint64_t offset) {
      return (only_pages == nullptr || only_pages->Test((base + offset) / kPageSize)) &&
             !AllZero(region.host() + offset, kPageSize);
    };
    uint64_t page = 0;
    while (page < region.size) {
      if (!wanted(page)) {
        page += kPageSize;
        continue;
      }
      uint64_t end = page + kPageSize;
      while (end < region.size && end - page < (8ull << 20) && wanted(end)) end += kPageSize;
      const uint8_t* data = region.host() + page;
      uint64_t offset = base + page, left = end - page;
      while (left > 0) {
        ssize_t n = ::pwrite(fd.get(), data, left, static_cast<off_t>(offset));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return FailErrno("pwrite", path);
        data += n;
        offset += static_cast<uint64_t>(n);
        left -= static_cast<uint64_t>(n);
      }
      written += end - page;
      page = end;
    }
  }
  if (::fsync(fd.get()) != 0) return FailErrno("fsync", path);
  return written;
}

Result<std::vector<uint8_t>> ReadWhole(const std::string& path, uint64_t limit) {
  Fd fd = CLONE_TRY(OpenFile(path, O_RDONLY));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return FailErrno("fstat", path);
  if (static_cast<uint64_t>(st.st_size) > limit) return Fail("{} is {} bytes, too large", path, st.st_size);
  std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::read(fd.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FailErrno("read", path);
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  bytes.resize(done);
  return bytes;
}

Result<Loaded> ReadChecked(const std::string& path) {
  std::vector<uint8_t> config_bytes = CLONE_TRY(ReadWhole(path + "/config", kMaxConfigBytes));
  std::vector<uint8_t> state_bytes = CLONE_TRY(ReadWhole(path + "/state", kMaxStateBytes + kHeaderSize));
  StateBody body = CLONE_TRY(DecodeStateFile(state_bytes));
  if (Crc32(config_bytes) != body.config_crc32) return Fail("the config file is corrupt (CRC mismatch)");
  json config_json = json::parse(config_bytes.begin(), config_bytes.end(), nullptr, false);
  if (config_json.is_discarded()) return Fail("the config file is not JSON");
  Loaded loaded;
  loaded.path = path;
  loaded.config = CLONE_TRY(ConfigFromJson(config_json));
  if (loaded.config.mem_bytes != body.memory_bytes) return Fail("config and state disagree on the memory size");
  loaded.state = CLONE_TRY(VmStateFromJson(body.components));
  if (loaded.state.vcpus.size() != loaded.config.vcpus ||
      loaded.state.virtio.size() != loaded.config.virtio_types.size()) {
    return Fail("config and state disagree on the vCPUs or devices");
  }
  for (size_t i = 0; i < loaded.state.virtio.size(); ++i) {
    if (loaded.state.virtio[i].device_type != loaded.config.virtio_types[i])
      return Fail("config and state disagree on device {}", i);
  }
  if (body.memory_pages.has_value() != loaded.config.parent.has_value()) {
    return Fail("config and state disagree on whether the snapshot is incremental");
  }
  if (body.memory_pages && body.memory_pages->pages() != body.memory_bytes / kPageSize) {
    return Fail("the memory page bitmap does not match the memory size");
  }
  loaded.memory.base = CLONE_TRY(OpenFile(path + "/memory", O_RDONLY));
  struct stat st {};
  if (::fstat(loaded.memory.base.get(), &st) != 0) return FailErrno("fstat", path + "/memory");
  if (static_cast<uint64_t>(st.st_size) != body.memory_bytes) {
    return Fail("the memory file has {} bytes, {} expected (truncated?)", st.st_size, body.memory_bytes);
  }
  if (body.memory_pages)
    loaded.memory.layers.push_back({Fd(), std::move(*body.memory_pages)});  // file: see ResolveChain
  return loaded;
}

// One snapshot, checked on its own (an incremental one's memory.layers[0] holds its page bitmap).
Result<Loaded> ReadOne(const std::string& dir, const std::string& name) {
  CLONE_TRY_VOID(ValidateName(name));
  std::string path = dir + "/" + name;
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return Fail("no snapshot '{}' in {}", name, dir);
  auto loaded = ReadChecked(path);
  if (!loaded) return Fail(loaded.error().Wrap(fmt::format("snapshot '{}' ({})", name, path)));
  loaded->chain.push_back(name);
  return loaded;
}

// Follows `loaded`'s parents down to a full snapshot and builds its MemoryImage (oldest layer first).
Result<void> ResolveChain(const std::string& dir, Loaded& loaded) {
  if (!loaded.config.parent) return {};
  std::vector<MemoryLayer> layers;  // newest first while walking
  layers.push_back({std::move(loaded.memory.base), std::move(loaded.memory.layers[0].pages)});
  loaded.memory.layers.clear();
  std::string child = loaded.chain.back();
  SnapshotParent want = *loaded.config.parent;
  for (;;) {
    if (std::find(loaded.chain.begin(), loaded.chain.end(), want.name) != loaded.chain.end()) {
      return Fail("snapshot '{}': its chain of parents loops back to '{}'", loaded.chain.front(), want.name);
    }
    if (loaded.chain.size() > kMaxChainLength) {
      return Fail("snapshot '{}': more than {} incremental snapshots over one full snapshot", loaded.chain.front(),
                  kMaxChainLength);
    }
    auto parent = ReadOne(dir, want.name);
    if (!parent) {
      return Fail(parent.error().Wrap(
          fmt::format("snapshot '{}' is incremental and its parent '{}' cannot be used", child, want.name)));
    }
    if (parent->config.id != want.id) {
      return Fail(
          "snapshot '{}' is incremental and its parent '{}' has changed since (id {}, expected {}): it was "
          "removed and re-taken or replaced, so '{}' cannot be restored",
          child, want.name, parent->config.id.empty() ? "none" : parent->config.id, want.id, loaded.chain.front());
    }
    if (parent->config.mem_bytes != loaded.config.mem_bytes) {
      return Fail("snapshot '{}': parent '{}' has a different memory size", child, want.name);
    }
    loaded.chain.push_back(want.name);
    if (!parent->config.parent) {
      loaded.memory.base = std::move(parent->memory.base);
      break;
    }
    layers.push_back({std::move(parent->memory.base), std::move(parent->memory.layers[0].pages)});
    child = want.name;
    want = *parent->config.parent;
  }
  std::reverse(layers.begin(), layers.end());
  loaded.memory.layers = std::move(layers);
  return {};
}

// Links (or, across filesystems, copies) every file of `from` but memory/state/config into `to`.
Result<void> CarryExtraFiles(const std::string& from, const std::string& to) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(from, ec)) {
    std::string name = entry.path().filename().string();
    if (name == "memory" || name == "state" || name == "config") continue;
    std::string target = to + "/" + name;
    if (::link(entry.path().c_str(), target.c_str()) == 0) continue;
    fs::copy(entry.path(), target, fs::copy_options::recursive, ec);
    if (ec) return Fail("copying {}: {}", entry.path().string(), ec.message());
  }
  if (ec) return Fail("listing {}: {}", from, ec.message());
  return {};
}

// --- Disks (SnapshotDisk) ---

json StampToJson(const FileStamp& s) { return {{"size", s.size}, {"mtime_ns", s.mtime_ns}, {"inode", s.inode}}; }

Result<FileStamp> StampFromJson(const json& j) {
  FileStamp s;
  s.size = CLONE_TRY(JsonUint<uint64_t>(j, "size"));
  auto mtime = j.find("mtime_ns");
  if (mtime == j.end() || !mtime->is_number_integer()) return Fail("missing or non-integer \"mtime_ns\"");
  s.mtime_ns = mtime->get<int64_t>();
  s.inode = CLONE_TRY(JsonUint<uint64_t>(j, "inode"));
  return s;
}

json DiskToJson(const SnapshotDisk& d) {
  json backing = json::array();
  for (const auto& b : d.backing) backing.push_back({{"path", b.path}, {"stamp", StampToJson(b.stamp)}});
  return {{"path", d.path},     {"read_only", d.read_only},      {"format", FormatName(d.format)},
          {"serial", d.serial}, {"stamp", StampToJson(d.stamp)}, {"backing", std::move(backing)}};
}

// The config may come from a shared templates directory: a frozen disk's name must stay inside
// the snapshot directory, and other paths must be absolute (they are not relative to anything).
Result<SnapshotDisk> DiskFromJson(const json& j) {
  if (!j.is_object()) return Fail("bad \"disks\" entry");
  SnapshotDisk d;
  d.path = CLONE_TRY(JsonString(j, "path"));
  d.read_only = CLONE_TRY(JsonBool(j, "read_only"));
  std::string format = CLONE_TRY(JsonString(j, "format"));
  d.format = CLONE_TRY(ParseFormatName(format));
  d.serial = CLONE_TRY(JsonString(j, "serial"));
  auto stamp = j.find("stamp");
  if (stamp == j.end() || !stamp->is_object()) return Fail("disk {}: missing \"stamp\"", d.path);
  d.stamp = CLONE_TRY(StampFromJson(*stamp));
  if (d.read_only && !d.path.starts_with("/"))
    return Fail("disk \"{}\": a read-only disk's path must be absolute", d.path);
  if (!d.read_only && (d.path.empty() || d.path == "." || d.path == ".." || d.path.find('/') != std::string::npos)) {
    return Fail("disk \"{}\": a frozen disk must be a file name in the snapshot directory", d.path);
  }
  if (auto backing = j.find("backing"); backing != j.end()) {
    if (!backing->is_array()) return Fail("disk {}: \"backing\" is not an array", d.path);
    for (const auto& b : *backing) {
      if (!b.is_object() || !b.contains("stamp") || !b["stamp"].is_object())
        return Fail("disk {}: bad backing entry", d.path);
      BackingFile file{CLONE_TRY(JsonString(b, "path")), CLONE_TRY(StampFromJson(b["stamp"]))};
      if (!file.path.starts_with("/")) return Fail("disk {}: backing file \"{}\" is not absolute", d.path, file.path);
      d.backing.push_back(std::move(file));
    }
  }
  if (!d.backing.empty() && (d.read_only || d.format != Format::kQcow2)) {
    return Fail("disk {}: only a frozen qcow2 disk has a backing chain", d.path);
  }
  return d;
}

uint64_t DirDiskBytes(const std::string& path) {
  uint64_t total = 0;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(path, ec)) {
    struct stat st {};
    if (::stat(entry.path().c_str(), &st) == 0) total += static_cast<uint64_t>(st.st_blocks) * 512;
  }
  return total;
}

}  // namespace

uint32_t Crc32(std::span<const uint8_t> bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  size_t done = 0;
  while (done < bytes.size()) {  // zlib takes uInt lengths
    uInt chunk = static_cast<uInt>(std::min<size_t>(bytes.size() - done, 1u << 30));
    crc = crc32(crc, bytes.data() + done, chunk);
    done += chunk;
  }
  return static_cast<uint32_t>(crc);
}

nlohmann::json ConfigToJson(const SnapshotConfig& c) {
  json disks = json::array();
  for (const auto& d : c.disks) disks.push_back(DiskToJson(d));
  json j = {{"version", 1},
            {"mem_bytes", c.mem_bytes},
            {"vcpus", c.vcpus},
            {"virtio", c.virtio_types},
            {"rng", c.rng},
            {"disks", std::move(disks)},
            {"cmdline", c.cmdline},
            {"source_vm", c.source_vm},
            {"created_unix", c.created_unix},
            {"info", c.info}};
  if (c.vsock_cid) j["vsock_cid"] = *c.vsock_cid;
  if (c.balloon) {
    j["balloon"] = {{"free_page_reporting", c.balloon->free_page_reporting},
                    {"deflate_on_oom", c.balloon->deflate_on_oom},
                    {"stats_interval_s", c.balloon->stats_interval_s}};
  }
  if (!c.shared_dirs.empty()) {
    json dirs = json::array();
    for (const auto& d : c.shared_dirs) {
      json dir = {{"tag", d.tag}, {"host_path", d.host_path}, {"read_only", d.read_only}};
      if (d.squash_root) dir["squash_root"] = true;
      dirs.push_back(std::move(dir));
    }
    j["shared_dirs"] = std::move(dirs);
  }
  if (!c.id.empty()) j["id"] = c.id;
  if (c.parent) j["parent"] = {{"name", c.parent->name}, {"id", c.parent->id}};
  return j;
}

Result<SnapshotConfig> ConfigFromJson(const nlohmann::json& j) {
  auto parsed = [&]() -> Result<SnapshotConfig> {
    CLONE_TRY(virtio::StateVersion(j, 1, "config"));
    SnapshotConfig c;
    c.mem_bytes = CLONE_TRY(JsonUint<uint64_t>(j, "mem_bytes"));
    c.vcpus = CLONE_TRY(JsonUint<uint32_t>(j, "vcpus"));
    if (c.mem_bytes == 0 || c.mem_bytes % kPageSize != 0 || c.vcpus == 0) return Fail("bad memory size or vCPU count");
    c.virtio_types = CLONE_TRY(JsonReader(j).UintList<uint32_t>("virtio", 64, /*required=*/true));
    c.rng = CLONE_TRY(JsonBool(j, "rng"));
    if (j.contains("vsock_cid")) c.vsock_cid = CLONE_TRY(JsonUint<uint64_t>(j, "vsock_cid"));
    if (auto balloon = JsonReader(j).Child("balloon")) {
      CLONE_TRY_VOID(balloon->Expect({"free_page_reporting", "deflate_on_oom", "stats_interval_s"}));
      c.balloon =
          SnapshotBalloon{CLONE_TRY(balloon->Bool("free_page_reporting")), CLONE_TRY(balloon->Bool("deflate_on_oom")),
                          CLONE_TRY(balloon->Uint<uint32_t>("stats_interval_s", 0, 3600))};
    }
    if ((std::count(c.virtio_types.begin(), c.virtio_types.end(), virtio::kDeviceTypeBalloon) != 0) !=
        c.balloon.has_value()) {
      return Fail("\"balloon\" does not match the virtio devices");
    }
    auto disks = j.find("disks");
    if (disks == j.end() || !disks->is_array()) return Fail("missing \"disks\"");
    for (const auto& d : *disks) c.disks.push_back(CLONE_TRY(DiskFromJson(d)));
    if (auto dirs = j.find("shared_dirs"); dirs != j.end()) {
      if (!dirs->is_array()) return Fail("\"shared_dirs\" is not an array");
      for (const auto& d : *dirs) {
        SnapshotSharedDir dir{CLONE_TRY(JsonString(d, "tag")), CLONE_TRY(JsonString(d, "host_path")),
                              CLONE_TRY(JsonBool(d, "read_only"))};
        if (d.is_object() && d.contains("squash_root")) dir.squash_root = CLONE_TRY(JsonBool(d, "squash_root"));
        c.shared_dirs.push_back(std::move(dir));
      }
    }
    if (static_cast<size_t>(std::count(c.virtio_types.begin(), c.virtio_types.end(), virtio::kDeviceTypeFs)) !=
        c.shared_dirs.size()) {
      return Fail("{} shared directories for {} virtio-fs devices", c.shared_dirs.size(),
                  std::count(c.virtio_types.begin(), c.virtio_types.end(), virtio::kDeviceTypeFs));
    }
    if (j.contains("id")) c.id = CLONE_TRY(JsonString(j, "id"));
    if (auto parent = j.find("parent"); parent != j.end()) {
      if (!parent->is_object()) return Fail("\"parent\" is not an object");
      SnapshotParent p{CLONE_TRY(JsonString(*parent, "name")), CLONE_TRY(JsonString(*parent, "id"))};
      CLONE_TRY_VOID(ValidateName(p.name));
      if (p.id.empty()) return Fail("\"parent\" has an empty id");
      c.parent = std::move(p);
    }
    c.cmdline = j.value("cmdline", "");
    c.source_vm = j.value("source_vm", "");
    c.created_unix = j.value("created_unix", int64_t{0});
    if (auto info = j.find("info"); info != j.end() && info->is_object()) c.info = *info;
    return c;
  };
  try {
    auto c = parsed();
    if (!c) return Fail(c.error().Wrap("config"));
    return c;
  } catch (const json::exception& e) {
    return Fail("config: {}", e.what());
  }
}

std::string DefaultTemplatesDir() {
  if (const char* dir = std::getenv("CLONE_TEMPLATES_DIR"); dir != nullptr && *dir != '\0') return dir;
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr && *home != '\0' ? home : "/tmp") + "/.clone/templates";
}

Result<void> ValidateName(const std::string& name) {
  auto ok_char = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-'; };
  if (name.empty() || name.size() > 64 || !std::isalnum(static_cast<unsigned char>(name[0])) ||
      !std::all_of(name.begin(), name.end(), ok_char)) {
    return Fail("snapshot name '{}': use up to 64 characters A-Z a-z 0-9 . _ -, starting with a letter or digit", name);
  }
  return {};
}

std::vector<uint8_t> EncodeStateFile(const nlohmann::json& components, uint64_t memory_bytes, uint32_t config_crc32,
                                     const PageBitmap* memory_pages) {
  json body = {{"memory_bytes", memory_bytes}, {"config_crc32", config_crc32}, {"components", components}};
  if (memory_pages != nullptr) body["memory_pages"] = json::binary(memory_pages->ToBytes());
  std::vector<uint8_t> cbor = json::to_cbor(body);
  std::vector<uint8_t> out(kHeaderSize, 0);
  std::memcpy(out.data(), kMagic, sizeof(kMagic));
  PutLe(&out[8], memory_pages != nullptr ? kIncrementalFormatVersion : kFormatVersion, 4);
  PutLe(&out[12], kHeaderSize, 4);
  PutLe(&out[16], cbor.size(), 8);
  PutLe(&out[24], Crc32(cbor), 4);
  PutLe(&out[28], Crc32(std::span(out.data(), 28)), 4);
  out.insert(out.end(), cbor.begin(), cbor.end());
  return out;
}

Result<StateBody> DecodeStateFile(std::span<const uint8_t> bytes) {
  if (bytes.size() < kHeaderSize) return Fail("the state file is truncated ({} bytes)", bytes.size());
  if (std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0)
    return Fail("the state file is not a Clone snapshot (bad magic)");
  if (Crc32(bytes.subspan(0, 28)) != GetLe(&bytes[28], 4))
    return Fail("the state file header is corrupt (CRC mismatch)");
  uint64_t version = GetLe(&bytes[8], 4);
  if (version != kFormatVersion && version != kIncrementalFormatVersion) {
    return Fail("snapshot format version {} is not supported (this clone reads versions {} and {})", version,
                kFormatVersion, kIncrementalFormatVersion);
  }
  uint64_t header = GetLe(&bytes[12], 4);
  uint64_t length = GetLe(&bytes[16], 8);
  if (header != kHeaderSize) return Fail("the state file header size {} is not {}", header, kHeaderSize);
  if (length > bytes.size() - kHeaderSize) {
    return Fail("the state file is truncated ({} of {} body bytes)", bytes.size() - kHeaderSize, length);
  }
  if (length < bytes.size() - kHeaderSize)
    return Fail("the state file has {} trailing bytes", bytes.size() - kHeaderSize - length);
  std::span<const uint8_t> cbor = bytes.subspan(kHeaderSize);
  if (Crc32(cbor) != GetLe(&bytes[24], 4)) return Fail("the state file is corrupt (CRC mismatch)");
  json body = json::from_cbor(cbor.begin(), cbor.end(), true, false);
  if (body.is_discarded() || !body.is_object()) return Fail("the state body is not valid CBOR");
  StateBody out;
  out.memory_bytes = CLONE_TRY(JsonUint<uint64_t>(body, "memory_bytes"));
  out.config_crc32 = CLONE_TRY(JsonUint<uint32_t>(body, "config_crc32"));
  auto components = body.find("components");
  if (components == body.end() || !components->is_object()) return Fail("the state body has no components");
  out.components = std::move(*components);
  auto pages = body.find("memory_pages");
  if ((pages != body.end()) != (version == kIncrementalFormatVersion)) {
    return Fail("the state body {} a memory page bitmap but has format version {}",
                pages != body.end() ? "has" : "lacks", version);
  }
  if (pages != body.end()) {
    if (!pages->is_binary()) return Fail("the memory page bitmap is not a byte string");
    if (out.memory_bytes % kPageSize != 0)
      return Fail("memory size {} is not a whole number of pages", out.memory_bytes);
    const auto& words = pages->get_binary();
    out.memory_pages =
        CLONE_TRY(PageBitmap::FromBytes(std::span(words.data(), words.size()), out.memory_bytes / kPageSize));
  }
  return out;
}

namespace {

// The snapshot's files in `tmp` (memory, extra files, config, state), each fsynced, then `tmp`.
Result<uint64_t> WriteInto(const std::string& tmp, const GuestMemory& memory, const VmState& state,
                           const SnapshotConfig& config, const AddFiles& add_files, const PageBitmap* only_pages) {
  if ((only_pages != nullptr) != config.parent.has_value()) {
    return Fail("an incremental snapshot needs both a parent and its page set");
  }
  uint64_t data_bytes = CLONE_TRY(WriteMemory(tmp + "/memory", memory, only_pages));
  if (add_files) CLONE_TRY_VOID(add_files(tmp));
  std::string config_text = ConfigToJson(config).dump(2) + "\n";
  std::span<const uint8_t> config_bytes(reinterpret_cast<const uint8_t*>(config_text.data()), config_text.size());
  CLONE_TRY_VOID(WriteFileSynced(tmp + "/config", config_bytes));
  CLONE_TRY_VOID(WriteFileSynced(
      tmp + "/state", EncodeStateFile(VmStateToJson(state), memory.ram_bytes(), Crc32(config_bytes), only_pages)));
  CLONE_TRY_VOID(FsyncDir(tmp));
  return data_bytes;
}

}  // namespace

Result<WriteResult> Write(const std::string& dir, const std::string& name, const GuestMemory& memory,
                          const VmState& state, const SnapshotConfig& config, const AddFiles& add_files,
                          const PageBitmap* only_pages) {
  CLONE_TRY_VOID(ValidateName(name));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Fail("cannot create {}: {}", dir, ec.message());
  std::string final_path = dir + "/" + name;
  if (fs::exists(final_path, ec))
    return Fail("snapshot '{}' already exists in {} (remove it with: clone snapshot rm {})", name, dir, name);
  std::string tmp = fmt::format("{}/.{}.tmp-{}", dir, name, ::getpid());
  fs::remove_all(tmp, ec);
  if (!fs::create_directory(tmp, ec) || ec) return Fail("cannot create {}: {}", tmp, ec ? ec.message() : "exists");
  auto written = [&]() -> Result<WriteResult> {
    WriteResult result;
    result.path = final_path;
    result.memory_bytes = memory.ram_bytes();
    result.data_bytes = CLONE_TRY(WriteInto(tmp, memory, state, config, add_files, only_pages));
    if (::rename(tmp.c_str(), final_path.c_str()) != 0) return FailErrno("rename", final_path);
    CLONE_TRY_VOID(FsyncDir(dir));
    return result;
  }();
  if (!written) {
    fs::remove_all(tmp, ec);
    return Fail(written.error().Wrap(fmt::format("writing snapshot '{}'", name)));
  }
  return written;
}

Result<Loaded> Read(const std::string& dir, const std::string& name) {
  Loaded loaded = CLONE_TRY(ReadOne(dir, name));
  CLONE_TRY_VOID(ResolveChain(dir, loaded));
  return loaded;
}

Result<WriteResult> Merge(const std::string& dir, const std::string& name) {
  Loaded loaded = CLONE_TRY(Read(dir, name));
  if (!loaded.config.parent) return Fail("snapshot '{}' is a full snapshot already: nothing to merge", name);
  GuestMemory memory = CLONE_TRY(
      GuestMemory::CreateFromImage(loaded.memory, loaded.config.mem_bytes, x86::kMmioHoleStart, x86::kHighRamStart));
  SnapshotConfig config = loaded.config;
  config.info["merged_from"] = loaded.chain;  // for people: what it was made of
  config.parent.reset();
  std::string final_path = dir + "/" + name;
  std::string tmp = fmt::format("{}/.{}.merge-{}", dir, name, ::getpid());
  std::error_code ec;
  fs::remove_all(tmp, ec);
  if (!fs::create_directory(tmp, ec) || ec) return Fail("cannot create {}: {}", tmp, ec ? ec.message() : "exists");
  auto merged = [&]() -> Result<WriteResult> {
    WriteResult result;
    result.path = final_path;
    result.memory_bytes = memory.ram_bytes();
    AddFiles carry = [&](const std::string& to) { return CarryExtraFiles(final_path, to); };
    result.data_bytes = CLONE_TRY(WriteInto(tmp, memory, loaded.state, config, carry, nullptr));
    // Atomic: readers see the old or the new directory under the name, never neither.
    if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_path.c_str(), RENAME_EXCHANGE) != 0) {
      return FailErrno("renameat2(RENAME_EXCHANGE)", final_path);
    }
    CLONE_TRY_VOID(FsyncDir(dir));
    return result;
  }();
  fs::remove_all(tmp, ec);  // the old incremental snapshot, or the failed attempt
  if (!merged) return Fail(merged.error().Wrap(fmt::format("merging snapshot '{}'", name)));
  return merged;
}

std::vector<ListEntry> List(const std::string& dir) {
  std::vector<ListEntry> entries;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string name = entry.path().filename().string();
    if (!entry.is_directory(ec) || name.starts_with(".") || !ValidateName(name)) continue;
    ListEntry e{name, entry.path().string(), std::nullopt, DirDiskBytes(entry.path().string())};
    if (auto bytes = ReadWhole(e.path + "/config", kMaxConfigBytes)) {
      json j = json::parse(bytes->begin(), bytes->end(), nullptr, false);
      if (auto config = ConfigFromJson(j)) e.config = std::move(*config);
    }
    entries.push_back(std::move(e));
  }
  std::sort(entries.begin(), entries.end(), [](const ListEntry& a, const ListEntry& b) { return a.name < b.name; });
  return entries;
}

Result<void> Remove(const std::string& dir, const std::string& name) {
  CLONE_TRY_VOID(ValidateName(name));
  std::string path = dir + "/" + name;
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return Fail("no snapshot '{}' in {}", name, dir);
  std::vector<ListEntry> entries = List(dir);
  std::string id;
  for (const auto& entry : entries) {
    if (entry.name == name && entry.config) id = entry.config->id;
  }
  for (const auto& entry : entries) {
    // A child whose recorded id differs is broken already (its parent was re-taken): not a dependent.
    if (entry.config && entry.config->parent && entry.config->parent->name == name && entry.config->parent->id == id) {
      return Fail(
          "snapshot '{}' is the parent of incremental snapshot '{}': merge that one first (clone snapshot merge "
          "{}) or remove it",
          name, entry.name, entry.name);
    }
  }
  // Renamed away first so a concurrent reader never sees a half-removed snapshot under the name.
  std::string doomed = fmt::format("{}/.{}.rm-{}", dir, name, ::getpid());
  if (::rename(path.c_str(), doomed.c_str()) != 0) return FailErrno("rename", path);
  fs::remove_all(doomed, ec);
  if (ec) return Fail("removing {}: {}", doomed, ec.message());
  return {};
}

}  // namespace clonevm::snapshot

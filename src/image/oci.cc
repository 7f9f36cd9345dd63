#include "image/oci.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string_view>

#include "base/fd.h"
#include "base/sha256.h"

namespace clonevm {
namespace {

using nlohmann::json;

constexpr uint64_t kMaxJsonBytes = 4 << 20;  // an index or manifest is a few KiB
constexpr std::string_view kOciIndex = "application/vnd.oci.image.index.v1+json";
constexpr std::string_view kDockerList = "application/vnd.docker.distribution.manifest.list.v2+json";
constexpr std::string_view kOciManifest = "application/vnd.oci.image.manifest.v1+json";
constexpr std::string_view kDockerManifest = "application/vnd.docker.distribution.manifest.v2+json";

bool IsLayerType(std::string_view t) {
  for (std::string_view ok :
       {"application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd", "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.docker.image.rootfs.diff.tar.zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"}) {
    if (t == ok) return true;
  }
  return false;
}

struct Descriptor {
  std::string media_type;
  std::string digest;
  uint64_t size = 0;
  std::string os, arch;
};

Result<Descriptor> ParseDescriptor(const json& j, std::string_view where) {
  if (!j.is_object()) return Fail("{}: a descriptor is not an object", where);
  Descriptor d;
  auto media = j.find("mediaType");
  if (media != j.end() && media->is_string()) d.media_type = media->get<std::string>();
  auto digest = j.find("digest");
  if (digest == j.end() || !digest->is_string()) return Fail("{}: a descriptor has no digest", where);
  d.digest = digest->get<std::string>();
  auto size = j.find("size");
  if (size == j.end() || !size->is_number_unsigned())
    return Fail("{}: descriptor {} has no valid size", where, d.digest);
  d.size = size->get<uint64_t>();
  auto platform = j.find("platform");
  if (platform != j.end() && platform->is_object()) {
    d.os = platform->value("os", "");
    d.arch = platform->value("architecture", "");
  }
  return d;
}

// DIR/blobs/sha256/<hex> for a well-formed digest.
Result<std::string> BlobPath(const std::string& layout, const std::string& digest) {
  constexpr std::string_view kPrefix = "sha256:";
  if (!digest.starts_with(kPrefix)) return Fail("unsupported digest '{}' (only sha256 is supported)", digest);
  std::string hex = digest.substr(kPrefix.size());
  if (!IsSha256Hex(hex) || hex.find_first_of("ABCDEF") != std::string::npos)
    return Fail("malformed digest '{}'", digest);
  return layout + "/blobs/sha256/" + hex;
}

Result<std::string> Sha256OfFile(const std::string& path, uint64_t expected_size) {
  auto fd = CLONE_TRY(OpenFile(path, O_RDONLY));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return FailErrno("stat", path);
  if (!S_ISREG(st.st_mode)) return Fail("{} is not a regular file", path);
  if (static_cast<uint64_t>(st.st_size) != expected_size)
    return Fail("{} has {} bytes, its descriptor says {}", path, st.st_size, expected_size);
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) return Fail("sha256: cannot initialise");
  std::vector<char> buf(1 << 20);
  for (;;) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FailErrno("read", path);
    if (n == 0) break;
    if (EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(n)) != 1) return Fail("sha256: update failed");
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx.get(), digest, &len) != 1) return Fail("sha256: final failed");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out += kHex[digest[i] >> 4];
    out += kHex[digest[i] & 0xf];
  }
  return out;
}

Result<json> ReadJsonFile(const std::string& path, std::string_view what) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Fail("{} is missing ({})", what, path);
    return FailErrno("stat", path);
  }
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) > kMaxJsonBytes)
    return Fail("{} ({}) is not a regular file of at most 4 MiB", what, path);
  std::string text = CLONE_TRY(ReadFile(path));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Fail("{} ({}) is not a JSON object", what, path);
  return j;
}

Result<json> ReadJsonBlob(const std::string& layout, const Descriptor& d, std::string_view what) {
  if (d.size > kMaxJsonBytes) return Fail("{} {} is too large ({} bytes)", what, d.digest, d.size);
  std::string path = CLONE_TRY(BlobPath(layout, d.digest));
  CLONE_TRY_VOID(VerifyOciBlob(path, d.digest, d.size));
  return ReadJsonFile(path, what);
}

Result<std::vector<Descriptor>> Manifests(const json& index, std::string_view where) {
  auto list = index.find("manifests");
  if (list == index.end() || !list->is_array()) return Fail("{} has no manifests list", where);
  std::vector<Descriptor> out;
  for (const auto& m : *list) out.push_back(CLONE_TRY(ParseDescriptor(m, where)));
  return out;
}

// The image manifest among an index's entries: the only one, or linux/amd64.
Result<Descriptor> PickManifest(const std::string& layout, const json& index, std::string_view where, int depth) {
  std::vector<Descriptor> entries = CLONE_TRY(Manifests(index, where));
  std::vector<Descriptor> images;
  for (auto& d : entries) {
    if (d.media_type == kOciIndex || d.media_type == kDockerList) {
      if (depth > 0) continue;  // one level of nesting
      json nested = CLONE_TRY(ReadJsonBlob(layout, d, "nested image index"));
      images.push_back(CLONE_TRY(PickManifest(layout, nested, "nested image index " + d.digest, depth + 1)));
    } else if (d.media_type == kOciManifest || d.media_type == kDockerManifest || d.media_type.empty()) {
      // Attestation manifests (buildx) carry platform unknown/unknown.
      if (d.os == "unknown" && d.arch == "unknown") continue;
      images.push_back(std::move(d));
    }
  }
  if (images.empty()) return Fail("{} lists no image manifest", where);
  if (images.size() == 1) return images.front();
  for (auto& d : images)
    if (d.os == "linux" && d.arch == "amd64") return d;
  return Fail("{} lists {} image manifests and none for linux/amd64", where, images.size());
}

// ---- applying a layer ------------------------------------------------------------------------

constexpr std::string_view kWhiteout = ".wh.";
constexpr std::string_view kOpaque = ".wh..wh..opq";

Result<std::vector<std::string>> DirNames(int dir_fd, const std::string& rel) {
  std::vector<std::string> names;
  int copy = ::dup(dir_fd);
  if (copy < 0) return FailErrno("dup");
  DIR* d = ::fdopendir(copy);
  if (d == nullptr) {
    ::close(copy);
    return FailErrno("opendir", rel);
  }
  ::rewinddir(d);
  errno = 0;
  while (dirent* e = ::readdir(d)) {
    std::string_view n = e->d_name;
    if (n != "." && n != "..") names.emplace_back(n);
  }
  const int err = errno;
  ::closedir(d);
  if (err != 0) return Fail(Error::FromErrno("readdir " + rel, err));
  return names;
}

Fd OpenSubdir(int dir_fd, const std::string& name) {
  return Fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
}

// Removes `name` in `dir_fd` and everything under it, never following a symlink.
Result<void> RemoveAt(int dir_fd, const std::string& name, const std::string& rel) {
  struct stat st;
  if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return {};
    return FailErrno("stat", rel);
  }
  if (S_ISDIR(st.st_mode)) {
    Fd sub = OpenSubdir(dir_fd, name);
    if (!sub) return FailErrno("open", rel);
    const std::vector<std::string> children = CLONE_TRY(DirNames(sub.get(), rel));
    for (const auto& child : children) CLONE_TRY_VOID(RemoveAt(sub.get(), child, rel + "/" + child));
    if (::unlinkat(dir_fd, name.c_str(), AT_REMOVEDIR) != 0) return FailErrno("rmdir", rel);
    return {};
  }
  if (::unlinkat(dir_fd, name.c_str(), 0) != 0) return FailErrno("unlink", rel);
  return {};
}

Result<void> ApplyDir(int layer_fd, int root_fd, const std::string& rel) {
  const std::vector<std::string> names = CLONE_TRY(DirNames(layer_fd, "layer " + rel));
  // Opaque marker and whiteouts first: they act on the lower layers only.
  for (const auto& n : names) {
    if (n != kOpaque) continue;
    const std::vector<std::string> lower = CLONE_TRY(DirNames(root_fd, rel));
    for (const auto& child : lower) CLONE_TRY_VOID(RemoveAt(root_fd, child, rel + "/" + child));
  }
  for (const auto& n : names) {
    if (!n.starts_with(kWhiteout) || n.starts_with(".wh..wh.")) continue;
    std::string target = n.substr(kWhiteout.size());
    if (target.empty() || target == "." || target == "..") continue;
    CLONE_TRY_VOID(RemoveAt(root_fd, target, rel + "/" + target));
  }
  for (const auto& n : names) {
    if (n.starts_with(kWhiteout)) continue;
    const std::string child = rel + "/" + n;
    struct stat st;
    if (::fstatat(layer_fd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return FailErrno("stat", "layer " + child);
    struct stat existing;
    const bool exists = ::fstatat(root_fd, n.c_str(), &existing, AT_SYMLINK_NOFOLLOW) == 0;
    if (S_ISDIR(st.st_mode)) {
      if (exists && !S_ISDIR(existing.st_mode)) CLONE_TRY_VOID(RemoveAt(root_fd, n, child));
      if ((!exists || !S_ISDIR(existing.st_mode)) && ::mkdirat(root_fd, n.c_str(), 0700) != 0)
        return FailErrno("mkdir", child);
      Fd from = OpenSubdir(layer_fd, n);
      if (!from) return FailErrno("open", "layer " + child);
      Fd to = OpenSubdir(root_fd, n);
      if (!to) return FailErrno("open", child);
      CLONE_TRY_VOID(ApplyDir(from.get(), to.get(), child));
      // The layer's metadata, after the contents (times would change otherwise). chown fails
      // harmlessly without privileges (tar could not have kept the owner either).
      (void)::fchown(to.get(), st.st_uid, st.st_gid);
      if (::fchmod(to.get(), st.st_mode & 07777) != 0) return FailErrno("chmod", child);
      const timespec times[2] = {st.st_atim, st.st_mtim};
      (void)::futimens(to.get(), times);
      continue;
    }
    if (exists && S_ISDIR(existing.st_mode)) CLONE_TRY_VOID(RemoveAt(root_fd, n, child));
    if (::renameat(layer_fd, n.c_str(), root_fd, n.c_str()) != 0) return FailErrno("rename", child);
  }
  return {};
}

}  // namespace

Result<void> VerifyOciBlob(const std::string& path, const std::string& digest, uint64_t size) {
  std::string want = digest.starts_with("sha256:") ? digest.substr(7) : std::string();
  std::string got = CLONE_TRY(Sha256OfFile(path, size));
  if (got != want) return Fail("blob {} is corrupt: its sha256 is {}", digest, got);
  return {};
}

Result<std::vector<OciLayer>> ResolveOciLayers(const std::string& layout) {
  struct stat st;
  if (::stat(layout.c_str(), &st) != 0) {
    if (errno == ENOENT) return Fail("OCI layout {} does not exist", layout);
    return FailErrno("OCI layout", layout);
  }
  if (!S_ISDIR(st.st_mode)) return Fail("{} is not a directory (an OCI image layout is one)", layout);
  json marker = CLONE_TRY(ReadJsonFile(layout + "/oci-layout", "the OCI layout marker oci-layout"));
  auto version = marker.find("imageLayoutVersion");
  if (version == marker.end() || !version->is_string() || !version->get<std::string>().starts_with("1."))
    return Fail("{}/oci-layout: unsupported imageLayoutVersion", layout);
  json index = CLONE_TRY(ReadJsonFile(layout + "/index.json", "the OCI index index.json"));
  Descriptor manifest_desc = CLONE_TRY(PickManifest(layout, index, "index.json", 0));
  json manifest = CLONE_TRY(ReadJsonBlob(layout, manifest_desc, "image manifest"));
  auto layers = manifest.find("layers");
  if (layers == manifest.end() || !layers->is_array())
    return Fail("image manifest {} has no layers list", manifest_desc.digest);
  std::vector<OciLayer> out;
  for (const auto& l : *layers) {
    Descriptor d = CLONE_TRY(ParseDescriptor(l, "image manifest"));
    if (!IsLayerType(d.media_type))
      return Fail("layer {} has unsupported media type '{}' (tar, tar+gzip or tar+zstd expected)", d.digest,
                  d.media_type);
    OciLayer layer;
    layer.path = CLONE_TRY(BlobPath(layout, d.digest));
    CLONE_TRY_VOID(VerifyOciBlob(layer.path, d.digest, d.size).map_error([&](const Error& e) {
      return e.Wrap("layer " + d.digest);
    }));
    layer.digest = d.digest;
    layer.media_type = d.media_type;
    layer.size = d.size;
    out.push_back(std::move(layer));
  }
  if (out.empty()) return Fail("image manifest {} has no layers", manifest_desc.digest);
  return out;
}

Result<void> ApplyOciLayer(const std::string& layer_dir, const std::string& root) {
  Fd layer(::open(layer_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!layer) return FailErrno("open", layer_dir);
  Fd root_fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root_fd) return FailErrno("open", root);
  return ApplyDir(layer.get(), root_fd.get(), "");
}

}  // namespace clonevm

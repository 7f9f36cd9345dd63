#include "block/image.h"

#include <cstring>
#include <utility>
#include <vector>

#include "block/file_io.h"
#include "block/qcow2.h"
#include "block/raw.h"

namespace clonevm {
namespace {

constexpr uint8_t kQcow2Magic[4] = {'Q', 'F', 'I', 0xfb};

// The images opened so far for one OpenImage call: the top image and its backing files.
struct Chain {
  size_t l2_cache_bytes;
  std::vector<std::pair<dev_t, ino_t>> files;
};

Result<Format> ProbeFile(const ImageFile& file) {
  uint8_t magic[4] = {};
  if (file.size < sizeof(magic)) return Format::kRaw;
  CLONE_TRY_VOID(PreadFull(file.fd.get(), 0, magic, PastEof::kFail, file.path));
  return std::memcmp(magic, kQcow2Magic, sizeof(magic)) == 0 ? Format::kQcow2 : Format::kRaw;
}

Result<std::unique_ptr<BlockBackend>> OpenInChain(const std::string& path, Access access, Format format, Chain& chain) {
  ImageFile file = CLONE_TRY(OpenImageFile(path, access));
  for (const auto& [device, inode] : chain.files) {
    if (device == file.device && inode == file.inode) {
      return Fail("{}: backing file loop: this image is already part of the chain", path);
    }
  }
  if (chain.files.size() > static_cast<size_t>(kMaxBackingDepth)) {
    return Fail("{}: backing chain is deeper than {} images", path, kMaxBackingDepth);
  }
  chain.files.emplace_back(file.device, file.inode);
  CLONE_TRY_VOID(LockImageFile(file, access));
  if (format == Format::kAuto) format = CLONE_TRY(ProbeFile(file));
  if (format == Format::kRaw) return std::unique_ptr<BlockBackend>(RawBackend::FromFile(std::move(file), access));
  auto open_backing = [&chain](const std::string& backing_path, Format backing_format) {
    return OpenInChain(backing_path, Access::kReadOnly, backing_format, chain);
  };
  return std::unique_ptr<BlockBackend>(
      CLONE_TRY(Qcow2Backend::Open(std::move(file), access, chain.l2_cache_bytes, open_backing)));
}

}  // namespace

Result<std::unique_ptr<BlockBackend>> OpenImage(const std::string& path, OpenMode mode, Format format) {
  Chain chain{mode.l2_cache_bytes, {}};
  return OpenInChain(path, mode.read_only ? Access::kReadOnly : Access::kReadWrite, format, chain);
}

Result<Format> ProbeFormat(const std::string& path) {
  const ImageFile file = CLONE_TRY(OpenImageFile(path, Access::kReadOnly));
  return ProbeFile(file);
}

std::string_view FormatName(Format format) {
  switch (format) {
    case Format::kAuto:
      return "auto";
    case Format::kRaw:
      return "raw";
    case Format::kQcow2:
      return "qcow2";
  }
  return "?";
}

Result<Format> ParseFormatName(std::string_view name) {
  if (name == "raw") return Format::kRaw;
  if (name == "qcow2") return Format::kQcow2;
  return Fail("unsupported image format \"{}\" (raw and qcow2 are supported)", name);
}

}  // namespace clonevm

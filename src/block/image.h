// Opening disk images: the entry point of the block layer.
//
//   auto disk = CLONE_TRY(OpenImage("/var/lib/clone/vm1.qcow2", OpenMode{}, Format::kAuto));
//   CLONE_TRY_VOID(disk->Read(0, sector));
//
// OpenImage opens the file (O_CLOEXEC; O_RDONLY when read-only), takes its lock (see LockImageFile:
// one writer or many readers), probes or checks the format, and for qcow2 opens the backing chain
// read-only. Errors name the image and say what is wrong: missing, unreadable, locked, truncated,
// corrupt, an unsupported feature, a missing or looping backing file.
//
// Format probing: an image whose first bytes are "QFI\xfb" is qcow2, anything else is raw. Probing
// is for images the user names; a raw disk a guest can write must be opened as Format::kRaw, or the
// guest could write a qcow2 header into it pointing at a host file as "backing file". Images Clone
// creates record their backing file's format, so backing files are probed only for images that
// do not.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "base/result.h"
#include "block/block_backend.h"

namespace clonevm {

enum class Format { kAuto, kRaw, kQcow2 };

struct OpenMode {
  bool read_only = false;
  // Upper bound on memory for cached qcow2 L2 tables (1 MiB maps 8 GiB with 64 KiB clusters);
  // buffers are allocated as tables are first used. Backing files get the same bound.
  size_t l2_cache_bytes = 1 << 20;
};

// Backing chains deeper than this are refused (a loop is refused at any depth).
inline constexpr int kMaxBackingDepth = 16;

[[nodiscard]] Result<std::unique_ptr<BlockBackend>> OpenImage(const std::string& path, OpenMode mode = {},
                                                              Format format = Format::kAuto);

// The format of the image at `path` by its magic (kRaw or kQcow2).
[[nodiscard]] Result<Format> ProbeFormat(const std::string& path);

std::string_view FormatName(Format format);
// "raw" / "qcow2" (the names qcow2 headers use); anything else is an error.
[[nodiscard]] Result<Format> ParseFormatName(std::string_view name);

}  // namespace clonevm

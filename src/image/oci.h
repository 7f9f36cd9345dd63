// OCI image layouts for `clone rootfs create --from-oci DIR`: resolving an image's layers and
// applying extracted layers onto a root tree with OCI whiteout semantics.
//
// Contract:
//  - ResolveOciLayers reads DIR/oci-layout (imageLayoutVersion 1.0.0), DIR/index.json and the
//    blobs under DIR/blobs/sha256/. It follows the index to one image manifest: the only one, or
//    the linux/amd64 one when there are several (a nested image index, as written by
//    `docker buildx`/`skopeo`, is followed one level). OCI and Docker v2 media types are accepted;
//    the layers must be tar, tar+gzip or tar+zstd (compression is detected by tar on extraction).
//    Every blob read (index, manifest, layers) is checked against its descriptor's size and
//    sha256 digest; any other digest algorithm is refused.
//  - ApplyOciLayer moves the entries of a layer that tar extracted into `layer_dir` onto `root`:
//    `.wh.NAME` deletes NAME (recursively) from the lower layers, `.wh..wh..opq` empties its
//    directory of lower-layer contents first, other `.wh..wh.*` entries are ignored, and no
//    whiteout file ever reaches `root`. Non-directories replace what is there (rename(2): the two
//    directories must be on one filesystem); directories are merged and take the layer's mode,
//    owner (when permitted) and times. `layer_dir` is consumed (left partly emptied).
//
// Hostile input: the layout is untrusted. JSON blobs are size-capped and parsed without
// exceptions escaping; digests must be "sha256:" + 64 lowercase hex digits (so a blob path can
// never leave blobs/sha256/); sizes must match. Applying works only through directory fds opened
// with O_NOFOLLOW, one path component (a readdir name) at a time, so neither a whiteout nor a
// symlink planted by a lower layer (e.g. /etc -> /) can make it delete or write outside `root`:
// a symlink where the layer has a directory is replaced by the directory, never followed.
// tar itself refuses `..` members and writing through symlinks it did not create.
// Threads: none; callers serialize.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/result.h"

namespace clonevm {

struct OciLayer {
  std::string digest;      // "sha256:<hex>"
  std::string media_type;  // as in the manifest
  std::string path;        // the blob file: DIR/blobs/sha256/<hex>
  uint64_t size = 0;
};

// The image's layers, lowest first, each verified (size and sha256).
[[nodiscard]] Result<std::vector<OciLayer>> ResolveOciLayers(const std::string& layout_dir);

// Checks that the file at `path` has `size` bytes and the sha256 of `digest` ("sha256:<hex>").
[[nodiscard]] Result<void> VerifyOciBlob(const std::string& path, const std::string& digest, uint64_t size);

// Applies an extracted layer onto `root` (see above).
[[nodiscard]] Result<void> ApplyOciLayer(const std::string& layer_dir, const std::string& root);

}  // namespace clonevm

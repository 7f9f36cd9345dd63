#include "block/qcow2_inflate.h"

#include <zlib.h>

namespace clonevm::qcow2 {

struct Inflater::Stream {
  z_stream z{};
  bool ready = false;
};

Inflater::Inflater() : stream_(std::make_unique<Stream>()) {}

Inflater::~Inflater() {
  if (stream_->ready) inflateEnd(&stream_->z);
}

Result<void> Inflater::Inflate(std::span<const uint8_t> in, std::span<uint8_t> out) {
  z_stream& z = stream_->z;
  if (!stream_->ready) {
    if (inflateInit2(&z, -12) != Z_OK) return Fail("inflateInit2 failed: {}", z.msg ? z.msg : "out of memory");
    stream_->ready = true;
  } else if (inflateReset(&z) != Z_OK) {
    return Fail("inflateReset failed");
  }
  // SAFETY: zlib reads next_in without modifying it; the API predates const.
  z.next_in = const_cast<Bytef*>(in.data());
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  const int rc = inflate(&z, Z_FINISH);
  // Decompression stops once a whole cluster is produced; the input may hold more bytes.
  if ((rc == Z_STREAM_END || rc == Z_BUF_ERROR || rc == Z_OK) && z.avail_out == 0) return {};
  return Fail("corrupt compressed cluster (zlib: {}, {} of {} bytes produced)", z.msg ? z.msg : zError(rc),
              out.size() - z.avail_out, out.size());
}

}  // namespace clonevm::qcow2

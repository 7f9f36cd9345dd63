// Inflater: decompresses qcow2 compressed clusters (zlib raw deflate, 4 KiB window: what QEMU
// writes with deflateInit2(..., -12, ...)). One zlib stream is set up once and reset per cluster,
// so decompressing allocates nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "base/result.h"

namespace clonevm::qcow2 {

class Inflater {
 public:
  Inflater();
  ~Inflater();
  Inflater(const Inflater&) = delete;
  Inflater& operator=(const Inflater&) = delete;

  // Fills all of `out` from the compressed bytes `in` (which may carry trailing bytes of the next
  // compressed cluster). Fails if the stream is corrupt or ends before `out` is full.
  [[nodiscard]] Result<void> Inflate(std::span<const uint8_t> in, std::span<uint8_t> out);

 private:
  struct Stream;
  std::unique_ptr<Stream> stream_;
};

}  // namespace clonevm::qcow2

#include "devices/virtio/descriptor_chain.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "base/check.h"
#include "base/log.h"

namespace clonevm::virtio {
namespace {

// Walks `buffers` from byte `offset` of their concatenation, calling copy(buffer_span, done) for
// each piece until `total` bytes are done or the buffers end. Returns the bytes done.
template <typename CopyFn>
size_t ForEachPiece(std::span<const GuestBuffer> buffers, uint64_t offset, size_t total, CopyFn copy) {
  size_t done = 0;
  for (const GuestBuffer& b : buffers) {
    if (done == total) break;
    if (offset >= b.host.size()) {
      offset -= b.host.size();
      continue;
    }
    size_t n = std::min<size_t>(b.host.size() - offset, total - done);
    copy(b.host.subspan(offset, n), done);
    done += n;
    offset = 0;
  }
  return done;
}

}  // namespace

DescriptorChain::DescriptorChain(DescriptorChain&& other) noexcept
    : owner_(other.owner_),
      generation_(other.generation_),
      head_(other.head_),
      owed_(std::exchange(other.owed_, false)),
      num_readable_(other.num_readable_),
      readable_bytes_(other.readable_bytes_),
      writable_bytes_(other.writable_bytes_),
      buffers_(std::move(other.buffers_)) {}

DescriptorChain& DescriptorChain::operator=(DescriptorChain&& other) noexcept {
  if (this == &other) return *this;
  CLONE_CHECK(!owed_);  // overwriting a chain that still owes an answer would leak it
  owner_ = other.owner_;
  generation_ = other.generation_;
  head_ = other.head_;
  owed_ = std::exchange(other.owed_, false);
  num_readable_ = other.num_readable_;
  readable_bytes_ = other.readable_bytes_;
  writable_bytes_ = other.writable_bytes_;
  buffers_ = std::move(other.buffers_);
  return *this;
}

DescriptorChain::~DescriptorChain() {
  if (!owed_) return;
#ifndef NDEBUG
  std::fprintf(stderr, "clone: internal error: descriptor chain (head %u) destroyed without AddUsed/Abandon\n", head_);
  std::abort();
#else
  CLONE_LOG_RATELIMITED(LogLevel::kError, "virtio: descriptor chain (head {}) leaked by a device", head_);
#endif
}

void DescriptorChain::AddBuffer(GuestBuffer buffer, bool writable) {
  if (writable) {
    writable_bytes_ += buffer.host.size();
  } else {
    CLONE_CHECK(num_readable_ == buffers_.size());  // the parser rejects readable-after-writable
    ++num_readable_;
    readable_bytes_ += buffer.host.size();
  }
  buffers_.push_back(buffer);
}

size_t DescriptorChain::CopyFromReadable(uint64_t offset, std::span<uint8_t> out) const {
  return ForEachPiece(readable(), offset, out.size(), [&](std::span<uint8_t> piece, size_t done) {
    std::memcpy(out.data() + done, piece.data(), piece.size());
  });
}

size_t DescriptorChain::CopyToWritable(uint64_t offset, std::span<const uint8_t> in) const {
  return ForEachPiece(writable(), offset, in.size(), [&](std::span<uint8_t> piece, size_t done) {
    std::memcpy(piece.data(), in.data() + done, piece.size());
  });
}

}  // namespace clonevm::virtio

#include "devices/virtio/block.h"

#include <endian.h>
#include <sys/epoll.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

#include "base/check.h"
#include "base/log.h"
#include "block/file_io.h"
#include "devices/virtio/json_state.h"

namespace clonevm::virtio {
namespace {

constexpr int kStateVersion = 1;
constexpr uint64_t kHeaderSize = sizeof(virtio_blk_outhdr);  // 16
static_assert(kHeaderSize == 16);
static_assert(sizeof(virtio_blk_discard_write_zeroes) == 16);
static_assert(Block::kSegMax + 2 <= kMaxChainLength);

constexpr uint64_t Bit(unsigned bit) { return 1ull << bit; }

// Zeros for write-zeroes without UNMAP (the range must stay allocated, so it is written).
constexpr size_t kZeroChunk = 64 * 1024;
alignas(4096) const uint8_t kZeros[kZeroChunk] = {};

// Calls fn(span) for each piece of `buffers` (as one concatenated byte range) in
// [skip, skip + len); stops at the first Error. The range must lie inside the buffers.
template <typename Fn>
Result<void> ForEachPiece(std::span<const GuestBuffer> buffers, uint64_t skip, uint64_t len, Fn&& fn) {
  for (const GuestBuffer& buffer : buffers) {
    if (len == 0) break;
    uint64_t size = buffer.host.size();
    if (skip >= size) {
      skip -= size;
      continue;
    }
    uint64_t n = std::min(size - skip, len);
    CLONE_TRY_VOID(fn(buffer.host.subspan(skip, n)));
    skip = 0;
    len -= n;
  }
  return {};
}

// [sector * 512, + len) as a byte range inside a disk of `capacity` sectors, or nullopt.
std::optional<uint64_t> ByteOffset(uint64_t sector, uint64_t len, uint64_t capacity) {
  if (sector > capacity) return std::nullopt;  // also rules out overflow: capacity < 2^55
  uint64_t offset = sector * Block::kSectorSize;
  if (len > (capacity - sector) * Block::kSectorSize) return std::nullopt;
  return offset;
}

}  // namespace

Result<std::unique_ptr<Block>> Block::Create(std::unique_ptr<BlockBackend> backend, std::string serial,
                                             BlockOptions options) {
  if (backend == nullptr) return Fail("virtio-blk: no backend");
  if (serial.size() > kMaxSerialLength) {
    return Fail("virtio-blk: serial \"{}\" is longer than {} bytes", serial, kMaxSerialLength);
  }
  if (options.max_in_flight < 2 || options.max_in_flight > IoRing::kMaxDepth) {
    return Fail("virtio-blk: max_in_flight {} is not in 2..{}", options.max_in_flight, IoRing::kMaxDepth);
  }
  std::unique_ptr<Block> block(new Block(std::move(backend), std::move(serial)));
  block->SetUpAsync(options);
  return block;
}

void Block::SetUpAsync(const BlockOptions& options) {
  if (options.io == BlockIo::kSync || backend_->direct_fd() < 0) return;
  auto ring = IoRing::Create(options.max_in_flight);
  if (!ring) {
    Log(LogLevel::kWarn, "virtio-blk {}: io_uring unavailable, using synchronous I/O: {}", serial_,
        ring.error().message());
    return;
  }
  requests_.resize(options.max_in_flight);
  free_requests_.reserve(options.max_in_flight);
  for (uint32_t i = options.max_in_flight; i > 0; --i) free_requests_.push_back(i - 1);
  ring_ = std::move(*ring);
}

Block::~Block() {
  if (auto r = WaitForRequests(false); !r) {
    Log(LogLevel::kError, "virtio-blk {}: {}", serial_, r.error().message());
    std::abort();  // the kernel may still write into memory we are about to free
  }
}

Block::Block(std::unique_ptr<BlockBackend> backend, std::string serial)
    : backend_(std::move(backend)),
      serial_(std::move(serial)),
      read_only_(backend_->read_only()),
      capacity_(backend_->size() / kSectorSize) {
  features_ = Bit(VIRTIO_BLK_F_SEG_MAX) | Bit(VIRTIO_BLK_F_BLK_SIZE) | Bit(VIRTIO_BLK_F_FLUSH);
  if (read_only_) {
    features_ |= Bit(VIRTIO_BLK_F_RO);
  } else {
    features_ |= Bit(VIRTIO_BLK_F_DISCARD) | Bit(VIRTIO_BLK_F_WRITE_ZEROES);
  }
  config_.capacity = htole64(capacity_);
  config_.seg_max = htole32(kSegMax);
  config_.blk_size = htole32(kSectorSize);
  if (!read_only_) {
    config_.max_discard_sectors = htole32(kMaxDiscardSectors);
    config_.max_discard_seg = htole32(kMaxDiscardSegments);
    config_.discard_sector_alignment = htole32(kDiscardSectorAlignment);
    config_.max_write_zeroes_sectors = htole32(kMaxWriteZeroesSectors);
    config_.max_write_zeroes_seg = htole32(kMaxWriteZeroesSegments);
    config_.write_zeroes_may_unmap = 1;
  }
}

void Block::ReadConfig(uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0);
  if (offset >= sizeof(config_)) return;
  size_t n = std::min<size_t>(data.size(), sizeof(config_) - offset);
  std::memcpy(data.data(), reinterpret_cast<const uint8_t*>(&config_) + offset, n);
}

Result<void> Block::Activate(const DeviceContext& context) {
  context_.emplace(context);
  write_back_ = (context.features & Bit(VIRTIO_BLK_F_FLUSH)) != 0;
  return {};
}

void Block::Reset() {
  if (auto r = WaitForRequests(false); !r) {
    Log(LogLevel::kError, "virtio-blk {}: {}", serial_, r.error().message());
    std::abort();  // requests would write into guest memory the driver has taken back
  }
  context_.reset();
  queue_blocked_ = false;
  used_pending_ = false;
}

Result<void> Block::ProcessQueue(size_t index) {
  if (!context_ || index != 0) return {};
  Queue& queue = context_->queues[0];
  bool used_any = false;
  Result<void> result = TakeRequests(queue, &used_any);
  SubmitQueued();
  if (used_any && queue.NeedsNotification()) context_->interrupt.SignalUsed();
  return result;
}

Result<void> Block::TakeRequests(Queue& queue, bool* used_any) {
  queue_blocked_ = false;
  for (;;) {
    // Room for the largest submission (a write linked to an fdatasync) before taking a chain.
    if (ring_ && ring_->room() < 2) {
      queue_blocked_ = true;
      return {};
    }
    std::optional<DescriptorChain> chain = CLONE_TRY(queue.Pop());
    if (!chain) return {};
    Result<std::optional<uint8_t>> status = HandleRequest(*chain);
    if (!status) {
      chain->Abandon();
      return tl::unexpected(std::move(status.error()));
    }
    if (!status->has_value()) continue;  // submitted to io_uring
    Answer(queue, std::move(*chain), **status);
    *used_any = true;
  }
}

void Block::Answer(Queue& queue, DescriptorChain chain, uint8_t status) {
  uint64_t writable = chain.writable_bytes();
  chain.CopyToWritable(writable - 1, std::span(&status, 1));
  // As QEMU: the whole writable part (data + status) counts as written; len is a lower bound on
  // what the driver may consume and the status byte sits at its end.
  queue.AddUsed(std::move(chain), static_cast<uint32_t>(std::min<uint64_t>(writable, UINT32_MAX)));
}

Result<std::optional<uint8_t>> Block::HandleRequest(DescriptorChain& chain) {
  if (chain.writable_bytes() == 0) return Fail("virtio-blk: request {} has no writable status byte", chain.head());
  if (chain.readable_bytes() < kHeaderSize) {
    return Fail("virtio-blk: request {} header is {} bytes, not {}", chain.head(), chain.readable_bytes(), kHeaderSize);
  }
  // Copy the header once: the guest may change it under us.
  virtio_blk_outhdr header;
  chain.CopyFromReadable(0, std::span(reinterpret_cast<uint8_t*>(&header), sizeof(header)));
  uint32_t type = le32toh(header.type);
  uint64_t sector = le64toh(header.sector);
  uint64_t in_data = chain.writable_bytes() - 1;             // writable bytes before the status
  uint64_t out_data = chain.readable_bytes() - kHeaderSize;  // readable bytes after the header

  auto wrong_direction = [&]() -> Result<std::optional<uint8_t>> {
    return Fail("virtio-blk: request {} of type {} has {} readable and {} writable data bytes", chain.head(), type,
                out_data, in_data);
  };
  switch (type) {
    case VIRTIO_BLK_T_IN:
      if (out_data != 0) return wrong_direction();
      return DoRead(chain, sector, in_data);
    case VIRTIO_BLK_T_OUT:
      if (in_data != 0) return wrong_direction();
      return DoWrite(chain, sector, out_data);
    case VIRTIO_BLK_T_FLUSH:
      return DoFlush(chain);
    case VIRTIO_BLK_T_GET_ID:
      if (out_data != 0) return wrong_direction();
      return DoGetId(chain, in_data);
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES: {
      uint64_t feature = type == VIRTIO_BLK_T_DISCARD ? Bit(VIRTIO_BLK_F_DISCARD) : Bit(VIRTIO_BLK_F_WRITE_ZEROES);
      if ((context_->features & feature) == 0) return uint8_t{VIRTIO_BLK_S_UNSUPP};
      if (in_data != 0) return wrong_direction();
      return DoDiscardOrWriteZeroes(chain, type, out_data);
    }
    default:
      return uint8_t{VIRTIO_BLK_S_UNSUPP};
  }
}

std::optional<uint8_t> Block::DoRead(DescriptorChain& chain, uint64_t sector, uint64_t len) {
  std::optional<uint64_t> offset = ByteOffset(sector, len, capacity_);
  if (!offset || len % kSectorSize != 0) {
    CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-blk: read of {} bytes at sector {} is outside the disk or unaligned",
                          len, sector);
    return VIRTIO_BLK_S_IOERR;
  }
  if (ring_ && len > 0 && Submit(chain, AsyncRequest::Kind::kRead, *offset, len)) return std::nullopt;
  uint64_t pos = *offset;
  Result<void> result = ForEachPiece(chain.writable(), 0, len, [&](std::span<uint8_t> piece) -> Result<void> {
    CLONE_TRY_VOID(backend_->Read(pos, piece));
    pos += piece.size();
    return {};
  });
  if (!result) {
    CLONE_LOG_RATELIMITED(LogLevel::kError, "virtio-blk: read: {}", result.error().message());
    return VIRTIO_BLK_S_IOERR;
  }
  return VIRTIO_BLK_S_OK;
}

std::optional<uint8_t> Block::DoWrite(DescriptorChain& chain, uint64_t sector, uint64_t len) {
  if (read_only_) {
    CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-blk: write to a read-only disk");
    return VIRTIO_BLK_S_IOERR;
  }
  std::optional<uint64_t> offset = ByteOffset(sector, len, capacity_);
  if (!offset || len % kSectorSize != 0) {
    CLONE_LOG_RATELIMITED(LogLevel::kWarn,
                          "virtio-blk: write of {} bytes at sector {} is outside the disk or unaligned", len, sector);
    return VIRTIO_BLK_S_IOERR;
  }
  if (ring_ && len > 0 && Submit(chain, AsyncRequest::Kind::kWrite, *offset, len)) return std::nullopt;
  uint64_t pos = *offset;
  Result<void> result = ForEachPiece(chain.readable(), kHeaderSize, len, [&](std::span<uint8_t> piece) -> Result<void> {
    CLONE_TRY_VOID(backend_->Write(pos, piece));
    pos += piece.size();
    return {};
  });
  if (!result) {
    CLONE_LOG_RATELIMITED(LogLevel::kError, "virtio-blk: write: {}", result.error().message());
    return VIRTIO_BLK_S_IOERR;
  }
  return CompleteWrite();
}

uint8_t Block::CompleteWrite() { return write_back_ ? uint8_t{VIRTIO_BLK_S_OK} : SyncFlush(); }

std::optional<uint8_t> Block::DoFlush(DescriptorChain& chain) {
  if (ring_ && !read_only_ && Submit(chain, AsyncRequest::Kind::kFlush, 0, 0)) return std::nullopt;
  return SyncFlush();
}

uint8_t Block::SyncFlush() {
  if (Result<void> result = backend_->Flush(); !result) {
    CLONE_LOG_RATELIMITED(LogLevel::kError, "virtio-blk: flush: {}", result.error().message());
    return VIRTIO_BLK_S_IOERR;
  }
  return VIRTIO_BLK_S_OK;
}

uint8_t Block::DoGetId(const DescriptorChain& chain, uint64_t len) {
  // The serial, NUL-padded to 20 bytes (no terminator when it is exactly 20), then zeros.
  std::array<uint8_t, kMaxSerialLength> id{};
  std::memcpy(id.data(), serial_.data(), serial_.size());
  uint64_t n = std::min<uint64_t>(len, id.size());
  chain.CopyToWritable(0, std::span(id).first(n));
  (void)ForEachPiece(chain.writable(), n, len - n, [](std::span<uint8_t> piece) -> Result<void> {
    std::memset(piece.data(), 0, piece.size());
    return {};
  });
  return VIRTIO_BLK_S_OK;
}

uint8_t Block::DoDiscardOrWriteZeroes(const DescriptorChain& chain, uint32_t type, uint64_t len) {
  const bool discard = type == VIRTIO_BLK_T_DISCARD;
  const char* what = discard ? "discard" : "write-zeroes";
  const uint32_t max_segments = discard ? kMaxDiscardSegments : kMaxWriteZeroesSegments;
  const uint32_t max_sectors = discard ? kMaxDiscardSectors : kMaxWriteZeroesSectors;
  if (read_only_) return VIRTIO_BLK_S_IOERR;  // not offered then, but be safe
  if (len == 0 || len % sizeof(virtio_blk_discard_write_zeroes) != 0 ||
      len / sizeof(virtio_blk_discard_write_zeroes) > max_segments) {
    CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-blk: {} with {} bytes of segments", what, len);
    return VIRTIO_BLK_S_IOERR;
  }
  // Copy every segment out of guest memory once, check them all, then act.
  std::array<virtio_blk_discard_write_zeroes, std::max(kMaxDiscardSegments, kMaxWriteZeroesSegments)> segments;
  size_t count = len / sizeof(virtio_blk_discard_write_zeroes);
  chain.CopyFromReadable(kHeaderSize, std::span(reinterpret_cast<uint8_t*>(segments.data()), len));
  uint8_t status = VIRTIO_BLK_S_OK;
  for (size_t i = 0; i < count; ++i) {
    virtio_blk_discard_write_zeroes& s = segments[i];
    s.sector = le64toh(s.sector);
    s.num_sectors = le32toh(s.num_sectors);
    s.flags = le32toh(s.flags);
    uint32_t allowed_flags = discard ? 0 : VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    if ((s.flags & ~allowed_flags) != 0) return VIRTIO_BLK_S_UNSUPP;  // 5.2.6.2: unknown flags, UNMAP on discard
    if (s.num_sectors > max_sectors || !ByteOffset(s.sector, uint64_t{s.num_sectors} * kSectorSize, capacity_)) {
      CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-blk: {} of {} sectors at sector {} is outside the disk or too big",
                            what, s.num_sectors, s.sector);
      status = VIRTIO_BLK_S_IOERR;
    }
  }
  if (status != VIRTIO_BLK_S_OK) return status;

  for (size_t i = 0; i < count; ++i) {
    const virtio_blk_discard_write_zeroes& s = segments[i];
    uint64_t offset = s.sector * kSectorSize;
    uint64_t length = uint64_t{s.num_sectors} * kSectorSize;
    Result<void> result;
    if (discard) {
      result = backend_->Discard(offset, length);
    } else if (s.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) {
      result = backend_->WriteZeroes(offset, length);
    } else {
      // No UNMAP: the range must stay allocated, so write real zeros.
      for (uint64_t done = 0; result && done < length; done += kZeroChunk) {
        result = backend_->Write(offset + done, std::span(kZeros, std::min<uint64_t>(kZeroChunk, length - done)));
      }
    }
    if (!result) {
      CLONE_LOG_RATELIMITED(LogLevel::kError, "virtio-blk: {}: {}", what, result.error().message());
      return VIRTIO_BLK_S_IOERR;
    }
  }
  return CompleteWrite();
}

// ---- io_uring ----

bool Block::Submit(DescriptorChain& chain, AsyncRequest::Kind kind, uint64_t offset, uint64_t length) {
  if (free_requests_.empty()) return false;  // cannot happen: requests <= ring depth; go synchronous
  uint32_t tag = free_requests_.back();
  AsyncRequest& request = requests_[tag];
  request.kind = kind;
  request.offset = offset;
  request.length = length;
  request.iov.clear();
  request.data_result = 0;
  request.sync_result = 0;
  request.sync_linked = false;
  const int fd = backend_->direct_fd();
  bool queued = false;
  if (kind == AsyncRequest::Kind::kFlush) {
    request.pending = 1;
    queued = ring_->Fsync(fd, tag, FsyncOrder::kAfterSubmitted);
  } else {
    // The data buffers as iovecs: after the header for a write, before the status for a read.
    const bool read = kind == AsyncRequest::Kind::kRead;
    (void)ForEachPiece(read ? chain.writable() : chain.readable(), read ? 0 : kHeaderSize, length,
                       [&](std::span<uint8_t> piece) -> Result<void> {
                         request.iov.push_back({piece.data(), piece.size()});
                         return {};
                       });
    if (read) {
      request.pending = 1;
      queued = ring_->Readv(fd, request.iov, offset, tag);
    } else {
      backend_->NoteDirectWrite();
      request.sync_linked = !write_back_;
      request.pending = request.sync_linked ? 2 : 1;
      queued =
          ring_->Writev(fd, request.iov, offset, tag, request.sync_linked ? SyncAfter::kDataSync : SyncAfter::kNone);
    }
  }
  if (!queued) return false;  // TakeRequests keeps room for two operations, so not reached
  free_requests_.pop_back();
  request.chain.emplace(std::move(chain));
  return true;
}

void Block::SubmitQueued() {
  if (!ring_) return;
  if (auto r = ring_->Submit(); !r) {
    // The operations stay queued; the next notification or completion submits them again.
    CLONE_LOG_RATELIMITED(LogLevel::kError, "virtio-blk {}: {}", serial_, r.error().message());
  }
}

void Block::OnCompletion(uint64_t tag, int32_t result, bool answer) {
  CLONE_CHECK(tag < requests_.size());
  AsyncRequest& request = requests_[tag];
  CLONE_CHECK(request.pending > 0 && request.chain.has_value());
  // A linked write + fdatasync completes twice: the data operation first (io_uring posts linked
  // completions in order), then the sync.
  const bool data = request.kind != AsyncRequest::Kind::kFlush && request.pending == (request.sync_linked ? 2 : 1);
  (data ? request.data_result : request.sync_result) = result;
  if (--request.pending > 0) return;
  DescriptorChain chain = std::move(*request.chain);
  request.chain.reset();
  free_requests_.push_back(static_cast<uint32_t>(tag));
  if (!answer || !context_) {
    chain.Abandon();
    return;
  }
  Answer(context_->queues[0], std::move(chain), FinishStatus(request));
  used_pending_ = true;
}

uint8_t Block::FinishStatus(AsyncRequest& request) {
  const char* what = request.kind == AsyncRequest::Kind::kRead    ? "read"
                     : request.kind == AsyncRequest::Kind::kWrite ? "write"
                                                                  : "flush";
  if (request.kind == AsyncRequest::Kind::kFlush) {
    if (request.sync_result >= 0) return VIRTIO_BLK_S_OK;
    CLONE_LOG_RATELIMITED(LogLevel::kError, "virtio-blk {}: flush: fdatasync: {}", serial_,
                          std::strerror(-request.sync_result));
    return VIRTIO_BLK_S_IOERR;
  }
  if (request.data_result < 0) {
    CLONE_LOG_RATELIMITED(LogLevel::kError, "virtio-blk {}: {} of {} bytes at 0x{:x}: {}", serial_, what,
                          request.length, request.offset, std::strerror(-request.data_result));
    return VIRTIO_BLK_S_IOERR;
  }
  const auto done = static_cast<uint64_t>(request.data_result);
  if (done < request.length) {
    // A short transfer (a signal, a huge request): finish it here, then the sync it was linked to.
    std::span<iovec> rest(request.iov);
    AdvanceIovecs(rest, done);
    const int fd = backend_->direct_fd();
    Result<void> result = request.kind == AsyncRequest::Kind::kRead
                              ? PreadvFull(fd, request.offset + done, rest, serial_)
                              : PwritevFull(fd, request.offset + done, rest, serial_);
    if (result && request.sync_linked) result = SyncData(fd, serial_);
    if (!result) {
      CLONE_LOG_RATELIMITED(LogLevel::kError, "virtio-blk {}: {}: {}", serial_, what, result.error().message());
      return VIRTIO_BLK_S_IOERR;
    }
    return VIRTIO_BLK_S_OK;
  }
  if (request.sync_linked && request.sync_result < 0) {
    CLONE_LOG_RATELIMITED(LogLevel::kError, "virtio-blk {}: write-through fdatasync: {}", serial_,
                          std::strerror(-request.sync_result));
    return VIRTIO_BLK_S_IOERR;
  }
  return VIRTIO_BLK_S_OK;
}

Result<void> Block::HandleCompletions() {
  if (!ring_) return {};
  ring_->Reap([this](uint64_t tag, int32_t result) { OnCompletion(tag, result, true); });
  if (!context_) return {};
  Queue& queue = context_->queues[0];
  bool used_any = std::exchange(used_pending_, false);
  Result<void> result;
  if (queue_blocked_) result = TakeRequests(queue, &used_any);
  SubmitQueued();
  if (used_any && queue.NeedsNotification()) context_->interrupt.SignalUsed();
  return result;
}

std::vector<WatchedFd> Block::watched_fds() const {
  if (!ring_) return {};
  return {WatchedFd{.fd = ring_->event_fd(), .events = EPOLLIN}};
}

Result<void> Block::HandleFdEvent(size_t /*index*/, uint32_t /*events*/) { return HandleCompletions(); }

Result<void> Block::WaitForRequests(bool answer) {
  if (!ring_) return {};
  return ring_->WaitAll([this, answer](uint64_t tag, int32_t result) { OnCompletion(tag, result, answer); });
}

Result<void> Block::Drain() {
  CLONE_TRY_VOID(WaitForRequests(true));
  if (context_ && std::exchange(used_pending_, false) && context_->queues[0].NeedsNotification()) {
    context_->interrupt.SignalUsed();
  }
  return {};
}

nlohmann::json Block::SaveState() const {
  return {{"version", kStateVersion},
          {"capacity", capacity_},
          {"serial", serial_},
          {"read_only", read_only_},
          {"features", features_}};
}

Result<void> Block::RestoreState(const nlohmann::json& state) {
  CLONE_TRY(StateVersion(state, kStateVersion, "virtio-blk"));
  return ParseJsonState("virtio-blk", [&]() -> Result<void> {
    uint64_t capacity = CLONE_TRY(JsonUint<uint64_t>(state, "capacity"));
    bool read_only = CLONE_TRY(JsonBool(state, "read_only"));
    uint64_t features = CLONE_TRY(JsonUint<uint64_t>(state, "features"));
    auto serial_it = state.find("serial");
    if (serial_it == state.end() || !serial_it->is_string()) return Fail("restoring virtio-blk: missing \"serial\"");
    std::string serial = serial_it->get<std::string>();
    if (capacity != capacity_) {
      return Fail("restoring virtio-blk: the disk has {} sectors, the snapshot {}", capacity_, capacity);
    }
    if (read_only != read_only_) {
      return Fail("restoring virtio-blk: the disk is {}, the snapshot's was {}", read_only_ ? "read-only" : "writable",
                  read_only ? "read-only" : "writable");
    }
    if (serial != serial_)
      return Fail("restoring virtio-blk: serial \"{}\" differs from the snapshot's \"{}\"", serial_, serial);
    if (features != features_) {
      return Fail("restoring virtio-blk: features 0x{:x} differ from the snapshot's 0x{:x}", features_, features);
    }
    return {};
  });
}

}  // namespace clonevm::virtio

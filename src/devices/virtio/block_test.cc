#include "devices/virtio/block.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <unistd.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "base/testing/host_tools.h"
#include "block/block_test_util.h"
#include "block/image.h"
#include "devices/virtio/mmio_transport.h"
#include "devices/virtio/testing/mmio_driver.h"
#include "devices/virtio/testing/queue_driver.h"
#include "devices/virtio/virtio_spec.h"

namespace clonevm::virtio {
namespace {

using testing::BufferSpec;
using testing::MmioDriver;
using testing::QueueDriver;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kDiskSize = 1 * kMiB;
constexpr uint64_t kSectors = kDiskSize / 512;
constexpr uint64_t kBaseFeatures = kFeatureVersion1 | kFeatureEventIdx | kFeatureIndirectDesc;
constexpr uint64_t Bit(unsigned b) { return 1ull << b; }

std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(seed + i * 7 + (i >> 9) + 1);
  return out;
}

std::vector<uint8_t> FileBytes(const std::string& path, uint64_t offset, size_t len) {
  std::vector<uint8_t> out(len);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return {};
  std::fseek(f, static_cast<long>(offset), SEEK_SET);
  size_t n = std::fread(out.data(), 1, len, f);
  std::fclose(f);
  out.resize(n);
  return out;
}

void WriteFile(const std::string& path, const std::vector<uint8_t>& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), f), bytes.size());
  std::fclose(f);
}

// Wraps a real backend: counts flushes and can be told to fail every call. Its direct_fd() is the
// inner one's (-1 while failing, so io_uring requests fail with EBADF).
class TestBackend final : public BlockBackend {
 public:
  struct Stats {
    int flushes = 0;
    bool fail = false;
  };
  TestBackend(std::unique_ptr<BlockBackend> inner, Stats* stats) : inner_(std::move(inner)), stats_(stats) {}
  uint64_t size() const override { return inner_->size(); }
  bool read_only() const override { return inner_->read_only(); }
  Result<void> Read(uint64_t offset, std::span<uint8_t> out) override {
    if (stats_->fail) return Fail("injected read error");
    return inner_->Read(offset, out);
  }
  Result<void> Write(uint64_t offset, std::span<const uint8_t> data) override {
    if (stats_->fail) return Fail("injected write error");
    return inner_->Write(offset, data);
  }
  Result<void> Flush() override {
    if (stats_->fail) return Fail("injected flush error");
    ++stats_->flushes;
    return inner_->Flush();
  }
  Result<void> Discard(uint64_t offset, uint64_t length) override {
    if (stats_->fail) return Fail("injected discard error");
    return inner_->Discard(offset, length);
  }
  Result<void> WriteZeroes(uint64_t offset, uint64_t length) override {
    if (stats_->fail) return Fail("injected write-zeroes error");
    return inner_->WriteZeroes(offset, length);
  }
  int direct_fd() const override { return stats_->fail ? -1 : inner_->direct_fd(); }
  void NoteDirectWrite() override { inner_->NoteDirectWrite(); }
  std::string Describe() const override { return "test(" + inner_->Describe() + ")"; }

 private:
  std::unique_ptr<BlockBackend> inner_;
  Stats* stats_;
};

// Every test runs twice: with synchronous I/O, and with io_uring (BlockIo::kAuto on a raw file).
class BlockTest : public ::testing::TestWithParam<BlockIo> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    path_ = dir_.File("disk.raw");
    WriteFile(path_, Pattern(kDiskSize, 3));
  }

  std::unique_ptr<BlockBackend> Open(bool read_only, const std::string& path = {}) {
    auto backend = OpenImage(path.empty() ? path_ : path, OpenMode{.read_only = read_only}, Format::kRaw);
    EXPECT_TRUE(backend) << (backend ? "" : backend.error().message());
    if (!backend) return nullptr;
    return std::make_unique<TestBackend>(std::move(*backend), &stats_);
  }

  // Creates the device and transport and brings the driver up with `features` (device bits added
  // to the transport's).
  void Start(bool read_only = false, uint64_t device_features = ~0ull, std::string serial = "clone-disk-0",
             unsigned max_in_flight = 128) {
    auto block = Block::Create(Open(read_only), serial, Options(max_in_flight));
    ASSERT_TRUE(block) << block.error().message();
    block_ = block->get();
    ASSERT_EQ(block_->async(), async());
    ASSERT_EQ(block_->watched_fds().size(), async() ? 1u : 0u);
    if (async()) {
      ASSERT_EQ(block_->watched_fds()[0].fd, block_->completion_fd());
    }
    transport_ = MmioTransport::Create(memory_, std::move(*block)).value();
    driver_.emplace(*transport_);
    uint64_t offered = driver_->DeviceFeatures();
    ASSERT_TRUE(driver_->Negotiate(kBaseFeatures | (offered & device_features & 0xffffff)));
    driver_->SetUpQueue(0, queue_);
    driver_->DriverOk();
    ASSERT_EQ(driver_->Status() & kStatusDriverOk, kStatusDriverOk);
  }

  BlockOptions Options(unsigned max_in_flight = 128) const {
    return {.io = GetParam(), .max_in_flight = max_in_flight};
  }
  bool async() const { return GetParam() == BlockIo::kAuto; }

  // What the VMM's event loop does: waits for the completion eventfd and lets the device answer,
  // until `q`'s used index reaches `want` (or 5 s pass).
  void WaitForUsed(QueueDriver& q, uint16_t want) {
    for (int i = 0; i < 500 && q.UsedIdx() != want; ++i) {
      if (block_ == nullptr || block_->completion_fd() < 0) return;
      pollfd p{block_->completion_fd(), POLLIN, 0};
      ::poll(&p, 1, 10);
      transport_->RunDeviceTask([](VirtioDevice& d) { return d.HandleFdEvent(0, POLLIN); });
    }
  }

  uint64_t Header(uint32_t type, uint64_t sector) {
    uint64_t gpa = queue_.Alloc(16);
    virtio_blk_outhdr h{.type = htole32(type), .ioprio = 0, .sector = htole64(sector)};
    EXPECT_TRUE(memory_.Write(gpa, h));
    return gpa;
  }

  uint64_t Put(const std::vector<uint8_t>& bytes) {
    uint64_t gpa = queue_.Alloc(static_cast<uint32_t>(bytes.size()));
    EXPECT_TRUE(memory_.WriteBytes(gpa, bytes));
    return gpa;
  }

  std::vector<uint8_t> Get(uint64_t gpa, size_t len) {
    auto s = memory_.Span(gpa, len);
    return {s.begin(), s.end()};
  }

  // Publishes a chain, notifies, and returns {used len, status byte at status_gpa}.
  std::pair<uint32_t, uint8_t> Run(const std::vector<BufferSpec>& buffers, uint64_t status_gpa) {
    uint16_t used = queue_.UsedIdx();
    memory_.Span(status_gpa, 1)[0] = 0xee;
    uint16_t head = queue_.AddChain(buffers);
    driver_->Notify(0);
    WaitForUsed(queue_, static_cast<uint16_t>(used + 1));
    EXPECT_EQ(queue_.UsedIdx(), static_cast<uint16_t>(used + 1));
    auto [id, len] = queue_.UsedElem(used);
    EXPECT_EQ(id, head);
    return {len, memory_.Span(status_gpa, 1)[0]};
  }

  uint8_t Simple(uint32_t type, uint64_t sector, std::vector<BufferSpec> data = {}) {
    uint64_t status = queue_.Alloc(1);
    std::vector<BufferSpec> chain = {{Header(type, sector), 16, false}};
    chain.insert(chain.end(), data.begin(), data.end());
    chain.push_back({status, 1, true});
    return Run(chain, status).second;
  }

  uint8_t Segments(uint32_t type, std::vector<virtio_blk_discard_write_zeroes> segs) {
    for (auto& s : segs) {
      s.sector = htole64(s.sector);
      s.num_sectors = htole32(s.num_sectors);
      s.flags = htole32(s.flags);
    }
    std::vector<uint8_t> bytes(segs.size() * sizeof(segs[0]));
    std::memcpy(bytes.data(), segs.data(), bytes.size());
    return Simple(type, 0, {{Put(bytes), static_cast<uint32_t>(bytes.size()), false}});
  }

  void ExpectNeedsReset() {
    EXPECT_EQ(driver_->Status() & kStatusNeedsReset, kStatusNeedsReset);
    EXPECT_EQ(transport_->guest_error_count(), 1u);
    EXPECT_EQ(queue_.UsedIdx(), 0);
  }

  host_tools::TempDir dir_{"clone-virtio-blk"};
  std::string path_;
  TestBackend::Stats stats_;
  GuestMemory memory_ = std::move(GuestMemory::Create(8 * kMiB, 3ull << 30, 4ull << 30).value());
  QueueDriver queue_{memory_, Block::kQueueSize, 0x10000, 0x100000};
  std::shared_ptr<MmioTransport> transport_;
  Block* block_ = nullptr;  // owned by transport_
  std::optional<MmioDriver> driver_;
};

TEST_P(BlockTest, CreateRejectsLongSerialAndNoBackend) {
  EXPECT_FALSE(Block::Create(Open(false), std::string(21, 'x')));
  EXPECT_TRUE(Block::Create(Open(true), std::string(20, 'x')));
  EXPECT_FALSE(Block::Create(nullptr, "x"));
}

TEST_P(BlockTest, IdentityFeaturesAndConfig) {
  Start();
  EXPECT_EQ(driver_->Read32(0x008), kDeviceTypeBlock);
  EXPECT_EQ(transport_->num_queues(), 1u);
  uint64_t f = driver_->DeviceFeatures();
  EXPECT_EQ(f, kBaseFeatures | Bit(VIRTIO_BLK_F_SEG_MAX) | Bit(VIRTIO_BLK_F_BLK_SIZE) | Bit(VIRTIO_BLK_F_FLUSH) |
                   Bit(VIRTIO_BLK_F_DISCARD) | Bit(VIRTIO_BLK_F_WRITE_ZEROES));
  constexpr uint64_t kConfig = 0x100;
  auto cfg32 = [&](size_t field) { return driver_->Read32(kConfig + field); };
  EXPECT_EQ(cfg32(offsetof(virtio_blk_config, capacity)), kSectors);
  EXPECT_EQ(cfg32(offsetof(virtio_blk_config, capacity) + 4), 0u);
  EXPECT_EQ(cfg32(offsetof(virtio_blk_config, seg_max)), Block::kSegMax);
  EXPECT_EQ(cfg32(offsetof(virtio_blk_config, blk_size)), 512u);
  EXPECT_EQ(cfg32(offsetof(virtio_blk_config, max_discard_seg)), Block::kMaxDiscardSegments);
  EXPECT_EQ(cfg32(offsetof(virtio_blk_config, discard_sector_alignment)), Block::kDiscardSectorAlignment);
  EXPECT_EQ(cfg32(offsetof(virtio_blk_config, max_write_zeroes_sectors)), Block::kMaxWriteZeroesSectors);
  EXPECT_EQ(cfg32(offsetof(virtio_blk_config, write_zeroes_may_unmap)) & 0xff, 1u);
  EXPECT_LT(Block::kSegMax + 2, kMaxChainLength);
}

TEST_P(BlockTest, WriteThenReadAcrossSegments) {
  Start();
  // Write 3 sectors at sector 10: header and the first 100 data bytes share one buffer, the rest
  // are split unevenly.
  std::vector<uint8_t> data = Pattern(3 * 512, 99);
  std::vector<uint8_t> first(16 + 100);
  virtio_blk_outhdr h{.type = htole32(VIRTIO_BLK_T_OUT), .ioprio = 0, .sector = htole64(10)};
  std::memcpy(first.data(), &h, 16);
  std::memcpy(first.data() + 16, data.data(), 100);
  std::vector<uint8_t> second(data.begin() + 100, data.begin() + 1000);
  std::vector<uint8_t> third(data.begin() + 1000, data.end());
  uint64_t status = queue_.Alloc(1);
  auto [len, st] =
      Run({{Put(first), 116, false}, {Put(second), 900, false}, {Put(third), 536, false}, {status, 1, true}}, status);
  EXPECT_EQ(st, VIRTIO_BLK_S_OK);
  EXPECT_EQ(len, 1u);
  EXPECT_EQ(FileBytes(path_, 10 * 512, data.size()), data);
  const std::vector<uint8_t> original = Pattern(kDiskSize, 3);
  EXPECT_EQ(FileBytes(path_, 9 * 512, 512),
            std::vector<uint8_t>(original.begin() + 9 * 512, original.begin() + 10 * 512));

  // Read sectors 9..13 into three buffers; the status shares the last buffer with data.
  uint64_t a = queue_.Alloc(700), b = queue_.Alloc(1000), c = queue_.Alloc(861);
  auto [rlen, rst] =
      Run({{Header(VIRTIO_BLK_T_IN, 9), 16, false}, {a, 700, true}, {b, 1000, true}, {c, 861, true}}, c + 860);
  EXPECT_EQ(rst, VIRTIO_BLK_S_OK);
  EXPECT_EQ(rlen, 2561u);
  std::vector<uint8_t> got = Get(a, 700);
  auto more = Get(b, 1000);
  got.insert(got.end(), more.begin(), more.end());
  more = Get(c, 860);
  got.insert(got.end(), more.begin(), more.end());
  EXPECT_EQ(got, FileBytes(path_, 9 * 512, 5 * 512));
  EXPECT_EQ(std::vector<uint8_t>(got.begin() + 512, got.begin() + 4 * 512), data);
}

TEST_P(BlockTest, IndirectRead) {
  Start();
  uint64_t buf = queue_.Alloc(4096), status = queue_.Alloc(1);
  queue_.Publish(queue_.BuildIndirectChain(
      {{Header(VIRTIO_BLK_T_IN, kSectors - 8), 16, false}, {buf, 4096, true}, {status, 1, true}}));
  driver_->Notify(0);
  WaitForUsed(queue_, 1);
  ASSERT_EQ(queue_.UsedIdx(), 1);
  EXPECT_EQ(Get(status, 1)[0], VIRTIO_BLK_S_OK);
  EXPECT_EQ(Get(buf, 4096), FileBytes(path_, kDiskSize - 4096, 4096));
}

TEST_P(BlockTest, FlushReachesTheBackend) {
  Start();
  uint64_t data = Put(Pattern(512, 1));
  EXPECT_EQ(Simple(VIRTIO_BLK_T_OUT, 0, {{data, 512, false}}), VIRTIO_BLK_S_OK);
  EXPECT_EQ(stats_.flushes, 0);  // write-back: FLUSH was negotiated
  EXPECT_EQ(Simple(VIRTIO_BLK_T_FLUSH, 0), VIRTIO_BLK_S_OK);
  EXPECT_EQ(stats_.flushes, async() ? 0 : 1);  // io_uring: IORING_OP_FSYNC on the file itself
  EXPECT_EQ(FileBytes(path_, 0, 512), Pattern(512, 1));
}

TEST_P(BlockTest, WithoutFlushFeatureWritesAreWriteThrough) {
  Start(false, ~Bit(VIRTIO_BLK_F_FLUSH));
  uint64_t data = Put(Pattern(512, 1));
  EXPECT_EQ(Simple(VIRTIO_BLK_T_OUT, 0, {{data, 512, false}}), VIRTIO_BLK_S_OK);
  EXPECT_EQ(stats_.flushes, async() ? 0 : 1);  // io_uring: a linked fdatasync
  EXPECT_EQ(FileBytes(path_, 0, 512), Pattern(512, 1));
}

TEST_P(BlockTest, GetId) {
  Start(false, ~0ull, "serial-42");
  uint64_t id = queue_.Alloc(20);
  std::memset(memory_.Span(id, 20).data(), 0xaa, 20);
  uint64_t status = queue_.Alloc(1);
  auto [len, st] = Run({{Header(VIRTIO_BLK_T_GET_ID, 0), 16, false}, {id, 20, true}, {status, 1, true}}, status);
  EXPECT_EQ(st, VIRTIO_BLK_S_OK);
  EXPECT_EQ(len, 21u);
  std::vector<uint8_t> want(20, 0);
  std::memcpy(want.data(), "serial-42", 9);
  EXPECT_EQ(Get(id, 20), want);
}

TEST_P(BlockTest, WriteZeroesAndDiscardZeroData) {
  Start();
  std::vector<uint8_t> zeros(8 * 512, 0);
  ASSERT_NE(FileBytes(path_, 0, 8 * 512), zeros);
  EXPECT_EQ(Segments(VIRTIO_BLK_T_WRITE_ZEROES,
                     {{.sector = 0, .num_sectors = 8, .flags = 0},
                      {.sector = 64, .num_sectors = 8, .flags = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP}}),
            VIRTIO_BLK_S_OK);
  EXPECT_EQ(FileBytes(path_, 0, 8 * 512), zeros);
  EXPECT_EQ(FileBytes(path_, 64 * 512, 8 * 512), zeros);
  EXPECT_NE(FileBytes(path_, 8 * 512, 512), std::vector<uint8_t>(512, 0));

  // Raw discard punches a hole: the range then reads as zeros (the other allowed outcome is the
  // old data; either way the device answers OK).
  EXPECT_EQ(Segments(VIRTIO_BLK_T_DISCARD, {{.sector = 128, .num_sectors = 16, .flags = 0}}), VIRTIO_BLK_S_OK);
  auto after = FileBytes(path_, 128 * 512, 16 * 512);
  const std::vector<uint8_t> original = Pattern(kDiskSize, 3);
  EXPECT_TRUE(after == std::vector<uint8_t>(16 * 512, 0) ||
              after == std::vector<uint8_t>(original.begin() + 128 * 512, original.begin() + 144 * 512));

  // The device reads zeros back too.
  uint64_t buf = queue_.Alloc(8 * 512);
  std::memset(memory_.Span(buf, 8 * 512).data(), 0x55, 8 * 512);
  EXPECT_EQ(Simple(VIRTIO_BLK_T_IN, 64, {{buf, 8 * 512, true}}), VIRTIO_BLK_S_OK);
  EXPECT_EQ(Get(buf, 8 * 512), zeros);
}

TEST_P(BlockTest, BadSegmentsAreAnsweredInBand) {
  Start();
  // UNMAP on a discard, unknown flags → UNSUPP, nothing done.
  EXPECT_EQ(
      Segments(VIRTIO_BLK_T_DISCARD, {{.sector = 0, .num_sectors = 1, .flags = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP}}),
      VIRTIO_BLK_S_UNSUPP);
  EXPECT_EQ(Segments(VIRTIO_BLK_T_WRITE_ZEROES, {{.sector = 0, .num_sectors = 1, .flags = 2}}), VIRTIO_BLK_S_UNSUPP);
  // Out of range, too many sectors, too many segments, a partial segment → IOERR.
  EXPECT_EQ(Segments(VIRTIO_BLK_T_WRITE_ZEROES, {{.sector = 0, .num_sectors = 1, .flags = 0},
                                                 {.sector = kSectors - 1, .num_sectors = 2, .flags = 0}}),
            VIRTIO_BLK_S_IOERR);
  EXPECT_NE(FileBytes(path_, 0, 512), std::vector<uint8_t>(512, 0));  // checked before acting
  EXPECT_EQ(Segments(VIRTIO_BLK_T_WRITE_ZEROES, {{.sector = 0, .num_sectors = Block::kMaxWriteZeroesSectors + 1}}),
            VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(Segments(VIRTIO_BLK_T_DISCARD,
                     std::vector<virtio_blk_discard_write_zeroes>(Block::kMaxDiscardSegments + 1, {0, 1, 0})),
            VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(Simple(VIRTIO_BLK_T_DISCARD, 0, {{Put(std::vector<uint8_t>(8, 0)), 8, false}}), VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(Simple(VIRTIO_BLK_T_DISCARD, 0), VIRTIO_BLK_S_IOERR);
}

TEST_P(BlockTest, DiscardNotNegotiatedIsUnsupported) {
  Start(false, ~(Bit(VIRTIO_BLK_F_DISCARD) | Bit(VIRTIO_BLK_F_WRITE_ZEROES)));
  EXPECT_EQ(Segments(VIRTIO_BLK_T_DISCARD, {{.sector = 0, .num_sectors = 1, .flags = 0}}), VIRTIO_BLK_S_UNSUPP);
  EXPECT_EQ(Segments(VIRTIO_BLK_T_WRITE_ZEROES, {{.sector = 0, .num_sectors = 1, .flags = 0}}), VIRTIO_BLK_S_UNSUPP);
}

TEST_P(BlockTest, ReadOnlyDiskRejectsWrites) {
  Start(/*read_only=*/true);
  uint64_t f = driver_->DeviceFeatures();
  EXPECT_TRUE(f & Bit(VIRTIO_BLK_F_RO));
  EXPECT_FALSE(f & Bit(VIRTIO_BLK_F_DISCARD));
  EXPECT_FALSE(f & Bit(VIRTIO_BLK_F_WRITE_ZEROES));
  auto before = FileBytes(path_, 0, 512);
  uint64_t data = Put(std::vector<uint8_t>(512, 0x11));
  EXPECT_EQ(Simple(VIRTIO_BLK_T_OUT, 0, {{data, 512, false}}), VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(FileBytes(path_, 0, 512), before);
  EXPECT_EQ(Segments(VIRTIO_BLK_T_WRITE_ZEROES, {{.sector = 0, .num_sectors = 1, .flags = 0}}), VIRTIO_BLK_S_UNSUPP);
  uint64_t buf = queue_.Alloc(512);
  EXPECT_EQ(Simple(VIRTIO_BLK_T_IN, 0, {{buf, 512, true}}), VIRTIO_BLK_S_OK);
  EXPECT_EQ(Get(buf, 512), before);
  EXPECT_EQ(Simple(VIRTIO_BLK_T_FLUSH, 0), VIRTIO_BLK_S_OK);
}

TEST_P(BlockTest, OutOfRangeAndUnalignedAreIoErrors) {
  Start();
  uint64_t buf = queue_.Alloc(1024);
  EXPECT_EQ(Simple(VIRTIO_BLK_T_IN, kSectors, {{buf, 512, true}}), VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(Simple(VIRTIO_BLK_T_IN, kSectors - 1, {{buf, 1024, true}}), VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(Simple(VIRTIO_BLK_T_IN, ~0ull / 512 + 1, {{buf, 512, true}}), VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(Simple(VIRTIO_BLK_T_IN, ~0ull, {{buf, 512, true}}), VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(Simple(VIRTIO_BLK_T_OUT, kSectors - 1, {{buf, 1024, false}}), VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(Simple(VIRTIO_BLK_T_IN, 0, {{buf, 100, true}}), VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(FileBytes(path_, 0, kDiskSize), Pattern(kDiskSize, 3));
  // Still working; the last sector is readable.
  EXPECT_EQ(Simple(VIRTIO_BLK_T_IN, kSectors - 1, {{buf, 512, true}}), VIRTIO_BLK_S_OK);
  EXPECT_EQ(driver_->Status() & kStatusNeedsReset, 0u);
}

TEST_P(BlockTest, UnknownTypeIsUnsupported) {
  Start();
  EXPECT_EQ(Simple(VIRTIO_BLK_T_SCSI_CMD, 0), VIRTIO_BLK_S_UNSUPP);
  EXPECT_EQ(Simple(0x12345, 0), VIRTIO_BLK_S_UNSUPP);
  EXPECT_EQ(Simple(VIRTIO_BLK_T_FLUSH, 0), VIRTIO_BLK_S_OK);
}

TEST_P(BlockTest, BackendErrorsAreIoErrorsAndTheDeviceKeepsWorking) {
  Start();
  uint64_t buf = queue_.Alloc(512);
  stats_.fail = true;
  EXPECT_EQ(Simple(VIRTIO_BLK_T_IN, 0, {{buf, 512, true}}), VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(Simple(VIRTIO_BLK_T_OUT, 0, {{buf, 512, false}}), VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(Simple(VIRTIO_BLK_T_FLUSH, 0), VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(Segments(VIRTIO_BLK_T_DISCARD, {{.sector = 0, .num_sectors = 1, .flags = 0}}), VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(Segments(VIRTIO_BLK_T_WRITE_ZEROES, {{.sector = 0, .num_sectors = 1, .flags = 1}}), VIRTIO_BLK_S_IOERR);
  stats_.fail = false;
  EXPECT_EQ(Simple(VIRTIO_BLK_T_IN, 0, {{buf, 512, true}}), VIRTIO_BLK_S_OK);
  EXPECT_EQ(driver_->Status() & kStatusNeedsReset, 0u);
  EXPECT_EQ(transport_->guest_error_count(), 0u);
}

TEST_P(BlockTest, NoStatusByteNeedsReset) {
  Start();
  queue_.AddChain({{Header(VIRTIO_BLK_T_FLUSH, 0), 16, false}});
  driver_->Notify(0);
  ExpectNeedsReset();
}

TEST_P(BlockTest, ShortHeaderNeedsReset) {
  Start();
  uint64_t status = queue_.Alloc(1);
  queue_.AddChain({{Header(VIRTIO_BLK_T_IN, 0), 8, false}, {status, 1, true}});
  driver_->Notify(0);
  ExpectNeedsReset();
}

TEST_P(BlockTest, ReadableStatusNeedsReset) {
  Start();
  queue_.AddChain({{Header(VIRTIO_BLK_T_FLUSH, 0), 16, false}, {queue_.Alloc(1), 1, false}});
  driver_->Notify(0);
  ExpectNeedsReset();
}

TEST_P(BlockTest, ReadWithReadableDataNeedsReset) {
  Start();
  queue_.AddChain(
      {{Header(VIRTIO_BLK_T_IN, 0), 16, false}, {queue_.Alloc(512), 512, false}, {queue_.Alloc(1), 1, true}});
  driver_->Notify(0);
  ExpectNeedsReset();
}

TEST_P(BlockTest, WriteWithWritableDataNeedsReset) {
  Start();
  queue_.AddChain(
      {{Header(VIRTIO_BLK_T_OUT, 0), 16, false}, {queue_.Alloc(512), 512, true}, {queue_.Alloc(1), 1, true}});
  driver_->Notify(0);
  ExpectNeedsReset();
}

TEST_P(BlockTest, GoodRequestsBeforeABadOneAreCompleted) {
  Start();
  uint64_t status = queue_.Alloc(1);
  queue_.AddChain({{Header(VIRTIO_BLK_T_FLUSH, 0), 16, false}, {status, 1, true}});
  queue_.AddChain({{Header(VIRTIO_BLK_T_FLUSH, 0), 16, false}});
  driver_->Notify(0);
  EXPECT_EQ(driver_->Status() & kStatusNeedsReset, kStatusNeedsReset);
  // With io_uring the good flush was in flight when the bad chain stopped the device: the reset
  // waited for it and dropped it, as a driver resetting the device expects.
  EXPECT_EQ(queue_.UsedIdx(), async() ? 0 : 1);
  if (!async()) {
    EXPECT_EQ(Get(status, 1)[0], VIRTIO_BLK_S_OK);
  }
  // The driver resets and the device is usable again.
  driver_->SetStatus(0);
  ASSERT_TRUE(driver_->Negotiate(kBaseFeatures | Bit(VIRTIO_BLK_F_FLUSH)));
  QueueDriver fresh{memory_, Block::kQueueSize, 0x20000, 0x600000};
  driver_->SetUpQueue(0, fresh);
  driver_->DriverOk();
  uint64_t hdr = fresh.Alloc(16), st = fresh.Alloc(1);
  virtio_blk_outhdr h{.type = htole32(VIRTIO_BLK_T_FLUSH), .ioprio = 0, .sector = 0};
  ASSERT_TRUE(memory_.Write(hdr, h));
  fresh.AddChain({{hdr, 16, false}, {st, 1, true}});
  driver_->Notify(0);
  WaitForUsed(fresh, 1);
  EXPECT_EQ(fresh.UsedIdx(), 1);
  EXPECT_EQ(Get(st, 1)[0], VIRTIO_BLK_S_OK);
}

TEST_P(BlockTest, StateIsVersionedAndChecked) {
  auto block = Block::Create(Open(false), "abc", Options()).value();
  nlohmann::json state = block->SaveState();
  EXPECT_EQ(state["version"], 1);
  EXPECT_EQ(state["capacity"], kSectors);
  EXPECT_EQ(state["serial"], "abc");
  EXPECT_EQ(state["read_only"], false);
  EXPECT_EQ(state["features"], block->device_features());
  block.reset();

  auto fresh = [&](bool ro, std::string serial, const std::string& path = {}) {
    return Block::Create(Open(ro, path), std::move(serial), Options()).value();
  };
  EXPECT_TRUE(fresh(false, "abc")->RestoreState(state));
  EXPECT_FALSE(fresh(false, "xyz")->RestoreState(state));
  EXPECT_FALSE(fresh(true, "abc")->RestoreState(state));
  std::string small = dir_.File("small.raw");
  WriteFile(small, std::vector<uint8_t>(kDiskSize / 2, 0));
  auto err = fresh(false, "abc", small)->RestoreState(state);
  ASSERT_FALSE(err);
  EXPECT_NE(err.error().message().find("sectors"), std::string::npos) << err.error().message();

  nlohmann::json bad = state;
  bad["version"] = 2;
  EXPECT_FALSE(fresh(false, "abc")->RestoreState(bad));
  bad = state;
  bad.erase("capacity");
  EXPECT_FALSE(fresh(false, "abc")->RestoreState(bad));
  bad = state;
  bad["serial"] = 5;
  EXPECT_FALSE(fresh(false, "abc")->RestoreState(bad));
}

TEST_P(BlockTest, SaveRestoreRoundTrips) {
  Start();
  uint64_t data = Put(Pattern(512, 77));
  EXPECT_EQ(Simple(VIRTIO_BLK_T_OUT, 5, {{data, 512, false}}), VIRTIO_BLK_S_OK);
  nlohmann::json saved = transport_->SaveState();
  transport_.reset();  // closes the image (and releases its lock), as the old VMM exits
  driver_.reset();

  auto block = Block::Create(Open(false), "clone-disk-0", Options());
  ASSERT_TRUE(block);
  block_ = block->get();
  auto restored = MmioTransport::Create(memory_, std::move(*block)).value();
  ASSERT_TRUE(restored->RestoreState(saved));
  EXPECT_EQ(restored->SaveState(), saved);
  transport_ = restored;
  driver_.emplace(*transport_);
  uint64_t buf = queue_.Alloc(512);
  EXPECT_EQ(Simple(VIRTIO_BLK_T_IN, 5, {{buf, 512, true}}), VIRTIO_BLK_S_OK);
  EXPECT_EQ(Get(buf, 512), Pattern(512, 77));
  EXPECT_EQ(queue_.UsedIdx(), 2);
}

TEST_P(BlockTest, ManyRequestsAtOnceAllCompleteWithBoundedRequestsInFlight) {
  Start(false, ~0ull, "clone-disk-0", /*max_in_flight=*/4);
  constexpr int kCount = 40;
  std::vector<uint64_t> bufs, statuses;
  for (int i = 0; i < kCount; ++i) {
    bufs.push_back(queue_.Alloc(4096));
    statuses.push_back(queue_.Alloc(1));
    memory_.Span(statuses.back(), 1)[0] = 0xee;
    if (i % 4 == 3) {  // every fourth request a write of a fresh pattern, the rest reads
      EXPECT_TRUE(memory_.WriteBytes(bufs.back(), Pattern(4096, static_cast<uint8_t>(i))));
      queue_.AddChain(
          {{Header(VIRTIO_BLK_T_OUT, 8 * i), 16, false}, {bufs.back(), 4096, false}, {statuses.back(), 1, true}});
    } else {
      queue_.AddChain(
          {{Header(VIRTIO_BLK_T_IN, 8 * i), 16, false}, {bufs.back(), 4096, true}, {statuses.back(), 1, true}});
    }
  }
  driver_->Notify(0);
  // A full ring stops the device taking chains: never more than the depth minus the room kept
  // for a linked write + sync.
  EXPECT_LE(block_->requests_in_flight(), 3u);
  if (async()) {
    EXPECT_LT(queue_.UsedIdx(), kCount);
  }
  WaitForUsed(queue_, kCount);
  ASSERT_EQ(queue_.UsedIdx(), kCount);
  EXPECT_EQ(block_->requests_in_flight(), 0u);
  const std::vector<uint8_t> original = Pattern(kDiskSize, 3);
  for (int i = 0; i < kCount; ++i) {
    EXPECT_EQ(Get(statuses[i], 1)[0], VIRTIO_BLK_S_OK) << i;
    const uint64_t at = 8 * 512 * static_cast<uint64_t>(i);
    if (i % 4 == 3) {
      EXPECT_EQ(FileBytes(path_, at, 4096), Pattern(4096, static_cast<uint8_t>(i))) << i;
    } else {
      EXPECT_EQ(Get(bufs[i], 4096), std::vector<uint8_t>(original.begin() + at, original.begin() + at + 4096)) << i;
    }
  }
}

TEST_P(BlockTest, ResetWaitsForRequestsInFlightAndDropsThem) {
  Start();
  for (int i = 0; i < 16; ++i) {
    queue_.AddChain({{Header(VIRTIO_BLK_T_IN, 128 * i), 16, false},
                     {queue_.Alloc(65536), 65536, true},
                     {queue_.Alloc(1), 1, true}});
  }
  driver_->Notify(0);
  driver_->SetStatus(0);
  EXPECT_EQ(block_->requests_in_flight(), 0u);
  // Synchronous I/O answered everything before the reset; io_uring requests were dropped.
  EXPECT_EQ(queue_.UsedIdx(), async() ? 0 : 16);
  if (async()) {
    pollfd p{block_->completion_fd(), POLLIN, 0};
    EXPECT_EQ(::poll(&p, 1, 50), 0);  // nothing left to reap
  }
  EXPECT_EQ(transport_->guest_error_count(), 0u);
}

TEST_P(BlockTest, ImageShrunkUnderTheDeviceGivesIoErrors) {
  Start();
  ASSERT_EQ(::truncate(path_.c_str(), kDiskSize / 2), 0);
  uint64_t buf = queue_.Alloc(8192);
  EXPECT_EQ(Simple(VIRTIO_BLK_T_IN, kSectors - 16, {{buf, 8192, true}}), VIRTIO_BLK_S_IOERR);
  // A read that straddles the new end: the io_uring read is short, the rest fails synchronously.
  EXPECT_EQ(Simple(VIRTIO_BLK_T_IN, kSectors / 2 - 8, {{buf, 8192, true}}), VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(Simple(VIRTIO_BLK_T_IN, 0, {{buf, 4096, true}}), VIRTIO_BLK_S_OK);
  EXPECT_EQ(Get(buf, 4096), Pattern(4096, 3));
}

TEST_P(BlockTest, WriteAndFlushInOneBatch) {
  Start();
  uint64_t data = Put(Pattern(65536, 9)), s1 = queue_.Alloc(1), s2 = queue_.Alloc(1);
  queue_.AddChain({{Header(VIRTIO_BLK_T_OUT, 256), 16, false}, {data, 65536, false}, {s1, 1, true}});
  queue_.AddChain({{Header(VIRTIO_BLK_T_FLUSH, 0), 16, false}, {s2, 1, true}});
  driver_->Notify(0);
  WaitForUsed(queue_, 2);
  ASSERT_EQ(queue_.UsedIdx(), 2);
  EXPECT_EQ(Get(s1, 1)[0], VIRTIO_BLK_S_OK);
  EXPECT_EQ(Get(s2, 1)[0], VIRTIO_BLK_S_OK);
  EXPECT_EQ(FileBytes(path_, 256 * 512, 65536), Pattern(65536, 9));
  // The drained fsync is ordered after the write: its answer comes second.
  if (async()) {  // the flush's head is the write's + 3 (three descriptors)
    EXPECT_EQ(queue_.UsedElem(1).first, queue_.UsedElem(0).first + 3);
  }
}

TEST_P(BlockTest, WithoutIoUringTheDeviceFallsBackToSynchronousIo) {
  if (!async()) GTEST_SKIP() << "the fallback is what the Sync variant runs anyway";
  std::unique_ptr<Block> block;
  ASSERT_TRUE(blocktest::RunWithoutIoUring([&] { block = Block::Create(Open(false), "nouring", Options()).value(); }));
  ASSERT_NE(block, nullptr);
  EXPECT_FALSE(block->async());
  EXPECT_EQ(block->completion_fd(), -1);
  block_ = block.get();
  transport_ = MmioTransport::Create(memory_, std::move(block)).value();
  driver_.emplace(*transport_);
  ASSERT_TRUE(driver_->Negotiate(kBaseFeatures | Bit(VIRTIO_BLK_F_FLUSH)));
  driver_->SetUpQueue(0, queue_);
  driver_->DriverOk();
  uint64_t data = Put(Pattern(4096, 5));
  // Answered within the notification itself: no completion to wait for.
  EXPECT_EQ(Simple(VIRTIO_BLK_T_OUT, 64, {{data, 4096, false}}), VIRTIO_BLK_S_OK);
  EXPECT_EQ(Simple(VIRTIO_BLK_T_FLUSH, 0), VIRTIO_BLK_S_OK);
  EXPECT_EQ(FileBytes(path_, 64 * 512, 4096), Pattern(4096, 5));
  EXPECT_EQ(stats_.flushes, 1);
}

INSTANTIATE_TEST_SUITE_P(Io, BlockTest, ::testing::Values(BlockIo::kSync, BlockIo::kAuto),
                         [](const ::testing::TestParamInfo<BlockIo>& param) {
                           return param.param == BlockIo::kSync ? "Sync" : "IoUring";
                         });

}  // namespace
}  // namespace clonevm::virtio

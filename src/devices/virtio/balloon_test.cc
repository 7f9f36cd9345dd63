#include "devices/virtio/balloon.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "devices/virtio/mmio_transport.h"
#include "devices/virtio/testing/mmio_driver.h"
#include "devices/virtio/testing/queue_driver.h"
#include "devices/virtio/virtio_spec.h"

namespace clonevm::virtio {
namespace {

using testing::MmioDriver;
using testing::QueueDriver;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kPage = 4096;
// Guest RAM: [0, 12 MiB) and [16 MiB, 20 MiB), the MMIO hole between.
constexpr uint64_t kHole = 12 * kMiB, kHigh = 16 * kMiB, kRam = 16 * kMiB;
constexpr uint64_t kProtected = kMiB;
constexpr uint64_t kAllFeatures = kFeatureVersion1 | kFeatureEventIdx | kFeatureIndirectDesc | kBalloonFeatureStatsVq |
                                  kBalloonFeatureDeflateOnOom | kBalloonFeatureReporting;

bool Present(const uint8_t* host) {
  int fd = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  uint64_t entry = 0;
  off_t offset = static_cast<off_t>(reinterpret_cast<uintptr_t>(host) / kPage * sizeof(entry));
  EXPECT_EQ(::pread(fd, &entry, sizeof(entry), offset), static_cast<ssize_t>(sizeof(entry)));
  ::close(fd);
  return ((entry >> 63) & 1) != 0;
}

uint32_t Pfn(uint64_t gpa) { return static_cast<uint32_t>(gpa / kPage); }

class BalloonTest : public ::testing::Test {
 protected:
  explicit BalloonTest(GuestMemory memory = GuestMemory::Create(kRam, kHole, kHigh).value())
      : memory_(std::move(memory)) {}

  void SetUp() override { Start(kAllFeatures); }

  void Start(uint64_t features, BalloonOptions options = {}) {
    options.protected_below = kProtected;
    auto balloon = Balloon::Create(options, kRam, kHigh + (kRam - kHole));
    ASSERT_TRUE(balloon) << balloon.error().message();
    transport_ = MmioTransport::Create(memory_, std::move(*balloon)).value();
    driver_ = std::make_unique<MmioDriver>(*transport_);
    ASSERT_TRUE(driver_->Negotiate(features));
    size_t queues = 2 + ((features & kBalloonFeatureStatsVq) != 0) + ((features & kBalloonFeatureReporting) != 0);
    for (uint32_t i = 0; i < queues; ++i) driver_->SetUpQueue(i, queues_[i]);
    driver_->DriverOk();
    ASSERT_EQ(driver_->Status() & kStatusDriverOk, kStatusDriverOk);
  }

  // A PFN array in the queue's data area, published as one readable chain.
  void Send(QueueDriver& queue, uint32_t index, const std::vector<uint32_t>& pfns) {
    uint32_t bytes = static_cast<uint32_t>(pfns.size() * 4);
    uint64_t at = queue.Alloc(bytes);
    ASSERT_TRUE(memory_.WriteBytes(at, std::span(reinterpret_cast<const uint8_t*>(pfns.data()), bytes)));
    queue.AddChain({{at, bytes}});
    driver_->Notify(index);
  }

  void Fill(uint64_t gpa, uint64_t len, uint8_t value) { std::memset(memory_.Span(gpa, len).data(), value, len); }
  bool All(uint64_t gpa, uint64_t len, uint8_t value) {
    auto span = memory_.Span(gpa, len);
    return !span.empty() && std::all_of(span.begin(), span.end(), [value](uint8_t b) { return b == value; });
  }

  BalloonStatus Status() {
    BalloonStatus status;
    EXPECT_TRUE(transport_->WithDevice([&](VirtioDevice& d) -> Result<void> {
      status = static_cast<Balloon&>(d).status();
      return {};
    }));
    return status;
  }
  void SetTarget(uint64_t pages) {
    EXPECT_TRUE(transport_->WithDevice([&](VirtioDevice& d) -> Result<void> {
      static_cast<Balloon&>(d).SetTarget(pages);
      return {};
    }));
  }
  bool NeedsReset() { return (driver_->Status() & kStatusNeedsReset) != 0; }

  GuestMemory memory_;
  // Rings and data areas inside the protected first MiB (as a driver's would be anywhere).
  QueueDriver queues_[4] = {{memory_, Balloon::kQueueSize, 0x20000, 0x40000},
                            {memory_, Balloon::kQueueSize, 0x24000, 0x50000},
                            {memory_, Balloon::kQueueSize, 0x28000, 0x60000},
                            {memory_, Balloon::kQueueSize, 0x2c000, 0x70000}};
  std::shared_ptr<MmioTransport> transport_;
  std::unique_ptr<MmioDriver> driver_;
};

TEST_F(BalloonTest, IsABalloonWithFourQueues) {
  EXPECT_EQ(driver_->Read32(0x008), kDeviceTypeBalloon);
  EXPECT_EQ(transport_->num_queues(), 4u);
  EXPECT_EQ(driver_->DeviceFeatures() & ~(kFeatureVersion1 | kFeatureEventIdx | kFeatureIndirectDesc),
            kBalloonFeatureStatsVq | kBalloonFeatureDeflateOnOom | kBalloonFeatureReporting);
  EXPECT_TRUE(Status().driver_ok);
}

TEST_F(BalloonTest, OptionsDecideFeaturesAndQueues) {
  auto balloon = Balloon::Create({.free_page_reporting = false, .deflate_on_oom = false, .stats_interval_s = 0}, kRam,
                                 kHigh + 4 * kMiB);
  ASSERT_TRUE(balloon);
  EXPECT_EQ((*balloon)->device_features(), 0u);
  EXPECT_EQ((*balloon)->queue_max_sizes().size(), 2u);
}

TEST_F(BalloonTest, InflateDiscardsPagesAndTheGuestCanUseThemAgain) {
  Fill(4 * kMiB, 8 * kPage, 0xab);
  Fill(kHigh, kPage, 0xcd);
  ASSERT_TRUE(Present(memory_.Span(4 * kMiB, 1).data()));
  std::vector<uint32_t> pfns;
  for (uint32_t i = 0; i < 8; ++i) pfns.push_back(Pfn(4 * kMiB) + i);
  pfns.push_back(Pfn(kHigh));
  Send(queues_[0], 0, pfns);
  ASSERT_EQ(queues_[0].UsedIdx(), 1);
  EXPECT_EQ(queues_[0].UsedElem(0).second, 0u);
  for (uint32_t i = 0; i < 8; ++i) EXPECT_FALSE(Present(memory_.Span(4 * kMiB + i * kPage, 1).data()));
  EXPECT_TRUE(All(4 * kMiB, 8 * kPage, 0));
  EXPECT_TRUE(All(kHigh, kPage, 0));
  BalloonStatus s = Status();
  EXPECT_EQ(s.inflated_pages, 9u);
  EXPECT_EQ(s.ignored_pfns, 0u);
  EXPECT_FALSE(NeedsReset());
  ASSERT_TRUE(memory_.Write<uint32_t>(4 * kMiB, 0x1234));  // the guest touches it again
  EXPECT_EQ(*memory_.Read<uint32_t>(4 * kMiB), 0x1234u);
}

TEST_F(BalloonTest, HostilePfnsAreIgnoredAndTouchNothing) {
  Fill(0x6000, kPage, 0x66);  // the identity page, in the protected area
  Fill(kHole - kPage, kPage, 0x77);
  Fill(2 * kMiB, kPage, 0x88);
  Send(queues_[0], 0,
       {Pfn(0x6000), Pfn(0), Pfn(kHole), Pfn(kHole + kMiB), Pfn(kHigh + 4 * kMiB), 0xffffffffu, Pfn(2 * kMiB),
        Pfn(2 * kMiB)});
  ASSERT_EQ(queues_[0].UsedIdx(), 1);
  EXPECT_FALSE(NeedsReset());
  EXPECT_TRUE(All(0x6000, kPage, 0x66));
  EXPECT_TRUE(All(kHole - kPage, kPage, 0x77));
  EXPECT_TRUE(All(2 * kMiB, kPage, 0));  // the one valid page, once
  BalloonStatus s = Status();
  EXPECT_EQ(s.inflated_pages, 1u);
  EXPECT_EQ(s.ignored_pfns, 7u);  // 6 outside RAM or protected, 1 repeated
}

TEST_F(BalloonTest, DeflateForgetsOnlyInflatedPages) {
  Send(queues_[0], 0, {Pfn(3 * kMiB), Pfn(3 * kMiB) + 1, Pfn(3 * kMiB) + 2});
  Send(queues_[1], 1, {Pfn(3 * kMiB), Pfn(3 * kMiB) + 1, Pfn(5 * kMiB), 0xffffffffu});
  ASSERT_EQ(queues_[1].UsedIdx(), 1);
  BalloonStatus s = Status();
  EXPECT_EQ(s.inflated_pages, 1u);
  EXPECT_EQ(s.ignored_pfns, 2u);
  Send(queues_[1], 1, {Pfn(3 * kMiB)});  // deflated twice
  EXPECT_EQ(Status().ignored_pfns, 3u);
  EXPECT_FALSE(NeedsReset());
}

TEST_F(BalloonTest, AResetDriverStartsWithAnEmptyBalloon) {
  Send(queues_[0], 0, {Pfn(3 * kMiB)});
  driver_->Write32(0x104, 1);
  ASSERT_EQ(Status().inflated_pages, 1u);
  // The driver resets the device (Negotiate writes status 0 first) and sets it up on fresh rings.
  constexpr uint16_t kSize = Balloon::kQueueSize;
  QueueDriver fresh[4] = {{memory_, kSize, 0x30000, 0x80000},
                          {memory_, kSize, 0x34000, 0x84000},
                          {memory_, kSize, 0x38000, 0x88000},
                          {memory_, kSize, 0x3c000, 0x8c000}};
  ASSERT_TRUE(driver_->Negotiate(kAllFeatures));
  for (uint32_t i = 0; i < 4; ++i) driver_->SetUpQueue(i, fresh[i]);
  driver_->DriverOk();
  EXPECT_EQ(Status().inflated_pages, 0u);
  EXPECT_EQ(Status().actual_pages, 0u);
  Fill(3 * kMiB, kPage, 0x12);
  Send(fresh[0], 0, {Pfn(3 * kMiB)});
  ASSERT_EQ(fresh[0].UsedIdx(), 1);
  EXPECT_TRUE(All(3 * kMiB, kPage, 0));  // discarded again, not ignored as a repeat
  EXPECT_EQ(Status().ignored_pfns, 0u);
  EXPECT_EQ(Status().inflated_pages, 1u);
}

TEST_F(BalloonTest, MalformedPfnBuffersNeedReset) {
  uint64_t at = queues_[0].Alloc(8);
  queues_[0].AddChain({{at, 6}});  // not whole PFNs
  driver_->Notify(0);
  EXPECT_TRUE(NeedsReset());
  EXPECT_EQ(transport_->guest_error_count(), 1u);
}

TEST_F(BalloonTest, HugePfnBuffersNeedReset) {
  uint32_t bytes = (Balloon::kMaxPfnsPerChain + 1) * 4;
  uint64_t at = queues_[1].Alloc(bytes);
  queues_[1].AddChain({{at, bytes}});
  driver_->Notify(1);
  EXPECT_TRUE(NeedsReset());
}

TEST_F(BalloonTest, TargetIsAnnouncedAndActualComesFromTheDriver) {
  driver_->Ack(driver_->InterruptStatus());
  SetTarget(1000);
  EXPECT_EQ(driver_->Read32(0x100), 1000u);
  EXPECT_EQ(driver_->InterruptStatus() & kInterruptConfigChange, kInterruptConfigChange);
  driver_->Write32(0x104, 600);
  driver_->Write32(0x100, 5);  // num_pages is the device's: ignored
  BalloonStatus s = Status();
  EXPECT_EQ(s.target_pages, 1000u);
  EXPECT_EQ(s.actual_pages, 600u);
  SetTarget(1ull << 40);
  EXPECT_EQ(Status().target_pages, kRam / kPage);  // capped at the guest's RAM
}

// struct virtio_balloon_stat entries, packed.
std::vector<uint8_t> Stats(const std::vector<std::pair<uint16_t, uint64_t>>& entries) {
  std::vector<uint8_t> out;
  for (auto [tag, value] : entries) {
    uint8_t raw[10];
    std::memcpy(raw, &tag, 2);
    std::memcpy(raw + 2, &value, 8);
    out.insert(out.end(), raw, raw + 10);
  }
  return out;
}

TEST_F(BalloonTest, StatsBufferIsHeldParsedAndGivenBackOnTheTimer) {
  auto bytes = Stats({{6, 300 * kMiB}, {5, 500 * kMiB}, {99, 7}});
  uint64_t at = queues_[2].Alloc(static_cast<uint32_t>(bytes.size()));
  ASSERT_TRUE(memory_.WriteBytes(at, bytes));
  queues_[2].AddChain({{at, static_cast<uint32_t>(bytes.size())}});
  driver_->Notify(2);
  EXPECT_EQ(queues_[2].UsedIdx(), 0);  // held until stats are wanted
  BalloonStatus s = Status();
  ASSERT_EQ(s.stats.size(), 3u);
  EXPECT_EQ(s.stats[0].name, "available_memory");
  EXPECT_EQ(s.stats[0].value, 300 * kMiB);
  EXPECT_EQ(s.stats[1].name, "total_memory");
  EXPECT_EQ(s.stats[2].name, "tag_99");
  EXPECT_TRUE(s.stats_time.has_value());
  transport_->HandleDeviceFd(0, EPOLLIN);  // the stats timer fired
  EXPECT_EQ(queues_[2].UsedIdx(), 1);
  transport_->HandleDeviceFd(0, EPOLLIN);  // nothing held: nothing to give back
  EXPECT_EQ(queues_[2].UsedIdx(), 1);
  EXPECT_FALSE(NeedsReset());
}

// Linux adds its first stats buffer and kicks before it sets DRIVER_OK.
TEST_F(BalloonTest, StatsBufferPrimedBeforeDriverOkIsTaken) {
  auto balloon = Balloon::Create({.protected_below = kProtected}, kRam, kHigh + 4 * kMiB);
  transport_ = MmioTransport::Create(memory_, std::move(*balloon)).value();
  driver_ = std::make_unique<MmioDriver>(*transport_);
  ASSERT_TRUE(driver_->Negotiate(kAllFeatures));
  QueueDriver stats{memory_, Balloon::kQueueSize, 0x30000, 0x80000};
  for (uint32_t i = 0; i < 4; ++i) driver_->SetUpQueue(i, i == 2 ? stats : queues_[i]);
  auto bytes = Stats({{4, 123 * kMiB}});
  uint64_t at = stats.Alloc(static_cast<uint32_t>(bytes.size()));
  ASSERT_TRUE(memory_.WriteBytes(at, bytes));
  stats.AddChain({{at, static_cast<uint32_t>(bytes.size())}});
  driver_->Notify(2);  // not active yet
  EXPECT_TRUE(Status().stats.empty());
  driver_->DriverOk();
  BalloonStatus s = Status();
  ASSERT_EQ(s.stats.size(), 1u);
  EXPECT_EQ(s.stats[0].name, "free_memory");
  EXPECT_EQ(s.stats[0].value, 123 * kMiB);
  EXPECT_EQ(stats.UsedIdx(), 0);  // held
}

TEST_F(BalloonTest, PauseGivesTheStatsBufferBack) {
  uint64_t at = queues_[2].Alloc(10);
  queues_[2].AddChain({{at, 10}});
  driver_->Notify(2);
  ASSERT_EQ(queues_[2].UsedIdx(), 0);
  ASSERT_TRUE(transport_->PauseDevice());
  EXPECT_EQ(queues_[2].UsedIdx(), 1);
  ASSERT_TRUE(transport_->ResumeDevice());
}

TEST_F(BalloonTest, FreePageReportsAreDiscarded) {
  Fill(6 * kMiB, 2 * kMiB, 0x99);
  queues_[3].AddChain({{6 * kMiB, static_cast<uint32_t>(2 * kMiB), true}, {kHigh, static_cast<uint32_t>(kMiB), true}});
  driver_->Notify(3);
  ASSERT_EQ(queues_[3].UsedIdx(), 1);
  EXPECT_FALSE(Present(memory_.Span(7 * kMiB, 1).data()));
  EXPECT_TRUE(All(6 * kMiB, 2 * kMiB, 0));
  EXPECT_EQ(Status().reported_bytes, 3 * kMiB);
  EXPECT_EQ(Status().inflated_pages, 0u);  // reported pages stay the guest's
}

TEST_F(BalloonTest, FreePageReportsSpareTheProtectedAreaAndPartialPages) {
  Fill(0x6000, kPage, 0x44);  // the identity page (the rings live in the protected MiB too)
  Fill(kProtected, kMiB, 0x44);
  Fill(3 * kMiB, 2 * kPage, 0x44);
  queues_[3].AddChain({{0x6000, static_cast<uint32_t>(2 * kMiB - 0x6000), true}});
  queues_[3].AddChain({{3 * kMiB + 100, static_cast<uint32_t>(kPage), true}});  // no whole page
  driver_->Notify(3);
  ASSERT_EQ(queues_[3].UsedIdx(), 2);
  EXPECT_TRUE(All(0x6000, kPage, 0x44));
  EXPECT_TRUE(All(3 * kMiB, 2 * kPage, 0x44));
  EXPECT_TRUE(All(kProtected, kMiB, 0));
  EXPECT_EQ(Status().reported_bytes, kMiB);
}

TEST_F(BalloonTest, ReportsOutsideRamNeedReset) {
  queues_[3].AddChain({{kHole, static_cast<uint32_t>(kMiB), true}});
  driver_->Notify(3);
  EXPECT_TRUE(NeedsReset());
}

// Without VIRTIO_BALLOON_F_STATS_VQ the reporting queue is queue 2.
TEST_F(BalloonTest, QueueNumberingFollowsNegotiatedFeatures) {
  Start(kFeatureVersion1 | kBalloonFeatureReporting);
  Fill(6 * kMiB, kMiB, 0x99);
  queues_[2].AddChain({{6 * kMiB, static_cast<uint32_t>(kMiB), true}});
  driver_->Notify(2);
  EXPECT_EQ(queues_[2].UsedIdx(), 1);
  EXPECT_TRUE(All(6 * kMiB, kMiB, 0));
  EXPECT_EQ(Status().reported_bytes, kMiB);
}

TEST_F(BalloonTest, StateRoundTripsThroughSaveAndRestore) {
  Send(queues_[0], 0, {Pfn(3 * kMiB), Pfn(3 * kMiB) + 1, Pfn(kHigh)});
  SetTarget(77);
  driver_->Write32(0x104, 3);
  nlohmann::json state = transport_->SaveState();

  auto balloon = Balloon::Create({.protected_below = kProtected}, kRam, kHigh + 4 * kMiB);
  auto restored = MmioTransport::Create(memory_, std::move(*balloon)).value();
  ASSERT_TRUE(restored->RestoreState(state));
  transport_ = restored;
  driver_ = std::make_unique<MmioDriver>(*transport_);
  BalloonStatus s = Status();
  EXPECT_TRUE(s.driver_ok);
  EXPECT_EQ(s.inflated_pages, 3u);
  EXPECT_EQ(s.target_pages, 77u);
  EXPECT_EQ(s.actual_pages, 3u);
  Send(queues_[1], 1, {Pfn(kHigh)});  // deflating a page inflated before the snapshot
  EXPECT_EQ(Status().inflated_pages, 2u);
  EXPECT_EQ(Status().ignored_pfns, 0u);
}

TEST_F(BalloonTest, RestoreRejectsInflatedPagesOutsideRam) {
  nlohmann::json state = transport_->SaveState();
  ASSERT_TRUE(state.contains("device")) << state.dump();
  nlohmann::json bad = state;
  bad["device"]["inflated_runs"] = {Pfn(kHigh + 4 * kMiB), 1};
  auto balloon = Balloon::Create({}, kRam, kHigh + 4 * kMiB);
  auto restored = MmioTransport::Create(memory_, std::move(*balloon)).value();
  EXPECT_FALSE(restored->RestoreState(bad));
  bad["device"]["inflated_runs"] = {1, 2, 3};
  EXPECT_FALSE(restored->RestoreState(bad));
}

// Each backing of guest RAM gives an inflated page back its own way; the guest reads what the
// backing says afterwards and can write the page again.
enum class Backing { kAnonymous, kFilePrivate, kShared };

GuestMemory MakeMemory(Backing backing, int* file) {
  if (backing == Backing::kAnonymous) return GuestMemory::Create(kRam, kHole, kHigh).value();
  if (backing == Backing::kShared) return GuestMemory::CreateShared(kRam, kHole, kHigh).value();
  *file = ::memfd_create("balloon-test-template", MFD_CLOEXEC);
  EXPECT_EQ(::ftruncate(*file, kRam), 0);
  std::vector<uint8_t> page(kPage, 0x5e);
  EXPECT_EQ(::pwrite(*file, page.data(), kPage, 5 * kMiB), static_cast<ssize_t>(kPage));
  return GuestMemory::CreateFromFile(*file, kRam, kHole, kHigh).value();
}

class BalloonBackingTest : public BalloonTest, public ::testing::WithParamInterface<Backing> {
 protected:
  BalloonBackingTest() : BalloonTest(MakeMemory(GetParam(), &file_)) {}
  ~BalloonBackingTest() override {
    if (file_ >= 0) ::close(file_);
  }
  int file_ = -1;
};

TEST_P(BalloonBackingTest, InflatedPageIsReleased) {
  Fill(5 * kMiB, kPage, 0xee);
  uint8_t* host = memory_.Span(5 * kMiB, kPage).data();
  ASSERT_TRUE(Present(host));
  Send(queues_[0], 0, {Pfn(5 * kMiB)});
  ASSERT_EQ(queues_[0].UsedIdx(), 1);
  EXPECT_FALSE(Present(host));
  if (GetParam() == Backing::kShared) {
    unsigned char resident = 1;
    ASSERT_EQ(::mincore(host, kPage, &resident), 0);
    EXPECT_EQ(resident & 1, 0);  // gone from the memfd, not just unmapped
  }
  EXPECT_TRUE(All(5 * kMiB, kPage, GetParam() == Backing::kFilePrivate ? 0x5e : 0));
  ASSERT_TRUE(memory_.Write<uint8_t>(5 * kMiB, 1));
  EXPECT_EQ(*memory_.Read<uint8_t>(5 * kMiB), 1);
}

INSTANTIATE_TEST_SUITE_P(Backings, BalloonBackingTest,
                         ::testing::Values(Backing::kAnonymous, Backing::kFilePrivate, Backing::kShared));

}  // namespace
}  // namespace clonevm::virtio

// Balloon: virtio-balloon, the memory balloon (virtio 1.2, 5.5), and the guest's way to give memory
// back to the host.
//
// Queues, in the order the driver numbers them (a queue whose feature was not negotiated takes no
// index, so the roles are fixed at Activate() from the negotiated features):
//   inflateq, deflateq: device-readable arrays of le32 PFNs (4 KiB pages). An inflated page is
//     discarded on the host at once (GuestMemory::Discard: MADV_DONTNEED or MADV_REMOVE by backing)
//     and recorded; a deflated page is forgotten (no VIRTIO_BALLOON_F_MUST_TELL_HOST: the guest may
//     touch it again before telling us, and it then simply faults in).
//   statsq (VIRTIO_BALLOON_F_STATS_VQ): the driver's one statistics buffer, held by the device and
//     given back every stats interval (a timerfd on the VMM loop) so the driver refills it.
//   reporting_vq (VIRTIO_BALLOON_F_REPORTING, free page reporting): buffers naming free guest pages
//     (typically 2-4 MiB each); each is discarded on the host and returned. No agent or policy needed.
// VIRTIO_BALLOON_F_DEFLATE_ON_OOM is offered: the guest deflates by itself before it OOM-kills.
//
// Config space (5.5.4): num_pages (the target, written by the host through SetTarget(), announced
// with a config interrupt) and actual (written by the driver).
//
// Hostile guests: every PFN is checked. One outside guest RAM (the MMIO hole, past the end) or below
// `protected_below` (Clone's boot structures and the identity page) is ignored and counted, as are
// repeated inflates of a page already inflated and deflates of a page never inflated; each kind
// logs one rate-limited line. A malformed buffer (not whole PFNs, more than kMaxPfnsPerChain of them)
// is a guest error: NEEDS_RESET. Host memory outside guest RAM is never touched: discards go through
// GuestMemory, which checks every range.
//
// Threads: as every VirtioDevice (under the transport lock, from the loop or a vCPU). SetTarget() and
// status() are host-side calls through MmioTransport::WithDevice.
//
// State: target, actual, the inflated pages (as runs) and the counters; the held stats buffer is
// given back to the driver in Pause(), so a snapshot never holds a chain the restored VM lacks.
#pragma once

#include <array>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "devices/virtio/virtio_device.h"
#include "memory/dirty_bitmap.h"

namespace clonevm::virtio {

// Device feature bits (5.5.3).
inline constexpr uint64_t kBalloonFeatureMustTellHost = 1ull << 0;
inline constexpr uint64_t kBalloonFeatureStatsVq = 1ull << 1;
inline constexpr uint64_t kBalloonFeatureDeflateOnOom = 1ull << 2;
inline constexpr uint64_t kBalloonFeatureReporting = 1ull << 5;

struct BalloonOptions {
  bool free_page_reporting = true;
  bool deflate_on_oom = true;
  uint32_t stats_interval_s = 5;  // how often the guest's statistics are refreshed; 0: no stats queue
  uint64_t protected_below = 0;   // guest-physical bytes never discarded (boot structures, identity page)
  bool operator==(const BalloonOptions&) const = default;
};

// One statistic from the guest (5.5.6.3), e.g. {"available_memory", bytes}.
struct BalloonStat {
  std::string name;
  uint64_t value = 0;
};

// What the host knows about the balloon.
struct BalloonStatus {
  bool driver_ok = false;            // the driver activated the device
  uint64_t target_pages = 0;         // num_pages asked of the guest
  uint64_t actual_pages = 0;         // what the driver says it holds ("actual")
  uint64_t inflated_pages = 0;       // pages discarded through inflateq and not deflated since
  uint64_t reported_bytes = 0;       // given back by free page reporting since boot
  uint64_t ignored_pfns = 0;         // hostile or stale PFNs ignored (outside RAM, protected, repeated, ...)
  uint64_t negotiated_features = 0;  // device feature bits the driver accepted
  std::vector<BalloonStat> stats;    // the guest's last statistics (empty until it sent some)
  std::optional<std::chrono::steady_clock::time_point> stats_time;  // when they arrived
};

class Balloon : public VirtioDevice {
 public:
  static constexpr uint16_t kQueueSize = 256;
  static constexpr uint32_t kMaxPfnsPerChain = 4096;  // Linux sends at most 256
  static constexpr size_t kMaxStats = 64;
  static constexpr uint32_t kPageSize = 4096;

  // `ram_bytes`: the guest's RAM (caps the target); `ram_limit`: its highest RAM address + 1.
  [[nodiscard]] static Result<std::unique_ptr<Balloon>> Create(BalloonOptions options, uint64_t ram_bytes,
                                                               uint64_t ram_limit);

  ~Balloon() override;

  uint32_t device_type() const override { return kDeviceTypeBalloon; }
  std::span<const uint16_t> queue_max_sizes() const override;
  uint64_t device_features() const override;
  uint32_t config_size() const override { return kConfigSize; }
  void ReadConfig(uint64_t offset, std::span<uint8_t> data) override;
  void WriteConfig(uint64_t offset, std::span<const uint8_t> data) override;

  Result<void> Activate(const DeviceContext& context) override;
  void Reset() override;
  Result<void> ProcessQueue(size_t index) override;

  std::vector<WatchedFd> watched_fds() const override { return {{timer_.get(), kTimerEvents}}; }
  Result<void> HandleFdEvent(size_t index, uint32_t events) override;
  Result<void> Pause() override;

  nlohmann::json SaveState() const override;
  Result<void> RestoreState(const nlohmann::json& state) override;

  // Asks the guest to hold `pages` pages (capped at its RAM); a config interrupt tells an active
  // driver. Host-side (WithDevice).
  void SetTarget(uint64_t pages);
  BalloonStatus status() const;
  const BalloonOptions& options() const { return options_; }

 private:
  enum class Role { kInflate, kDeflate, kStats, kReporting };
  static constexpr uint32_t kConfigSize = 16;  // num_pages, actual, free_page_hint_cmd_id, poison_val
  static constexpr uint32_t kTimerEvents = 1;  // EPOLLIN

  Balloon(BalloonOptions options, uint64_t ram_bytes, uint64_t ram_limit, Fd timer);

  [[nodiscard]] Result<void> ProcessPfns(Queue& queue, Role role);
  [[nodiscard]] Result<std::vector<uint32_t>> ReadPfns(const DescriptorChain& chain) const;
  void Inflate(std::span<const uint32_t> pfns);
  void Deflate(std::span<const uint32_t> pfns);
  // Whether the page at `gpa` may be discarded; counts and logs why not.
  bool Discardable(uint64_t gpa, const char* what);
  void DiscardRun(uint64_t first_page, uint64_t count);
  [[nodiscard]] Result<void> ProcessStats(Queue& queue);
  void ParseStats(const DescriptorChain& chain);
  // Gives the held stats buffer back so the driver refills it.
  void RequestStats();
  [[nodiscard]] Result<void> ProcessReports(Queue& queue);
  void ArmTimer(bool on);

  const BalloonOptions options_;
  const uint64_t ram_pages_;
  const uint64_t limit_pages_;
  const Fd timer_;  // timerfd: the stats interval
  std::array<uint16_t, 4> queue_sizes_{};
  size_t num_queues_ = 0;

  uint32_t target_pages_ = 0;
  uint32_t actual_pages_ = 0;  // guest-controlled
  PageBitmap inflated_;        // guest-physical pages; empty until the first inflate
  uint64_t inflated_count_ = 0;
  uint64_t reported_bytes_ = 0;
  uint64_t ignored_pfns_ = 0;

  std::optional<DeviceContext> context_;  // set while active
  std::vector<Role> roles_;               // queue index -> role, while active
  std::optional<DescriptorChain> stats_chain_;
  std::vector<BalloonStat> stats_;
  std::optional<std::chrono::steady_clock::time_point> stats_time_;
};

}  // namespace clonevm::virtio

#include "devices/virtio/balloon.h"

#include <sys/timerfd.h>
#include <unistd.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "base/log.h"
#include "devices/virtio/json_state.h"

namespace clonevm::virtio {
namespace {

constexpr int kStateVersion = 1;
constexpr size_t kStatBytes = 10;  // struct virtio_balloon_stat: le16 tag, le64 val (packed)

// VIRTIO_BALLOON_S_* (5.5.6.3 and Linux's uapi/linux/virtio_balloon.h, in tag order).
constexpr std::array<const char*, 16> kStatNames = {
    "swap_in",          "swap_out",     "major_faults",   "minor_faults",   "free_memory", "total_memory",
    "available_memory", "disk_caches",  "hugetlb_allocs", "hugetlb_fails",  "oom_kills",   "alloc_stalls",
    "async_scans",      "direct_scans", "async_reclaims", "direct_reclaims"};

std::string StatName(uint16_t tag) { return tag < kStatNames.size() ? kStatNames[tag] : "tag_" + std::to_string(tag); }

}  // namespace

Result<std::unique_ptr<Balloon>> Balloon::Create(BalloonOptions options, uint64_t ram_bytes, uint64_t ram_limit) {
  Fd timer(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
  if (!timer) return FailErrno("timerfd_create", "virtio-balloon stats timer");
  return std::unique_ptr<Balloon>(new Balloon(options, ram_bytes, ram_limit, std::move(timer)));
}

Balloon::Balloon(BalloonOptions options, uint64_t ram_bytes, uint64_t ram_limit, Fd timer)
    : options_(options),
      ram_pages_(ram_bytes / kPageSize),
      limit_pages_((ram_limit + kPageSize - 1) / kPageSize),
      timer_(std::move(timer)) {
  num_queues_ = 2 + (options_.stats_interval_s > 0 ? 1 : 0) + (options_.free_page_reporting ? 1 : 0);
  queue_sizes_.fill(kQueueSize);
}

std::span<const uint16_t> Balloon::queue_max_sizes() const { return std::span(queue_sizes_).first(num_queues_); }

uint64_t Balloon::device_features() const {
  uint64_t features = 0;
  if (options_.stats_interval_s > 0) features |= kBalloonFeatureStatsVq;
  if (options_.deflate_on_oom) features |= kBalloonFeatureDeflateOnOom;
  if (options_.free_page_reporting) features |= kBalloonFeatureReporting;
  return features;
}

void Balloon::ReadConfig(uint64_t offset, std::span<uint8_t> data) {
  std::array<uint32_t, kConfigSize / 4> config = {target_pages_, actual_pages_, 0, 0};
  // SAFETY: u32s viewed as their bytes; the transport checked offset + data.size() <= kConfigSize.
  std::memcpy(data.data(), reinterpret_cast<const uint8_t*>(config.data()) + offset, data.size());
}

void Balloon::WriteConfig(uint64_t offset, std::span<const uint8_t> data) {
  // Only `actual` (bytes 4..7) is the driver's; writes elsewhere are ignored.
  std::array<uint8_t, 4> actual{};
  std::memcpy(actual.data(), &actual_pages_, 4);
  for (size_t i = 0; i < data.size(); ++i) {
    uint64_t at = offset + i;
    if (at >= 4 && at < 8) actual[at - 4] = data[i];
  }
  std::memcpy(&actual_pages_, actual.data(), 4);
}

void Balloon::SetTarget(uint64_t pages) {
  target_pages_ = static_cast<uint32_t>(std::min(pages, ram_pages_));
  if (context_) context_->interrupt.SignalConfigChange();
}

BalloonStatus Balloon::status() const {
  BalloonStatus s;
  s.driver_ok = context_.has_value();
  s.target_pages = target_pages_;
  s.actual_pages = actual_pages_;
  s.inflated_pages = inflated_count_;
  s.reported_bytes = reported_bytes_;
  s.ignored_pfns = ignored_pfns_;
  s.negotiated_features = context_ ? context_->features & device_features() : 0;
  s.stats = stats_;
  s.stats_time = stats_time_;
  return s;
}

Result<void> Balloon::Activate(const DeviceContext& context) {
  context_.emplace(context);
  roles_ = {Role::kInflate, Role::kDeflate};
  if ((context.features & kBalloonFeatureStatsVq) != 0) roles_.push_back(Role::kStats);
  if ((context.features & kBalloonFeatureReporting) != 0) roles_.push_back(Role::kReporting);
  ArmTimer((context.features & kBalloonFeatureStatsVq) != 0);
  // Linux primes the stats queue before DRIVER_OK (virtballoon_probe kicks it from init_vqs), when
  // the device could not take the buffer yet: look for buffers made available before activation.
  for (size_t i = 0; i < roles_.size(); ++i) CLONE_TRY_VOID(ProcessQueue(i));
  return {};
}

Balloon::~Balloon() {
  // The driver's stats buffer is held between polls: a device that goes away (the VM ends, a test
  // tears down) owes the guest no answer for it.
  if (stats_chain_) stats_chain_->Abandon();
}

void Balloon::Reset() {
  // A reset driver starts with an empty balloon (Linux deflates everything before it lets go), so
  // the pages it inflates next are discarded again rather than counted as repeats.
  inflated_ = PageBitmap();
  inflated_count_ = 0;
  actual_pages_ = 0;
  ArmTimer(false);
  if (stats_chain_) stats_chain_->Abandon();
  stats_chain_.reset();
  roles_.clear();
  context_.reset();
}

void Balloon::ArmTimer(bool on) {
  itimerspec spec{};
  if (on) {
    spec.it_value.tv_sec = options_.stats_interval_s;
    spec.it_interval.tv_sec = options_.stats_interval_s;
  }
  if (::timerfd_settime(timer_.get(), 0, &spec, nullptr) != 0) {
    CLONE_LOG_RATELIMITED(LogLevel::kError, "virtio-balloon: timerfd_settime: {}", std::strerror(errno));
  }
}

Result<void> Balloon::ProcessQueue(size_t index) {
  if (!context_ || index >= roles_.size()) return {};
  Queue& queue = context_->queues[index];
  switch (roles_[index]) {
    case Role::kInflate:
    case Role::kDeflate:
      return ProcessPfns(queue, roles_[index]);
    case Role::kStats:
      return ProcessStats(queue);
    case Role::kReporting:
      return ProcessReports(queue);
  }
  return {};
}

Result<void> Balloon::ProcessPfns(Queue& queue, Role role) {
  bool used_any = false;
  for (;;) {
    std::optional<DescriptorChain> chain = CLONE_TRY(queue.Pop());
    if (!chain) break;
    auto pfns = ReadPfns(*chain);
    if (!pfns) {
      chain->Abandon();
      return Fail(pfns.error());
    }
    if (role == Role::kInflate) {
      Inflate(*pfns);
    } else {
      Deflate(*pfns);
    }
    queue.AddUsed(std::move(*chain), 0);
    used_any = true;
  }
  if (used_any && queue.NeedsNotification()) context_->interrupt.SignalUsed();
  return {};
}

Result<std::vector<uint32_t>> Balloon::ReadPfns(const DescriptorChain& chain) const {
  uint64_t bytes = chain.readable_bytes();  // guest-controlled
  if (bytes % 4 != 0) return Fail("virtio-balloon: a PFN buffer of {} bytes (not whole le32 PFNs)", bytes);
  if (bytes / 4 > kMaxPfnsPerChain) {
    return Fail("virtio-balloon: {} PFNs in one buffer (at most {})", bytes / 4, kMaxPfnsPerChain);
  }
  std::vector<uint32_t> pfns(bytes / 4);
  // SAFETY: uint32_t has no invalid byte patterns; the bytes are copied out of guest memory once.
  chain.CopyFromReadable(0, std::span(reinterpret_cast<uint8_t*>(pfns.data()), bytes));
  return pfns;
}

bool Balloon::Discardable(uint64_t gpa, const char* what) {
  if (gpa >= options_.protected_below && context_->memory.Contains(gpa, kPageSize)) return true;
  ++ignored_pfns_;
  CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-balloon: ignoring {} of page {:#x} (outside guest RAM or reserved)",
                        what, gpa);
  return false;
}

void Balloon::Inflate(std::span<const uint32_t> pfns) {
  if (inflated_.pages() == 0) inflated_ = PageBitmap(limit_pages_);
  uint64_t run_first = 0, run_count = 0;
  for (uint32_t pfn : pfns) {
    uint64_t gpa = uint64_t{pfn} * kPageSize;
    if (!Discardable(gpa, "inflate")) continue;
    if (inflated_.Test(pfn)) {
      ++ignored_pfns_;
      CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-balloon: page {:#x} inflated twice; ignored", gpa);
      continue;
    }
    inflated_.Set(pfn);
    ++inflated_count_;
    if (run_count > 0 && pfn == run_first + run_count) {
      ++run_count;
      continue;
    }
    DiscardRun(run_first, run_count);
    run_first = pfn;
    run_count = 1;
  }
  DiscardRun(run_first, run_count);
}

void Balloon::DiscardRun(uint64_t first_page, uint64_t count) {
  if (count == 0) return;
  // A run lies inside one RAM region: consecutive pages that each passed Discardable() cannot
  // straddle the MMIO hole, which is not RAM.
  if (auto discarded = context_->memory.Discard(first_page * kPageSize, count * kPageSize); !discarded) {
    CLONE_LOG_RATELIMITED(LogLevel::kError, "virtio-balloon: {}", discarded.error().message());
  }
}

void Balloon::Deflate(std::span<const uint32_t> pfns) {
  for (uint32_t pfn : pfns) {
    if (!inflated_.Test(pfn)) {
      ++ignored_pfns_;
      CLONE_LOG_RATELIMITED(LogLevel::kWarn, "virtio-balloon: deflate of page {:#x}, never inflated; ignored",
                            uint64_t{pfn} * kPageSize);
      continue;
    }
    // Nothing to do on the host: the page faults in again when the guest touches it.
    inflated_.Clear(pfn);
    --inflated_count_;
  }
}

Result<void> Balloon::ProcessStats(Queue& queue) {
  bool used_any = false;
  for (;;) {
    std::optional<DescriptorChain> chain = CLONE_TRY(queue.Pop());
    if (!chain) break;
    ParseStats(*chain);
    // The driver keeps one buffer with us; a second one replaces (and returns) the first.
    if (stats_chain_) {
      queue.AddUsed(std::move(*stats_chain_), 0);
      used_any = true;
    }
    stats_chain_.emplace(std::move(*chain));
  }
  if (used_any && queue.NeedsNotification()) context_->interrupt.SignalUsed();
  return {};
}

void Balloon::ParseStats(const DescriptorChain& chain) {
  std::array<uint8_t, kMaxStats * kStatBytes> bytes{};
  size_t got = chain.CopyFromReadable(0, bytes);  // guest-controlled: any length, any tags
  stats_.clear();
  for (size_t at = 0; at + kStatBytes <= got; at += kStatBytes) {
    uint16_t tag = 0;
    uint64_t value = 0;
    std::memcpy(&tag, bytes.data() + at, sizeof(tag));
    std::memcpy(&value, bytes.data() + at + sizeof(tag), sizeof(value));
    stats_.push_back({StatName(tag), value});
  }
  stats_time_ = std::chrono::steady_clock::now();
}

void Balloon::RequestStats() {
  if (!context_ || !stats_chain_ || roles_.size() <= 2 || roles_[2] != Role::kStats) return;
  Queue& queue = context_->queues[2];
  queue.AddUsed(std::move(*stats_chain_), 0);
  stats_chain_.reset();
  if (queue.NeedsNotification()) context_->interrupt.SignalUsed();
}

Result<void> Balloon::ProcessReports(Queue& queue) {
  bool used_any = false;
  for (;;) {
    std::optional<DescriptorChain> chain = CLONE_TRY(queue.Pop());
    if (!chain) break;
    // Linux hands the free pages over as device-writable buffers; accept either direction.
    for (auto buffers : {chain->readable(), chain->writable()}) {
      for (const GuestBuffer& buffer : buffers) {
        // Queue::Pop checked that the buffer lies in one RAM region; keep whole pages above the
        // protected area.
        uint64_t first = std::max((buffer.gpa + kPageSize - 1) / kPageSize * kPageSize, options_.protected_below);
        uint64_t end = (buffer.gpa + buffer.host.size()) / kPageSize * kPageSize;
        if (end <= first) continue;
        if (auto discarded = context_->memory.Discard(first, end - first); !discarded) {
          CLONE_LOG_RATELIMITED(LogLevel::kError, "virtio-balloon: free page report: {}", discarded.error().message());
          continue;
        }
        reported_bytes_ += end - first;
      }
    }
    queue.AddUsed(std::move(*chain), 0);
    used_any = true;
  }
  if (used_any && queue.NeedsNotification()) context_->interrupt.SignalUsed();
  return {};
}

Result<void> Balloon::HandleFdEvent(size_t /*index*/, uint32_t /*events*/) {
  uint64_t expirations = 0;
  [[maybe_unused]] ssize_t n = ::read(timer_.get(), &expirations, sizeof(expirations));  // drain
  RequestStats();
  return {};
}

Result<void> Balloon::Pause() {
  // A held chain cannot be saved: hand it back now (the restored driver then sends fresh stats).
  RequestStats();
  return {};
}

nlohmann::json Balloon::SaveState() const {
  std::vector<uint64_t> runs;
  for (auto [first, count] : inflated_.Runs()) {
    runs.push_back(first);
    runs.push_back(count);
  }
  return {{"version", kStateVersion}, {"target_pages", target_pages_},     {"actual_pages", actual_pages_},
          {"inflated_runs", runs},    {"reported_bytes", reported_bytes_}, {"ignored_pfns", ignored_pfns_}};
}

Result<void> Balloon::RestoreState(const nlohmann::json& state) {
  CLONE_TRY(StateVersion(state, kStateVersion, "virtio-balloon"));
  JsonReader r(state);
  uint32_t target = CLONE_TRY(r.Uint<uint32_t>("target_pages"));
  uint32_t actual = CLONE_TRY(r.Uint<uint32_t>("actual_pages"));
  std::vector<uint64_t> runs = CLONE_TRY(r.UintList<uint64_t>("inflated_runs", 2 * limit_pages_ + 2, true));
  if (runs.size() % 2 != 0) return Fail("virtio-balloon: inflated_runs: an odd number of entries");
  PageBitmap inflated;
  if (!runs.empty()) inflated = PageBitmap(limit_pages_);
  for (size_t i = 0; i < runs.size(); i += 2) {
    if (runs[i] >= limit_pages_ || runs[i + 1] > limit_pages_ - runs[i]) {
      return Fail("virtio-balloon: inflated run {:#x}+{:#x} pages is outside guest RAM", runs[i], runs[i + 1]);
    }
    inflated.SetRange(runs[i], runs[i + 1]);
  }
  reported_bytes_ = CLONE_TRY(r.Uint<uint64_t>("reported_bytes"));
  ignored_pfns_ = CLONE_TRY(r.Uint<uint64_t>("ignored_pfns"));
  target_pages_ = static_cast<uint32_t>(std::min<uint64_t>(target, ram_pages_));
  actual_pages_ = actual;
  inflated_ = std::move(inflated);
  inflated_count_ = inflated_.Count();
  return {};
}

}  // namespace clonevm::virtio

#include "devices/virtio/mmio_transport.h"

#include <gtest/gtest.h>

#include <array>
#include <nlohmann/json.hpp>

#include "devices/virtio/json_state.h"
#include "devices/virtio/testing/mmio_driver.h"
#include "devices/virtio/testing/queue_driver.h"
#include "devices/virtio/virtio_spec.h"

namespace clonevm::virtio {
namespace {

using testing::MmioDriver;
using testing::QueueDriver;

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kBaseFeatures = kFeatureVersion1 | kFeatureEventIdx | kFeatureIndirectDesc;
constexpr uint64_t kDeviceFeature = 1ull << 5;

// Counts what the transport asks of it; echoes each chain back with 1 byte written; can be told
// to fail. Its state ({"version": 1, "value": N}) checks that device state travels with snapshots.
class FakeDevice : public VirtioDevice {
 public:
  struct Calls {
    int activate = 0, reset = 0, process = 0;
    bool fail_next_process = false;
  };
  explicit FakeDevice(Calls& calls) : calls_(calls) {}

  uint32_t device_type() const override { return 42; }
  std::span<const uint16_t> queue_max_sizes() const override { return kSizes; }
  uint64_t device_features() const override { return kDeviceFeature; }
  uint32_t config_size() const override { return config_.size(); }
  void ReadConfig(uint64_t offset, std::span<uint8_t> data) override {
    std::copy_n(config_.begin() + static_cast<ptrdiff_t>(offset), data.size(), data.begin());
  }
  void WriteConfig(uint64_t offset, std::span<const uint8_t> data) override {
    std::copy(data.begin(), data.end(), config_.begin() + static_cast<ptrdiff_t>(offset));
  }
  Result<void> Activate(const DeviceContext& context) override {
    ++calls_.activate;
    context_.emplace(context);
    return {};
  }
  void Reset() override {
    ++calls_.reset;
    context_.reset();
  }
  Result<void> ProcessQueue(size_t index) override {
    ++calls_.process;
    if (std::exchange(calls_.fail_next_process, false)) return Fail("malformed request");
    Queue& queue = context_->queues[index];
    for (;;) {
      auto chain = CLONE_TRY(queue.Pop());
      if (!chain) break;
      uint32_t written = chain->writable_bytes() > 0 ? 1 : 0;
      queue.AddUsed(std::move(*chain), written);
    }
    if (queue.NeedsNotification()) context_->interrupt.SignalUsed();
    return {};
  }
  nlohmann::json SaveState() const override { return {{"version", 1}, {"value", config_[0]}}; }
  Result<void> RestoreState(const nlohmann::json& state) override {
    CLONE_TRY(StateVersion(state, 1, "fake"));
    config_[0] = CLONE_TRY(JsonUint<uint8_t>(state, "value"));
    return {};
  }

 private:
  static constexpr std::array<uint16_t, 2> kSizes = {64, 16};
  Calls& calls_;
  std::array<uint8_t, 12> config_ = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  std::optional<DeviceContext> context_;
};

GuestMemory MakeMemory() { return std::move(GuestMemory::Create(4 * kMiB, 3ull << 30, 4ull << 30).value()); }

class MmioTransportTest : public ::testing::Test {
 protected:
  std::shared_ptr<MmioTransport> MakeTransport(FakeDevice::Calls& calls) {
    return MmioTransport::Create(memory_, std::make_unique<FakeDevice>(calls)).value();
  }

  // The full Linux bring-up: negotiate, set up queue 0, DRIVER_OK.
  void BringUp(MmioDriver& driver, uint64_t features = kBaseFeatures | kDeviceFeature) {
    ASSERT_TRUE(driver.Negotiate(features));
    driver.SetUpQueue(0, queue0_);
    driver.DriverOk();
    ASSERT_EQ(driver.Status() & kStatusDriverOk, kStatusDriverOk);
  }

  GuestMemory memory_ = MakeMemory();
  QueueDriver queue0_{memory_, 64, 0x10000, 0x100000};
  FakeDevice::Calls calls_;
  std::shared_ptr<MmioTransport> transport_ = MakeTransport(calls_);
  MmioDriver driver_{*transport_};
};

TEST_F(MmioTransportTest, IdentifiesAsVirtioMmioVersion2) {
  EXPECT_EQ(driver_.Read32(0x000), 0x74726976u);
  EXPECT_EQ(driver_.Read32(0x004), 2u);
  EXPECT_EQ(driver_.Read32(0x008), 42u);
  EXPECT_EQ(driver_.Read32(0x00c), MmioTransport::kVendorId);
  EXPECT_EQ(driver_.Read32(0x0b0), 0xffffffffu);  // no shared memory region
  EXPECT_EQ(transport_->QueueNotifyOffset(), 0x50u);
  EXPECT_EQ(transport_->num_queues(), 2u);
}

TEST_F(MmioTransportTest, OffersDeviceAndTransportFeatures) {
  EXPECT_EQ(driver_.DeviceFeatures(), kBaseFeatures | kDeviceFeature);
  driver_.Write32(0x14, 2);
  EXPECT_EQ(driver_.Read32(0x10), 0u);
}

TEST_F(MmioTransportTest, FeaturesOkNeedsVersion1AndASubset) {
  EXPECT_FALSE(driver_.Negotiate(kDeviceFeature));                   // no VERSION_1
  EXPECT_FALSE(driver_.Negotiate(kFeatureVersion1 | (1ull << 40)));  // not offered
  EXPECT_TRUE(driver_.Negotiate(kFeatureVersion1));
  driver_.DriverOk();
  EXPECT_EQ(calls_.activate, 1);
}

TEST_F(MmioTransportTest, DriverOkWithoutFeaturesOkIsRefused) {
  driver_.SetStatus(kStatusAcknowledge | kStatusDriver);
  driver_.DriverOk();
  EXPECT_EQ(driver_.Status() & kStatusDriverOk, 0u);
  EXPECT_EQ(calls_.activate, 0);
}

TEST_F(MmioTransportTest, DriverCannotClearStatusBitsOrChangeFeaturesLate) {
  ASSERT_TRUE(driver_.Negotiate(kFeatureVersion1));
  driver_.SetStatus(kStatusAcknowledge);  // clears DRIVER and FEATURES_OK: ignored
  EXPECT_EQ(driver_.Status(), kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  driver_.Write32(0x24, 0);
  driver_.Write32(0x20, 0xffffffff);  // after FEATURES_OK: ignored
  driver_.DriverOk();
  EXPECT_EQ(calls_.activate, 1);
  EXPECT_EQ(driver_.Status() & kStatusNeedsReset, 0u);
}

TEST_F(MmioTransportTest, QueueNumMaxPerQueue) {
  driver_.Write32(0x30, 0);
  EXPECT_EQ(driver_.Read32(0x34), 64u);
  driver_.Write32(0x30, 1);
  EXPECT_EQ(driver_.Read32(0x34), 16u);
  driver_.Write32(0x30, 2);
  EXPECT_EQ(driver_.Read32(0x34), 0u);  // no such queue
  driver_.Write32(0x44, 1);             // and writes to it go nowhere
  EXPECT_EQ(driver_.Read32(0x44), 0u);
}

TEST_F(MmioTransportTest, BadQueueSizesPutTheDeviceInNeedsReset) {
  for (uint32_t size : {0u, 48u, 128u, 0x10040u}) {
    FakeDevice::Calls calls;
    auto transport = MakeTransport(calls);
    MmioDriver driver(*transport);
    ASSERT_TRUE(driver.Negotiate(kFeatureVersion1));
    driver.SetUpQueue(0, queue0_);
    driver.Write32(0x44, 0);
    driver.Write32(0x38, size);
    driver.Write32(0x44, 1);
    driver.DriverOk();
    EXPECT_EQ(driver.Status() & kStatusNeedsReset, kStatusNeedsReset) << size;
    EXPECT_EQ(driver.InterruptStatus(), kInterruptConfigChange);
    EXPECT_EQ(transport->guest_error_count(), 1u);
    EXPECT_EQ(calls.activate, 0);
  }
}

TEST_F(MmioTransportTest, QueueRegistersAreFrozenWhileReady) {
  BringUp(driver_);
  driver_.Write32(0x30, 0);
  driver_.Write32(0x38, 8);
  driver_.Write32(0x80, 0x1234);
  queue0_.AddChain({{queue0_.Alloc(8), 8, true}});
  driver_.Notify(0);
  EXPECT_EQ(queue0_.UsedIdx(), 1);  // still using the original layout
}

TEST_F(MmioTransportTest, ResetClearsQueuesStatusAndInterrupts) {
  BringUp(driver_);
  queue0_.AddChain({{queue0_.Alloc(8), 8, true}});
  driver_.Notify(0);
  EXPECT_EQ(driver_.InterruptStatus(), kInterruptUsedBuffer);
  driver_.SetStatus(0);
  EXPECT_EQ(calls_.reset, 1);
  EXPECT_EQ(driver_.Status(), 0u);
  EXPECT_EQ(driver_.InterruptStatus(), 0u);
  driver_.Write32(0x30, 0);
  EXPECT_EQ(driver_.Read32(0x44), 0u);
  driver_.Notify(0);
  EXPECT_EQ(calls_.process, 1);  // a reset device processes nothing
}

TEST_F(MmioTransportTest, InterruptStatusAndAck) {
  BringUp(driver_);
  transport_->irq_eventfd().Drain();
  queue0_.AddChain({{queue0_.Alloc(8), 8, true}});
  driver_.Notify(0);
  EXPECT_EQ(driver_.InterruptStatus(), kInterruptUsedBuffer);
  EXPECT_EQ(transport_->irq_eventfd().Drain(), 1u);
  driver_.Ack(kInterruptUsedBuffer);
  EXPECT_EQ(driver_.InterruptStatus(), 0u);
}

TEST_F(MmioTransportTest, IoeventfdNotificationsProcessTheQueue) {
  BringUp(driver_);
  queue0_.AddChain({{queue0_.Alloc(8), 8, true}});
  transport_->queue_eventfd(0).Signal();
  transport_->HandleQueueNotify(0);
  EXPECT_EQ(calls_.process, 1);
  EXPECT_EQ(queue0_.UsedIdx(), 1);
  EXPECT_EQ(transport_->queue_eventfd(0).Drain(), 0u);  // drained by the handler
  transport_->HandleQueueNotify(1);                     // queue 1 is not ready: nothing to do
  driver_.Notify(7);                                    // no such queue: ignored
  EXPECT_EQ(calls_.process, 1);
}

TEST_F(MmioTransportTest, GuestErrorsStopTheDeviceUntilReset) {
  BringUp(driver_);
  queue0_.Publish(63);
  queue0_.WriteDescriptor(63, {0, 8, kDescFlagNext, 999});
  driver_.Notify(0);
  EXPECT_EQ(driver_.Status() & kStatusNeedsReset, kStatusNeedsReset);
  EXPECT_EQ(driver_.InterruptStatus() & kInterruptConfigChange, kInterruptConfigChange);
  EXPECT_EQ(transport_->guest_error_count(), 1u);
  EXPECT_EQ(calls_.reset, 1);
  driver_.SetStatus(driver_.Status() | kStatusFailed);  // cannot clear NEEDS_RESET
  EXPECT_EQ(driver_.Status() & kStatusNeedsReset, kStatusNeedsReset);
  driver_.Notify(0);
  EXPECT_EQ(calls_.process, 1);

  BringUp(driver_);  // Negotiate() resets first
  EXPECT_EQ(driver_.Status() & kStatusNeedsReset, 0u);
  calls_.fail_next_process = true;
  driver_.Notify(0);
  EXPECT_EQ(transport_->guest_error_count(), 2u);
}

TEST_F(MmioTransportTest, AccessWidths) {
  uint8_t two[2] = {0xaa, 0xaa};
  transport_->Read(0x000, two);  // registers are 32-bit only
  EXPECT_EQ(two[0], 0);
  uint8_t byte = 0;
  transport_->Read(0x100 + 3, std::span(&byte, 1));
  EXPECT_EQ(byte, 4);
  uint8_t eight[8] = {};
  transport_->Read(0x100 + 4, eight);
  EXPECT_EQ(eight[7], 12);
  transport_->Read(0x100 + 8, eight);  // runs past the 12-byte config space
  EXPECT_EQ(eight[0], 0);
  uint8_t value[2] = {0x55, 0x66};
  transport_->Write(0x100 + 10, value);
  transport_->Read(0x100 + 11, std::span(&byte, 1));
  EXPECT_EQ(byte, 0x66);
  EXPECT_EQ(driver_.Read32(0xfc), 0u);  // ConfigGeneration
}

TEST_F(MmioTransportTest, SaveRestoreRoundTrips) {
  BringUp(driver_);
  for (int i = 0; i < 3; ++i) queue0_.AddChain({{queue0_.Alloc(8), 8, true}});
  driver_.Notify(0);
  uint8_t marker = 0x77;
  transport_->Write(0x100, std::span(&marker, 1));
  driver_.Write32(0x30, 1);
  nlohmann::json saved = transport_->SaveState();
  EXPECT_EQ(saved["version"], 1);
  EXPECT_EQ(saved["queues"][0]["next_used"], 3);

  FakeDevice::Calls calls;
  auto restored = MakeTransport(calls);
  auto ok = restored->RestoreState(nlohmann::json::parse(saved.dump()));
  ASSERT_TRUE(ok) << ok.error().message();
  EXPECT_EQ(restored->SaveState(), saved);
  EXPECT_EQ(calls.activate, 1);
  EXPECT_EQ(restored->irq_eventfd().Drain(), 1u);  // the pending interrupt is re-signalled

  // The restored device carries on where the original stopped.
  queue0_.AddChain({{queue0_.Alloc(8), 8, true}});
  MmioDriver(*restored).Notify(0);
  EXPECT_EQ(queue0_.UsedIdx(), 4);
}

TEST_F(MmioTransportTest, RestoreRejectsBadState) {
  nlohmann::json saved = transport_->SaveState();
  auto check_fails = [&](nlohmann::json state) {
    FakeDevice::Calls calls;
    auto restored = MakeTransport(calls);
    EXPECT_FALSE(restored->RestoreState(state)) << state.dump();
    EXPECT_EQ(restored->device_status(), 0u);
  };
  nlohmann::json newer = saved;
  newer["version"] = 2;
  check_fails(newer);
  nlohmann::json missing = saved;
  missing.erase("queues");
  check_fails(missing);
  nlohmann::json wrong_type = saved;
  wrong_type["status"] = "ok";
  check_fails(wrong_type);
  nlohmann::json bad_device = saved;
  bad_device["device"]["version"] = 9;
  check_fails(bad_device);
  check_fails(nlohmann::json::array());
}

TEST_F(MmioTransportTest, RestoreOfAnInvalidActiveQueueFails) {
  BringUp(driver_);
  nlohmann::json saved = transport_->SaveState();
  saved["queues"][0]["used_addr"] = 3;  // misaligned
  FakeDevice::Calls calls;
  auto restored = MakeTransport(calls);
  EXPECT_FALSE(restored->RestoreState(saved));
  EXPECT_EQ(calls.activate, 0);
}

// A device with its own fd (the device-fd extension): counts events and pause/resume, fails on demand.
class FdDevice : public FakeDevice {
 public:
  struct FdCalls {
    int events = 0, pause = 0, resume = 0;
    bool fail = false;
    bool saw_queue_eventfds = false;
  };
  FdDevice(Calls& calls, FdCalls& fd_calls) : FakeDevice(calls), fd_calls_(fd_calls) {}
  Result<void> Activate(const DeviceContext& context) override {
    fd_calls_.saw_queue_eventfds = context.queue_eventfds.size() == 2;
    return FakeDevice::Activate(context);
  }
  std::vector<WatchedFd> watched_fds() const override { return {{7, 1}}; }
  Result<void> HandleFdEvent(size_t, uint32_t) override {
    ++fd_calls_.events;
    if (fd_calls_.fail) return Fail("bad ring");
    return {};
  }
  bool kicks_go_to_backend(size_t queue) const override { return queue == 1; }
  Result<void> Pause() override {
    ++fd_calls_.pause;
    return {};
  }
  Result<void> Resume() override {
    ++fd_calls_.resume;
    return {};
  }

 private:
  FdCalls& fd_calls_;
};

TEST_F(MmioTransportTest, DeviceFdEventsRunWhateverTheStateAndBreakOnlyAnActiveDevice) {
  FakeDevice::Calls calls;
  FdDevice::FdCalls fd_calls;
  auto transport = MmioTransport::Create(memory_, std::make_unique<FdDevice>(calls, fd_calls)).value();
  MmioDriver driver(*transport);
  EXPECT_TRUE(transport->device().kicks_go_to_backend(1));
  fd_calls.fail = true;
  transport->HandleDeviceFd(0, 1);  // inactive: the device drains it; no guest error
  EXPECT_EQ(fd_calls.events, 1);
  EXPECT_EQ(transport->guest_error_count(), 0u);
  EXPECT_TRUE(transport->PauseDevice());  // inactive: nothing to pause
  EXPECT_EQ(fd_calls.pause, 0);

  BringUp(driver);
  EXPECT_TRUE(fd_calls.saw_queue_eventfds);
  EXPECT_TRUE(transport->PauseDevice());
  EXPECT_TRUE(transport->ResumeDevice());
  EXPECT_EQ(fd_calls.pause, 1);
  EXPECT_EQ(fd_calls.resume, 1);
  transport->HandleDeviceFd(0, 1);
  EXPECT_EQ(driver.Status() & kStatusNeedsReset, kStatusNeedsReset);
  EXPECT_EQ(transport->guest_error_count(), 1u);
}

TEST_F(MmioTransportTest, WithDeviceReturnsHostErrorsWithoutNeedsReset) {
  BringUp(driver_);
  auto result = transport_->WithDevice(
      [](VirtioDevice& d) -> Result<void> { return Fail("device type {} refused", d.device_type()); });
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().message(), "device type 42 refused");
  EXPECT_EQ(driver_.Status() & kStatusNeedsReset, 0u);
}

}  // namespace
}  // namespace clonevm::virtio

// VmState encoding: restore(save(x)) == x through CBOR for every component, and clear errors for
// versions this build does not know, missing components, wrong sizes and absurd counts. No KVM.
#include "vmm/vm_state.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

namespace clonevm {
namespace {

template <typename T>
void Randomize(T* value, std::mt19937_64& rng) {
  auto* bytes = reinterpret_cast<uint8_t*>(value);
  for (size_t i = 0; i < sizeof(T); ++i) bytes[i] = static_cast<uint8_t>(rng());
}

VmState RandomState(uint32_t vcpus, std::mt19937_64& rng) {
  VmState s;
  for (uint32_t i = 0; i < vcpus; ++i) {
    VcpuState v;
    Randomize(&v.regs, rng);
    Randomize(&v.sregs, rng);
    v.xsave.resize(4096 + 64 * i);
    for (auto& b : v.xsave) b = static_cast<uint8_t>(rng());
    Randomize(&v.xcrs, rng);
    Randomize(&v.lapic, rng);
    Randomize(&v.events, rng);
    v.mp_state.mp_state = static_cast<uint32_t>(rng());
    Randomize(&v.debugregs, rng);
    v.tsc_khz = static_cast<uint32_t>(rng());
    for (int k = 0; k < 40; ++k) {
      kvm_cpuid_entry2 e{};
      e.function = static_cast<uint32_t>(rng());
      e.index = static_cast<uint32_t>(rng());
      e.flags = static_cast<uint32_t>(rng());
      e.eax = static_cast<uint32_t>(rng());
      e.ebx = static_cast<uint32_t>(rng());
      e.ecx = static_cast<uint32_t>(rng());
      e.edx = static_cast<uint32_t>(rng());
      v.cpuid.push_back(e);
    }
    for (int k = 0; k < 60; ++k) {
      kvm_msr_entry m{};
      m.index = static_cast<uint32_t>(rng());
      m.data = rng();
      v.msrs.push_back(m);
    }
    s.vcpus.push_back(std::move(v));
  }
  Randomize(&s.pic_master, rng);
  Randomize(&s.pic_slave, rng);
  Randomize(&s.ioapic, rng);
  s.pic_master.chip_id = KVM_IRQCHIP_PIC_MASTER;
  s.pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
  s.ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
  Randomize(&s.pit, rng);
  s.clock.clock = rng();
  s.clock.flags = KVM_CLOCK_TSC_STABLE;
  s.serial.ier = 0x0f;
  s.serial.lcr = 0x03;
  s.serial.mcr = 0x0b;
  s.serial.lsr = 0x61;
  s.serial.msr = 0xb0;
  s.serial.scr = 0x5a;
  s.serial.dll = 1;
  s.serial.iir_fifo = 0xc0;
  s.serial.thr_interrupt = true;
  s.serial.rx = {'h', 'i', '\n'};
  s.cmos.index = 0x0b;
  for (auto& b : s.cmos.nvram) b = static_cast<uint8_t>(rng());
  s.pci.config_address = 0x80000000u;
  s.virtio.push_back({4, {{"version", 1}, {"status", 15}, {"queues", {{{"size", 256}}}}}});
  s.virtio.push_back({19, {{"version", 1}, {"device", {{"guest_cid", 3}}}}});
  return s;
}

Result<VmState> ThroughCbor(const VmState& state) {
  std::vector<uint8_t> cbor = nlohmann::json::to_cbor(VmStateToJson(state));
  return VmStateFromJson(nlohmann::json::from_cbor(cbor));
}

TEST(VmStateTest, RoundTripThroughCbor) {
  std::mt19937_64 rng(42);
  for (uint32_t vcpus : {1u, 2u, 5u}) {
    VmState state = RandomState(vcpus, rng);
    auto restored = ThroughCbor(state);
    ASSERT_TRUE(restored) << restored.error().message();
    EXPECT_TRUE(*restored == state) << vcpus << " vCPUs";
  }
}

TEST(VmStateTest, EqualityNoticesOneChangedByte) {
  std::mt19937_64 rng(7);
  VmState state = RandomState(2, rng);
  VmState other = *ThroughCbor(state);
  other.vcpus[1].lapic.regs[0x20] ^= 1;
  EXPECT_FALSE(other == state);
  other = *ThroughCbor(state);
  other.vcpus[0].msrs[3].data ^= 1;
  EXPECT_FALSE(other == state);
  other = *ThroughCbor(state);
  other.serial.rx.push_back('x');
  EXPECT_FALSE(other == state);
}

TEST(VmStateTest, TreeIsKeyedByComponentWithVersionedLeaves) {
  std::mt19937_64 rng(1);
  nlohmann::json tree = VmStateToJson(RandomState(2, rng));
  for (const char* id : {"vm", "vcpu/0", "vcpu/1", "irqchip", "pit", "clock", "devices/serial", "devices/cmos",
                         "devices/pci", "devices/virtio/0", "devices/virtio/1"}) {
    ASSERT_TRUE(tree.contains(id)) << id;
    EXPECT_EQ(tree[id]["version"], 1) << id;
  }
}

std::string ErrorOf(const nlohmann::json& tree) {
  auto r = VmStateFromJson(tree);
  return r ? std::string() : r.error().message();
}

TEST(VmStateTest, NewerLeafVersionIsRefusedByName) {
  std::mt19937_64 rng(2);
  nlohmann::json tree = VmStateToJson(RandomState(1, rng));
  tree["pit"]["version"] = 2;
  std::string error = ErrorOf(tree);
  EXPECT_NE(error.find("pit"), std::string::npos) << error;
  EXPECT_NE(error.find("version 2"), std::string::npos) << error;
}

TEST(VmStateTest, OlderReadersIgnoreAddedFields) {
  std::mt19937_64 rng(3);
  VmState state = RandomState(1, rng);
  nlohmann::json tree = VmStateToJson(state);
  tree["vcpu/0"]["future_field"] = 1;
  tree["future/component"] = {{"version", 1}};
  auto restored = VmStateFromJson(tree);
  ASSERT_TRUE(restored) << restored.error().message();
  EXPECT_TRUE(*restored == state);
}

TEST(VmStateTest, MalformedComponentsGiveErrors) {
  std::mt19937_64 rng(4);
  const nlohmann::json good = VmStateToJson(RandomState(2, rng));
  nlohmann::json tree = good;
  tree.erase("vcpu/1");
  EXPECT_NE(ErrorOf(tree).find("vcpu/1"), std::string::npos);
  tree = good;
  tree["vcpu/0"]["regs"] = nlohmann::json::binary(std::vector<uint8_t>(10));
  EXPECT_NE(ErrorOf(tree).find("regs"), std::string::npos) << ErrorOf(tree);
  tree = good;
  tree["vcpu/0"]["xsave"] = nlohmann::json::binary(std::vector<uint8_t>(100));
  EXPECT_NE(ErrorOf(tree).find("xsave"), std::string::npos);
  tree = good;
  tree["vm"]["vcpu_count"] = 1u << 30;
  EXPECT_NE(ErrorOf(tree).find("vCPUs"), std::string::npos);
  tree = good;
  tree["vm"]["virtio_count"] = 3u;
  EXPECT_NE(ErrorOf(tree).find("devices/virtio/2"), std::string::npos) << ErrorOf(tree);
  tree = good;
  tree["devices/serial"]["rx"] = nlohmann::json::binary(std::vector<uint8_t>(Serial::kMaxInput + 1));
  EXPECT_NE(ErrorOf(tree).find("rx"), std::string::npos);
  tree = good;
  tree["devices/cmos"]["index"] = 200u;
  EXPECT_NE(ErrorOf(tree).find("CMOS"), std::string::npos) << ErrorOf(tree);
  tree = good;
  tree["vcpu/0"]["cpuid"][0] = {1, 2, 3};
  EXPECT_NE(ErrorOf(tree).find("cpuid"), std::string::npos);
  tree = good;
  tree["vcpu/0"]["msrs"][0] = {-1, 2};
  EXPECT_NE(ErrorOf(tree).find("msrs"), std::string::npos);
  tree = good;
  tree["irqchip"]["pic_master"] = tree["irqchip"]["ioapic"];
  EXPECT_NE(ErrorOf(tree).find("irqchip"), std::string::npos);
  EXPECT_FALSE(VmStateFromJson(nlohmann::json::array()));
}

TEST(RestoredTimeTest, ElapsedIsZeroWithoutRealtimeOrWhenTheClockWentBack) {
  kvm_clock_data saved{};
  saved.clock = 5'000'000'000ull;
  EXPECT_EQ(ElapsedSinceSnapshot(saved, 123), 0u);
  saved.realtime = 1'000'000'000'000ull;
  EXPECT_EQ(ElapsedSinceSnapshot(saved, saved.realtime - 1), 0u);
  EXPECT_EQ(ElapsedSinceSnapshot(saved, saved.realtime + 7'500'000'000ull), 7'500'000'000ull);
  kvm_clock_data advanced = AdvanceClock(saved, 7'500'000'000ull);
  EXPECT_EQ(advanced.clock, 12'500'000'000ull);
  EXPECT_EQ(advanced.flags, 0u);
}

TEST(RestoredTimeTest, TscMovesOnByElapsedTimesFrequencyOnlyForTheTscMsr) {
  std::vector<kvm_msr_entry> msrs(3);
  msrs[0].index = 0x10;  // IA32_TSC
  msrs[0].data = 1'000'000;
  msrs[1].index = 0x6e0;  // TSC deadline: absolute, left alone (it fires at once if now past)
  msrs[1].data = 2'000'000;
  msrs[2].index = 0x4b564d00;  // kvmclock wall clock MSR
  msrs[2].data = 42;
  auto moved = msrs;
  AdvanceTsc(moved, 2'500'000, 3'000'000'000ull);  // 2.5 GHz, 3 s
  EXPECT_EQ(moved[0].data, 1'000'000u + 7'500'000'000u);
  EXPECT_EQ(moved[1].data, msrs[1].data);
  EXPECT_EQ(moved[2].data, msrs[2].data);
  // A year at 10 GHz does not overflow the intermediate product.
  moved = msrs;
  AdvanceTsc(moved, 10'000'000, 365ull * 24 * 3600 * 1'000'000'000ull);
  EXPECT_EQ(moved[0].data, 1'000'000u + 365ull * 24 * 3600 * 10'000'000'000ull);
  moved = msrs;
  AdvanceTsc(moved, 0, 3'000'000'000ull);  // unknown frequency: unchanged
  EXPECT_EQ(moved[0].data, msrs[0].data);
}

}  // namespace
}  // namespace clonevm

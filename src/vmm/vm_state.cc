#include "vmm/vm_state.h"

#include <cstring>
#include <string>
#include <type_traits>

#include "devices/virtio/json_state.h"

namespace clonevm {
namespace {

using nlohmann::json;
using virtio::JsonBool;
using virtio::JsonUint;
using virtio::StateVersion;

constexpr int kVmVersion = 1;
constexpr int kVcpuVersion = 1;
constexpr int kIrqchipVersion = 1;
constexpr int kPitVersion = 1;
constexpr int kClockVersion = 1;
constexpr int kSerialVersion = 1;
constexpr int kCmosVersion = 1;
constexpr int kPciVersion = 1;
constexpr int kVirtioVersion = 1;

// Guards against absurd counts in a crafted file before anything is allocated for them.
constexpr uint64_t kMaxVcpus = 1024;
constexpr uint64_t kMaxVirtio = 64;
constexpr size_t kMaxCpuidEntries = 4096;
constexpr size_t kMaxMsrs = 4096;
constexpr size_t kMaxXsaveBytes = 1 << 20;

template <typename T>
json Blob(const T& value) {
  static_assert(std::is_trivially_copyable_v<T>);
  // SAFETY: T is a trivially copyable KVM ABI struct; its bytes are its representation.
  const auto* bytes = reinterpret_cast<const uint8_t*>(&value);
  return json::binary(std::vector<uint8_t>(bytes, bytes + sizeof(T)));
}

Result<const json*> Field(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end()) return Fail("missing \"{}\"", key);
  return &*it;
}

Result<std::vector<uint8_t>> Bytes(const json& object, const char* key) {
  const json* field = CLONE_TRY(Field(object, key));
  if (!field->is_binary()) return Fail("\"{}\" is not a byte string", key);
  return std::vector<uint8_t>(field->get_binary().begin(), field->get_binary().end());
}

template <typename T>
Result<T> FromBlob(const json& object, const char* key) {
  static_assert(std::is_trivially_copyable_v<T>);
  std::vector<uint8_t> bytes = CLONE_TRY(Bytes(object, key));
  if (bytes.size() != sizeof(T)) return Fail("\"{}\" has {} bytes, expected {}", key, bytes.size(), sizeof(T));
  T value;
  std::memcpy(&value, bytes.data(), sizeof(T));
  return value;
}

template <typename T>
bool BytesEqual(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// The leaf `id` of `tree`, with its version checked.
Result<const json*> Leaf(const json& tree, const std::string& id, int supported) {
  auto it = tree.find(id);
  if (it == tree.end()) return Fail("no \"{}\" state", id);
  CLONE_TRY(StateVersion(*it, supported, id));
  return &*it;
}

json VcpuToJson(const VcpuState& v) {
  json cpuid = json::array();
  for (const auto& e : v.cpuid) cpuid.push_back({e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx});
  json msrs = json::array();
  for (const auto& m : v.msrs) msrs.push_back({m.index, m.data});
  return {{"version", kVcpuVersion},        {"regs", Blob(v.regs)},
          {"sregs", Blob(v.sregs)},         {"xsave", json::binary(v.xsave)},
          {"xcrs", Blob(v.xcrs)},           {"lapic", Blob(v.lapic)},
          {"events", Blob(v.events)},       {"mp_state", v.mp_state.mp_state},
          {"debugregs", Blob(v.debugregs)}, {"tsc_khz", v.tsc_khz},
          {"cpuid", std::move(cpuid)},      {"msrs", std::move(msrs)}};
}

Result<std::vector<kvm_cpuid_entry2>> CpuidFromJson(const json& leaf) {
  const json* array = CLONE_TRY(Field(leaf, "cpuid"));
  if (!array->is_array() || array->size() > kMaxCpuidEntries) return Fail("\"cpuid\" is not an array of entries");
  std::vector<kvm_cpuid_entry2> entries;
  for (const auto& e : *array) {
    if (!e.is_array() || e.size() != 7) return Fail("\"cpuid\": an entry is not 7 integers");
    uint32_t f[7];
    for (size_t i = 0; i < 7; ++i) {
      if (!e[i].is_number_unsigned() || e[i].get<uint64_t>() > UINT32_MAX) return Fail("\"cpuid\": bad value");
      f[i] = e[i].get<uint32_t>();
    }
    kvm_cpuid_entry2 entry{};
    entry.function = f[0];
    entry.index = f[1];
    entry.flags = f[2];
    entry.eax = f[3];
    entry.ebx = f[4];
    entry.ecx = f[5];
    entry.edx = f[6];
    entries.push_back(entry);
  }
  return entries;
}

Result<std::vector<kvm_msr_entry>> MsrsFromJson(const json& leaf) {
  const json* array = CLONE_TRY(Field(leaf, "msrs"));
  if (!array->is_array() || array->size() > kMaxMsrs) return Fail("\"msrs\" is not an array of [index, value]");
  std::vector<kvm_msr_entry> msrs;
  for (const auto& m : *array) {
    if (!m.is_array() || m.size() != 2 || !m[0].is_number_unsigned() || !m[1].is_number_unsigned() ||
        m[0].get<uint64_t>() > UINT32_MAX) {
      return Fail("\"msrs\": an entry is not [index, value]");
    }
    kvm_msr_entry entry{};
    entry.index = m[0].get<uint32_t>();
    entry.data = m[1].get<uint64_t>();
    msrs.push_back(entry);
  }
  return msrs;
}

Result<VcpuState> VcpuFromJson(const json& leaf) {
  VcpuState v;
  v.regs = CLONE_TRY(FromBlob<kvm_regs>(leaf, "regs"));
  v.sregs = CLONE_TRY(FromBlob<kvm_sregs>(leaf, "sregs"));
  v.xsave = CLONE_TRY(Bytes(leaf, "xsave"));
  if (v.xsave.size() < 4096 || v.xsave.size() > kMaxXsaveBytes) return Fail("\"xsave\" has {} bytes", v.xsave.size());
  v.xcrs = CLONE_TRY(FromBlob<kvm_xcrs>(leaf, "xcrs"));
  v.lapic = CLONE_TRY(FromBlob<kvm_lapic_state>(leaf, "lapic"));
  v.events = CLONE_TRY(FromBlob<kvm_vcpu_events>(leaf, "events"));
  v.mp_state.mp_state = CLONE_TRY(JsonUint<uint32_t>(leaf, "mp_state"));
  v.debugregs = CLONE_TRY(FromBlob<kvm_debugregs>(leaf, "debugregs"));
  v.tsc_khz = CLONE_TRY(JsonUint<uint32_t>(leaf, "tsc_khz"));
  v.cpuid = CLONE_TRY(CpuidFromJson(leaf));
  v.msrs = CLONE_TRY(MsrsFromJson(leaf));
  return v;
}

json SerialToJson(const Serial::State& s) {
  return {{"version", kSerialVersion},
          {"ier", s.ier},
          {"iir_fifo", s.iir_fifo},
          {"lcr", s.lcr},
          {"mcr", s.mcr},
          {"lsr", s.lsr},
          {"msr", s.msr},
          {"scr", s.scr},
          {"dll", s.dll},
          {"dlm", s.dlm},
          {"thr_interrupt", s.thr_interrupt},
          {"rx", json::binary(std::vector<uint8_t>(s.rx.begin(), s.rx.end()))}};
}

Result<Serial::State> SerialFromJson(const json& leaf) {
  Serial::State s;
  s.ier = CLONE_TRY(JsonUint<uint8_t>(leaf, "ier"));
  s.iir_fifo = CLONE_TRY(JsonUint<uint8_t>(leaf, "iir_fifo"));
  s.lcr = CLONE_TRY(JsonUint<uint8_t>(leaf, "lcr"));
  s.mcr = CLONE_TRY(JsonUint<uint8_t>(leaf, "mcr"));
  s.lsr = CLONE_TRY(JsonUint<uint8_t>(leaf, "lsr"));
  s.msr = CLONE_TRY(JsonUint<uint8_t>(leaf, "msr"));
  s.scr = CLONE_TRY(JsonUint<uint8_t>(leaf, "scr"));
  s.dll = CLONE_TRY(JsonUint<uint8_t>(leaf, "dll"));
  s.dlm = CLONE_TRY(JsonUint<uint8_t>(leaf, "dlm"));
  s.thr_interrupt = CLONE_TRY(JsonBool(leaf, "thr_interrupt"));
  std::vector<uint8_t> rx = CLONE_TRY(Bytes(leaf, "rx"));
  if (rx.size() > Serial::kMaxInput) return Fail("\"rx\" holds {} bytes (at most {})", rx.size(), Serial::kMaxInput);
  s.rx.assign(rx.begin(), rx.end());
  return s;
}

Result<Cmos::State> CmosFromJson(const json& leaf) {
  Cmos::State s;
  s.index = CLONE_TRY(JsonUint<uint8_t>(leaf, "index"));
  std::vector<uint8_t> nvram = CLONE_TRY(Bytes(leaf, "nvram"));
  if (nvram.size() != s.nvram.size() || s.index >= s.nvram.size()) return Fail("bad CMOS state");
  std::copy(nvram.begin(), nvram.end(), s.nvram.begin());
  return s;
}

// Runs one component's parser, prefixing its errors with the component id.
template <typename Fn>
auto Component(const std::string& id, Fn&& fn) -> decltype(fn()) {
  auto result = fn();
  if (!result) return Fail(result.error().Wrap(fmt::format("state \"{}\"", id)));
  return result;
}

Result<void> IrqchipFromJson(const json& tree, VmState* state) {
  const json* leaf = CLONE_TRY(Leaf(tree, "irqchip", kIrqchipVersion));
  state->pic_master = CLONE_TRY(FromBlob<kvm_irqchip>(*leaf, "pic_master"));
  state->pic_slave = CLONE_TRY(FromBlob<kvm_irqchip>(*leaf, "pic_slave"));
  state->ioapic = CLONE_TRY(FromBlob<kvm_irqchip>(*leaf, "ioapic"));
  if (state->pic_master.chip_id != KVM_IRQCHIP_PIC_MASTER || state->pic_slave.chip_id != KVM_IRQCHIP_PIC_SLAVE ||
      state->ioapic.chip_id != KVM_IRQCHIP_IOAPIC) {
    return Fail("irqchip ids do not match their roles");
  }
  return {};
}

Result<void> PlatformFromJson(const json& tree, VmState* state) {
  CLONE_TRY_VOID(Component("irqchip", [&] { return IrqchipFromJson(tree, state); }));
  const json* pit = CLONE_TRY(Leaf(tree, "pit", kPitVersion));
  state->pit = CLONE_TRY(Component("pit", [&] { return FromBlob<kvm_pit_state2>(*pit, "pit"); }));
  const json* clock = CLONE_TRY(Leaf(tree, "clock", kClockVersion));
  state->clock.clock = CLONE_TRY(Component("clock", [&] { return JsonUint<uint64_t>(*clock, "clock"); }));
  state->clock.flags = CLONE_TRY(Component("clock", [&] { return JsonUint<uint32_t>(*clock, "flags"); }));
  // Added without a version bump: older snapshots lack it (0 = unknown, the clock is not advanced).
  if (clock->contains("realtime")) {
    state->clock.realtime = CLONE_TRY(Component("clock", [&] { return JsonUint<uint64_t>(*clock, "realtime"); }));
  }
  const json* serial = CLONE_TRY(Leaf(tree, "devices/serial", kSerialVersion));
  state->serial = CLONE_TRY(Component("devices/serial", [&] { return SerialFromJson(*serial); }));
  const json* cmos = CLONE_TRY(Leaf(tree, "devices/cmos", kCmosVersion));
  state->cmos = CLONE_TRY(Component("devices/cmos", [&] { return CmosFromJson(*cmos); }));
  const json* pci = CLONE_TRY(Leaf(tree, "devices/pci", kPciVersion));
  state->pci.config_address =
      CLONE_TRY(Component("devices/pci", [&] { return JsonUint<uint32_t>(*pci, "config_address"); }));
  return {};
}

}  // namespace

nlohmann::json VmStateToJson(const VmState& state) {
  json tree = json::object();
  tree["vm"] = {{"version", kVmVersion}, {"vcpu_count", state.vcpus.size()}, {"virtio_count", state.virtio.size()}};
  for (size_t i = 0; i < state.vcpus.size(); ++i) tree[fmt::format("vcpu/{}", i)] = VcpuToJson(state.vcpus[i]);
  tree["irqchip"] = {{"version", kIrqchipVersion},
                     {"pic_master", Blob(state.pic_master)},
                     {"pic_slave", Blob(state.pic_slave)},
                     {"ioapic", Blob(state.ioapic)}};
  tree["pit"] = {{"version", kPitVersion}, {"pit", Blob(state.pit)}};
  tree["clock"] = {{"version", kClockVersion},
                   {"clock", state.clock.clock},
                   {"flags", state.clock.flags},
                   {"realtime", state.clock.realtime}};
  tree["devices/serial"] = SerialToJson(state.serial);
  tree["devices/cmos"] = {
      {"version", kCmosVersion},
      {"index", state.cmos.index},
      {"nvram", json::binary(std::vector<uint8_t>(state.cmos.nvram.begin(), state.cmos.nvram.end()))}};
  tree["devices/pci"] = {{"version", kPciVersion}, {"config_address", state.pci.config_address}};
  for (size_t i = 0; i < state.virtio.size(); ++i) {
    tree[fmt::format("devices/virtio/{}", i)] = {{"version", kVirtioVersion},
                                                 {"device_type", state.virtio[i].device_type},
                                                 {"transport", state.virtio[i].transport}};
  }
  return tree;
}

Result<VmState> VmStateFromJson(const nlohmann::json& tree) {
  if (!tree.is_object()) return Fail("the state is not a tree of components");
  VmState state;
  const json* vm = CLONE_TRY(Leaf(tree, "vm", kVmVersion));
  uint64_t vcpus = CLONE_TRY(Component("vm", [&] { return JsonUint<uint64_t>(*vm, "vcpu_count"); }));
  uint64_t virtio = CLONE_TRY(Component("vm", [&] { return JsonUint<uint64_t>(*vm, "virtio_count"); }));
  if (vcpus == 0 || vcpus > kMaxVcpus) return Fail("state \"vm\": {} vCPUs", vcpus);
  if (virtio > kMaxVirtio) return Fail("state \"vm\": {} virtio devices", virtio);
  for (uint64_t i = 0; i < vcpus; ++i) {
    std::string id = fmt::format("vcpu/{}", i);
    const json* leaf = CLONE_TRY(Leaf(tree, id, kVcpuVersion));
    state.vcpus.push_back(CLONE_TRY(Component(id, [&] { return VcpuFromJson(*leaf); })));
  }
  CLONE_TRY_VOID(PlatformFromJson(tree, &state));
  for (uint64_t i = 0; i < virtio; ++i) {
    std::string id = fmt::format("devices/virtio/{}", i);
    const json* leaf = CLONE_TRY(Leaf(tree, id, kVirtioVersion));
    VirtioSlotState slot;
    slot.device_type = CLONE_TRY(Component(id, [&] { return JsonUint<uint32_t>(*leaf, "device_type"); }));
    const json* transport = CLONE_TRY(Component(id, [&] { return Field(*leaf, "transport"); }));
    if (!transport->is_object()) return Fail("state \"{}\": \"transport\" is not an object", id);
    slot.transport = *transport;
    state.virtio.push_back(std::move(slot));
  }
  return state;
}

bool operator==(const VcpuState& a, const VcpuState& b) {
  auto cpuid_equal = [](const kvm_cpuid_entry2& x, const kvm_cpuid_entry2& y) {
    return x.function == y.function && x.index == y.index && x.flags == y.flags && x.eax == y.eax && x.ebx == y.ebx &&
           x.ecx == y.ecx && x.edx == y.edx;
  };
  auto msr_equal = [](const kvm_msr_entry& x, const kvm_msr_entry& y) {
    return x.index == y.index && x.data == y.data;
  };
  return BytesEqual(a.regs, b.regs) && BytesEqual(a.sregs, b.sregs) && a.xsave == b.xsave &&
         BytesEqual(a.xcrs, b.xcrs) && BytesEqual(a.lapic, b.lapic) && BytesEqual(a.events, b.events) &&
         a.mp_state.mp_state == b.mp_state.mp_state && BytesEqual(a.debugregs, b.debugregs) && a.tsc_khz == b.tsc_khz &&
         std::equal(a.cpuid.begin(), a.cpuid.end(), b.cpuid.begin(), b.cpuid.end(), cpuid_equal) &&
         std::equal(a.msrs.begin(), a.msrs.end(), b.msrs.begin(), b.msrs.end(), msr_equal);
}

bool operator==(const VmState& a, const VmState& b) {
  bool virtio_equal = a.virtio.size() == b.virtio.size();
  for (size_t i = 0; virtio_equal && i < a.virtio.size(); ++i) {
    virtio_equal = a.virtio[i].device_type == b.virtio[i].device_type && a.virtio[i].transport == b.virtio[i].transport;
  }
  auto serial_equal = [](const Serial::State& x, const Serial::State& y) {
    return x.ier == y.ier && x.iir_fifo == y.iir_fifo && x.lcr == y.lcr && x.mcr == y.mcr && x.lsr == y.lsr &&
           x.msr == y.msr && x.scr == y.scr && x.dll == y.dll && x.dlm == y.dlm && x.thr_interrupt == y.thr_interrupt &&
           x.rx == y.rx;
  };
  return a.vcpus == b.vcpus && BytesEqual(a.pic_master, b.pic_master) && BytesEqual(a.pic_slave, b.pic_slave) &&
         BytesEqual(a.ioapic, b.ioapic) && BytesEqual(a.pit, b.pit) && a.clock.clock == b.clock.clock &&
         a.clock.realtime == b.clock.realtime && a.clock.flags == b.clock.flags && serial_equal(a.serial, b.serial) &&
         a.cmos.index == b.cmos.index && a.cmos.nvram == b.cmos.nvram && a.pci.config_address == b.pci.config_address &&
         virtio_equal;
}

uint64_t ElapsedSinceSnapshot(const kvm_clock_data& saved, uint64_t now_realtime_ns) {
  if (saved.realtime == 0 || now_realtime_ns <= saved.realtime) return 0;
  return now_realtime_ns - saved.realtime;
}

kvm_clock_data AdvanceClock(const kvm_clock_data& saved, uint64_t elapsed_ns) {
  kvm_clock_data clock{};
  clock.clock = saved.clock + elapsed_ns;
  return clock;
}

void AdvanceTsc(std::vector<kvm_msr_entry>& msrs, uint32_t tsc_khz, uint64_t elapsed_ns) {
  constexpr uint32_t kMsrIa32Tsc = 0x10;
  if (tsc_khz == 0 || elapsed_ns == 0) return;
  // kHz × ns / 10^6 = ticks; 128-bit so years at 10 GHz cannot overflow the product.
  auto ticks = static_cast<uint64_t>(static_cast<unsigned __int128>(elapsed_ns) * tsc_khz / 1'000'000u);
  for (auto& msr : msrs) {
    if (msr.index == kMsrIa32Tsc) msr.data += ticks;
  }
}

}  // namespace clonevm

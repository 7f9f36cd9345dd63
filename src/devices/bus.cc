#include "devices/bus.h"

#include <algorithm>

namespace clonevm {

Result<void> Bus::Insert(uint64_t base, uint64_t len, std::shared_ptr<BusDevice> device) {
  if (len == 0 || base + len < base) return Fail("bus range {:#x}+{:#x} is empty or wraps", base, len);
  auto next = ranges_.lower_bound(base);
  if (next != ranges_.end() && next->first < base + len)
    return Fail("bus range {:#x}+{:#x} overlaps {:#x}", base, len, next->first);
  if (next != ranges_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.len > base)
      return Fail("bus range {:#x}+{:#x} overlaps {:#x}", base, len, prev->first);
  }
  ranges_.emplace(base, Range{len, std::move(device)});
  return {};
}

const std::pair<const uint64_t, Bus::Range>* Bus::Find(uint64_t addr, uint64_t len) const {
  auto it = ranges_.upper_bound(addr);
  if (it == ranges_.begin()) return nullptr;
  --it;
  uint64_t offset = addr - it->first;
  if (offset >= it->second.len || len > it->second.len - offset) return nullptr;
  return &*it;
}

bool Bus::Read(uint64_t addr, std::span<uint8_t> data) const {
  std::fill(data.begin(), data.end(), 0xff);
  const auto* entry = Find(addr, data.size());
  if (entry == nullptr) return false;
  entry->second.device->Read(addr - entry->first, data);
  return true;
}

bool Bus::Write(uint64_t addr, std::span<const uint8_t> data) const {
  const auto* entry = Find(addr, data.size());
  if (entry == nullptr) return false;
  entry->second.device->Write(addr - entry->first, data);
  return true;
}

std::shared_ptr<BusDevice> Bus::DeviceAt(uint64_t addr) const {
  const auto* entry = Find(addr, 1);
  return entry == nullptr ? nullptr : entry->second.device;
}

}  // namespace clonevm

// Vm dirty page tracking for incremental snapshots (declarations and contract in vm.h).
//
// Three writers change guest RAM behind a snapshot's back, and each has its own log:
//   * vCPUs: KVM's per-slot dirty bitmap (KVM_MEM_LOG_DIRTY_PAGES on every slot; KVM_GET_DIRTY_LOG
//     copies it out and write-protects the pages again, so each call returns what changed since the
//     previous one). KVM's own writes to guest memory (kvmclock, steal time) are logged there too.
//   * userspace devices: the GuestMemory's DirtyLog, marked by the virtqueue choke point
//     (devices/virtio/queue.h) and GuestMemory::WriteBytes.
//   * vhost (in the kernel): the same DirtyLog words, handed to each vhost device as its log base.
// Collection happens with everything paused, so the union is exact for the interval. Slot i is
// memory region i (Vm::SetUpMemory), whose pages map to the memory file at FileOffset(i).
#include "vmm/vm.h"

namespace clonevm {

Result<void> Vm::StartDirtyTracking() {
  if (dirty_tracking_) return {};
  uint32_t slot = 0;
  for (const auto& region : memory_->regions()) {
    auto set = vm_fd_->SetUserMemoryRegion(slot, region.gpa, region.size, region.host(), KVM_MEM_LOG_DIRTY_PAGES);
    if (!set) {
      // Back to untracked slots: a half-tracked VM would let an incremental snapshot miss writes.
      for (uint32_t s = 0; s < slot; ++s) {
        const auto& r = memory_->regions()[s];
        [[maybe_unused]] auto undo = vm_fd_->SetUserMemoryRegion(s, r.gpa, r.size, r.host());
      }
      return Fail(set.error().Wrap("starting dirty page tracking"));
    }
    ++slot;
  }
  memory_->dirty_log().Enable();
  dirty_tracking_ = true;
  return {};
}

Result<PageBitmap> Vm::CollectDirtyPages() {
  if (!dirty_tracking_) return Fail("dirty page tracking is not on");
  PageBitmap file_pages = memory_->FilePages(memory_->dirty_log().TakeAll());
  for (size_t slot = 0; slot < memory_->regions().size(); ++slot) {
    const MemoryRegion& region = memory_->regions()[slot];
    uint64_t pages = region.size / kDirtyPageSize;
    PageBitmap slot_pages(pages);
    auto got = vm_fd_->GetDirtyLog(static_cast<uint32_t>(slot), slot_pages.words());
    if (!got) {
      ReturnDirtyPages(file_pages);  // what was taken from the DirtyLog is not lost
      return Fail(got.error());
    }
    uint64_t first = memory_->FileOffset(slot) / kDirtyPageSize;
    for (auto [page, count] : slot_pages.Runs()) file_pages.SetRange(first + page, count);
  }
  return file_pages;
}

void Vm::ReturnDirtyPages(const PageBitmap& file_pages) {
  PageBitmap gpa_pages = memory_->GpaPages(file_pages);
  for (auto [page, count] : gpa_pages.Runs()) memory_->dirty_log().Mark(page * kDirtyPageSize, count * kDirtyPageSize);
}

}  // namespace clonevm

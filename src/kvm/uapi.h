// C++-safe layouts and ioctl numbers for KVM (and vhost) structures with flexible array members.
//
// The UAPI headers declare those arrays with __DECLARE_FLEX_ARRAY, which under C++ inserts an
// empty struct (size 1) before the array: sizeof(kvm_cpuid2) becomes 12 instead of 8, `entries`
// moves to offset 12, and every ioctl number that encodes the struct size changes
// (KVM_GET_SUPPORTED_CPUID turns into 0xc00cae05, which KVM rejects with EINVAL). So Clone never
// uses those structs' array members from C++: it builds the buffers from the headers below, whose
// sizes match the C ABI, and uses the ioctl numbers derived from them.
#pragma once

#include <linux/kvm.h>
#include <sys/ioctl.h>

// <linux/vhost.h> pulls in <linux/virtio_ring.h>, whose legacy vring helpers are not valid C++;
// include vhost through this header, which leaves them out.
#ifndef VIRTIO_RING_NO_LEGACY
#define VIRTIO_RING_NO_LEGACY
#endif
#include <linux/vhost.h>

#include <cstddef>
#include <cstdint>

namespace clonevm::kvm::uapi {

struct CpuidHeader {  // struct kvm_cpuid2 without its entries[]
  uint32_t nent;
  uint32_t padding;
};
struct MsrsHeader {  // struct kvm_msrs without its entries[]
  uint32_t nmsrs;
  uint32_t pad;
};
struct MsrListHeader {  // struct kvm_msr_list without its indices[]
  uint32_t nmsrs;
};
struct IrqRoutingHeader {  // struct kvm_irq_routing without its entries[]
  uint32_t nr;
  uint32_t flags;
};
static_assert(sizeof(CpuidHeader) == 8 && sizeof(MsrsHeader) == 8 && sizeof(IrqRoutingHeader) == 8);

inline constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, CpuidHeader);
inline constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, CpuidHeader);
inline constexpr unsigned long kGetCpuid2 = _IOWR(KVMIO, 0x91, CpuidHeader);
inline constexpr unsigned long kGetMsrs = _IOWR(KVMIO, 0x88, MsrsHeader);
inline constexpr unsigned long kSetMsrs = _IOW(KVMIO, 0x89, MsrsHeader);
inline constexpr unsigned long kGetMsrIndexList = _IOWR(KVMIO, 0x02, MsrListHeader);
inline constexpr unsigned long kSetGsiRouting = _IOW(KVMIO, 0x6a, IrqRoutingHeader);

// vhost (drivers/vhost): struct vhost_memory ends in a flexible array of vhost_memory_region.
struct VhostMemoryHeader {  // struct vhost_memory without its regions[]
  uint32_t nregions;
  uint32_t padding;
};
static_assert(sizeof(VhostMemoryHeader) == 8 && sizeof(vhost_memory_region) == 32);
inline constexpr unsigned long kVhostSetMemTable = _IOW(VHOST_VIRTIO, 0x03, VhostMemoryHeader);
inline constexpr size_t kVhostMemoryRegionsOffset = sizeof(VhostMemoryHeader);

// struct kvm_xsave: 4096 bytes of region[] then (since KVM_CAP_XSAVE2) a flexible extra[].
struct XsaveHeader {  // struct kvm_xsave without its extra[]
  uint32_t region[1024];
};
static_assert(sizeof(XsaveHeader) == 4096);
inline constexpr unsigned long kGetXsave = _IOR(KVMIO, 0xa4, XsaveHeader);
inline constexpr unsigned long kSetXsave = _IOW(KVMIO, 0xa5, XsaveHeader);
inline constexpr unsigned long kGetXsave2 = _IOR(KVMIO, 0xcf, XsaveHeader);

// Offset of the first array element in each of those structs (== sizeof the header in C).
inline constexpr size_t kCpuidEntriesOffset = sizeof(CpuidHeader);
inline constexpr size_t kMsrEntriesOffset = sizeof(MsrsHeader);

}  // namespace clonevm::kvm::uapi

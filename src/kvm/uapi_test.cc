#include "kvm/uapi.h"

#include <gtest/gtest.h>

namespace clonevm::kvm::uapi {
namespace {

// The values a C compiler computes from <linux/kvm.h> (x86_64): the ABI KVM checks.
TEST(KvmUapiTest, IoctlNumbersMatchTheCAbi) {
  EXPECT_EQ(kGetSupportedCpuid, 0xc008ae05ul);
  EXPECT_EQ(kSetCpuid2, 0x4008ae90ul);
  EXPECT_EQ(kGetCpuid2, 0xc008ae91ul);
  EXPECT_EQ(kGetMsrs, 0xc008ae88ul);
  EXPECT_EQ(kSetMsrs, 0x4008ae89ul);
  EXPECT_EQ(kGetMsrIndexList, 0xc004ae02ul);
  EXPECT_EQ(kSetGsiRouting, 0x4008ae6aul);
}

TEST(KvmUapiTest, VhostMemTableMatchesTheCAbi) {
  EXPECT_EQ(kVhostSetMemTable, 0x4008af03ul);  // VHOST_SET_MEM_TABLE as a C compiler computes it
  EXPECT_EQ(kVhostMemoryRegionsOffset, 8u);
  EXPECT_EQ(sizeof(vhost_vring_addr), 40u);
  EXPECT_EQ(sizeof(vhost_vring_state), 8u);
  EXPECT_EQ(sizeof(vhost_vring_file), 8u);
}

TEST(KvmUapiTest, XsaveMatchesTheCAbi) {
  EXPECT_EQ(kGetXsave, 0x9000aea4ul);   // KVM_GET_XSAVE as a C compiler computes it
  EXPECT_EQ(kSetXsave, 0x5000aea5ul);   // KVM_SET_XSAVE
  EXPECT_EQ(kGetXsave2, 0x9000aecful);  // KVM_GET_XSAVE2
}

TEST(KvmUapiTest, SnapshotStructsHaveTheirCSizes) {
  // Fixed-layout structs stored verbatim in snapshots (vmm/vm_state.h): their sizes are ABI.
  EXPECT_EQ(sizeof(kvm_regs), 144u);
  EXPECT_EQ(sizeof(kvm_sregs), 312u);
  EXPECT_EQ(sizeof(kvm_lapic_state), 1024u);
  EXPECT_EQ(sizeof(kvm_vcpu_events), 64u);
  EXPECT_EQ(sizeof(kvm_debugregs), 128u);
  EXPECT_EQ(sizeof(kvm_xcrs), 392u);
  EXPECT_EQ(sizeof(kvm_irqchip), 520u);
  EXPECT_EQ(sizeof(kvm_pit_state2), 112u);
  EXPECT_EQ(sizeof(kvm_clock_data), 48u);
  EXPECT_EQ(sizeof(kvm_mp_state), 4u);
}

TEST(KvmUapiTest, EntryLayoutsAreTheKernels) {
  EXPECT_EQ(sizeof(kvm_cpuid_entry2), 40u);
  EXPECT_EQ(sizeof(kvm_msr_entry), 16u);
}

}  // namespace
}  // namespace clonevm::kvm::uapi

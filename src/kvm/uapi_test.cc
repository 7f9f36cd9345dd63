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

TEST(KvmUapiTest, EntryLayoutsAreTheKernels) {
  EXPECT_EQ(sizeof(kvm_cpuid_entry2), 40u);
  EXPECT_EQ(sizeof(kvm_msr_entry), 16u);
}

}  // namespace
}  // namespace clonevm::kvm::uapi

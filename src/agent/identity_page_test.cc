#include "agent/identity_page.h"

#include <gtest/gtest.h>

#include <cstring>

#include "agent/proto.h"

namespace clonevm::agent {
namespace {

Identity Sample() {
  Identity id;
  id.generation = 7;
  id.vm_id = "vm-0123";
  id.hostname = "web-1";
  id.vsock_cid = 42;
  id.mac = {0x02, 0, 0, 0, 0, 0x2a};
  id.ipv4_address = {10, 0, 0, 42};
  id.ipv4_prefix = 24;
  id.ipv4_gateway = {10, 0, 0, 1};
  for (size_t i = 0; i < id.entropy_seed.size(); ++i) id.entropy_seed[i] = static_cast<uint8_t>(i * 3);
  for (size_t i = 0; i < id.token.size(); ++i) id.token[i] = static_cast<uint8_t>(0xa0 + i);
  id.written_at_unix_ns = 1'700'000'000'123'456'789ull;
  for (size_t i = 0; i < id.vmgenid.size(); ++i) id.vmgenid[i] = static_cast<uint8_t>(0x51 + 7 * i);
  return id;
}

TEST(IdentityPageTest, RoundTripAndFixedOffsets) {
  auto page = EncodeIdentityPage(Sample());
  ASSERT_TRUE(page) << page.error().message();
  EXPECT_EQ(std::memcmp(page->data(), "CLONEID\0", 8), 0);
  uint32_t version;
  std::memcpy(&version, page->data() + 8, 4);
  EXPECT_EQ(version, 1u);
  EXPECT_STREQ(reinterpret_cast<const char*>(page->data() + 88), "web-1");
  EXPECT_EQ((*page)[240], 0xa0);  // token
  EXPECT_EQ((*page)[164], 10);    // ipv4 address
  EXPECT_EQ((*page)[162], 24);    // prefix
  // The VM Generation ID sits at 0x800, where the DSDT's VGEN device points the guest.
  EXPECT_EQ(kVmGenIdOffset, 0x800u);
  EXPECT_EQ(kVmGenIdGpa, 0x6800u);
  for (size_t i = 0; i < kVmGenIdSize; ++i) ASSERT_EQ((*page)[0x800 + i], 0x51 + 7 * i) << i;
  // Everything else past the last field is zero.
  for (size_t i = 280; i < page->size(); ++i) {
    if (i >= 0x800 && i < 0x800 + kVmGenIdSize) continue;
    ASSERT_EQ((*page)[i], 0) << i;
  }

  auto id = DecodeIdentityPage(*page);
  ASSERT_TRUE(id) << id.error().message();
  Identity want = Sample();
  EXPECT_EQ(id->generation, want.generation);
  EXPECT_EQ(id->vm_id, want.vm_id);
  EXPECT_EQ(id->hostname, want.hostname);
  EXPECT_EQ(id->vsock_cid, 42u);
  EXPECT_EQ(id->mac, want.mac);
  EXPECT_EQ(id->ipv4_address, want.ipv4_address);
  EXPECT_EQ(id->ipv4_prefix, 24);
  EXPECT_EQ(id->ipv4_gateway, want.ipv4_gateway);
  EXPECT_EQ(id->entropy_seed, want.entropy_seed);
  EXPECT_EQ(id->token, want.token);
  EXPECT_EQ(id->written_at_unix_ns, want.written_at_unix_ns);
  EXPECT_EQ(id->vmgenid, want.vmgenid);
  EXPECT_TRUE(id->has_token());
}

// A page written before the vmgenid field existed (zeros in the reserved tail) still decodes, with
// no generation id; an identity without one encodes zeros there.
TEST(IdentityPageTest, VmGenIdIsOptional) {
  Identity id = Sample();
  id.vmgenid = {};
  auto page = EncodeIdentityPage(id);
  ASSERT_TRUE(page) << page.error().message();
  for (size_t i = 0; i < kVmGenIdSize; ++i) ASSERT_EQ((*page)[kVmGenIdOffset + i], 0) << i;
  auto decoded = DecodeIdentityPage(*page);
  ASSERT_TRUE(decoded) << decoded.error().message();
  EXPECT_EQ(decoded->vmgenid, (std::array<uint8_t, kVmGenIdSize>{}));
  EXPECT_EQ(decoded->token, id.token);
}

TEST(IdentityPageTest, EncodeRejectsBadFields) {
  Identity id = Sample();
  id.hostname = std::string(64, 'h');  // no room for the NUL
  EXPECT_FALSE(EncodeIdentityPage(id));
  id = Sample();
  id.vm_id = std::string("a\0b", 3);
  EXPECT_FALSE(EncodeIdentityPage(id));
  id = Sample();
  id.ipv4_prefix = 33;
  EXPECT_FALSE(EncodeIdentityPage(id));
}

TEST(IdentityPageTest, DecodeRejectsGarbage) {
  IdentityPageBytes page = *EncodeIdentityPage(Sample());
  EXPECT_FALSE(DecodeIdentityPage(std::span<const uint8_t>(page).first(100)));  // short

  IdentityPageBytes zero{};
  auto blank = DecodeIdentityPage(zero);
  ASSERT_FALSE(blank);
  EXPECT_NE(blank.error().message().find("magic"), std::string::npos);

  IdentityPageBytes bad = page;
  bad[8] = 2;  // layout version
  EXPECT_FALSE(DecodeIdentityPage(bad));

  bad = page;
  std::memset(bad.data() + 88, 'x', 64);  // hostname without NUL
  auto unterminated = DecodeIdentityPage(bad);
  ASSERT_FALSE(unterminated);
  EXPECT_NE(unterminated.error().message().find("hostname"), std::string::npos);

  bad = page;
  bad[162] = 40;  // prefix
  EXPECT_FALSE(DecodeIdentityPage(bad));
}

TEST(IdentityPageTest, TokenHelpers) {
  Identity id;
  EXPECT_FALSE(id.has_token());
  Token a{}, b{};
  a[31] = 1;
  EXPECT_FALSE(TokensEqual(a, b));
  b[31] = 1;
  EXPECT_TRUE(TokensEqual(a, b));
  EXPECT_FALSE(TokensEqual(std::span<const uint8_t>(a).first(31), b));
}

}  // namespace
}  // namespace clonevm::agent

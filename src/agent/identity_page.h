// IdentityPage: one 4 KiB page of guest RAM through which the VMM tells the guest agent who the VM
// is, shared by the VMM (writer) and clone-agent (reader).
//
// The VMM fills the page at guest physical address kIdentityPageGpa (must equal
// x86::kIdentityPageAddr in arch/x86/layout.h; the agent layer cannot include that header) and
// marks it reserved in the e820 map, so that under STRICT_DEVMEM the guest's /dev/mem still allows
// reading it (the first MiB is readable). The VMM rewrites it after a fork with a new generation,
// token, identity and entropy seed before the first KVM_RUN; the agent re-reads it on every Hello,
// so a fork's new token takes effect on its next connection.
//
// The page also holds the 16-byte VM Generation ID (at kVmGenIdOffset): the DSDT's VGEN device
// points the guest kernel's vmgenid driver at it (acpi/dsdt.cc), the VMM writes a fresh random one
// for every VM process (boot, restore, fork) and then signals the change through the ACPI Generic
// Event Device (Vm::NotifyVmGenerationChanged), and the kernel reseeds its RNG when it differs from
// the one it saw before. The agent does not use it.
//
// Layout (little-endian, layout version 1; offsets pinned by static_asserts below):
//   0 magic "CLONEID\0" | 8 u32 layout_version | 12 u32 reserved | 16 u64 generation |
//   24 char vm_id[64] | 88 char hostname[64] | 152 u32 vsock_cid | 156 u8 mac[6] |
//   162 u8 ipv4_prefix | 163 u8 reserved | 164 u8 ipv4_address[4] | 168 u8 ipv4_gateway[4] |
//   172 u8 reserved[4] | 176 u8 entropy_seed[64] | 240 u8 token[32] | 272 u64 written_at_unix_ns |
//   280..2047 zero | 2048 (0x800) u8 vmgenid[16] | 2064..4095 zero.
// The vmgenid field was added in the reserved tail without a layout version change: older agents
// never read it, and a page written by an older VMM has zeros there (no generation id).
// Strings are NUL-terminated within their field (at most 63 bytes). An all-zero token means "no
// token": the agent refuses every connection until the VMM writes one.
//
// Input handling: DecodeIdentityPage treats the bytes as untrusted (it validates magic, layout
// version and NUL termination) and never reads outside the span it is given.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "base/result.h"

namespace clonevm::agent {

inline constexpr uint64_t kIdentityPageGpa = 0x6000;
inline constexpr size_t kIdentityPageSize = 4096;
inline constexpr uint32_t kIdentityLayoutVersion = 1;
// Where the VM Generation ID lives in the page (8-byte aligned, as the vmgenid spec asks), and its
// guest-physical address, which the VMM's ACPI tables hand to the guest (x86::kVmGenIdAddr must
// equal kVmGenIdGpa; the runtime checks it, since this layer cannot include arch headers).
inline constexpr size_t kVmGenIdOffset = 0x800;
inline constexpr size_t kVmGenIdSize = 16;
inline constexpr uint64_t kVmGenIdGpa = kIdentityPageGpa + kVmGenIdOffset;

// SAFETY: plain bytes and fixed-width integers only; no padding (checked below), so it can be
// memcpy'd to and from guest memory.
struct IdentityPageLayout {
  char magic[8];
  uint32_t layout_version;
  uint32_t reserved0;
  uint64_t generation;
  char vm_id[64];
  char hostname[64];
  uint32_t vsock_cid;
  uint8_t mac[6];
  uint8_t ipv4_prefix;
  uint8_t reserved1;
  uint8_t ipv4_address[4];
  uint8_t ipv4_gateway[4];
  uint8_t reserved2[4];
  uint8_t entropy_seed[64];
  uint8_t token[32];
  uint64_t written_at_unix_ns;
  uint8_t reserved3[kVmGenIdOffset - 280];
  uint8_t vmgenid[kVmGenIdSize];
  uint8_t reserved4[kIdentityPageSize - kVmGenIdOffset - kVmGenIdSize];
};
static_assert(sizeof(IdentityPageLayout) == kIdentityPageSize);
static_assert(offsetof(IdentityPageLayout, layout_version) == 8);
static_assert(offsetof(IdentityPageLayout, generation) == 16);
static_assert(offsetof(IdentityPageLayout, vm_id) == 24);
static_assert(offsetof(IdentityPageLayout, hostname) == 88);
static_assert(offsetof(IdentityPageLayout, vsock_cid) == 152);
static_assert(offsetof(IdentityPageLayout, mac) == 156);
static_assert(offsetof(IdentityPageLayout, ipv4_prefix) == 162);
static_assert(offsetof(IdentityPageLayout, ipv4_address) == 164);
static_assert(offsetof(IdentityPageLayout, ipv4_gateway) == 168);
static_assert(offsetof(IdentityPageLayout, entropy_seed) == 176);
static_assert(offsetof(IdentityPageLayout, token) == 240);
static_assert(offsetof(IdentityPageLayout, written_at_unix_ns) == 272);
static_assert(offsetof(IdentityPageLayout, vmgenid) == kVmGenIdOffset);
static_assert(kVmGenIdOffset % 8 == 0, "the VM Generation ID must be 8-byte aligned");

// The decoded page.
struct Identity {
  uint64_t generation = 0;
  std::string vm_id;     // at most 63 bytes, no NUL
  std::string hostname;  // at most 63 bytes, no NUL
  uint32_t vsock_cid = 0;
  std::array<uint8_t, 6> mac{};
  std::array<uint8_t, 4> ipv4_address{};  // 0.0.0.0 with prefix 0: no static address
  uint8_t ipv4_prefix = 0;                // 0..32
  std::array<uint8_t, 4> ipv4_gateway{};
  std::array<uint8_t, 64> entropy_seed{};
  std::array<uint8_t, 32> token{};
  uint64_t written_at_unix_ns = 0;
  std::array<uint8_t, kVmGenIdSize> vmgenid{};  // all zero: none

  bool has_token() const;
};

using IdentityPageBytes = std::array<uint8_t, kIdentityPageSize>;

// Fails when a string does not fit (or contains NUL) or the prefix is above 32.
[[nodiscard]] Result<IdentityPageBytes> EncodeIdentityPage(const Identity& identity);
[[nodiscard]] Result<Identity> DecodeIdentityPage(std::span<const uint8_t> page);

// Compares two tokens in constant time.
bool TokensEqual(std::span<const uint8_t> a, std::span<const uint8_t> b);

}  // namespace clonevm::agent

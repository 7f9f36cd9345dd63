#include "agent/identity_page.h"

#include <algorithm>
#include <cstring>

namespace clonevm::agent {

namespace {

constexpr char kMagic[8] = {'C', 'L', 'O', 'N', 'E', 'I', 'D', '\0'};

Result<void> PutString(char (&field)[64], const std::string& value, const char* name) {
  if (value.size() >= sizeof(field)) return Fail("identity {} is longer than {} bytes", name, sizeof(field) - 1);
  if (value.find('\0') != std::string::npos) return Fail("identity {} contains a NUL byte", name);
  std::memcpy(field, value.data(), value.size());
  return {};
}

Result<std::string> GetString(const char (&field)[64], const char* name) {
  const char* end = static_cast<const char*>(std::memchr(field, '\0', sizeof(field)));
  if (!end) return Fail("identity page: {} is not NUL-terminated", name);
  return std::string(field, end);
}

}  // namespace

bool Identity::has_token() const {
  return std::any_of(token.begin(), token.end(), [](uint8_t b) { return b != 0; });
}

Result<IdentityPageBytes> EncodeIdentityPage(const Identity& identity) {
  IdentityPageLayout page{};
  std::memcpy(page.magic, kMagic, sizeof(kMagic));
  page.layout_version = kIdentityLayoutVersion;
  page.generation = identity.generation;
  CLONE_TRY_VOID(PutString(page.vm_id, identity.vm_id, "vm_id"));
  CLONE_TRY_VOID(PutString(page.hostname, identity.hostname, "hostname"));
  page.vsock_cid = identity.vsock_cid;
  std::memcpy(page.mac, identity.mac.data(), sizeof(page.mac));
  if (identity.ipv4_prefix > 32) return Fail("identity ipv4 prefix {} is above 32", identity.ipv4_prefix);
  page.ipv4_prefix = identity.ipv4_prefix;
  std::memcpy(page.ipv4_address, identity.ipv4_address.data(), 4);
  std::memcpy(page.ipv4_gateway, identity.ipv4_gateway.data(), 4);
  std::memcpy(page.entropy_seed, identity.entropy_seed.data(), sizeof(page.entropy_seed));
  std::memcpy(page.token, identity.token.data(), sizeof(page.token));
  page.written_at_unix_ns = identity.written_at_unix_ns;
  std::memcpy(page.vmgenid, identity.vmgenid.data(), sizeof(page.vmgenid));
  IdentityPageBytes bytes;
  std::memcpy(bytes.data(), &page, sizeof(page));
  return bytes;
}

Result<Identity> DecodeIdentityPage(std::span<const uint8_t> bytes) {
  if (bytes.size() < sizeof(IdentityPageLayout)) {
    return Fail("identity page: {} bytes, need {}", bytes.size(), sizeof(IdentityPageLayout));
  }
  IdentityPageLayout page;
  std::memcpy(&page, bytes.data(), sizeof(page));
  if (std::memcmp(page.magic, kMagic, sizeof(kMagic)) != 0) return Fail("identity page: bad magic (not written?)");
  if (page.layout_version != kIdentityLayoutVersion) {
    return Fail("identity page: layout version {} (this agent reads {})", page.layout_version, kIdentityLayoutVersion);
  }
  if (page.ipv4_prefix > 32) return Fail("identity page: ipv4 prefix {} is above 32", page.ipv4_prefix);
  Identity id;
  id.generation = page.generation;
  id.vm_id = CLONE_TRY(GetString(page.vm_id, "vm_id"));
  id.hostname = CLONE_TRY(GetString(page.hostname, "hostname"));
  id.vsock_cid = page.vsock_cid;
  std::memcpy(id.mac.data(), page.mac, 6);
  id.ipv4_prefix = page.ipv4_prefix;
  std::memcpy(id.ipv4_address.data(), page.ipv4_address, 4);
  std::memcpy(id.ipv4_gateway.data(), page.ipv4_gateway, 4);
  std::memcpy(id.entropy_seed.data(), page.entropy_seed, sizeof(page.entropy_seed));
  std::memcpy(id.token.data(), page.token, sizeof(page.token));
  id.written_at_unix_ns = page.written_at_unix_ns;
  std::memcpy(id.vmgenid.data(), page.vmgenid, sizeof(page.vmgenid));
  return id;
}

bool TokensEqual(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  if (a.size() != b.size()) return false;
  uint8_t diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<uint8_t>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace clonevm::agent

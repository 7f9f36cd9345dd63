#include "net/address.h"

#include <charconv>

namespace clonevm::net {
namespace {

// A decimal number without sign or superfluous leading zeros, at most `max`.
bool ParseDecimal(std::string_view text, uint32_t max, uint32_t* value) {
  if (text.empty() || text.size() > 10 || (text.size() > 1 && text[0] == '0')) return false;
  uint32_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || v > max) return false;
  *value = v;
  return true;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string Ipv4Subnet::ToString() const { return fmt::format("{}/{}", FormatIpv4(network), prefix_len); }

Result<uint32_t> ParseIpv4(std::string_view text) {
  uint32_t ip = 0;
  std::string_view rest = text;
  for (int i = 0; i < 4; ++i) {
    const size_t dot = rest.find('.');
    const bool last = i == 3;
    if (last != (dot == std::string_view::npos)) return Fail("invalid IPv4 address \"{}\"", text);
    uint32_t octet = 0;
    if (!ParseDecimal(rest.substr(0, dot), 255, &octet)) return Fail("invalid IPv4 address \"{}\"", text);
    ip = (ip << 8) | octet;
    if (!last) rest.remove_prefix(dot + 1);
  }
  return ip;
}

std::string FormatIpv4(uint32_t ip) {
  return fmt::format("{}.{}.{}.{}", ip >> 24, (ip >> 16) & 0xff, (ip >> 8) & 0xff, ip & 0xff);
}

Result<Ipv4Subnet> ParseIpv4Subnet(std::string_view text) {
  const size_t slash = text.find('/');
  if (slash == std::string_view::npos) return Fail("invalid IPv4 subnet \"{}\": expected ADDRESS/PREFIX", text);
  uint32_t ip = 0;
  auto parsed = ParseIpv4(text.substr(0, slash));
  if (!parsed) return Fail("invalid IPv4 subnet \"{}\": bad address", text);
  ip = *parsed;
  uint32_t prefix = 0;
  if (!ParseDecimal(text.substr(slash + 1), 32, &prefix)) {
    return Fail("invalid IPv4 subnet \"{}\": prefix length must be 0 to 32", text);
  }
  Ipv4Subnet subnet{ip, static_cast<int>(prefix)};
  if ((ip & ~subnet.mask()) != 0) {
    subnet.network = ip & subnet.mask();
    return Fail("invalid IPv4 subnet \"{}\": host bits are set (did you mean {}?)", text, subnet.ToString());
  }
  return subnet;
}

MacAddress MacForIpv4(uint32_t ip) {
  return {0x06,
          0x00,
          static_cast<uint8_t>(ip >> 24),
          static_cast<uint8_t>(ip >> 16),
          static_cast<uint8_t>(ip >> 8),
          static_cast<uint8_t>(ip)};
}

std::string FormatMac(const MacAddress& mac) {
  return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
}

Result<MacAddress> ParseMac(std::string_view text) {
  MacAddress mac{};
  if (text.size() != 17) return Fail("invalid MAC address \"{}\": expected xx:xx:xx:xx:xx:xx", text);
  for (size_t i = 0; i < 6; ++i) {
    const int hi = HexDigit(text[i * 3]);
    const int lo = HexDigit(text[i * 3 + 1]);
    if (hi < 0 || lo < 0 || (i < 5 && text[i * 3 + 2] != ':')) {
      return Fail("invalid MAC address \"{}\": expected xx:xx:xx:xx:xx:xx", text);
    }
    mac[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return mac;
}

}  // namespace clonevm::net

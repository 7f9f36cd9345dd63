#include "agent/proto.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "base/bytes.h"
#include "base/check.h"
#include "base/json.h"

namespace clonevm::agent {

static_assert(std::endian::native == std::endian::little, "the wire format is little-endian");

using nlohmann::json;

bool IsKnownType(uint16_t type) {
  switch (static_cast<MessageType>(type)) {
    case MessageType::kHello:
    case MessageType::kHelloOk:
    case MessageType::kError:
    case MessageType::kExec:
    case MessageType::kStarted:
    case MessageType::kStdin:
    case MessageType::kStdinClose:
    case MessageType::kStdout:
    case MessageType::kStderr:
    case MessageType::kResize:
    case MessageType::kSignal:
    case MessageType::kExited:
    case MessageType::kMonitor:
    case MessageType::kReport:
    case MessageType::kShutdown:
    case MessageType::kReboot:
    case MessageType::kSetIdentity:
    case MessageType::kIdentityOk:
    case MessageType::kPowerOk:
      return true;
  }
  return false;
}

std::string_view TypeName(MessageType type) {
  switch (type) {
    case MessageType::kHello:
      return "Hello";
    case MessageType::kHelloOk:
      return "HelloOk";
    case MessageType::kError:
      return "Error";
    case MessageType::kExec:
      return "Exec";
    case MessageType::kStarted:
      return "Started";
    case MessageType::kStdin:
      return "Stdin";
    case MessageType::kStdinClose:
      return "StdinClose";
    case MessageType::kStdout:
      return "Stdout";
    case MessageType::kStderr:
      return "Stderr";
    case MessageType::kResize:
      return "Resize";
    case MessageType::kSignal:
      return "Signal";
    case MessageType::kExited:
      return "Exited";
    case MessageType::kMonitor:
      return "Monitor";
    case MessageType::kReport:
      return "Report";
    case MessageType::kShutdown:
      return "Shutdown";
    case MessageType::kReboot:
      return "Reboot";
    case MessageType::kSetIdentity:
      return "SetIdentity";
    case MessageType::kIdentityOk:
      return "IdentityOk";
    case MessageType::kPowerOk:
      return "PowerOk";
  }
  return "unknown";
}

// ---- Frames ----

std::string EncodeFrame(MessageType type, std::string_view payload) {
  CLONE_CHECK(payload.size() <= kMaxPayload);
  std::string out(kHeaderSize + payload.size(), '\0');
  uint32_t magic = kFrameMagic;
  uint16_t version = kProtocolVersion;
  auto raw_type = static_cast<uint16_t>(type);
  auto length = static_cast<uint32_t>(payload.size());
  std::memcpy(out.data(), &magic, 4);
  std::memcpy(out.data() + 4, &version, 2);
  std::memcpy(out.data() + 6, &raw_type, 2);
  std::memcpy(out.data() + 8, &length, 4);
  if (!payload.empty()) std::memcpy(out.data() + kHeaderSize, payload.data(), payload.size());
  return out;
}

Result<uint32_t> ParseHeader(std::span<const uint8_t, kHeaderSize> header, MessageType* type) {
  uint32_t magic, length;
  uint16_t version, raw_type;
  std::memcpy(&magic, header.data(), 4);
  std::memcpy(&version, header.data() + 4, 2);
  std::memcpy(&raw_type, header.data() + 6, 2);
  std::memcpy(&length, header.data() + 8, 4);
  if (magic != kFrameMagic) return Fail("bad frame magic {:#010x} (not a clone-agent peer?)", magic);
  if (version != kProtocolVersion) {
    return Fail("unsupported protocol version {} (this side speaks {})", version, kProtocolVersion);
  }
  if (!IsKnownType(raw_type)) return Fail("unknown message type {}", raw_type);
  if (length > kMaxPayload) return Fail("frame payload of {} bytes exceeds the {} byte limit", length, kMaxPayload);
  *type = static_cast<MessageType>(raw_type);
  return length;
}

void FrameDecoder::Feed(std::string_view bytes) {
  // Compact once the consumed prefix dominates, so a long stream does not grow the buffer.
  if (consumed_ > 0 && consumed_ >= buffer_.size() / 2) {
    buffer_.erase(0, consumed_);
    consumed_ = 0;
  }
  buffer_.append(bytes);
}

void FrameDecoder::Feed(std::span<const uint8_t> bytes) { Feed(AsChars(bytes)); }

Result<std::optional<Frame>> FrameDecoder::Next() {
  if (error_) return tl::unexpected(*error_);
  if (buffered() < kHeaderSize) return std::optional<Frame>();
  // SAFETY: buffer_ holds at least kHeaderSize bytes from consumed_ on (checked above).
  std::span<const uint8_t, kHeaderSize> header(reinterpret_cast<const uint8_t*>(buffer_.data() + consumed_),
                                               kHeaderSize);
  MessageType type{};
  auto length = ParseHeader(header, &type);
  if (!length) {
    error_ = length.error();
    return tl::unexpected(*error_);
  }
  if (buffered() - kHeaderSize < *length) return std::optional<Frame>();
  Frame frame{type, buffer_.substr(consumed_ + kHeaderSize, *length)};
  consumed_ += kHeaderSize + *length;
  if (consumed_ == buffer_.size()) {
    buffer_.clear();
    consumed_ = 0;
  }
  return std::optional<Frame>(std::move(frame));
}

Deadline DeadlineAfter(std::chrono::milliseconds timeout) {
  if (timeout.count() <= 0) return std::nullopt;
  return Clock::now() + timeout;
}

namespace {

// Waits until fd is ready for `events`; fails with ETIMEDOUT at the deadline.
Result<void> WaitReady(int fd, short events, Deadline deadline) {
  for (;;) {
    int timeout_ms = -1;
    if (deadline) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - Clock::now()).count();
      if (left <= 0) return tl::unexpected(Error::FromErrno("agent connection", ETIMEDOUT));
      timeout_ms = static_cast<int>(std::min<int64_t>(left, 1 << 30));
    }
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, timeout_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      return FailErrno("poll");
    }
    if (n > 0) return {};  // readable/writable, or an error/hangup the next syscall reports
  }
}

Result<void> ReadExact(int fd, char* data, size_t size, Deadline deadline, bool* eof_at_start) {
  size_t done = 0;
  while (done < size) {
    CLONE_TRY_VOID(WaitReady(fd, POLLIN, deadline));
    ssize_t n = ::read(fd, data + done, size - done);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return FailErrno("read from agent connection");
    }
    if (n == 0) {
      if (done == 0 && eof_at_start) *eof_at_start = true;
      return Fail("agent connection closed{}", done == 0 ? "" : " in the middle of a frame");
    }
    done += static_cast<size_t>(n);
  }
  return {};
}

}  // namespace

Result<void> WriteFrame(int fd, MessageType type, std::string_view payload, Deadline deadline) {
  if (payload.size() > kMaxPayload) return Fail("{} payload of {} bytes is too large", TypeName(type), payload.size());
  std::string bytes = EncodeFrame(type, payload);
  size_t done = 0;
  while (done < bytes.size()) {
    CLONE_TRY_VOID(WaitReady(fd, POLLOUT, deadline));
    ssize_t n = ::send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == ENOTSOCK) n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return FailErrno("write to agent connection");
    }
    done += static_cast<size_t>(n);
  }
  return {};
}

Result<Frame> ReadFrame(int fd, Deadline deadline) {
  std::array<uint8_t, kHeaderSize> header{};
  CLONE_TRY_VOID(ReadExact(fd, reinterpret_cast<char*>(header.data()), header.size(), deadline, nullptr));
  Frame frame;
  uint32_t length = CLONE_TRY(ParseHeader(header, &frame.type));
  frame.payload.resize(length);
  CLONE_TRY_VOID(ReadExact(fd, frame.payload.data(), length, deadline, nullptr));
  return frame;
}

// ---- JSON field validation ----

namespace {

using Fields = JsonReader;

Result<json> ParseObject(std::string_view payload) {
  // An empty payload is an empty object (StdinClose, Shutdown, Reboot).
  if (payload.empty()) return json::object();
  return ParseJsonObject(payload, "payload");
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json OptionalJson(const std::optional<std::string>& v) { return v ? json(*v) : json(nullptr); }

Result<void> CheckToken(const std::string& token) {
  if (token.size() != 2 * kTokenSize) return Fail("token must be {} hex digits", 2 * kTokenSize);
  CLONE_TRY(ParseHex(token));
  return {};
}

}  // namespace

// ---- Encoders ----

template <>
std::string EncodePayload(const Hello& m) {
  return Dump({{"version", m.version}, {"token", m.token}, {"role", m.role}});
}
template <>
std::string EncodePayload(const HelloOk& m) {
  return Dump({{"agent_version", m.agent_version},
               {"protocol", m.protocol},
               {"kernel", m.kernel},
               {"hostname", m.hostname},
               {"generation", m.generation}});
}
template <>
std::string EncodePayload(const ErrorMessage& m) {
  return Dump({{"message", m.message}});
}
template <>
std::string EncodePayload(const ExecRequest& m) {
  return Dump({{"argv", m.argv},
               {"env", m.env},
               {"cwd", m.cwd},
               {"tty", m.tty},
               {"rows", m.rows},
               {"cols", m.cols},
               {"stdin", m.forward_stdin}});
}
template <>
std::string EncodePayload(const Started& m) {
  return Dump({{"pid", m.pid}});
}
template <>
std::string EncodePayload(const Resize& m) {
  return Dump({{"rows", m.rows}, {"cols", m.cols}});
}
template <>
std::string EncodePayload(const SignalMessage& m) {
  return Dump({{"signo", m.signo}});
}
template <>
std::string EncodePayload(const Exited& m) {
  json j = json::object();
  j["code"] = m.code ? json(*m.code) : json(nullptr);
  j["signal"] = m.signal ? json(*m.signal) : json(nullptr);
  return Dump(j);
}
template <>
std::string EncodePayload(const Monitor& m) {
  return Dump({{"interval_ms", m.interval_ms}});
}
template <>
std::string EncodePayload(const Report& m) {
  auto opt = [](const std::optional<double>& v) { return v ? json(*v) : json(nullptr); };
  return Dump({{"active", m.active},
               {"cpu_busy", m.cpu_busy},
               {"psi_some_avg10", opt(m.psi_some_avg10)},
               {"psi_full_avg10", opt(m.psi_full_avg10)},
               {"load1", m.load1},
               {"load5", m.load5},
               {"load15", m.load15},
               {"procs", m.procs},
               {"procs_running", m.procs_running},
               {"mem_total_kb", m.mem_total_kb},
               {"mem_available_kb", m.mem_available_kb},
               {"uptime_s", m.uptime_s},
               {"exec_sessions", m.exec_sessions}});
}
template <>
std::string EncodePayload(const SetIdentity& m) {
  return Dump({{"hostname", OptionalJson(m.hostname)},
               {"machine_id", OptionalJson(m.machine_id)},
               {"ipv4", OptionalJson(m.ipv4)},
               {"gateway", OptionalJson(m.gateway)},
               {"mac", OptionalJson(m.mac)},
               {"interface", OptionalJson(m.interface)},
               {"unix_time_ns", m.unix_time_ns ? json(*m.unix_time_ns) : json(nullptr)},
               {"entropy_seed", OptionalJson(m.entropy_seed)},
               {"generation", m.generation}});
}
template <>
std::string EncodePayload(const IdentityOk& m) {
  return Dump({{"generation", m.generation}, {"applied", m.applied}});
}

// ---- Decoders ----

template <>
Result<Hello> DecodePayload(std::string_view payload) {
  json j = CLONE_TRY(ParseObject(payload));
  Fields f(j);
  Hello m;
  m.version = static_cast<uint32_t>(CLONE_TRY(f.Uint("version", 1, UINT32_MAX)));
  m.token = CLONE_TRY(f.String("token", 2 * kTokenSize));
  CLONE_TRY_VOID(CheckToken(m.token));
  m.role = CLONE_TRY(f.String("role", 16));
  if (m.role != "exec" && m.role != "monitor" && m.role != "control") {
    return Fail("role: must be exec, monitor or control");
  }
  return m;
}

template <>
Result<HelloOk> DecodePayload(std::string_view payload) {
  json j = CLONE_TRY(ParseObject(payload));
  Fields f(j);
  HelloOk m;
  m.agent_version = CLONE_TRY(f.String("agent_version", 64));
  m.protocol = static_cast<uint32_t>(CLONE_TRY(f.Uint("protocol", 1, UINT32_MAX)));
  m.kernel = CLONE_TRY(f.String("kernel", 256));
  m.hostname = CLONE_TRY(f.String("hostname", 256));
  m.generation = CLONE_TRY(f.UintOr("generation", 0, 0, UINT64_MAX));
  return m;
}

template <>
Result<ErrorMessage> DecodePayload(std::string_view payload) {
  json j = CLONE_TRY(ParseObject(payload));
  ErrorMessage m;
  m.message = CLONE_TRY(Fields(j).String("message", 64 * 1024));
  return m;
}

template <>
Result<ExecRequest> DecodePayload(std::string_view payload) {
  json j = CLONE_TRY(ParseObject(payload));
  Fields f(j);
  ExecRequest m;
  m.argv = CLONE_TRY(f.StringList("argv", 4096, /*required=*/true));
  if (m.argv.empty() || m.argv[0].empty()) return Fail("argv: must name a program");
  m.env = CLONE_TRY(f.StringList("env", 4096, /*required=*/false));
  for (const std::string& e : m.env) {
    size_t eq = e.find('=');
    if (eq == std::string::npos || eq == 0) return Fail("env entry \"{}\" is not NAME=value", e);
  }
  m.cwd = CLONE_TRY(f.OptString("cwd")).value_or("");
  m.tty = CLONE_TRY(f.BoolOr("tty", false));
  m.rows = static_cast<uint16_t>(CLONE_TRY(f.UintOr("rows", 0, 0, UINT16_MAX)));
  m.cols = static_cast<uint16_t>(CLONE_TRY(f.UintOr("cols", 0, 0, UINT16_MAX)));
  m.forward_stdin = CLONE_TRY(f.BoolOr("stdin", false));
  return m;
}

template <>
Result<Started> DecodePayload(std::string_view payload) {
  json j = CLONE_TRY(ParseObject(payload));
  Started m;
  m.pid = static_cast<int64_t>(CLONE_TRY(Fields(j).Uint("pid", 1, INT32_MAX)));
  return m;
}

template <>
Result<Resize> DecodePayload(std::string_view payload) {
  json j = CLONE_TRY(ParseObject(payload));
  Fields f(j);
  Resize m;
  m.rows = static_cast<uint16_t>(CLONE_TRY(f.Uint("rows", 0, UINT16_MAX)));
  m.cols = static_cast<uint16_t>(CLONE_TRY(f.Uint("cols", 0, UINT16_MAX)));
  return m;
}

template <>
Result<SignalMessage> DecodePayload(std::string_view payload) {
  json j = CLONE_TRY(ParseObject(payload));
  SignalMessage m;
  m.signo = static_cast<int>(CLONE_TRY(Fields(j).Uint("signo", 1, 64)));
  return m;
}

template <>
Result<Exited> DecodePayload(std::string_view payload) {
  json j = CLONE_TRY(ParseObject(payload));
  Fields f(j);
  Exited m;
  auto code = CLONE_TRY(f.OptUint("code", 0, 255));
  auto signal = CLONE_TRY(f.OptUint("signal", 1, 64));
  if (code.has_value() == signal.has_value()) return Fail("Exited needs exactly one of \"code\" and \"signal\"");
  if (code) m.code = static_cast<int>(*code);
  if (signal) m.signal = static_cast<int>(*signal);
  return m;
}

template <>
Result<Monitor> DecodePayload(std::string_view payload) {
  json j = CLONE_TRY(ParseObject(payload));
  Monitor m;
  m.interval_ms = static_cast<uint32_t>(CLONE_TRY(Fields(j).Uint("interval_ms", 10, 3'600'000)));
  return m;
}

template <>
Result<Report> DecodePayload(std::string_view payload) {
  json j = CLONE_TRY(ParseObject(payload));
  Fields f(j);
  Report m;
  m.active = CLONE_TRY(f.Bool("active"));
  m.cpu_busy = CLONE_TRY(f.OptNumber("cpu_busy")).value_or(0);
  m.psi_some_avg10 = CLONE_TRY(f.OptNumber("psi_some_avg10"));
  m.psi_full_avg10 = CLONE_TRY(f.OptNumber("psi_full_avg10"));
  m.load1 = CLONE_TRY(f.Number("load1"));
  m.load5 = CLONE_TRY(f.Number("load5"));
  m.load15 = CLONE_TRY(f.Number("load15"));
  m.procs = static_cast<uint32_t>(CLONE_TRY(f.Uint("procs", 0, UINT32_MAX)));
  m.procs_running = static_cast<uint32_t>(CLONE_TRY(f.UintOr("procs_running", 0, 0, UINT32_MAX)));
  m.mem_total_kb = CLONE_TRY(f.Uint("mem_total_kb", 0, UINT64_MAX));
  m.mem_available_kb = CLONE_TRY(f.Uint("mem_available_kb", 0, UINT64_MAX));
  m.uptime_s = CLONE_TRY(f.Number("uptime_s"));
  m.exec_sessions = static_cast<uint32_t>(CLONE_TRY(f.UintOr("exec_sessions", 0, 0, UINT32_MAX)));
  return m;
}

template <>
Result<SetIdentity> DecodePayload(std::string_view payload) {
  json j = CLONE_TRY(ParseObject(payload));
  Fields f(j);
  SetIdentity m;
  m.hostname = CLONE_TRY(f.OptString("hostname", 64));
  if (m.hostname && m.hostname->empty()) return Fail("hostname: is empty");
  m.machine_id = CLONE_TRY(f.OptString("machine_id", 32));
  if (m.machine_id) {
    if (m.machine_id->size() != 32) return Fail("machine_id: must be 32 hex digits");
    CLONE_TRY(ParseHex(*m.machine_id));
  }
  m.ipv4 = CLONE_TRY(f.OptString("ipv4", 18));
  if (m.ipv4) CLONE_TRY(ParseIpv4Cidr(*m.ipv4));
  m.gateway = CLONE_TRY(f.OptString("gateway", 15));
  if (m.gateway) CLONE_TRY(ParseIpv4(*m.gateway));
  m.mac = CLONE_TRY(f.OptString("mac", 17));
  if (m.mac) CLONE_TRY(ParseMac(*m.mac));
  m.interface = CLONE_TRY(f.OptString("interface", 15));
  if (m.interface && (m.interface->empty() || m.interface->find('/') != std::string::npos)) {
    return Fail("interface: is not an interface name");
  }
  m.unix_time_ns = CLONE_TRY(f.OptUint("unix_time_ns", 0, UINT64_MAX));
  m.entropy_seed = CLONE_TRY(f.OptString("entropy_seed", 1024));
  if (m.entropy_seed) CLONE_TRY(ParseHex(*m.entropy_seed));
  m.generation = CLONE_TRY(f.UintOr("generation", 0, 0, UINT64_MAX));
  return m;
}

template <>
Result<IdentityOk> DecodePayload(std::string_view payload) {
  json j = CLONE_TRY(ParseObject(payload));
  Fields f(j);
  IdentityOk m;
  m.generation = CLONE_TRY(f.UintOr("generation", 0, 0, UINT64_MAX));
  m.applied = CLONE_TRY(f.StringList("applied", 64, /*required=*/false));
  return m;
}

// ---- Text helpers ----

std::string ToHex(std::span<const uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 15]);
  }
  return out;
}

namespace {
int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Parses a decimal number in [0, max] from the whole of `text`.
Result<uint32_t> ParseSmallDecimal(std::string_view text, uint32_t max) {
  if (text.empty() || text.size() > 3) return Fail("\"{}\" is not a number in [0, {}]", text, max);
  uint32_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return Fail("\"{}\" is not a number in [0, {}]", text, max);
    v = v * 10 + static_cast<uint32_t>(c - '0');
  }
  if (v > max) return Fail("\"{}\" is not a number in [0, {}]", text, max);
  return v;
}
}  // namespace

Result<std::vector<uint8_t>> ParseHex(std::string_view hex) {
  if (hex.size() % 2 != 0) return Fail("hex string has an odd number of digits");
  std::vector<uint8_t> out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    int hi = HexValue(hex[2 * i]), lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return Fail("\"{}\" is not a hex string", hex.substr(0, 80));
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return out;
}

Result<std::array<uint8_t, 4>> ParseIpv4(std::string_view text) {
  std::array<uint8_t, 4> out{};
  size_t pos = 0;
  for (int i = 0; i < 4; ++i) {
    size_t end = i < 3 ? text.find('.', pos) : text.size();
    if (end == std::string_view::npos) return Fail("\"{}\" is not an IPv4 address", text);
    auto part = ParseSmallDecimal(text.substr(pos, end - pos), 255);
    if (!part) return Fail("\"{}\" is not an IPv4 address", text);
    out[i] = static_cast<uint8_t>(*part);
    pos = end + 1;
  }
  return out;
}

Result<std::pair<std::array<uint8_t, 4>, uint8_t>> ParseIpv4Cidr(std::string_view text) {
  size_t slash = text.find('/');
  if (slash == std::string_view::npos) return Fail("\"{}\" is not a.b.c.d/len", text);
  auto address = CLONE_TRY(ParseIpv4(text.substr(0, slash)));
  auto prefix = ParseSmallDecimal(text.substr(slash + 1), 32);
  if (!prefix) return Fail("\"{}\" has a bad prefix length", text);
  return std::make_pair(address, static_cast<uint8_t>(*prefix));
}

Result<std::array<uint8_t, 6>> ParseMac(std::string_view text) {
  std::array<uint8_t, 6> out{};
  if (text.size() != 17) return Fail("\"{}\" is not a MAC address aa:bb:cc:dd:ee:ff", text);
  for (size_t i = 0; i < 6; ++i) {
    int hi = HexValue(text[3 * i]), lo = HexValue(text[3 * i + 1]);
    if (hi < 0 || lo < 0 || (i < 5 && text[3 * i + 2] != ':')) {
      return Fail("\"{}\" is not a MAC address aa:bb:cc:dd:ee:ff", text);
    }
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return out;
}

}  // namespace clonevm::agent

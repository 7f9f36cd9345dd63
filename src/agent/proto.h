// Agent protocol: the framed, versioned messages between the host (VMM, CLI) and the guest agent
// `clone-agent`, shared by both sides. docs/agent.md describes the conversation; this header is
// the wire format.
//
// Frame = 12-byte header + payload, all little-endian:
//   u32 magic (kFrameMagic, "CLAG"), u16 version (kProtocolVersion), u16 type (MessageType),
//   u32 payload length (<= kMaxPayload).
// Control payloads are JSON objects; stream payloads (Stdin/Stdout/Stderr) are raw bytes;
// StdinClose and the power requests have an empty payload (or "{}").
//
// Input handling: both ends treat the peer as hostile. A header with the wrong magic, another
// version, an unknown type or an oversized length is an Error (the connection is then unusable:
// FrameDecoder stays failed). A JSON payload that does not parse, is not an object, misses a
// required field or has a field of the wrong type or range is an Error naming the field; unknown
// fields are ignored so that later versions can add optional ones. Nothing here throws or aborts
// on peer input. Strings are UTF-8; bytes that are not valid UTF-8 are replaced by U+FFFD when
// encoding (argv/env with such bytes cannot be sent verbatim).
//
// Threads: everything is a plain function or a value type; a FrameDecoder belongs to one thread.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace clonevm::agent {

inline constexpr const char* kAgentVersion = "0.1.0";  // reported in HelloOk
inline constexpr uint32_t kAgentPort = 1024;           // AF_VSOCK port the agent listens on
inline constexpr uint32_t kFrameMagic = 0x47414C43;    // "CLAG" as little-endian bytes
inline constexpr uint16_t kProtocolVersion = 1;
inline constexpr size_t kHeaderSize = 12;
inline constexpr uint32_t kMaxPayload = 1u << 20;  // 1 MiB, enforced on read and write
inline constexpr size_t kStreamChunk = 64 * 1024;  // Stdin/Stdout/Stderr chunk size senders use
inline constexpr size_t kTokenSize = 32;           // bytes; 64 hex digits on the wire
using Token = std::array<uint8_t, kTokenSize>;

enum class MessageType : uint16_t {
  kHello = 1,         // host → agent, first frame of every connection
  kHelloOk = 2,       // agent → host
  kError = 3,         // either way; the sender closes the connection afterwards
  kExec = 16,         // host → agent (role "exec")
  kStarted = 17,      // agent → host
  kStdin = 18,        // host → agent, raw bytes
  kStdinClose = 19,   // host → agent, empty
  kStdout = 20,       // agent → host, raw bytes (with a tty: everything the terminal printed)
  kStderr = 21,       // agent → host, raw bytes
  kResize = 22,       // host → agent (tty only)
  kSignal = 23,       // host → agent
  kExited = 24,       // agent → host, last frame of an exec session
  kMonitor = 32,      // host → agent (role "monitor"): start pushing Reports
  kReport = 33,       // agent → host, every interval_ms
  kShutdown = 40,     // host → agent (role "control"), empty payload
  kReboot = 41,       // host → agent (role "control"), empty payload
  kSetIdentity = 42,  // host → agent (role "control")
  kIdentityOk = 43,   // agent → host
  kPowerOk = 44,      // agent → host: the power request was accepted; the guest goes down next
  // 48..63 are reserved for the balloon messages of the memory issue.
};

// True for every type listed above (reserved numbers are not known types yet).
bool IsKnownType(uint16_t type);
std::string_view TypeName(MessageType type);

struct Frame {
  MessageType type{};
  std::string payload;  // bytes
};

// Header + payload. CHECKs that payload.size() <= kMaxPayload (a programmer error otherwise).
std::string EncodeFrame(MessageType type, std::string_view payload);

// Incremental decoder over a byte stream: Feed() what arrived, then call Next() until it yields
// nullopt (needs more bytes). A malformed header makes Next() fail, now and on every later call.
class FrameDecoder {
 public:
  void Feed(std::string_view bytes);
  void Feed(std::span<const uint8_t> bytes);
  [[nodiscard]] Result<std::optional<Frame>> Next();
  // Bytes received but not yet returned as frames.
  size_t buffered() const { return buffer_.size() - consumed_; }

 private:
  std::string buffer_;
  size_t consumed_ = 0;
  std::optional<Error> error_;
};

// Validates a header alone (magic, version, known type, length); returns the payload length.
[[nodiscard]] Result<uint32_t> ParseHeader(std::span<const uint8_t, kHeaderSize> header, MessageType* type);

// Blocking I/O with an optional deadline. Both work on blocking and non-blocking fds (poll(2)
// waits for readiness); on deadline expiry they fail with ETIMEDOUT and the stream position is
// unspecified (close the connection). ReadFrame fails with "connection closed" on EOF.
using Clock = std::chrono::steady_clock;
using Deadline = std::optional<Clock::time_point>;
Deadline DeadlineAfter(std::chrono::milliseconds timeout);  // a timeout <= 0 means no deadline
[[nodiscard]] Result<void> WriteFrame(int fd, MessageType type, std::string_view payload, Deadline deadline);
[[nodiscard]] Result<Frame> ReadFrame(int fd, Deadline deadline);

// ---- Control messages (JSON payloads) ----

struct Hello {
  static constexpr MessageType kType = MessageType::kHello;
  uint32_t version = kProtocolVersion;
  std::string token;  // 64 lowercase or uppercase hex digits
  std::string role;   // "exec", "monitor" or "control"
};

struct HelloOk {
  static constexpr MessageType kType = MessageType::kHelloOk;
  std::string agent_version;
  uint32_t protocol = kProtocolVersion;
  std::string kernel;  // uname -r
  std::string hostname;
  uint64_t generation = 0;  // of the identity page the token was checked against
};

struct ErrorMessage {
  static constexpr MessageType kType = MessageType::kError;
  std::string message;
};

struct ExecRequest {
  static constexpr MessageType kType = MessageType::kExec;
  std::vector<std::string> argv;  // non-empty; argv[0] is looked up in PATH
  std::vector<std::string> env;   // "NAME=value" entries added to / overriding the agent's defaults
  std::string cwd;                // empty: "/"
  bool tty = false;
  uint16_t rows = 0, cols = 0;  // initial window size when tty (0: leave the kernel default)
  bool forward_stdin = false;   // JSON "stdin"; false: the program's stdin is /dev/null
};

struct Started {
  static constexpr MessageType kType = MessageType::kStarted;
  int64_t pid = 0;
};

struct Resize {
  static constexpr MessageType kType = MessageType::kResize;
  uint16_t rows = 0, cols = 0;
};

struct SignalMessage {
  static constexpr MessageType kType = MessageType::kSignal;
  int signo = 0;  // 1..64, delivered to the program's process group
};

struct Exited {
  static constexpr MessageType kType = MessageType::kExited;
  std::optional<int> code;  // exactly one of code (0..255) and signal (1..64) is set
  std::optional<int> signal;
  // Shell convention: the exit code, or 128 + signal.
  int ShellStatus() const { return code ? *code : 128 + signal.value_or(0); }
};

struct Monitor {
  static constexpr MessageType kType = MessageType::kMonitor;
  uint32_t interval_ms = 1000;  // 10 .. 3'600'000
};

struct Report {
  static constexpr MessageType kType = MessageType::kReport;
  bool active = false;                   // see docs/agent.md "Activity"
  double cpu_busy = 0;                   // busy CPU time / wall time over the interval (0..ncpu)
  std::optional<double> psi_some_avg10;  // /proc/pressure/memory; null without PSI
  std::optional<double> psi_full_avg10;
  double load1 = 0, load5 = 0, load15 = 0;
  uint32_t procs = 0;          // processes (numeric /proc entries)
  uint32_t procs_running = 0;  // runnable tasks (/proc/stat procs_running)
  uint64_t mem_total_kb = 0, mem_available_kb = 0;
  double uptime_s = 0;
  uint32_t exec_sessions = 0;  // exec sessions of this agent currently running
};

struct SetIdentity {
  static constexpr MessageType kType = MessageType::kSetIdentity;
  std::optional<std::string> hostname;      // sethostname(2) + /etc/hostname
  std::optional<std::string> machine_id;    // 32 hex digits, written to /etc/machine-id
  std::optional<std::string> ipv4;          // "a.b.c.d/len" on `interface`
  std::optional<std::string> gateway;       // "a.b.c.d": default route
  std::optional<std::string> mac;           // "aa:bb:cc:dd:ee:ff": set on `interface` first
  std::optional<std::string> interface;     // default: the first non-loopback Ethernet interface
  std::optional<uint64_t> unix_time_ns;     // clock_settime(CLOCK_REALTIME)
  std::optional<std::string> entropy_seed;  // hex, up to 512 bytes: RNDADDENTROPY (credited)
  uint64_t generation = 0;                  // echoed in IdentityOk
};

struct IdentityOk {
  static constexpr MessageType kType = MessageType::kIdentityOk;
  uint64_t generation = 0;
  std::vector<std::string> applied;  // names of the fields that were applied, in order
};

// JSON payload of a control message.
template <typename T>
std::string EncodePayload(const T& message);

// Parses and validates a control payload of type T.
template <typename T>
[[nodiscard]] Result<T> DecodePayload(std::string_view payload);

// Defined in proto.cc for every message struct above.
#define CLONE_AGENT_DECLARE_PAYLOAD(T)            \
  template <>                                     \
  std::string EncodePayload<T>(const T& message); \
  template <>                                     \
  Result<T> DecodePayload<T>(std::string_view payload);
CLONE_AGENT_DECLARE_PAYLOAD(Hello)
CLONE_AGENT_DECLARE_PAYLOAD(HelloOk)
CLONE_AGENT_DECLARE_PAYLOAD(ErrorMessage)
CLONE_AGENT_DECLARE_PAYLOAD(ExecRequest)
CLONE_AGENT_DECLARE_PAYLOAD(Started)
CLONE_AGENT_DECLARE_PAYLOAD(Resize)
CLONE_AGENT_DECLARE_PAYLOAD(SignalMessage)
CLONE_AGENT_DECLARE_PAYLOAD(Exited)
CLONE_AGENT_DECLARE_PAYLOAD(Monitor)
CLONE_AGENT_DECLARE_PAYLOAD(Report)
CLONE_AGENT_DECLARE_PAYLOAD(SetIdentity)
CLONE_AGENT_DECLARE_PAYLOAD(IdentityOk)
#undef CLONE_AGENT_DECLARE_PAYLOAD

// Parses `frame` as T; an Error frame becomes an Error carrying the peer's message, any other
// type is an "unexpected <type>" Error.
template <typename T>
[[nodiscard]] Result<T> FrameAs(const Frame& frame) {
  if (frame.type == T::kType) return DecodePayload<T>(frame.payload);
  if (frame.type == MessageType::kError) {
    auto remote = DecodePayload<ErrorMessage>(frame.payload);
    if (!remote) return Fail("peer sent a malformed Error: {}", remote.error().message());
    return Fail("agent: {}", remote->message);
  }
  return Fail("unexpected {} (wanted {})", TypeName(frame.type), TypeName(T::kType));
}

template <typename T>
[[nodiscard]] Result<void> WriteMessage(int fd, const T& message, Deadline deadline) {
  return WriteFrame(fd, T::kType, EncodePayload(message), deadline);
}

// Reads one frame and parses it as T (see FrameAs).
template <typename T>
[[nodiscard]] Result<T> ReadMessage(int fd, Deadline deadline) {
  Frame frame = CLONE_TRY(ReadFrame(fd, deadline));
  return FrameAs<T>(frame);
}

// Hex helpers for tokens and seeds. ParseHex fails on odd length or a non-hex digit.
std::string ToHex(std::span<const uint8_t> bytes);
[[nodiscard]] Result<std::vector<uint8_t>> ParseHex(std::string_view hex);

// "a.b.c.d/len" → address bytes + prefix; "a.b.c.d" (ParseIpv4 without prefix).
[[nodiscard]] Result<std::pair<std::array<uint8_t, 4>, uint8_t>> ParseIpv4Cidr(std::string_view text);
[[nodiscard]] Result<std::array<uint8_t, 4>> ParseIpv4(std::string_view text);
// "aa:bb:cc:dd:ee:ff" (hex digits in either case).
[[nodiscard]] Result<std::array<uint8_t, 6>> ParseMac(std::string_view text);

}  // namespace clonevm::agent

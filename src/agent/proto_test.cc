#include "agent/proto.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <cstring>
#include <thread>

#include "base/fd.h"

namespace clonevm::agent {
namespace {

std::string Header(uint32_t magic, uint16_t version, uint16_t type, uint32_t length) {
  std::string h(kHeaderSize, '\0');
  std::memcpy(h.data(), &magic, 4);
  std::memcpy(h.data() + 4, &version, 2);
  std::memcpy(h.data() + 6, &type, 2);
  std::memcpy(h.data() + 8, &length, 4);
  return h;
}

TEST(FrameTest, EncodeLayoutIsLittleEndianHeaderThenPayload) {
  std::string f = EncodeFrame(MessageType::kStdout, "abc");
  ASSERT_EQ(f.size(), kHeaderSize + 3);
  EXPECT_EQ(f.substr(0, 4), "CLAG");
  EXPECT_EQ(f, Header(kFrameMagic, kProtocolVersion, 20, 3) + "abc");
}

TEST(FrameTest, DecoderHandlesBytewiseFeedingAndSeveralFrames) {
  std::string stream = EncodeFrame(MessageType::kStdout, "hello") + EncodeFrame(MessageType::kStdinClose, "") +
                       EncodeFrame(MessageType::kStderr, std::string(100000, 'x'));
  FrameDecoder d;
  std::vector<Frame> frames;
  for (char c : stream) {
    d.Feed(std::string_view(&c, 1));
    for (;;) {
      auto next = d.Next();
      ASSERT_TRUE(next) << next.error().message();
      if (!*next) break;
      frames.push_back(**next);
    }
  }
  ASSERT_EQ(frames.size(), 3u);
  EXPECT_EQ(frames[0].type, MessageType::kStdout);
  EXPECT_EQ(frames[0].payload, "hello");
  EXPECT_EQ(frames[1].type, MessageType::kStdinClose);
  EXPECT_EQ(frames[1].payload, "");
  EXPECT_EQ(frames[2].payload.size(), 100000u);
  EXPECT_EQ(d.buffered(), 0u);
}

TEST(FrameTest, DecoderRejectsBadHeadersAndStaysFailed) {
  struct Case {
    std::string header;
    const char* message;
  } cases[] = {
      {Header(0x12345678, 1, 1, 0), "magic"},
      {Header(kFrameMagic, 2, 1, 0), "version 2"},
      {Header(kFrameMagic, 0, 1, 0), "version 0"},
      {Header(kFrameMagic, 1, 0, 0), "unknown message type 0"},
      {Header(kFrameMagic, 1, 48, 0), "unknown message type 48"},  // reserved for balloon
      {Header(kFrameMagic, 1, 999, 0), "unknown message type 999"},
      {Header(kFrameMagic, 1, 20, kMaxPayload + 1), "exceeds"},
      {Header(kFrameMagic, 1, 20, UINT32_MAX), "exceeds"},
  };
  for (const Case& c : cases) {
    FrameDecoder d;
    d.Feed(c.header);
    auto next = d.Next();
    ASSERT_FALSE(next) << c.message;
    EXPECT_NE(next.error().message().find(c.message), std::string::npos) << next.error().message();
    d.Feed(EncodeFrame(MessageType::kStdout, "ok"));
    EXPECT_FALSE(d.Next()) << "a failed decoder must stay failed";
  }
}

TEST(FrameTest, MaxPayloadIsAccepted) {
  FrameDecoder d;
  d.Feed(EncodeFrame(MessageType::kStdout, std::string(kMaxPayload, 'z')));
  auto next = d.Next();
  ASSERT_TRUE(next && *next);
  EXPECT_EQ((*next)->payload.size(), kMaxPayload);
}

TEST(FrameTest, ReadWriteOverSocketAndDeadline) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Fd a(sv[0]), b(sv[1]);
  std::string big(kMaxPayload, 'q');
  std::thread writer([&] { ASSERT_TRUE(WriteFrame(a.get(), MessageType::kStdout, big, std::nullopt)); });
  auto frame = ReadFrame(b.get(), DeadlineAfter(std::chrono::seconds(10)));
  writer.join();
  ASSERT_TRUE(frame) << frame.error().message();
  EXPECT_EQ(frame->payload, big);

  // Nothing arrives: the deadline fires with ETIMEDOUT.
  auto start = Clock::now();
  auto timed_out = ReadFrame(b.get(), DeadlineAfter(std::chrono::milliseconds(100)));
  ASSERT_FALSE(timed_out);
  EXPECT_EQ(timed_out.error().error_number(), ETIMEDOUT);
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));

  // Half a frame then EOF.
  std::string half = EncodeFrame(MessageType::kStdout, "0123456789").substr(0, 15);
  ASSERT_TRUE(WriteAll(a.get(), half.data(), half.size()));
  a.reset();
  auto truncated = ReadFrame(b.get(), std::nullopt);
  ASSERT_FALSE(truncated);
  EXPECT_NE(truncated.error().message().find("middle of a frame"), std::string::npos);
  auto eof = ReadFrame(b.get(), std::nullopt);
  ASSERT_FALSE(eof);
  EXPECT_NE(eof.error().message().find("closed"), std::string::npos);
}

TEST(MessageTest, RoundTrips) {
  Hello hello{1, std::string(64, 'a'), "monitor"};
  auto h = DecodePayload<Hello>(EncodePayload(hello));
  ASSERT_TRUE(h) << h.error().message();
  EXPECT_EQ(h->token, hello.token);
  EXPECT_EQ(h->role, "monitor");

  ExecRequest exec;
  exec.argv = {"sh", "-c", "echo \"hi\" | tr a-z A-Z"};
  exec.env = {"A=1", "B=x=y"};
  exec.cwd = "/tmp";
  exec.tty = true;
  exec.rows = 40;
  exec.cols = 132;
  exec.forward_stdin = true;
  auto e = DecodePayload<ExecRequest>(EncodePayload(exec));
  ASSERT_TRUE(e) << e.error().message();
  EXPECT_EQ(e->argv, exec.argv);
  EXPECT_EQ(e->env, exec.env);
  EXPECT_EQ(e->cwd, "/tmp");
  EXPECT_TRUE(e->tty && e->forward_stdin);
  EXPECT_EQ(e->rows, 40);
  EXPECT_EQ(e->cols, 132);

  auto code = DecodePayload<Exited>(EncodePayload(Exited{3, std::nullopt}));
  ASSERT_TRUE(code);
  EXPECT_EQ(code->ShellStatus(), 3);
  auto sig = DecodePayload<Exited>(EncodePayload(Exited{std::nullopt, 9}));
  ASSERT_TRUE(sig);
  EXPECT_EQ(sig->ShellStatus(), 137);

  Report report;
  report.active = true;
  report.psi_some_avg10 = 1.5;
  report.load1 = 0.25;
  report.procs = 42;
  report.mem_total_kb = 1 << 20;
  report.mem_available_kb = 1 << 19;
  auto r = DecodePayload<Report>(EncodePayload(report));
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_TRUE(r->active);
  EXPECT_EQ(r->psi_some_avg10, 1.5);
  EXPECT_FALSE(r->psi_full_avg10.has_value());
  EXPECT_EQ(r->procs, 42u);
  EXPECT_EQ(r->mem_available_kb, 1u << 19);

  SetIdentity id;
  id.hostname = "vm-7";
  id.ipv4 = "10.0.0.7/24";
  id.gateway = "10.0.0.1";
  id.mac = "02:00:00:00:00:07";
  id.unix_time_ns = 1'700'000'000'000'000'000ull;
  id.entropy_seed = std::string(128, 'f');
  id.generation = 5;
  auto i = DecodePayload<SetIdentity>(EncodePayload(id));
  ASSERT_TRUE(i) << i.error().message();
  EXPECT_EQ(i->hostname, "vm-7");
  EXPECT_FALSE(i->machine_id.has_value());
  EXPECT_EQ(i->unix_time_ns, id.unix_time_ns);
  EXPECT_EQ(i->generation, 5u);
}

TEST(MessageTest, NonUtf8StringsAreReplacedNotThrown) {
  ExecRequest exec;
  exec.argv = {std::string("caf\xff", 4)};
  auto e = DecodePayload<ExecRequest>(EncodePayload(exec));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->argv[0], "caf\xEF\xBF\xBD");
}

// Every malformed payload is an Error naming the problem, never an exception or a crash.
TEST(MessageTest, MalformedPayloadsAreErrors) {
  const std::string token(64, '0');
  struct Case {
    MessageType type;
    std::string payload;
    const char* message;
  } cases[] = {
      {MessageType::kHello, "", "version: required field missing"},
      {MessageType::kHello, "not json", "not valid JSON"},
      {MessageType::kHello, "[1,2]", "not a JSON object"},
      {MessageType::kHello, "{\"version\":\"1\",\"token\":\"" + token + "\",\"role\":\"exec\"}",
       "version: expected an integer in [1, 4294967295]"},
      {MessageType::kHello, "{\"version\":1,\"token\":\"abc\",\"role\":\"exec\"}", "64 hex digits"},
      {MessageType::kHello, "{\"version\":1,\"token\":\"" + std::string(64, 'g') + "\",\"role\":\"exec\"}",
       "not a hex"},
      {MessageType::kHello, "{\"version\":1,\"token\":\"" + token + "\",\"role\":\"root\"}", "role"},
      {MessageType::kHello, "{\"version\":-1,\"token\":\"" + token + "\",\"role\":\"exec\"}",
       "version: expected an integer in [1, "},
      {MessageType::kExec, "{}", "argv: required field missing"},
      {MessageType::kExec, "{\"argv\":[]}", "must name a program"},
      {MessageType::kExec, "{\"argv\":[\"\"]}", "must name a program"},
      {MessageType::kExec, "{\"argv\":\"ls\"}", "array of strings"},
      {MessageType::kExec, "{\"argv\":[\"ls\",1]}", "argv[1]: expected a string"},
      {MessageType::kExec, "{\"argv\":[\"l\\u0000s\"]}", "NUL"},
      {MessageType::kExec, "{\"argv\":[\"ls\"],\"env\":[\"NOEQUALS\"]}", "NAME=value"},
      {MessageType::kExec, "{\"argv\":[\"ls\"],\"env\":[\"=x\"]}", "NAME=value"},
      {MessageType::kExec, "{\"argv\":[\"ls\"],\"tty\":1}", "tty: expected true or false"},
      {MessageType::kExec, "{\"argv\":[\"ls\"],\"rows\":70000}", "rows: expected a non-negative integer up to 65535"},
      {MessageType::kExec, "{\"argv\":[\"ls\"],\"cols\":1.5}", "cols: expected"},
      {MessageType::kExec, "{\"argv\":[\"ls\"],\"cwd\":[]}", "cwd: expected a string"},
      {MessageType::kExited, "{}", "exactly one"},
      {MessageType::kExited, "{\"code\":1,\"signal\":9}", "exactly one"},
      {MessageType::kExited, "{\"code\":256}", "code: expected a non-negative integer up to 255"},
      {MessageType::kExited, "{\"signal\":0}", "signal: expected an integer in [1, "},
      {MessageType::kSignal, "{\"signo\":65}", "signo: expected an integer in [1, 64]"},
      {MessageType::kMonitor, "{\"interval_ms\":1}", "interval_ms: expected an integer in"},
      {MessageType::kReport, "{\"active\":true}", "required field missing"},
      {MessageType::kReport,
       "{\"active\":true,\"load1\":\"x\",\"load5\":0,\"load15\":0,\"procs\":1,\"mem_total_kb\":1,"
       "\"mem_available_kb\":1,\"uptime_s\":1}",
       "load1: expected a number"},
      {MessageType::kSetIdentity, "{\"ipv4\":\"10.0.0.1\"}", "a.b.c.d/len"},
      {MessageType::kSetIdentity, "{\"ipv4\":\"10.0.0.256/24\"}", "IPv4"},
      {MessageType::kSetIdentity, "{\"ipv4\":\"10.0.0.1/33\"}", "prefix"},
      {MessageType::kSetIdentity, "{\"gateway\":\"10.0..1\"}", "IPv4"},
      {MessageType::kSetIdentity, "{\"mac\":\"02:00:00:00:00\"}", "MAC"},
      {MessageType::kSetIdentity, "{\"mac\":\"02-00-00-00-00-01\"}", "MAC"},
      {MessageType::kSetIdentity, "{\"machine_id\":\"abc\"}", "32 hex"},
      {MessageType::kSetIdentity, "{\"entropy_seed\":\"abc\"}", "odd"},
      {MessageType::kSetIdentity, "{\"hostname\":\"\"}", "empty"},
      {MessageType::kSetIdentity, "{\"hostname\":\"" + std::string(65, 'h') + "\"}", "longer than"},
      {MessageType::kSetIdentity, "{\"interface\":\"../x\"}", "interface"},
      {MessageType::kSetIdentity, "{\"unix_time_ns\":-5}", "unix_time_ns: expected a non-negative integer"},
      {MessageType::kResize, "{\"rows\":1}", "cols: required field missing"},
      {MessageType::kStarted, "{\"pid\":0}", "pid: expected an integer in [1, 2147483647]"},
  };
  for (const Case& c : cases) {
    Frame frame{c.type, c.payload};
    Result<void> result;
    switch (c.type) {
      case MessageType::kHello:
        result = FrameAs<Hello>(frame).map([](auto&&) {});
        break;
      case MessageType::kExec:
        result = FrameAs<ExecRequest>(frame).map([](auto&&) {});
        break;
      case MessageType::kExited:
        result = FrameAs<Exited>(frame).map([](auto&&) {});
        break;
      case MessageType::kSignal:
        result = FrameAs<SignalMessage>(frame).map([](auto&&) {});
        break;
      case MessageType::kMonitor:
        result = FrameAs<Monitor>(frame).map([](auto&&) {});
        break;
      case MessageType::kReport:
        result = FrameAs<Report>(frame).map([](auto&&) {});
        break;
      case MessageType::kSetIdentity:
        result = FrameAs<SetIdentity>(frame).map([](auto&&) {});
        break;
      case MessageType::kResize:
        result = FrameAs<Resize>(frame).map([](auto&&) {});
        break;
      case MessageType::kStarted:
        result = FrameAs<Started>(frame).map([](auto&&) {});
        break;
      default:
        FAIL();
    }
    ASSERT_FALSE(result) << c.payload;
    EXPECT_NE(result.error().message().find(c.message), std::string::npos)
        << c.payload << " -> " << result.error().message();
  }
}

TEST(MessageTest, FrameAsReportsErrorFramesAndWrongTypes) {
  auto remote = FrameAs<HelloOk>(Frame{MessageType::kError, EncodePayload(ErrorMessage{"wrong token"})});
  ASSERT_FALSE(remote);
  EXPECT_EQ(remote.error().message(), "agent: wrong token");
  auto wrong = FrameAs<HelloOk>(Frame{MessageType::kStdout, "x"});
  ASSERT_FALSE(wrong);
  EXPECT_EQ(wrong.error().message(), "unexpected Stdout (wanted HelloOk)");
}

TEST(MessageTest, UnknownFieldsAreIgnored) {
  auto m = DecodePayload<Monitor>("{\"interval_ms\":250,\"future\":{\"x\":[1,2]}}");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->interval_ms, 250u);
}

TEST(TextTest, HexIpMac) {
  std::vector<uint8_t> bytes = {0x00, 0xab, 0xff};
  EXPECT_EQ(ToHex(bytes), "00abff");
  EXPECT_EQ(*ParseHex("00ABff"), bytes);
  EXPECT_FALSE(ParseHex("0"));
  EXPECT_FALSE(ParseHex("zz"));
  auto cidr = ParseIpv4Cidr("192.168.1.20/24");
  ASSERT_TRUE(cidr);
  EXPECT_EQ(cidr->first, (std::array<uint8_t, 4>{192, 168, 1, 20}));
  EXPECT_EQ(cidr->second, 24);
  EXPECT_FALSE(ParseIpv4("1.2.3"));
  EXPECT_FALSE(ParseIpv4("1.2.3.4.5"));
  EXPECT_FALSE(ParseIpv4("1.2.3.1000"));
  EXPECT_FALSE(ParseIpv4("1.2.3.-1"));
  auto mac = ParseMac("02:AB:cd:00:11:ff");
  ASSERT_TRUE(mac);
  EXPECT_EQ(*mac, (std::array<uint8_t, 6>{0x02, 0xab, 0xcd, 0x00, 0x11, 0xff}));
}

}  // namespace
}  // namespace clonevm::agent

#include "control/http.h"

#include <gtest/gtest.h>

#include <string>

namespace clonevm::control {
namespace {

using Status = RequestParser::Status;

RequestParser::Step ParseAll(std::string_view bytes, ParserLimits limits = {}) {
  RequestParser parser(limits);
  return parser.Parse(bytes);
}

// Expects `bytes` to be refused with `status`.
void ExpectError(std::string_view bytes, int status, ParserLimits limits = {}) {
  SCOPED_TRACE(std::string(bytes.substr(0, 80)));
  RequestParser::Step step = ParseAll(bytes, limits);
  ASSERT_EQ(step.status, Status::kError);
  EXPECT_EQ(step.error.status, status) << step.error.message;
  EXPECT_FALSE(step.error.message.empty());
}

TEST(RequestParserTest, ParsesASimpleGet) {
  auto step = ParseAll("GET /vm?verbose=1 HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/7.88.1\r\n\r\n");
  ASSERT_EQ(step.status, Status::kRequest);
  EXPECT_EQ(step.request.method, "GET");
  EXPECT_EQ(step.request.path, "/vm");
  EXPECT_EQ(step.request.query, "verbose=1");
  EXPECT_EQ(step.request.version_minor, 1);
  EXPECT_TRUE(step.request.keep_alive);
  EXPECT_EQ(step.request.Header("user-agent"), "curl/7.88.1");
  EXPECT_TRUE(step.request.body.empty());
}

TEST(RequestParserTest, ParsesABodyArrivingByteByByte) {
  const std::string bytes =
      "PUT /vm/shutdown HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n"
      "{\"mode\":\"force\"}";
  RequestParser parser;
  for (size_t i = 1; i < bytes.size(); ++i) {
    ASSERT_EQ(parser.Parse(std::string_view(bytes).substr(0, i)).status, Status::kNeedMore) << i;
  }
  auto step = parser.Parse(bytes);
  ASSERT_EQ(step.status, Status::kRequest);
  EXPECT_EQ(step.consumed, bytes.size());
  EXPECT_EQ(step.request.body, "{\"mode\":\"force\"}");
}

TEST(RequestParserTest, HandlesPipelinedRequestsInOrder) {
  std::string bytes =
      "PUT /vm/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
      "GET /vm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  RequestParser parser;
  auto first = parser.Parse(bytes);
  ASSERT_EQ(first.status, Status::kRequest);
  EXPECT_EQ(first.request.path, "/vm/pause");
  EXPECT_EQ(first.request.body, "{}");
  bytes.erase(0, first.consumed);
  auto second = parser.Parse(bytes);
  ASSERT_EQ(second.status, Status::kRequest);
  EXPECT_EQ(second.request.path, "/vm");
  EXPECT_FALSE(second.request.keep_alive);
  EXPECT_EQ(second.consumed, bytes.size());
}

TEST(RequestParserTest, KeepAliveFollowsVersionAndConnection) {
  EXPECT_FALSE(ParseAll("GET / HTTP/1.0\r\n\r\n").request.keep_alive);
  EXPECT_TRUE(ParseAll("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").request.keep_alive);
  EXPECT_FALSE(ParseAll("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n").request.keep_alive);
  EXPECT_FALSE(ParseAll("GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n").request.keep_alive);
  EXPECT_EQ(ParseAll("GET / HTTP/1.0\r\n\r\n").request.version_minor, 0);
}

TEST(RequestParserTest, AcceptsAbsoluteFormAndLeadingEmptyLines) {
  auto step = ParseAll("\r\n\r\nGET http://localhost/vm/exec?x HTTP/1.1\r\nHost: localhost\r\n\r\n");
  ASSERT_EQ(step.status, Status::kRequest);
  EXPECT_EQ(step.request.path, "/vm/exec");
  EXPECT_EQ(step.request.query, "x");
  EXPECT_EQ(ParseAll("GET http://localhost HTTP/1.1\r\nHost: l\r\n\r\n").request.path, "/");
}

TEST(RequestParserTest, ExpectContinueIsReportedOnceTheHeadIsComplete) {
  RequestParser parser;
  std::string head = "POST /vm/exec HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
  EXPECT_EQ(parser.Parse(head).status, Status::kNeedMore);
  EXPECT_TRUE(parser.expects_continue());
  auto step = parser.Parse(head + "hello");
  ASSERT_EQ(step.status, Status::kRequest);
  EXPECT_EQ(step.request.body, "hello");
  EXPECT_FALSE(parser.expects_continue());
}

TEST(RequestParserTest, RefusesMalformedRequestLines) {
  ExpectError("GET /vm\r\nHost: x\r\n\r\n", 400);
  ExpectError("GET  /vm HTTP/1.1\r\nHost: x\r\n\r\n", 400);
  ExpectError("GET /vm HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400);
  ExpectError("G(T /vm HTTP/1.1\r\nHost: x\r\n\r\n", 400);
  ExpectError("GET vm HTTP/1.1\r\nHost: x\r\n\r\n", 400);
  ExpectError("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400);
  ExpectError("GET /v\x01m HTTP/1.1\r\nHost: x\r\n\r\n", 400);
  ExpectError("GET /vm#frag HTTP/1.1\r\nHost: x\r\n\r\n", 400);
  ExpectError("GET /vm HTTP/1.x\r\nHost: x\r\n\r\n", 400);
  ExpectError("GET /vm http/1.1\r\nHost: x\r\n\r\n", 400);
  ExpectError("GET /vm HTTP/2.0\r\nHost: x\r\n\r\n", 505);
  ExpectError("GET /vm HTTP/0.9\r\nHost: x\r\n\r\n", 505);
  ExpectError("GET http://host?x HTTP/1.1\r\nHost: x\r\n\r\n", 400);
}

TEST(RequestParserTest, RefusesBareCrAndLf) {
  ExpectError("GET /vm HTTP/1.1\nHost: x\n\n", 400);
  ExpectError("GET /vm HTTP/1.1\r\nHost: x\n\r\n", 400);
  ExpectError("GET /vm HTTP/1.1\rHost: x\r\n\r\n", 400);
  // A CR split from its LF across reads is fine.
  RequestParser parser;
  std::string bytes = "GET /vm HTTP/1.1\r\nHost: x\r\n\r\n";
  EXPECT_EQ(parser.Parse(std::string_view(bytes).substr(0, 17)).status, Status::kNeedMore);
  EXPECT_EQ(parser.Parse(bytes).status, Status::kRequest);
}

TEST(RequestParserTest, RefusesMalformedHeaderFields) {
  ExpectError("GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n", 400);
  ExpectError("GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n\tb\r\n\r\n", 400);
  ExpectError("GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400);
  ExpectError("GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", 400);
  ExpectError("GET / HTTP/1.1\r\nHost: x\r\n: empty-name\r\n\r\n", 400);
  ExpectError(
      "GET / HTTP/1.1\r\nHost: x\r\nX: a\x01"
      "b\r\n\r\n",
      400);
  ExpectError("GET / HTTP/1.1\r\nHost: x\r\nX: a\x7f\r\n\r\n", 400);
  // Header values may hold obs-text (bytes >= 0x80) and tabs.
  EXPECT_EQ(ParseAll("GET / HTTP/1.1\r\nHost: x\r\nX: caf\xc3\xa9\tok\r\n\r\n").status, Status::kRequest);
}

TEST(RequestParserTest, NeedsExactlyOneHostForHttp11) {
  ExpectError("GET / HTTP/1.1\r\n\r\n", 400);
  ExpectError("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400);
  EXPECT_EQ(ParseAll("GET / HTTP/1.0\r\n\r\n").status, Status::kRequest);
}

TEST(RequestParserTest, RefusesUnsupportedBodyFraming) {
  ExpectError("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 411);
  ExpectError("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501);
  ExpectError("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400);
  ExpectError("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400);
  ExpectError("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400);
  ExpectError("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n", 400);
  ExpectError("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n", 400);
  ExpectError("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400);
  ExpectError("POST / HTTP/1.1\r\nHost: x\r\nExpect: something\r\n\r\n", 417);
}

TEST(RequestParserTest, EnforcesLimits) {
  ParserLimits limits;
  limits.max_request_line = 64;
  limits.max_header_bytes = 256;
  limits.max_header_count = 4;
  limits.max_body_bytes = 10;
  // 414 as soon as the line is too long, even before its end arrives.
  ExpectError("GET /" + std::string(100, 'a'), 414, limits);
  ExpectError("GET /" + std::string(100, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n", 414, limits);
  ExpectError("GET / HTTP/1.1\r\nHost: x\r\nX: " + std::string(300, 'a'), 431, limits);
  ExpectError("GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", 431, limits);
  ExpectError("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n", 413, limits);
  ExpectError(std::string(300, '\r'), 400, limits);  // bare CRs
  ExpectError(std::string("\r\n\r\n\r\n\r\n").append(300, 'x'), 414, limits);
  EXPECT_EQ(ParseAll("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789", limits).status,
            Status::kRequest);
}

TEST(RequestParserTest, StaysInTheErrorState) {
  RequestParser parser;
  ASSERT_EQ(parser.Parse("BAD\r\n\r\n").status, Status::kError);
  EXPECT_EQ(parser.Parse("GET / HTTP/1.1\r\nHost: x\r\n\r\n").status, Status::kError);
}

TEST(ResponseTest, SerialisesJsonAndErrors) {
  Response r = Response::Error(404, "no such resource: /x");
  std::string text = SerializeResponse(r, {.keep_alive = false});
  EXPECT_EQ(
      text,
      "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 33\r\nConnection: close\r\n\r\n"
      "{\"error\":\"no such resource: /x\"}\n");
  EXPECT_NE(SerializeResponse(Response::Json(200, {{"a", 1}}), {.keep_alive = true, .version_minor = 0})
                .find("Connection: keep-alive\r\n"),
            std::string::npos);
  // HEAD: the length of the body, not the body.
  std::string head = SerializeResponse(Response::Json(200, {{"a", 1}}), {.head_request = true});
  EXPECT_NE(head.find("Content-Length: 8\r\n"), std::string::npos);
  EXPECT_EQ(head.substr(head.size() - 4), "\r\n\r\n");
  // Handler headers cannot smuggle a CRLF or override framing.
  Response bad;
  bad.headers = {{"X-Evil", "a\r\nSet-Cookie: x"}, {"Content-Length", "999"}, {"X-Ok", "fine"}};
  std::string safe = SerializeResponse(bad, {});
  EXPECT_EQ(safe, "HTTP/1.1 200 OK\r\nX-Ok: fine\r\nContent-Length: 0\r\n\r\n");
}

TEST(ResponseParserTest, ParsesEveryFraming) {
  {
    ResponseParser parser;
    std::string bytes = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    EXPECT_EQ(parser.Parse(bytes.substr(0, bytes.size() - 1), false).status, ResponseParser::Status::kNeedMore);
    auto step = parser.Parse(bytes, false);
    ASSERT_EQ(step.status, ResponseParser::Status::kResponse);
    EXPECT_EQ(step.response.status, 200);
    EXPECT_EQ(step.response.body, "hello");
    EXPECT_EQ(step.consumed, bytes.size());
  }
  {
    ResponseParser parser;
    std::string bytes =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
    auto step = parser.Parse(bytes, false);
    ASSERT_EQ(step.status, ResponseParser::Status::kResponse);
    EXPECT_EQ(step.response.body, "hello world");
  }
  {
    ResponseParser parser;
    EXPECT_EQ(parser.Parse("HTTP/1.0 200 OK\r\n\r\nabc", false).status, ResponseParser::Status::kNeedMore);
    auto step = parser.Parse("HTTP/1.0 200 OK\r\n\r\nabc", true);
    ASSERT_EQ(step.status, ResponseParser::Status::kResponse);
    EXPECT_EQ(step.response.body, "abc");
  }
  {
    ResponseParser parser(/*head_request=*/true);
    auto step = parser.Parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false);
    ASSERT_EQ(step.status, ResponseParser::Status::kResponse);
    EXPECT_TRUE(step.response.body.empty());
  }
}

TEST(ResponseParserTest, RefusesMalformedResponses) {
  auto error = [](std::string_view bytes, bool eof) {
    ResponseParser parser;
    return parser.Parse(bytes, eof).status == ResponseParser::Status::kError;
  };
  EXPECT_TRUE(error("", true));
  EXPECT_TRUE(error("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", true));
  EXPECT_TRUE(error("HTTP/1.1 2x0 OK\r\n\r\n", false));
  EXPECT_TRUE(error("HTTP/2 200 OK\r\n\r\n", false));
  EXPECT_TRUE(error("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false));
  EXPECT_TRUE(error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false));
  EXPECT_TRUE(error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", false));
  EXPECT_TRUE(error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", true));
}

}  // namespace
}  // namespace clonevm::control

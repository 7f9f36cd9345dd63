// HTTP/1.1 message parsing and serialisation for the control API (RFC 9110/9112, a strict subset).
//
// Why hand-written: Debian bookworm's cpp-httplib (0.11.4) can neither listen on nor connect to
// AF_UNIX sockets, and the control API lives on a per-VM Unix socket. This file holds only pure
// functions and small state machines over byte buffers (no I/O, no threads), so it is unit-tested
// case by case and fuzzed (fuzz/http_request_fuzz.cc). server.h adds the sockets, client.h the
// blocking client.
//
// Requests (RequestParser), from an untrusted local peer, are parsed strictly:
//   * request line `METHOD SP target SP HTTP/1.x CRLF`; the method is a token; the target is
//     origin-form (`/path?query`) or absolute-form (`http://host/path`, reduced to its path);
//     HTTP/1.0 and 1.1 only (other HTTP versions: 505). Empty lines before the request line are
//     skipped (RFC 9112 2.2). Lines end in CRLF; a bare CR or LF is a 400.
//   * header fields `name: value`; the name is a token with no whitespace before the colon; the
//     value may not hold control characters other than HTAB; obs-fold (a line starting with SP or
//     HTAB) is a 400. HTTP/1.1 requests need exactly one Host field.
//   * bodies only by Content-Length (one field, digits only); Transfer-Encoding: chunked is refused
//     with 411 (send a Content-Length), any other transfer coding with 501, both fields with 400.
//   * limits (ParserLimits): request line (414), header section size and field count (431), body
//     size (413, decided from Content-Length before any body byte is read).
//   * `Connection: close` / `keep-alive` and the version decide Request::keep_alive; after an error
//     the connection must be closed (the parser cannot find the next request boundary).
// Parse() is incremental: call it with the whole unconsumed buffer each time bytes arrive; it
// remembers how far it scanned, so a peer sending one byte at a time costs linear time.
//
// Responses from our own server are parsed by ResponseParser in the client, which is just as strict
// about framing (Content-Length, chunked, or close-delimited bodies; no body for 1xx/204/304/HEAD).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/fd.h"

namespace clonevm::control {

// Header fields in arrival order; names compare case-insensitively.
using HeaderList = std::vector<std::pair<std::string, std::string>>;

// The value of the first field named `name` (ASCII case-insensitive), if any.
std::optional<std::string_view> FindHeader(const HeaderList& headers, std::string_view name);
bool EqualsIgnoreCase(std::string_view a, std::string_view b);

struct Request {
  std::string method;     // case-sensitive token, e.g. "GET"
  std::string target;     // as sent on the request line
  std::string path;       // target without the query, always starting with '/' (not percent-decoded)
  std::string query;      // after '?', without it; empty if none
  int version_minor = 1;  // HTTP/1.<minor>: 0 or 1
  HeaderList headers;
  std::string body;
  bool keep_alive = true;  // the peer may send another request on this connection
  // Values of `{name}` segments of the matched route, percent-decoded. Filled by Router.
  std::map<std::string, std::string> path_params;
  // The connection's peer (SO_PEERCRED at accept). Filled by Server.
  uid_t peer_uid = 0;
  gid_t peer_gid = 0;
  pid_t peer_pid = 0;

  std::optional<std::string_view> Header(std::string_view name) const { return FindHeader(headers, name); }
};

struct Response {
  int status = 200;
  // Extra header fields. Content-Length and Connection are added by SerializeResponseHead and must
  // not be set here; Content-Type is set by the Json/Error helpers.
  HeaderList headers;
  std::string body;
  // File descriptors sent to the client with SCM_RIGHTS alongside the first byte of the response
  // (server.h). Left empty in the responses the client returns (see client.h's received_fds).
  std::vector<Fd> fds;
  // A stream's head (Responder::Hijack): no Content-Length; the body is what the handler writes on
  // the taken connection until it closes it.
  bool close_delimited = false;

  // `status` with `body` serialised as JSON and Content-Type: application/json.
  static Response Json(int status, const nlohmann::json& body);
  // `status` with the JSON body {"error": message}; every API error uses this shape.
  static Response Error(int status, std::string_view message);
};

// "OK", "Not Found", ... for the statuses the API uses; "Unknown" otherwise.
std::string_view ReasonPhrase(int status);

struct ParserLimits {
  size_t max_request_line = 8 * 1024;   // longer: 414
  size_t max_header_bytes = 16 * 1024;  // the whole header section, request line included: 431
  size_t max_header_count = 64;         // 431
  size_t max_body_bytes = 1024 * 1024;  // Content-Length above this: 413
};

// A refused request: the status to answer with and a message for the JSON error body.
struct HttpError {
  int status = 400;
  std::string message;
};

class RequestParser {
 public:
  enum class Status { kNeedMore, kRequest, kError };
  struct Step {
    Status status = Status::kNeedMore;
    size_t consumed = 0;  // kRequest: the request's bytes at the front of the buffer
    Request request;      // kRequest
    HttpError error;      // kError
  };

  explicit RequestParser(ParserLimits limits = {}) : limits_(limits) {}

  // Examines `buffer` (all unconsumed bytes, the same prefix as in the previous call plus what
  // arrived since). kRequest: the caller removes `consumed` bytes and may call again for a
  // pipelined request (the parser has reset itself). kError: the caller answers with `error` and
  // closes the connection; the parser stays in the error state.
  Step Parse(std::string_view buffer);

  // True once a request's header section is complete and its body is still arriving.
  bool head_complete() const { return state_ == State::kBody; }
  // True when the complete head asked for `Expect: 100-continue` (only meaningful with
  // head_complete()); the server then sends "HTTP/1.1 100 Continue" once.
  bool expects_continue() const { return head_complete() && expect_continue_; }
  // True when some bytes of a request have arrived but not all of it.
  bool in_request() const { return state_ == State::kBody || scanned_ > 0; }

 private:
  enum class State { kHead, kBody, kError };
  Step ParseHead(std::string_view buffer);
  Step Fail(int status, std::string message);

  ParserLimits limits_;
  State state_ = State::kHead;
  size_t scanned_ = 0;           // kHead: bytes already searched for the end of the head
  size_t request_line_end_ = 0;  // kHead: offset of the request line's CR once seen (0: not yet)
  size_t head_size_ = 0;         // kBody: bytes of the head (including leading empty lines)
  size_t body_size_ = 0;         // kBody: Content-Length
  bool expect_continue_ = false;
  Request pending_;  // kBody: the parsed head
};

struct ResponseHeadOptions {
  bool keep_alive = true;     // false adds "Connection: close"
  int version_minor = 1;      // of the request; 1.0 clients get "Connection: keep-alive" if kept
  bool head_request = false;  // a HEAD request: Content-Length of the body, no body
};

// Status line and header fields (ending in the empty line) for `response`, with Content-Length
// (except for 1xx and 204) and Connection as the options say.
std::string SerializeResponseHead(const Response& response, const ResponseHeadOptions& options);
// Head plus body (no body for HEAD, 1xx, 204, 304).
std::string SerializeResponse(const Response& response, const ResponseHeadOptions& options);

// A request as the client sends it: Host: localhost, Content-Length when there is a body,
// Content-Type: application/json when `json_body`.
std::string SerializeRequest(std::string_view method, std::string_view target, const HeaderList& headers,
                             std::string_view body, bool json_body);

struct ResponseLimits {
  size_t max_header_bytes = 64 * 1024;
  size_t max_body_bytes = 64 * 1024 * 1024;
};

// Parses one response, incrementally like RequestParser. Interim 1xx responses are skipped.
class ResponseParser {
 public:
  enum class Status { kNeedMore, kResponse, kError };
  struct Step {
    Status status = Status::kNeedMore;
    size_t consumed = 0;
    Response response;
    std::string error;  // kError: what was wrong with the bytes
  };

  explicit ResponseParser(bool head_request = false, ResponseLimits limits = {})
      : head_request_(head_request), limits_(limits) {}

  // `eof`: the peer closed the connection after these bytes (completes a close-delimited body;
  // anything else incomplete is an error).
  Step Parse(std::string_view buffer, bool eof);

 private:
  enum class Framing { kNone, kLength, kChunked, kClose };
  Step ParseHead(std::string_view buffer, bool eof);
  Step ParseChunked(std::string_view buffer, bool eof);
  Step Finish(std::string body, size_t consumed);

  bool head_request_;
  ResponseLimits limits_;
  bool head_done_ = false;
  size_t head_size_ = 0;
  Framing framing_ = Framing::kNone;
  size_t content_length_ = 0;
  Response pending_;
};

}  // namespace clonevm::control

// libFuzzer target: the control API's HTTP/1.1 parsers, router and JSON body checks
// (src/control/http.h, router.h) against hostile bytes from a local client.
//
// Input: byte 0 picks how the stream is cut into reads (1..255 bytes per read, 0: all at once);
// the rest is the byte stream a client sends on one connection.
// The harness checks the parser's contract:
//   * feeding the stream in pieces gives exactly the same requests/error as feeding it whole
//     (the incremental scan must not change the outcome);
//   * `consumed` never exceeds the buffer; a request's path starts with '/', its body is within the
//     limit; errors carry a 4xx/5xx status and a message; after an error the parser stays failed;
//   * every parsed request dispatches through a Router (exact, {param}, JSON body routes) to
//     exactly one completion with a valid status and a JSON body.
// The same bytes also go through ResponseParser (the client side), which must not crash either.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "control/http.h"
#include "control/router.h"

namespace {

using clonevm::control::Completion;
using clonevm::control::ParseJsonBody;
using clonevm::control::ParserLimits;
using clonevm::control::Request;
using clonevm::control::RequestParser;
using clonevm::control::Responder;
using clonevm::control::Response;
using clonevm::control::ResponseParser;
using clonevm::control::Router;

#define FUZZ_ASSERT(cond)          \
  do {                             \
    if (!(cond)) __builtin_trap(); \
  } while (0)

// Small limits so that short inputs reach every limit check.
ParserLimits Limits() {
  ParserLimits limits;
  limits.max_request_line = 200;
  limits.max_header_bytes = 600;
  limits.max_header_count = 8;
  limits.max_body_bytes = 300;
  return limits;
}

struct Outcome {
  std::vector<std::string> requests;  // method, path, query, body, keep-alive, headers, per request
  int error_status = 0;
  std::string error_message;
  bool operator==(const Outcome&) const = default;
};

std::string Describe(const Request& r) {
  std::string out = r.method + '\0' + r.path + '\0' + r.query + '\0' + r.body + '\0' + (r.keep_alive ? "k" : "c");
  for (const auto& [name, value] : r.headers) out += '\0' + name + ':' + value;
  return out;
}

const Router& TheRouter() {
  static const Router* router = [] {
    auto* r = new Router();  // never freed: harness only
    r->Add("GET", "/vm", [](Request, Responder responder) { responder.RespondJson(200, {{"state", "running"}}); });
    r->Add("PUT", "/vm/shutdown", [](Request req, Responder responder) {
      auto body = ParseJsonBody(req, {"mode"});
      if (!body) return responder.Respond(body.error().ToResponse());
      responder.Respond(Response{.status = 204});
    });
    r->Add("POST", "/vm/exec", [](Request req, Responder responder) {
      auto body = ParseJsonBody(req, {"argv", "env", "cwd", "stdin", "timeout_ms"});
      if (!body) return responder.Respond(body.error().ToResponse());
      responder.RespondJson(200, {{"fields", body->size()}});
    });
    r->Add("GET", "/vm/devices/{id}", [](Request req, Responder responder) {
      FUZZ_ASSERT(req.path_params.count("id") == 1);
      responder.RespondJson(200, {{"id", req.path_params["id"]}});
    });
    r->Add("GET", "/silent", [](Request, Responder) {});
    return r;
  }();
  return *router;
}

void CheckDispatch(Request request) {
  int completions = 0;
  TheRouter().Dispatch(std::move(request), Responder([&](Completion c) {
                         ++completions;
                         FUZZ_ASSERT(c.response.status >= 200 && c.response.status <= 599);
                         FUZZ_ASSERT(c.response.status == 204 || !c.response.body.empty());
                         std::string text = clonevm::control::SerializeResponse(c.response, {});
                         FUZZ_ASSERT(text.find("\r\n\r\n") != std::string::npos);
                       }));
  FUZZ_ASSERT(completions == 1);
}

// Feeds `stream` in reads of `step` bytes (0: at once), like a connection would.
Outcome Run(std::string_view stream, size_t step, bool dispatch) {
  Outcome outcome;
  RequestParser parser(Limits());
  std::string buffer;
  size_t fed = 0;
  while (fed < stream.size()) {
    size_t n = step == 0 ? stream.size() - fed : std::min(step, stream.size() - fed);
    buffer.append(stream.substr(fed, n));
    fed += n;
    for (;;) {
      RequestParser::Step s = parser.Parse(buffer);
      if (s.status == RequestParser::Status::kNeedMore) break;
      if (s.status == RequestParser::Status::kError) {
        FUZZ_ASSERT(s.error.status >= 400 && s.error.status <= 599 && !s.error.message.empty());
        FUZZ_ASSERT(parser.Parse(buffer).status == RequestParser::Status::kError);
        outcome.error_status = s.error.status;
        outcome.error_message = s.error.message;
        return outcome;
      }
      FUZZ_ASSERT(s.consumed > 0 && s.consumed <= buffer.size());
      FUZZ_ASSERT(!s.request.path.empty() && s.request.path.front() == '/');
      FUZZ_ASSERT(s.request.body.size() <= Limits().max_body_bytes);
      FUZZ_ASSERT(s.request.version_minor == 0 || s.request.version_minor == 1);
      outcome.requests.push_back(Describe(s.request));
      buffer.erase(0, s.consumed);
      if (dispatch) CheckDispatch(std::move(s.request));
    }
  }
  return outcome;
}

void RunResponseParser(std::string_view stream) {
  ResponseParser parser;
  for (bool eof : {false, true}) {
    ResponseParser::Step s = parser.Parse(stream, eof);
    if (s.status == ResponseParser::Status::kResponse) {
      FUZZ_ASSERT(s.consumed <= stream.size());
      FUZZ_ASSERT(s.response.status >= 100 && s.response.status <= 599);
      return;
    }
    if (s.status == ResponseParser::Status::kError) return;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const size_t step = data[0];
  std::string_view stream(reinterpret_cast<const char*>(data + 1), size - 1);
  Outcome whole = Run(stream, 0, /*dispatch=*/true);
  if (step != 0) FUZZ_ASSERT(Run(stream, step, /*dispatch=*/false) == whole);
  RunResponseParser(stream);
  return 0;
}

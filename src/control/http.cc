#include "control/http.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>

namespace clonevm::control {
namespace {

char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

// RFC 9110 5.6.2 tchar.
bool IsTokenChar(char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool IsToken(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!IsTokenChar(c)) return false;
  return true;
}

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Field values: visible ASCII, SP, HTAB and obs-text; no other control characters.
bool IsFieldValue(std::string_view s) {
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if ((u < 0x20 && c != '\t') || u == 0x7f) return false;
  }
  return true;
}

// Calls fn(token) for each element of a comma-separated list, trimmed, skipping empty ones.
template <typename Fn>
void ForEachListElement(std::string_view list, Fn fn) {
  while (!list.empty()) {
    size_t comma = list.find(',');
    std::string_view element = TrimOws(list.substr(0, comma));
    if (!element.empty()) fn(element);
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
}

std::optional<uint64_t> ParseDecimal(std::string_view s) {
  if (s.empty() || s.size() > 18) return std::nullopt;
  uint64_t value = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<uint64_t>(c - '0');
  }
  return value;
}

size_t CountHeaders(const HeaderList& headers, std::string_view name) {
  size_t n = 0;
  for (const auto& [key, value] : headers) n += EqualsIgnoreCase(key, name) ? 1 : 0;
  return n;
}

// Splits a header section (lines without their CRLF) into fields; nullopt-free errors as HttpError.
std::optional<HttpError> ParseFields(std::string_view lines, size_t max_count, HeaderList* out) {
  while (!lines.empty()) {
    size_t eol = lines.find("\r\n");
    std::string_view line = lines.substr(0, eol);
    lines.remove_prefix(eol == std::string_view::npos ? lines.size() : eol + 2);
    if (line.empty()) break;
    if (line.front() == ' ' || line.front() == '\t') return HttpError{400, "obsolete header line folding"};
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) return HttpError{400, "header field without a colon"};
    std::string_view name = line.substr(0, colon);
    if (!IsToken(name)) return HttpError{400, "invalid header field name"};
    std::string_view value = TrimOws(line.substr(colon + 1));
    if (!IsFieldValue(value)) return HttpError{400, "invalid character in header field value"};
    if (out->size() >= max_count) return HttpError{431, "too many header fields"};
    out->emplace_back(std::string(name), std::string(value));
  }
  return std::nullopt;
}

// Fills method, target, path, query and version from a request line.
std::optional<HttpError> ParseRequestLine(std::string_view line, Request* request) {
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) {
    return HttpError{400, "malformed request line"};
  }
  std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (!IsToken(method)) return HttpError{400, "invalid method"};
  if (version == "HTTP/1.1") {
    request->version_minor = 1;
  } else if (version == "HTTP/1.0") {
    request->version_minor = 0;
  } else if (version.size() == 8 && version.substr(0, 5) == "HTTP/" && version[6] == '.' &&
             std::isdigit(static_cast<unsigned char>(version[5])) &&
             std::isdigit(static_cast<unsigned char>(version[7]))) {
    return HttpError{505, "only HTTP/1.0 and HTTP/1.1 are supported"};
  } else {
    return HttpError{400, "malformed HTTP version"};
  }
  if (target.empty()) return HttpError{400, "empty request target"};
  for (char c : target) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f || c == '#') return HttpError{400, "invalid character in request target"};
  }
  std::string_view origin = target;
  if (target.size() >= 7 && EqualsIgnoreCase(target.substr(0, 7), "http://")) {
    size_t slash = target.find('/', 7);
    size_t question = target.find('?', 7);
    if (slash == std::string_view::npos || question < slash) {
      origin = question == std::string_view::npos ? std::string_view("/") : std::string_view();
      if (origin.empty()) return HttpError{400, "absolute-form target without a path"};
    } else {
      origin = target.substr(slash);
    }
  } else if (target.front() != '/') {
    return HttpError{400, "request target must be a path"};
  }
  size_t question = origin.find('?');
  request->method = std::string(method);
  request->target = std::string(target);
  request->path = std::string(origin.substr(0, question));
  request->query = question == std::string_view::npos ? std::string() : std::string(origin.substr(question + 1));
  return std::nullopt;
}

// Connection, Host, Transfer-Encoding, Content-Length and Expect, once the fields are known.
std::optional<HttpError> ApplyFraming(const ParserLimits& limits, Request* request, size_t* body_size,
                                      bool* expect_continue) {
  const HeaderList& headers = request->headers;
  const size_t hosts = CountHeaders(headers, "Host");
  if (hosts > 1 || (request->version_minor == 1 && hosts == 0)) {
    return HttpError{400, "an HTTP/1.1 request needs exactly one Host header"};
  }
  const size_t lengths = CountHeaders(headers, "Content-Length");
  if (auto te = FindHeader(headers, "Transfer-Encoding")) {
    if (lengths > 0) return HttpError{400, "both Transfer-Encoding and Content-Length"};
    std::string_view last;
    ForEachListElement(*te, [&](std::string_view coding) { last = coding; });
    if (EqualsIgnoreCase(last, "chunked"))
      return HttpError{411, "chunked request bodies are not supported; send a Content-Length"};
    return HttpError{501, "unsupported transfer coding"};
  }
  *body_size = 0;
  if (lengths > 1) return HttpError{400, "more than one Content-Length header"};
  if (lengths == 1) {
    auto length = ParseDecimal(*FindHeader(headers, "Content-Length"));
    if (!length) return HttpError{400, "invalid Content-Length"};
    if (*length > limits.max_body_bytes) {
      return HttpError{413, fmt::format("request body larger than {} bytes", limits.max_body_bytes)};
    }
    *body_size = static_cast<size_t>(*length);
  }
  *expect_continue = false;
  if (auto expect = FindHeader(headers, "Expect")) {
    if (!EqualsIgnoreCase(*expect, "100-continue")) return HttpError{417, "unsupported Expect header"};
    *expect_continue = request->version_minor == 1;  // never send 100 to an HTTP/1.0 client
  }
  bool keep_alive = request->version_minor == 1;
  for (const auto& [name, value] : headers) {
    if (!EqualsIgnoreCase(name, "Connection")) continue;
    ForEachListElement(value, [&](std::string_view option) {
      if (EqualsIgnoreCase(option, "close")) keep_alive = false;
      if (EqualsIgnoreCase(option, "keep-alive") && request->version_minor == 0) keep_alive = true;
    });
  }
  // A close anywhere wins over keep-alive.
  for (const auto& [name, value] : headers) {
    if (!EqualsIgnoreCase(name, "Connection")) continue;
    ForEachListElement(value, [&](std::string_view option) {
      if (EqualsIgnoreCase(option, "close")) keep_alive = false;
    });
  }
  request->keep_alive = keep_alive;
  return std::nullopt;
}

}  // namespace

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (Lower(a[i]) != Lower(b[i])) return false;
  return true;
}

std::optional<std::string_view> FindHeader(const HeaderList& headers, std::string_view name) {
  for (const auto& [key, value] : headers)
    if (EqualsIgnoreCase(key, name)) return std::string_view(value);
  return std::nullopt;
}

Response Response::Json(int status, const nlohmann::json& body) {
  Response response;
  response.status = status;
  response.headers.emplace_back("Content-Type", "application/json");
  // Replace invalid UTF-8 rather than throw: messages may quote client input.
  response.body = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  return response;
}

Response Response::Error(int status, std::string_view message) {
  return Json(status, nlohmann::json{{"error", std::string(message)}});
}

std::string_view ReasonPhrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 101:
      return "Switching Protocols";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 400:
      return "Bad Request";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 415:
      return "Unsupported Media Type";
    case 417:
      return "Expectation Failed";
    case 422:
      return "Unprocessable Content";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Unknown";
  }
}

RequestParser::Step RequestParser::Fail(int status, std::string message) {
  state_ = State::kError;
  Step step;
  step.status = Status::kError;
  step.error = HttpError{status, std::move(message)};
  return step;
}

RequestParser::Step RequestParser::Parse(std::string_view buffer) {
  if (state_ == State::kError) return Fail(400, "connection is in an error state");
  if (state_ == State::kHead) {
    Step step = ParseHead(buffer);
    if (step.status != Status::kNeedMore || state_ != State::kBody) return step;
  }
  if (buffer.size() - head_size_ < body_size_) return Step{};
  Step step;
  step.status = Status::kRequest;
  step.consumed = head_size_ + body_size_;
  step.request = std::move(pending_);
  step.request.body = std::string(buffer.substr(head_size_, body_size_));
  *this = RequestParser(limits_);
  return step;
}

RequestParser::Step RequestParser::ParseHead(std::string_view buffer) {
  size_t lead = 0;  // empty lines before the request line
  while (buffer.size() >= lead + 2 && buffer[lead] == '\r' && buffer[lead + 1] == '\n') lead += 2;
  if (lead > limits_.max_header_bytes) return Fail(431, "too many empty lines before the request");
  // Every check is tied to the position of the byte that fails it, so the outcome does not depend
  // on how the stream was cut into reads (the fuzzer checks this).
  size_t end = 0;
  for (size_t i = std::max(lead, scanned_); i < buffer.size() && end == 0; ++i) {
    const char c = buffer[i];
    if (i + 1 > limits_.max_header_bytes) return Fail(431, "request header section too large");
    if (request_line_end_ == 0 && c != '\r' && c != '\n' && i - lead + 1 > limits_.max_request_line) {
      return Fail(414, "request line too long");
    }
    if (c == '\r') {
      if (i + 1 == buffer.size()) break;  // look at this CR again when its next byte arrives
      if (buffer[i + 1] != '\n') return Fail(400, "bare CR in request head");
    } else if (c == '\n') {
      if (i == lead || buffer[i - 1] != '\r') return Fail(400, "bare LF in request head");
      if (request_line_end_ == 0) request_line_end_ = i - 1;
      if (i >= lead + 3 && buffer[i - 2] == '\n' && buffer[i - 3] == '\r') end = i + 1;
    }
    scanned_ = i + 1;
  }
  if (end == 0) return Step{};
  const size_t first_eol = request_line_end_;  // the request line ends at the first CRLF after `lead`

  Request request;
  std::string_view head = buffer.substr(lead, end - lead);
  if (auto error = ParseRequestLine(head.substr(0, first_eol - lead), &request)) {
    return Fail(error->status, std::move(error->message));
  }
  if (auto error = ParseFields(head.substr(first_eol - lead + 2), limits_.max_header_count, &request.headers)) {
    return Fail(error->status, std::move(error->message));
  }
  size_t body_size = 0;
  bool expect_continue = false;
  if (auto error = ApplyFraming(limits_, &request, &body_size, &expect_continue)) {
    return Fail(error->status, std::move(error->message));
  }
  state_ = State::kBody;
  head_size_ = end;
  body_size_ = body_size;
  expect_continue_ = expect_continue;
  pending_ = std::move(request);
  return Step{};
}

std::string SerializeResponseHead(const Response& response, const ResponseHeadOptions& options) {
  std::string out = fmt::format("HTTP/1.1 {} {}\r\n", response.status, ReasonPhrase(response.status));
  for (const auto& [name, value] : response.headers) {
    // Handlers are our own code, but never let a stray CR/LF split the head.
    if (!IsToken(name) || !IsFieldValue(value) || EqualsIgnoreCase(name, "Content-Length") ||
        EqualsIgnoreCase(name, "Connection")) {
      continue;
    }
    out += fmt::format("{}: {}\r\n", name, value);
  }
  const bool interim = response.status < 200;
  if (!interim && response.status != 204 && !response.close_delimited) {
    out += fmt::format("Content-Length: {}\r\n", response.body.size());
  }
  if (!interim) {
    if (!options.keep_alive) {
      out += "Connection: close\r\n";
    } else if (options.version_minor == 0) {
      out += "Connection: keep-alive\r\n";
    }
  }
  out += "\r\n";
  return out;
}

std::string SerializeResponse(const Response& response, const ResponseHeadOptions& options) {
  std::string out = SerializeResponseHead(response, options);
  const bool no_body =
      options.head_request || response.status < 200 || response.status == 204 || response.status == 304;
  if (!no_body) out += response.body;
  return out;
}

std::string SerializeRequest(std::string_view method, std::string_view target, const HeaderList& headers,
                             std::string_view body, bool json_body) {
  std::string out = fmt::format("{} {} HTTP/1.1\r\nHost: localhost\r\n", method, target);
  for (const auto& [name, value] : headers) out += fmt::format("{}: {}\r\n", name, value);
  if (json_body) out += "Content-Type: application/json\r\n";
  if (!body.empty() || method == "POST" || method == "PUT" || method == "PATCH") {
    out += fmt::format("Content-Length: {}\r\n", body.size());
  }
  out += "\r\n";
  out += body;
  return out;
}

ResponseParser::Step ResponseParser::Finish(std::string body, size_t consumed) {
  Step step;
  step.status = Status::kResponse;
  step.consumed = consumed;
  step.response = std::move(pending_);
  step.response.body = std::move(body);
  return step;
}

ResponseParser::Step ResponseParser::Parse(std::string_view buffer, bool eof) {
  if (!head_done_) {
    Step step = ParseHead(buffer, eof);
    if (!head_done_ || step.status == Status::kError) return step;
  }
  auto error = [](std::string message) {
    Step step;
    step.status = Status::kError;
    step.error = std::move(message);
    return step;
  };
  std::string_view rest = buffer.substr(head_size_);
  switch (framing_) {
    case Framing::kNone:
      return Finish({}, head_size_);
    case Framing::kLength:
      if (rest.size() >= content_length_)
        return Finish(std::string(rest.substr(0, content_length_)), head_size_ + content_length_);
      if (eof) return error("connection closed before the end of the response body");
      return Step{};
    case Framing::kClose:
      if (rest.size() > limits_.max_body_bytes) return error("response body too large");
      if (eof) return Finish(std::string(rest), buffer.size());
      return Step{};
    case Framing::kChunked:
      return ParseChunked(buffer, eof);
  }
  return error("unreachable");
}

ResponseParser::Step ResponseParser::ParseHead(std::string_view buffer, bool eof) {
  auto error = [](std::string message) {
    Step step;
    step.status = Status::kError;
    step.error = std::move(message);
    return step;
  };
  size_t start = head_size_;  // after interim (1xx) responses already skipped
  for (;;) {
    size_t end = buffer.find("\r\n\r\n", start);
    if (end == std::string_view::npos) {
      if (buffer.size() - start > limits_.max_header_bytes) return error("response head too large");
      if (eof)
        return error(buffer.size() == start ? "connection closed without a response"
                                            : "connection closed in the response head");
      head_size_ = start;
      return Step{};
    }
    std::string_view head = buffer.substr(start, end + 2 - start);
    size_t eol = head.find("\r\n");
    std::string_view status_line = head.substr(0, eol);
    // "HTTP/1.x SSS[ reason]"
    if (status_line.size() < 12 || status_line.substr(0, 7) != "HTTP/1." || status_line[8] != ' ' ||
        (status_line.size() > 12 && status_line[12] != ' ')) {
      return error("malformed status line");
    }
    int status = 0;
    auto [ptr, ec] = std::from_chars(status_line.data() + 9, status_line.data() + 12, status);
    if (ec != std::errc() || ptr != status_line.data() + 12 || status < 100 || status > 599) {
      return error("malformed status code");
    }
    HeaderList headers;
    if (auto field_error = ParseFields(head.substr(eol + 2), 256, &headers)) return error(field_error->message);
    start = end + 4;
    if (status < 200 && status != 101) continue;  // interim response: the real one follows
    pending_.status = status;
    pending_.headers = std::move(headers);
    head_size_ = start;
    break;
  }
  const HeaderList& headers = pending_.headers;
  const int status = pending_.status;
  if (head_request_ || status == 101 || status == 204 || status == 304) {
    framing_ = Framing::kNone;
  } else if (auto te = FindHeader(headers, "Transfer-Encoding")) {
    std::string_view last;
    ForEachListElement(*te, [&](std::string_view coding) { last = coding; });
    if (!EqualsIgnoreCase(last, "chunked")) return error("unsupported transfer coding in response");
    framing_ = Framing::kChunked;
  } else if (auto length = FindHeader(headers, "Content-Length")) {
    auto value = ParseDecimal(*length);
    if (!value || CountHeaders(headers, "Content-Length") > 1) return error("invalid Content-Length in response");
    if (*value > limits_.max_body_bytes) return error("response body too large");
    content_length_ = static_cast<size_t>(*value);
    framing_ = Framing::kLength;
  } else {
    framing_ = Framing::kClose;
  }
  head_done_ = true;
  return Step{};
}

ResponseParser::Step ResponseParser::ParseChunked(std::string_view buffer, bool eof) {
  auto error = [](std::string message) {
    Step step;
    step.status = Status::kError;
    step.error = std::move(message);
    return step;
  };
  auto need_more = [&]() { return eof ? error("connection closed in a chunked response body") : Step{}; };
  std::string body;
  size_t pos = head_size_;
  for (;;) {
    size_t eol = buffer.find("\r\n", pos);
    if (eol == std::string_view::npos) return need_more();
    std::string_view size_line = buffer.substr(pos, eol - pos);
    size_line = size_line.substr(0, size_line.find(';'));  // chunk extensions are ignored
    size_line = TrimOws(size_line);
    if (size_line.empty() || size_line.size() > 15) return error("invalid chunk size");
    size_t size = 0;
    auto [ptr, ec] = std::from_chars(size_line.data(), size_line.data() + size_line.size(), size, 16);
    if (ec != std::errc() || ptr != size_line.data() + size_line.size()) return error("invalid chunk size");
    pos = eol + 2;
    if (size == 0) break;
    if (body.size() + size > limits_.max_body_bytes) return error("response body too large");
    if (buffer.size() - pos < size + 2) return need_more();
    if (buffer.substr(pos + size, 2) != "\r\n") return error("chunk not followed by CRLF");
    body.append(buffer.substr(pos, size));
    pos += size + 2;
  }
  // Trailer fields, ignored, up to the empty line.
  for (;;) {
    size_t eol = buffer.find("\r\n", pos);
    if (eol == std::string_view::npos) return need_more();
    if (eol - pos > limits_.max_header_bytes) return error("trailer too large");
    bool empty = eol == pos;
    pos = eol + 2;
    if (empty) return Finish(std::move(body), pos);
  }
}

}  // namespace clonevm::control

#include "control/router.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <optional>

#include "base/check.h"

namespace clonevm::control {
namespace {

std::vector<std::string_view> SplitPath(std::string_view path) {
  std::vector<std::string_view> segments;
  path.remove_prefix(1);  // the leading '/'
  for (;;) {
    size_t slash = path.find('/');
    segments.push_back(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return segments;
}

bool IsParam(std::string_view segment) { return segment.size() > 2 && segment.front() == '{' && segment.back() == '}'; }

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decodes a path segment; nullopt for a bad escape or a decoded '/' or NUL.
std::optional<std::string> DecodeSegment(std::string_view segment) {
  std::string out;
  for (size_t i = 0; i < segment.size(); ++i) {
    if (segment[i] != '%') {
      out += segment[i];
      continue;
    }
    if (i + 2 >= segment.size()) return std::nullopt;
    int hi = HexValue(segment[i + 1]);
    int lo = HexValue(segment[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    char c = static_cast<char>(hi * 16 + lo);
    if (c == '/' || c == '\0') return std::nullopt;
    out += c;
    i += 2;
  }
  return out;
}

// How well `segments` match a route: nullopt if not at all, else the number of exact segments
// (more is more specific).
std::optional<size_t> MatchScore(const std::vector<std::string>& pattern, const std::vector<std::string_view>& path) {
  if (pattern.size() != path.size()) return std::nullopt;
  size_t exact = 0;
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (IsParam(pattern[i])) {
      if (path[i].empty()) return std::nullopt;
    } else if (pattern[i] == path[i]) {
      ++exact;
    } else {
      return std::nullopt;
    }
  }
  return exact;
}

}  // namespace

Router& Router::Add(std::string method, std::string_view pattern, Handler handler) {
  CLONE_CHECK(!pattern.empty() && pattern.front() == '/');
  CLONE_CHECK(handler);
  Route route{std::move(method), {}, std::move(handler)};
  for (std::string_view segment : SplitPath(pattern)) {
    const bool has_brace = segment.find_first_of("{}") != std::string_view::npos;
    CLONE_CHECK(!has_brace || IsParam(segment));
    route.segments.emplace_back(segment);
  }
  for (const Route& other : routes_) CLONE_CHECK(!(other.method == route.method && other.segments == route.segments));
  routes_.push_back(std::move(route));
  return *this;
}

void Router::Dispatch(Request request, Responder responder) const {
  const std::vector<std::string_view> path = SplitPath(request.path);
  const std::string_view method = request.method == "HEAD" ? std::string_view("GET") : request.method;
  // The best-scoring pattern decides; methods are then looked up among routes with that pattern.
  std::optional<size_t> best;
  for (const Route& route : routes_) {
    auto score = MatchScore(route.segments, path);
    if (score && (!best || *score > *best)) best = score;
  }
  if (!best) return responder.RespondError(404, fmt::format("no such resource: {}", request.path));
  const Route* chosen = nullptr;
  std::vector<std::string> allowed;
  for (const Route& route : routes_) {
    if (MatchScore(route.segments, path) != best) continue;
    if (route.method == method && chosen == nullptr) chosen = &route;
    if (std::find(allowed.begin(), allowed.end(), route.method) == allowed.end()) allowed.push_back(route.method);
    if (route.method == "GET" && std::find(allowed.begin(), allowed.end(), "HEAD") == allowed.end())
      allowed.push_back("HEAD");
  }
  if (chosen == nullptr) {
    Response response = Response::Error(405, fmt::format("method {} not allowed on {}", request.method, request.path));
    response.headers.emplace_back("Allow", fmt::format("{}", fmt::join(allowed, ", ")));
    return responder.Respond(std::move(response));
  }
  for (size_t i = 0; i < chosen->segments.size(); ++i) {
    const std::string& segment = chosen->segments[i];
    if (!IsParam(segment)) continue;
    auto value = DecodeSegment(path[i]);
    if (!value) return responder.RespondError(400, "malformed percent-encoding in path");
    request.path_params[segment.substr(1, segment.size() - 2)] = std::move(*value);
  }
  chosen->handler(std::move(request), std::move(responder));
}

tl::expected<nlohmann::json, BodyError> ParseJsonBody(const Request& request,
                                                      std::initializer_list<std::string_view> allowed_fields) {
  if (auto type = request.Header("Content-Type")) {
    std::string_view media = type->substr(0, type->find(';'));
    while (!media.empty() && (media.back() == ' ' || media.back() == '\t')) media.remove_suffix(1);
    if (!EqualsIgnoreCase(media, "application/json")) {
      return tl::unexpected(
          BodyError{415, fmt::format("Content-Type must be application/json, not {} (use curl --json)", media)});
    }
  }
  if (request.body.empty()) return nlohmann::json::object();
  nlohmann::json body = nlohmann::json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return tl::unexpected(BodyError{400, "body is not valid JSON"});
  if (!body.is_object()) return tl::unexpected(BodyError{400, "body must be a JSON object"});
  for (const auto& [key, value] : body.items()) {
    if (std::find(allowed_fields.begin(), allowed_fields.end(), key) == allowed_fields.end()) {
      return tl::unexpected(BodyError{400, fmt::format("unknown field {}", key)});
    }
  }
  return body;
}

}  // namespace clonevm::control

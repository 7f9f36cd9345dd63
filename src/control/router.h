// Router: maps (method, path) of a control API request to its handler; JSON body helpers.
//
// Routes are added before the server starts (Add is not thread-safe; Dispatch runs on the server's
// loop thread). A pattern is an exact path ("/vm/pause") or has whole `{name}` segments
// ("/vm/devices/{id}"); a `{name}` segment matches one non-empty segment, whose percent-decoded
// value lands in Request::path_params[name] (a bad %-escape or a decoded '/' or NUL is a 400).
// Exact segments win over `{name}` segments. The query string is ignored for matching. Dispatch
// answers itself, with the {"error": "..."} body every API error uses:
//   * no pattern matches the path: 404;
//   * the path matches but not the method: 405 with `Allow: <methods>` (HEAD is served by a GET
//     route, without the body).
// Handlers get the request by value and a Responder (responder.h) they complete now or later from
// any thread. A handler must not block the loop: the VM's handlers post a typed request to the VM
// loop and complete the Responder when the VM answers.
//
// ParseJsonBody: the one way handlers read a JSON body. Content-Type must be application/json
// (parameters such as charset allowed) or absent; anything else is a 415. Note that `curl -d`
// sends application/x-www-form-urlencoded, which is refused (the 415 message says to use
// `curl --json` or -H 'Content-Type: application/json'): accepting a form type for JSON would make
// the API's media types meaningless. A missing Content-Type is accepted for hand-written clients
// (socat, printf). An empty body is treated as {}. The body must be a JSON object (400 "body is
// not valid JSON" / "body must be a JSON object") whose keys are all in `allowed_fields`
// (400 "unknown field x"). Field values are the handler's to check.
#pragma once

#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "control/http.h"
#include "control/responder.h"

namespace clonevm::control {

class Router {
 public:
  using Handler = std::function<void(Request request, Responder responder)>;

  // Registers `handler` for `method` (e.g. "GET") on `pattern`. Registering the same method and
  // pattern twice, or a malformed pattern (not starting with '/', empty or partial `{}` segment),
  // is a programmer error (CLONE_CHECK).
  Router& Add(std::string method, std::string_view pattern, Handler handler);

  // Finds the route for `request` and calls its handler, or answers 404/405/400 on `responder`.
  void Dispatch(Request request, Responder responder) const;

 private:
  struct Route {
    std::string method;
    std::vector<std::string> segments;  // "{name}" segments are parameters
    Handler handler;
  };
  std::vector<Route> routes_;
};

// A 4xx JSON error from ParseJsonBody, ready to be sent with Responder::Respond.
struct BodyError {
  int status = 400;
  std::string message;
  Response ToResponse() const { return Response::Error(status, message); }
};

// See the header comment. On error, answer with `error.ToResponse()`.
tl::expected<nlohmann::json, BodyError> ParseJsonBody(const Request& request,
                                                      std::initializer_list<std::string_view> allowed_fields);

}  // namespace clonevm::control

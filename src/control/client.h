// Client: a blocking, one-request-per-connection client for a VM's control socket (server.h).
//
// Used by the CLI (`clone exec`, `clone list`, `clone status`) and by tests in place of curl. Each
// Call connects, sends one request with `Connection: close`, and reads one response, whatever its
// framing (Content-Length, chunked, or delimited by the server closing). File descriptors the
// server passes with SCM_RIGHTS are received with recvmsg (close-on-exec) and handed to the caller
// through `received_fds`; with received_fds == nullptr they are closed.
//
// Why hand-written: Debian bookworm's cpp-httplib (0.11.4) cannot connect to AF_UNIX sockets.
//
// Errors: "no VM is serving PATH (...)" when nothing listens, a timeout naming the request when the
// whole exchange takes longer than `timeout`, and a message for malformed responses. An HTTP error
// status is NOT an Error: the Response carries it (see ResponseJson to turn it into one).
// Thread-safety: Call is reentrant; it uses no shared state.
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "control/http.h"

namespace clonevm::control {

// `path` is the request target ("/vm", "/vm/exec?x=1"); `body`, if any, is sent as
// application/json. The returned Response has status, headers and body; its `fds` stay empty.
[[nodiscard]] Result<Response> Call(const std::string& socket_path, std::string_view method, std::string_view path,
                                    const std::optional<nlohmann::json>& body, std::chrono::milliseconds timeout,
                                    std::vector<Fd>* received_fds = nullptr);

// The JSON body of a 2xx response (null for an empty body); for any other status an Error
// "HTTP <status>: <the body's "error" string, or the raw body>". A 2xx body that is not JSON is an
// Error too.
[[nodiscard]] Result<nlohmann::json> ResponseJson(const Response& response);

}  // namespace clonevm::control

// Responder: the one-shot reply channel a control API handler gets with each request.
//
// Contract: a handler (router.h) runs on the server's loop thread and receives a Responder by
// value. It completes it exactly once — right away, or later from ANY thread (after posting the
// request to the VM loop, or from a worker). Completing hands the response to the server, which
// posts it back to its loop thread and writes it on the request's connection; if that connection
// died meanwhile, the response (and any file descriptors in it) is dropped. A Responder destroyed
// without being completed answers 500 {"error": "request was not answered"}, so a forgotten path
// cannot hang a client. Calling Respond twice is a programmer error (CLONE_CHECK).
//
// Hijack: a handler that wants the raw stream (e.g. `clone attach`-style byte pipes) completes the
// Responder with Hijack(head, on_taken): the server writes `head` (typically 101 or 200 with no
// body), stops treating the connection as HTTP, and calls `on_taken` on its loop thread with the
// connected socket (non-blocking, close-on-exec) and any bytes the client already sent after the
// request. If the connection died first, on_taken gets an Error instead. If the Server is destroyed
// first, on_taken is destroyed without being called.
//
// Thread-safety: a Responder is a move-only value owned by one thread at a time; the delivery
// function it wraps must be safe to call from any thread (the server's is).
#pragma once

#include <functional>
#include <string>
#include <utility>

#include "base/fd.h"
#include "base/result.h"
#include "control/http.h"

namespace clonevm::control {

// A connection taken over by Responder::Hijack.
struct HijackedConnection {
  Fd socket;             // connected AF_UNIX stream socket, O_NONBLOCK
  std::string buffered;  // bytes the client sent after the request, not yet consumed
};
using HijackCallback = std::function<void(Result<HijackedConnection>)>;

// What a handler produced: a response, and for a hijack the callback that takes the socket.
struct Completion {
  Response response;
  HijackCallback on_hijacked;  // empty for an ordinary response
};

class Responder {
 public:
  using Deliver = std::function<void(Completion)>;

  // `deliver` receives the completion exactly once, on the thread that completes the Responder.
  explicit Responder(Deliver deliver) : deliver_(std::move(deliver)) {}
  Responder(Responder&& other) noexcept : deliver_(std::exchange(other.deliver_, nullptr)) {}
  Responder& operator=(Responder&& other) noexcept;
  Responder(const Responder&) = delete;
  Responder& operator=(const Responder&) = delete;
  ~Responder();

  void Respond(Response response);
  // Shorthands: a JSON body, or the {"error": message} body every API error uses.
  void RespondJson(int status, const nlohmann::json& body) { Respond(Response::Json(status, body)); }
  void RespondError(int status, std::string_view message) { Respond(Response::Error(status, message)); }
  // Writes `head` (its body too, if any) and hands over the connection; see the header comment.
  void Hijack(Response head, HijackCallback on_taken);

  // False once completed (or moved from).
  bool pending() const { return static_cast<bool>(deliver_); }

 private:
  void Complete(Completion completion);
  Deliver deliver_;
};

}  // namespace clonevm::control

#include "control/responder.h"

#include "base/check.h"

namespace clonevm::control {

Responder& Responder::operator=(Responder&& other) noexcept {
  if (this != &other) {
    if (deliver_) Complete(Completion{Response::Error(500, "request was not answered"), nullptr});
    deliver_ = std::exchange(other.deliver_, nullptr);
  }
  return *this;
}

Responder::~Responder() {
  if (deliver_) Complete(Completion{Response::Error(500, "request was not answered"), nullptr});
}

void Responder::Respond(Response response) { Complete(Completion{std::move(response), nullptr}); }

void Responder::Hijack(Response head, HijackCallback on_taken) {
  CLONE_CHECK(on_taken);
  Complete(Completion{std::move(head), std::move(on_taken)});
}

void Responder::Complete(Completion completion) {
  CLONE_CHECK(deliver_);  // completed twice
  Deliver deliver = std::exchange(deliver_, nullptr);
  deliver(std::move(completion));
}

}  // namespace clonevm::control

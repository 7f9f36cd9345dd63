// libFuzzer target: the agent protocol (agent/proto.h) and the identity page (agent/identity_page.h)
// against hostile bytes, as either side of a connection would see them.
//
// Input: byte 0 picks the chunk size the stream is fed in (1..256 bytes, so frame boundaries
// fall everywhere); the rest is the byte stream. Every frame the decoder yields is checked
// (payload within kMaxPayload, type known) and its payload is run through every control-message
// validator; a payload that validates must re-encode to one that validates again. The stream is
// also decoded as an identity page. Errors are fine; exceptions, crashes and sanitizer reports
// are not.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "agent/identity_page.h"
#include "agent/proto.h"

namespace {

using namespace clonevm::agent;

template <typename T>
void CheckPayload(std::string_view payload) {
  auto decoded = DecodePayload<T>(payload);
  if (!decoded) return;
  auto again = DecodePayload<T>(EncodePayload(*decoded));
  if (!again) std::abort();  // the encoder produced something its own decoder rejects
}

void CheckAllValidators(std::string_view payload) {
  CheckPayload<Hello>(payload);
  CheckPayload<HelloOk>(payload);
  CheckPayload<ErrorMessage>(payload);
  CheckPayload<ExecRequest>(payload);
  CheckPayload<Started>(payload);
  CheckPayload<Resize>(payload);
  CheckPayload<SignalMessage>(payload);
  CheckPayload<Exited>(payload);
  CheckPayload<Monitor>(payload);
  CheckPayload<Report>(payload);
  CheckPayload<SetIdentity>(payload);
  CheckPayload<IdentityOk>(payload);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  size_t chunk = static_cast<size_t>(data[0]) + 1;
  std::string_view stream(reinterpret_cast<const char*>(data + 1), size - 1);

  FrameDecoder decoder;
  for (size_t pos = 0; pos < stream.size(); pos += chunk) {
    decoder.Feed(stream.substr(pos, chunk));
    for (;;) {
      auto frame = decoder.Next();
      if (!frame || !*frame) break;
      if ((*frame)->payload.size() > kMaxPayload) std::abort();
      if (!IsKnownType(static_cast<uint16_t>((*frame)->type))) std::abort();
      CheckAllValidators((*frame)->payload);
    }
  }
  // Raw payload validation too, so the JSON validators get coverage without a valid header.
  CheckAllValidators(stream);

  auto identity = DecodeIdentityPage(std::span<const uint8_t>(data, size));
  if (identity) {
    auto page = EncodeIdentityPage(*identity);
    if (!page || !DecodeIdentityPage(*page)) std::abort();
  }
  return 0;
}

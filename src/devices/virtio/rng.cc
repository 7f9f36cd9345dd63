#include "devices/virtio/rng.h"

#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "base/log.h"
#include "devices/virtio/json_state.h"

namespace clonevm::virtio {
namespace {

constexpr int kStateVersion = 1;

// Writes up to kMaxBytesPerRequest random bytes into the chain's writable buffers.
uint32_t FillChain(const DescriptorChain& chain) {
  uint32_t written = 0;
  for (const GuestBuffer& buffer : chain.writable()) {
    size_t want = std::min<size_t>(buffer.host.size(), Rng::kMaxBytesPerRequest - written);
    size_t got = FillRandom(buffer.host.first(want));
    written += static_cast<uint32_t>(got);
    if (got < want || written == Rng::kMaxBytesPerRequest) break;
  }
  return written;
}

}  // namespace

size_t FillRandom(std::span<uint8_t> out) {
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::getrandom(out.data() + done, out.size() - done, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      CLONE_LOG_RATELIMITED(LogLevel::kError, "virtio-rng: getrandom: {}", std::strerror(errno));
      break;
    }
    done += static_cast<size_t>(n);
  }
  return done;
}

Result<void> Rng::Activate(const DeviceContext& context) {
  context_.emplace(context);
  return {};
}

void Rng::Reset() { context_.reset(); }

Result<void> Rng::ProcessQueue(size_t index) {
  if (!context_ || index != 0) return {};
  Queue& queue = context_->queues[0];
  bool used_any = false;
  for (;;) {
    std::optional<DescriptorChain> chain = CLONE_TRY(queue.Pop());
    if (!chain) break;
    uint32_t written = FillChain(*chain);
    queue.AddUsed(std::move(*chain), written);
    used_any = true;
  }
  if (used_any && queue.NeedsNotification()) context_->interrupt.SignalUsed();
  return {};
}

nlohmann::json Rng::SaveState() const { return {{"version", kStateVersion}}; }

Result<void> Rng::RestoreState(const nlohmann::json& state) {
  CLONE_TRY(StateVersion(state, kStateVersion, "virtio-rng"));
  return {};
}

}  // namespace clonevm::virtio

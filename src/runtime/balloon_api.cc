#include "runtime/balloon_api.h"

namespace clonevm {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kPage = virtio::Balloon::kPageSize;

double Mib(uint64_t pages) { return static_cast<double>(pages * kPage) / kMiB; }

}  // namespace

nlohmann::json BalloonJson(const Vm& vm) {
  std::optional<virtio::BalloonStatus> s = vm.balloon_status();
  if (!s) return nullptr;
  uint64_t ram_pages = vm.memory().ram_bytes() / kPage;
  nlohmann::json j = {
      {"driver_ok", s->driver_ok},
      {"target_mib", Mib(ram_pages - std::min(s->target_pages, ram_pages))},
      {"actual_mib", Mib(ram_pages - std::min(s->actual_pages, ram_pages))},
      {"balloon_mib", Mib(s->actual_pages)},
      {"inflated_mib", Mib(s->inflated_pages)},
      {"reported_mib", static_cast<double>(s->reported_bytes) / kMiB},
      {"ignored_pfns", s->ignored_pfns},
      {"free_page_reporting", (s->negotiated_features & virtio::kBalloonFeatureReporting) != 0},
      {"deflate_on_oom", (s->negotiated_features & virtio::kBalloonFeatureDeflateOnOom) != 0},
  };
  if (s->stats_time) {
    nlohmann::json stats = nlohmann::json::object();
    for (const auto& stat : s->stats) stats[stat.name] = stat.value;
    j["stats"] = stats;
    j["stats_age_s"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - *s->stats_time).count();
  }
  return j;
}

control::Router::Handler BalloonRoute(Vm& vm) {
  return [&vm](control::Request request, control::Responder responder) {
    auto body = control::ParseJsonBody(request, {"target_mib"});
    if (!body) return responder.Respond(body.error().ToResponse());
    uint64_t ram_mib = vm.memory().ram_bytes() / kMiB;
    auto target = body->find("target_mib");
    if (target == body->end() || !target->is_number_unsigned() || target->get<uint64_t>() == 0 ||
        target->get<uint64_t>() > ram_mib) {
      return responder.RespondError(400, fmt::format("target_mib: the MiB the guest keeps, 1..{}", ram_mib));
    }
    if (!vm.has_balloon()) return responder.RespondError(409, "this VM has no balloon (started with --balloon off)");
    uint64_t balloon_bytes = vm.memory().ram_bytes() - target->get<uint64_t>() * kMiB;
    if (auto set = vm.SetBalloonTarget(balloon_bytes); !set) return responder.RespondError(500, set.error().message());
    responder.RespondJson(200, BalloonJson(vm));
  };
}

}  // namespace clonevm

// EventBus: the daemon's event stream (GET /events): one JSON object per line,
//   {"seq": N, "time_unix": T, "type": "created|started|agent-ready|exited|restarting|adopted|destroyed",
//    "id": VM, ...type-specific fields ("status", "how", "pid")}.
// The last kBacklog events are kept; a subscriber may ask for those after a sequence number
// (GET /events?since=N; since=0: all kept) before the live ones. A subscriber that does not read
// (its socket buffer full) is dropped rather than let the daemon buffer for it. A non-root
// subscriber gets only the events of its own VMs.
// Threads: the loop thread only.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <list>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "base/event_loop.h"
#include "base/fd.h"

namespace clonevm::daemon {

class EventBus {
 public:
  static constexpr size_t kBacklog = 1000;
  explicit EventBus(EventLoop& loop) : loop_(loop) {}
  ~EventBus();
  EventBus(const EventBus&) = delete;
  EventBus& operator=(const EventBus&) = delete;

  // Stamps `event` (seq, time_unix) and sends it to every subscriber allowed to see it.
  void Publish(nlohmann::json event, uid_t owner);
  // Takes over a connected stream socket; replays the backlog after `since` when given.
  void Subscribe(Fd socket, uid_t uid, std::optional<uint64_t> since);
  const std::deque<nlohmann::json>& backlog() const { return backlog_; }
  size_t subscriber_count() const { return subscribers_.size(); }

 private:
  struct Subscriber {
    Fd socket;
    uid_t uid = 0;
  };
  // False when the subscriber must go (gone, or not reading).
  static bool Send(Subscriber& s, const std::string& line);
  void Drop(std::list<Subscriber>::iterator it);

  EventLoop& loop_;
  uint64_t next_seq_ = 1;
  std::deque<nlohmann::json> backlog_;
  std::deque<uid_t> backlog_owner_;
  std::list<Subscriber> subscribers_;
};

}  // namespace clonevm::daemon

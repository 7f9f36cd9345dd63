#include "daemon/events.h"

#include <sys/epoll.h>
#include <sys/socket.h>

#include <cerrno>
#include <ctime>

namespace clonevm::daemon {

EventBus::~EventBus() {
  for (auto& s : subscribers_) loop_.Remove(s.socket.get());
}

bool EventBus::Send(Subscriber& s, const std::string& line) {
  ssize_t n = 0;
  do {
    n = ::send(s.socket.get(), line.data(), line.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  // A partial write would leave a broken line: a subscriber this far behind is dropped.
  return n == static_cast<ssize_t>(line.size());
}

void EventBus::Drop(std::list<Subscriber>::iterator it) {
  loop_.Remove(it->socket.get());
  subscribers_.erase(it);
}

void EventBus::Publish(nlohmann::json event, uid_t owner) {
  event["seq"] = next_seq_++;
  event["time_unix"] = static_cast<int64_t>(std::time(nullptr));
  std::string line = event.dump() + "\n";
  for (auto it = subscribers_.begin(); it != subscribers_.end();) {
    auto next = std::next(it);
    if ((it->uid == 0 || it->uid == owner) && !Send(*it, line)) Drop(it);
    it = next;
  }
  backlog_.push_back(std::move(event));
  backlog_owner_.push_back(owner);
  if (backlog_.size() > kBacklog) {
    backlog_.pop_front();
    backlog_owner_.pop_front();
  }
}

void EventBus::Subscribe(Fd socket, uid_t uid, std::optional<uint64_t> since) {
  Subscriber s{std::move(socket), uid};
  if (since) {
    for (size_t i = 0; i < backlog_.size(); ++i) {
      if (backlog_[i]["seq"].get<uint64_t>() <= *since || (uid != 0 && backlog_owner_[i] != uid)) continue;
      if (!Send(s, backlog_[i].dump() + "\n")) return;
    }
  }
  subscribers_.push_back(std::move(s));
  auto it = std::prev(subscribers_.end());
  int fd = it->socket.get();
  // The client sends nothing more: readable means it hung up (or sent junk, which ends it too).
  auto added = loop_.Add(fd, EPOLLIN | EPOLLRDHUP, [this, fd](uint32_t) {
    for (auto it2 = subscribers_.begin(); it2 != subscribers_.end(); ++it2) {
      if (it2->socket.get() == fd) return Drop(it2);
    }
  });
  if (!added) subscribers_.erase(it);
}

}  // namespace clonevm::daemon

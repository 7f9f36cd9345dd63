// EventLoop: a small epoll dispatcher. One thread runs it; handlers run on that thread.
//
// Contract: Add/Remove/Run are called from the loop's own thread (or before Run starts).
// Stop() and Post() are safe from any thread.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "base/fd.h"
#include "base/result.h"

namespace clonevm {

class EventLoop {
 public:
  using Handler = std::function<void(uint32_t events)>;

  [[nodiscard]] static Result<std::unique_ptr<EventLoop>> Create();

  // Watches fd for `events` (EPOLLIN, ...). The handler may call Add/Remove.
  [[nodiscard]] Result<void> Add(int fd, uint32_t events, Handler handler);
  void Remove(int fd);

  // Dispatches events until Stop(). Returns an error only if epoll itself fails.
  [[nodiscard]] Result<void> Run();
  // Waits at most timeout_ms (-1: forever) and dispatches what is ready.
  [[nodiscard]] Result<void> RunOnce(int timeout_ms);

  void Stop();
  bool stopped() const { return stopped_; }
  // Runs fn on the loop thread soon. Thread-safe.
  void Post(std::function<void()> fn);

 private:
  EventLoop(Fd epoll, EventFd wake) : epoll_(std::move(epoll)), wake_(std::move(wake)) {}
  void RunPosted();

  Fd epoll_;
  EventFd wake_;
  std::unordered_map<int, std::shared_ptr<Handler>> handlers_;
  std::mutex posted_mu_;
  std::vector<std::function<void()>> posted_;
  std::atomic<bool> stopped_{false};
};

}  // namespace clonevm

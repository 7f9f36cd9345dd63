#include "base/event_loop.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>

#include <cerrno>

namespace clonevm {

Result<std::unique_ptr<EventLoop>> EventLoop::Create() {
  int fd = ::epoll_create1(EPOLL_CLOEXEC);
  if (fd < 0) return FailErrno("epoll_create1");
  EventFd wake = CLONE_TRY(EventFd::Create(EFD_NONBLOCK));
  auto loop = std::unique_ptr<EventLoop>(new EventLoop(Fd(fd), std::move(wake)));
  int wake_fd = loop->wake_.fd();
  EventLoop* self = loop.get();
  CLONE_TRY_VOID(loop->Add(wake_fd, EPOLLIN, [self](uint32_t) {
    self->wake_.Drain();
    self->RunPosted();
  }));
  return loop;
}

Result<void> EventLoop::Add(int fd, uint32_t events, Handler handler) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0)
    return FailErrno("epoll_ctl(ADD)", fmt::format("fd {}", fd));
  handlers_[fd] = std::make_shared<Handler>(std::move(handler));
  return {};
}

void EventLoop::Remove(int fd) {
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  handlers_.erase(fd);
}

Result<void> EventLoop::RunOnce(int timeout_ms) {
  epoll_event events[32];
  int n = ::epoll_wait(epoll_.get(), events, 32, timeout_ms);
  if (n < 0) {
    if (errno == EINTR) return {};
    return FailErrno("epoll_wait");
  }
  for (int i = 0; i < n; ++i) {
    auto it = handlers_.find(events[i].data.fd);
    if (it == handlers_.end()) continue;            // removed by an earlier handler in this batch
    std::shared_ptr<Handler> handler = it->second;  // keeps it alive if it removes itself
    (*handler)(events[i].events);
  }
  return {};
}

Result<void> EventLoop::Run() {
  while (!stopped_) CLONE_TRY_VOID(RunOnce(-1));
  return {};
}

void EventLoop::Stop() {
  stopped_ = true;
  wake_.Signal();
}

void EventLoop::Post(std::function<void()> fn) {
  {
    std::lock_guard lock(posted_mu_);
    posted_.push_back(std::move(fn));
  }
  wake_.Signal();
}

void EventLoop::RunPosted() {
  std::vector<std::function<void()>> batch;
  {
    std::lock_guard lock(posted_mu_);
    batch.swap(posted_);
  }
  for (auto& fn : batch) fn();
}

}  // namespace clonevm

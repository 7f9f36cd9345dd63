#include "devices/virtio/fs.h"

#include <endian.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <utility>

#include "base/log.h"
#include "devices/virtio/json_state.h"

namespace clonevm::virtio {
namespace {

constexpr int kStateVersion = 1;
constexpr size_t kHiprioQueue = 0;
constexpr size_t kRequestQueue = 1;

bool NeedsReply(uint32_t opcode) { return opcode != FUSE_FORGET && opcode != FUSE_BATCH_FORGET; }
// Requests after which a parked lock wait may be grantable at once (a guest lock went away).
bool MayUnlock(uint32_t opcode) {
  return opcode == FUSE_SETLK || opcode == FUSE_SETLKW || opcode == FUSE_FLUSH || opcode == FUSE_RELEASE;
}

}  // namespace

Result<std::unique_ptr<Fs>> Fs::Create(std::string tag, std::unique_ptr<fs::PassthroughFs> server, bool read_only,
                                       std::function<void()> worker_start) {
  if (server == nullptr) return Fail("virtio-fs: no server");
  if (tag.empty() || tag.size() > kMaxTagLength || tag.find('\0') != std::string::npos) {
    return Fail("virtio-fs: tag \"{}\" must be 1..{} bytes without NUL", tag, kMaxTagLength);
  }
  auto completion = CLONE_TRY(EventFd::Create(EFD_NONBLOCK));
  std::unique_ptr<Fs> device(new Fs(std::move(tag), std::move(server), read_only, std::move(completion)));
  device->worker_ = std::thread([d = device.get(), start = std::move(worker_start)] { d->WorkerLoop(start); });
  return device;
}

Fs::Fs(std::string tag, std::unique_ptr<fs::PassthroughFs> server, bool read_only, EventFd completion)
    : tag_(std::move(tag)), read_only_(read_only), server_(std::move(server)), completion_(std::move(completion)) {
  std::memcpy(config_.tag, tag_.data(), tag_.size());
  config_.num_request_queues = htole32(1);
}

Fs::~Fs() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  if (worker_.joinable()) worker_.join();
  for (Work& w : pending_) w.chain->Abandon();
  for (auto& [ticket, w] : parked_) w.chain->Abandon();
  for (Done& d : done_) d.chain->Abandon();
}

void Fs::ReadConfig(uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0);
  if (offset >= sizeof(config_)) return;
  size_t n = std::min<size_t>(data.size(), sizeof(config_) - offset);
  std::memcpy(data.data(), reinterpret_cast<const uint8_t*>(&config_) + offset, n);
}

Result<void> Fs::Activate(const DeviceContext& context) {
  context_.emplace(context);
  paused_ = false;
  if (!std::exchange(restored_, false)) return {};
  // Restored: chains the driver published just before the snapshot, whose notification the old
  // VMM never handled, would otherwise wait for a kick that is not coming.
  CLONE_TRY_VOID(TakeRequests(kHiprioQueue));
  return TakeRequests(kRequestQueue);
}

void Fs::WaitIdle(std::unique_lock<std::mutex>& lock) {
  idle_cv_.wait(lock, [this] { return pending_.empty() && !busy_; });
}

void Fs::Reset() {
  std::vector<Work> dropped;
  {
    std::unique_lock lock(mu_);
    for (Work& w : pending_) dropped.push_back(std::move(w));
    pending_.clear();
    WaitIdle(lock);  // the request in flight may still be writing into guest buffers
    for (auto& [ticket, w] : parked_) dropped.push_back(std::move(w));
    parked_.clear();
    for (Done& d : done_) d.chain->Abandon();
    done_.clear();
  }
  for (Work& w : dropped) w.chain->Abandon();
  completion_.Drain();
  // Ending the session closes the server's fds. Reset runs on a vCPU thread (a guest's status
  // write or a bad chain), whose seccomp role has no close(2): the worker, in the fs role, does it.
  RunOnWorker([this] { server_->EndSession(); });
  context_.reset();
  paused_ = false;
}

Result<void> Fs::ProcessQueue(size_t index) {
  if (!context_ || paused_ || index > kRequestQueue) return {};
  return TakeRequests(index);
}

Result<void> Fs::TakeRequests(size_t index) {
  Queue& queue = context_->queues[index];
  bool queued = false;
  Result<void> result;
  for (;;) {
    auto popped = queue.Pop();
    if (!popped) {
      result = tl::unexpected(std::move(popped.error()));
      break;
    }
    if (!popped->has_value()) break;
    DescriptorChain chain = std::move(**popped);
    const uint64_t readable = chain.readable_bytes();
    auto guest_error = [&](std::string message) -> Result<void> {
      chain.Abandon();
      return Fail("virtio-fs {}: request {} on queue {}: {}", tag_, chain.head(), index, message);
    };
    if (readable < sizeof(fuse_in_header)) {
      result = guest_error(fmt::format("{} readable bytes, less than a FUSE header", readable));
      break;
    }
    if (readable > kMaxRequestBytes) {
      result = guest_error(fmt::format("{} readable bytes, more than {}", readable, kMaxRequestBytes));
      break;
    }
    // Only the header is read here; the worker copies the whole request into its one buffer
    // when it serves it, so a full queue of 1 MiB requests costs no memory while it waits. The
    // guest may change its buffers in between: the server checks every length again.
    fuse_in_header header;
    chain.CopyFromReadable(0, std::span(reinterpret_cast<uint8_t*>(&header), sizeof(header)));
    if (header.len < sizeof(fuse_in_header) || header.len > readable) {
      result = guest_error(fmt::format("header len {} but {} readable bytes", header.len, readable));
      break;
    }
    if (NeedsReply(header.opcode) && chain.writable_bytes() < sizeof(fuse_out_header)) {
      result = guest_error(
          fmt::format("opcode {} with {} writable bytes, no room for a reply", header.opcode, chain.writable_bytes()));
      break;
    }
    {
      std::lock_guard lock(mu_);
      pending_.push_back(Work{index, std::move(chain), header.len});
    }
    queued = true;
  }
  if (queued) work_cv_.notify_one();
  return result;
}

void Fs::WorkerLoop(const std::function<void()>& worker_start) {
  ::pthread_setname_np(::pthread_self(), "clone-fs");
  // A umask of its own (CLONE_FS: umask and cwd become this thread's), set to 0: the server
  // applies the guest's umask itself, and the VMM's must not strip bits the guest asked for.
  // Before worker_start, whose seccomp role has no unshare.
  if (::unshare(CLONE_FS) == 0) {
    ::umask(0);
  } else {
    Log(LogLevel::kWarn, "virtio-fs {}: unshare(CLONE_FS): {}; new files get the VMM's umask too", tag_,
        std::strerror(errno));
  }
  if (worker_start) worker_start();
  std::vector<uint8_t> request;
  std::vector<uint8_t> reply;
  auto next_retry = std::chrono::steady_clock::now();
  for (;;) {
    Work work;
    {
      std::unique_lock lock(mu_);
      auto ready = [this] { return stop_ || !pending_.empty() || task_ != nullptr; };
      if (parked_.empty()) {
        work_cv_.wait(lock, ready);
      } else {
        work_cv_.wait_until(lock, next_retry, ready);
      }
      if (stop_) return;
      if (!parked_.empty() && std::chrono::steady_clock::now() >= next_retry) {
        // Lock waits are retried between requests too, so a busy queue cannot starve them.
        busy_ = true;
        lock.unlock();
        {
          std::lock_guard server_lock(server_mu_);
          if (RetryParkedLocked()) completion_.Signal();
        }
        next_retry = std::chrono::steady_clock::now() + kLockRetry;
        lock.lock();
        busy_ = false;
        idle_cv_.notify_all();
        continue;
      }
      if (pending_.empty() && task_ == nullptr) continue;  // woke for the retry time only
      if (pending_.empty()) {
        const std::function<void()>* task = task_;
        lock.unlock();
        {
          std::lock_guard server_lock(server_mu_);
          (*task)();
        }
        lock.lock();
        task_ = nullptr;
        idle_cv_.notify_all();
        continue;
      }
      work = std::move(pending_.front());
      pending_.pop_front();
      busy_ = true;
    }
    if (parked_.empty()) next_retry = std::chrono::steady_clock::now() + kLockRetry;
    Serve(std::move(work), request, reply);
  }
}

void Fs::Serve(Work work, std::vector<uint8_t>& request, std::vector<uint8_t>& reply) {
  request.resize(work.length);
  work.chain->CopyFromReadable(0, request);  // once: the server parses this copy only
  const uint64_t writable = std::min(work.chain->writable_bytes(), kMaxReplyBytes);
  reply.resize(writable);
  fuse_in_header header{};
  std::memcpy(&header, request.data(), sizeof(header));
  const uint64_t ticket = next_ticket_++;
  std::lock_guard server_lock(server_mu_);
  const size_t length = server_->Handle(request, reply, ticket);
  bool parked;
  {
    std::lock_guard lock(mu_);
    if (length == fs::PassthroughFs::kParked) {
      parked_.emplace(ticket, std::move(work));
    } else {
      if (length > 0) work.chain->CopyToWritable(0, std::span(reply).first(length));
      done_.push_back(Done{work.queue, std::move(work.chain), static_cast<uint32_t>(length)});
    }
    parked = !parked_.empty();
  }
  // Still busy_: a reset waits for this before it takes the parked chains.
  const bool answered = parked && MayUnlock(header.opcode) && RetryParkedLocked();
  {
    std::lock_guard lock(mu_);
    busy_ = false;
  }
  idle_cv_.notify_all();
  // One signal for this reply and the waits it freed (a parked one: when answered).
  if (length != fs::PassthroughFs::kParked || answered) completion_.Signal();
}

bool Fs::RetryParkedLocked() {
  bool answered = false;
  server_->RetryParked([&](uint64_t ticket, std::span<const uint8_t> out) {
    std::lock_guard lock(mu_);
    auto it = parked_.find(ticket);
    if (it == parked_.end()) return;  // abandoned by a reset
    Work work = std::move(it->second);
    parked_.erase(it);
    work.chain->CopyToWritable(0, out);
    done_.push_back(Done{work.queue, std::move(work.chain), static_cast<uint32_t>(out.size())});
    answered = true;
  });
  return answered;
}

void Fs::CompleteDone() {
  std::vector<Done> done;
  {
    std::lock_guard lock(mu_);
    done.swap(done_);
  }
  if (!context_) {
    for (Done& d : done) d.chain->Abandon();
    return;
  }
  bool used[2] = {false, false};
  for (Done& d : done) {
    context_->queues[d.queue].AddUsed(std::move(*d.chain), d.written);
    used[d.queue] = true;
  }
  bool signal = false;
  for (size_t q = 0; q < 2; ++q) {
    if (used[q] && context_->queues[q].NeedsNotification()) signal = true;
  }
  if (signal) context_->interrupt.SignalUsed();
}

std::vector<WatchedFd> Fs::watched_fds() const { return {WatchedFd{.fd = completion_.fd(), .events = EPOLLIN}}; }

Result<void> Fs::HandleFdEvent(size_t /*index*/, uint32_t /*events*/) {
  completion_.Drain();
  CompleteDone();
  return {};
}

Result<void> Fs::Pause() {
  paused_ = true;
  {
    std::unique_lock lock(mu_);
    WaitIdle(lock);
  }
  // A lock wait cannot be carried into a snapshot (its restored server holds no locks).
  RunOnWorker([this] {  // the worker holds server_mu_ for it
    server_->AnswerParked(ENOLCK);
    (void)RetryParkedLocked();  // completed below, signal or not
  });
  completion_.Drain();
  CompleteDone();
  return {};
}

Result<void> Fs::Resume() {
  paused_ = false;
  if (!context_) return {};
  // Chains the driver made available while paused.
  CLONE_TRY_VOID(TakeRequests(kHiprioQueue));
  return TakeRequests(kRequestQueue);
}

void Fs::RunOnWorker(const std::function<void()>& fn) const {
  std::unique_lock lock(mu_);
  if (stop_ || !worker_.joinable()) {  // tearing down: no worker to ask
    lock.unlock();
    std::lock_guard server_lock(server_mu_);
    fn();
    return;
  }
  idle_cv_.wait(lock, [this] { return task_ == nullptr; });
  task_ = &fn;
  work_cv_.notify_one();
  idle_cv_.wait(lock, [this, &fn] { return task_ != &fn; });
}

size_t Fs::requests_in_flight() const {
  std::lock_guard lock(mu_);
  return pending_.size() + (busy_ ? 1 : 0) + done_.size() + parked_.size();
}

size_t Fs::parked_requests() const {
  std::lock_guard lock(mu_);
  return parked_.size();
}

nlohmann::json Fs::SaveState() const {
  nlohmann::json server;
  RunOnWorker([&] { server = server_->SaveState(); });  // the worker holds server_mu_
  return {{"version", kStateVersion}, {"tag", tag_}, {"read_only", read_only_}, {"server", std::move(server)}};
}

Result<void> Fs::RestoreState(const nlohmann::json& state) {
  CLONE_TRY(StateVersion(state, kStateVersion, "virtio-fs"));
  return ParseJsonState("virtio-fs", [&]() -> Result<void> {
    auto tag = state.find("tag");
    if (tag == state.end() || !tag->is_string()) return Fail("restoring virtio-fs: missing \"tag\"");
    if (tag->get<std::string>() != tag_) {
      return Fail("restoring virtio-fs: tag \"{}\" differs from the snapshot's \"{}\"", tag_, tag->get<std::string>());
    }
    auto server = state.find("server");
    if (server == state.end()) return Fail("restoring virtio-fs: missing \"server\"");
    std::lock_guard server_lock(server_mu_);
    CLONE_TRY_VOID(server_->RestoreState(*server));
    restored_ = true;
    if (server_->stale_entries() > 0) {
      Log(LogLevel::kWarn, "virtio-fs {}: {} inodes/handles of the snapshot no longer exist under {} (stale)", tag_,
          server_->stale_entries(), server_->root());
    }
    return {};
  });
}

}  // namespace clonevm::virtio

// ConsoleHub: fans the guest's serial output out to every place that wants it, and funnels input
// from console-socket clients back into the guest.
//
// Outputs: the local terminal (foreground `clone run`), a log file (detached VMs), a 64 KiB replay
// buffer (a new `clone attach` client first gets the recent output, so it sees the prompt), and
// every connected console-socket client. Output arrives on vCPU threads (the serial device's TX);
// client writes are non-blocking and a client that cannot keep up loses output rather than stall
// the guest (counted per client; the console is a best-effort stream, like a real serial line).
//
// Input: bytes read from any client go to the guest through `input` (Vm::EnqueueConsoleInput).
// The socket carries raw bytes; detaching (Ctrl-Q) is the client's business.
//
// Threads: Output() from any thread; Listen() and the socket handlers on the event loop thread.
// The loop passed to Listen() must outlive the hub.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <span>
#include <string>

#include "base/event_loop.h"
#include "base/fd.h"
#include "base/result.h"

namespace clonevm {

class ConsoleHub {
 public:
  static constexpr size_t kReplayBytes = 64 * 1024;

  // `terminal_fd`: where output goes in the foreground (-1: nowhere); `log`: an open file or empty.
  ConsoleHub(int terminal_fd, Fd log) : terminal_fd_(terminal_fd), log_(std::move(log)) {}
  ~ConsoleHub();

  void Output(std::span<const uint8_t> bytes);

  // Serves the console socket at `path` (mode 0600) on `loop`; `input` receives client input.
  [[nodiscard]] Result<void> Listen(EventLoop& loop, const std::string& path,
                                    std::function<void(std::span<const uint8_t>)> input);

  size_t client_count() const;

 private:
  void Accept();
  void ReadClient(int fd);
  void DropClient(int fd);

  const int terminal_fd_;
  const Fd log_;
  EventLoop* loop_ = nullptr;
  Fd listener_;
  std::string path_;
  std::function<void(std::span<const uint8_t>)> input_;

  mutable std::mutex mu_;
  std::deque<uint8_t> replay_;
  std::map<int, Fd> clients_;  // fd -> connection
};

}  // namespace clonevm

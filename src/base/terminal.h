// RawTerminal: puts a TTY in raw mode for the guest console and restores the saved settings when
// destroyed (every exit path, including errors, unwinds through it).
#pragma once

#include <termios.h>

namespace clonevm {

class RawTerminal {
 public:
  // Does nothing when fd is not a terminal.
  explicit RawTerminal(int fd);
  ~RawTerminal();
  RawTerminal(const RawTerminal&) = delete;
  RawTerminal& operator=(const RawTerminal&) = delete;
  bool active() const { return active_; }

 private:
  int fd_;
  bool active_ = false;
  termios saved_{};
};

}  // namespace clonevm

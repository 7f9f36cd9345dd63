// Result<T>: the return type of every fallible host operation.
//
// Host failures (syscalls, ioctls, files) are values, not exceptions: an Error carries a
// human-readable message that names the operation, the errno text and the context, e.g.
//   "KVM_SET_USER_MEMORY_REGION: Invalid argument (slot 0, 0x0+512MiB)".
// Guest faults never become Errors that stop the VMM; they break one device (see devices/).
// Programmer errors use CLONE_CHECK and abort.
#pragma once

#include <fmt/format.h>

#include <cerrno>
#include <string>
#include <tl/expected.hpp>
#include <utility>

namespace clonevm {

class Error {
 public:
  Error() = default;
  explicit Error(std::string message, int err = 0) : message_(std::move(message)), errno_(err) {}

  // An error for a failed system call: "<what>: <strerror(err)>[ (<context>)]".
  static Error FromErrno(std::string_view what, int err, std::string_view context = {});

  const std::string& message() const { return message_; }
  int error_number() const { return errno_; }

  // Prefixes the message with outer context: "loading kernel: <message>".
  Error Wrap(std::string_view outer) const& { return Error(fmt::format("{}: {}", outer, message_), errno_); }

 private:
  std::string message_;
  int errno_ = 0;
};

template <typename T = void>
using Result = tl::expected<T, Error>;

inline tl::unexpected<Error> Fail(Error e) { return tl::unexpected<Error>(std::move(e)); }

template <typename... Args>
tl::unexpected<Error> Fail(fmt::format_string<Args...> f, Args&&... args) {
  return tl::unexpected<Error>(Error(fmt::format(f, std::forward<Args>(args)...)));
}

// Fails with the current errno: FailErrno("open", path).
inline tl::unexpected<Error> FailErrno(std::string_view what, std::string_view context = {}) {
  return tl::unexpected<Error>(Error::FromErrno(what, errno, context));
}

}  // namespace clonevm

// CLONE_TRY(expr): evaluates a Result; on failure returns its Error from the enclosing function,
// otherwise yields the value (GNU statement expression, supported by GCC and Clang).
#define CLONE_TRY(expr)                                                         \
  ({                                                                            \
    auto _clone_try_result = (expr);                                            \
    if (!_clone_try_result) return ::tl::unexpected(_clone_try_result.error()); \
    std::move(_clone_try_result).value();                                       \
  })

// CLONE_TRY_VOID(expr): the same for Result<void>.
#define CLONE_TRY_VOID(expr)                                                    \
  do {                                                                          \
    auto _clone_try_result = (expr);                                            \
    if (!_clone_try_result) return ::tl::unexpected(_clone_try_result.error()); \
  } while (0)

#include <cstring>

#include "base/result.h"

namespace clonevm {

Error Error::FromErrno(std::string_view what, int err, std::string_view context) {
  if (context.empty()) return Error(fmt::format("{}: {}", what, std::strerror(err)), err);
  return Error(fmt::format("{}: {} ({})", what, std::strerror(err), context), err);
}

}  // namespace clonevm

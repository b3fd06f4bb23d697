#include "common/status.h"

#include <cstring>

namespace dipc {

std::string Status::str() const { return code_ == 0 ? std::string("ok") : std::string(strerrorname_np(code_) ?: "E?") + " (" + strerror(code_) + ")"; }

}  // namespace dipc

// The daemon's CPU placement and scheduling ([cluster] sched and bind): applied once at start, before the loop runs.
// dipcd is one thread, so the settings of the process are those of its loop.
#pragma once

#include <string>

#include "common/config.h"
#include "common/status.h"

namespace dipc {

// Applies cfg.sched and cfg.bind to the calling process. On failure returns the errno and a message saying what is
// missing (raising the priority needs CAP_SYS_NICE; binding needs an existing core or PU).
Status apply_sched(const Config& cfg, std::string* error);

}  // namespace dipc

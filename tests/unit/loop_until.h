// Unit tests: drive an EventLoop until a condition holds, bounded, so no test waits forever or sleeps to synchronise.
#pragma once

#include <chrono>

#include "common/event_loop.h"

namespace dipc::test {

// Runs `loop` (10 ms per turn at most) until `done()` holds or `bound` passes; returns done().
template <typename F>
bool run_loop_until(EventLoop& loop, F done, std::chrono::seconds bound = std::chrono::seconds(10)) {
  for (auto end = std::chrono::steady_clock::now() + bound; !done() && std::chrono::steady_clock::now() < end;)
    loop.run_once(10);
  return done();
}

}  // namespace dipc::test

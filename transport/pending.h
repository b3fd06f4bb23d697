// The back-pressure retry queue every provider keeps per peer (transport.h, BACK-PRESSURE), as an I/O-free piece in
// the style of transport/conn.h: no event loop, no clock. The provider decides when there is room and schedules the
// run on its loop; this decides what runs, in which order, and what a new operation must do meanwhile.
//
//   pending_add(peer, fn)  -> queue.add(fn); then, if the provider has room and queue.want_run(): defer queue.run()
//   admit(peer, ...)       -> if (queue.blocks_new()) return kNoResources   (issue order is kept behind retries)
//   room again / link lost -> the same "if room and want_run(): defer run()"
#pragma once

#include <deque>
#include <utility>

#include "transport/transport.h"

namespace dipc::transport {

class PendingQueue {
 public:
  void add(PendingFn fn) { q_.push_back(std::move(fn)); }
  bool empty() const { return q_.empty(); }
  size_t size() const { return q_.size(); }

  // True when a new operation to the peer must be refused with kNoResources: retries are waiting and the caller is
  // not one of them (a retry runs inside run(), and is let through).
  bool blocks_new() const { return !q_.empty() && !running_; }

  // True once per wake-up when there is something to run: the provider then schedules run() (deferred, so no
  // callback runs inside the call that freed the room). False while a run is already scheduled.
  bool want_run() {
    if (q_.empty() || scheduled_) return false;
    scheduled_ = true;
    return true;
  }

  // Runs the retries in FIFO order. One refused again (retryable) stays first in line and ends the run; the
  // provider calls want_run() again when room frees up. Retries added while running run in the same pass.
  void run() {
    scheduled_ = false;
    while (!q_.empty()) {
      PendingFn fn = std::move(q_.front());
      q_.pop_front();
      running_ = true;
      Status s = fn();
      running_ = false;
      if (s.retryable()) {
        q_.push_front(std::move(fn));
        return;
      }
    }
  }

 private:
  std::deque<PendingFn> q_;
  bool running_ = false;    // a retry is running: blocks_new() lets its operation through
  bool scheduled_ = false;  // want_run() said yes and run() has not started yet
};

}  // namespace dipc::transport

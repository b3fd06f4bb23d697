// A single-threaded epoll event loop with timers and cross-thread task posting. The daemon runs everything (client
// sockets, transport progress, object logic) on one loop thread, so protocol state needs no locks and a hand-off
// costs no thread switch. Callbacks run on the loop thread only.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "common/unique_fd.h"
struct epoll_event;

namespace dipc {

class EventLoop {
 public:
  using FdCallback = std::function<void(uint32_t events)>;
  using Task = std::function<void()>;
  using TimerId = uint64_t;
  // A provider's completion poller (verbs: ibv_poll_cq): returns how many completions it handled.
  using Poller = std::function<int()>;
  using PollerId = uint64_t;

  EventLoop();
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Registers fd for the epoll events (EPOLLIN, EPOLLOUT, ...). The callback may remove or modify any fd.
  // Errors (errno of epoll_ctl: ENOMEM, ENOSPC, EEXIST...) are returned, never thrown.
  [[nodiscard]] Status add(int fd, uint32_t events, FdCallback cb);
  void modify(int fd, uint32_t events);
  void remove(int fd);

  // Runs `fn` once after `delay_ms` milliseconds / `delay_us` microseconds (monotonic clock). Short delays are kept
  // to the microsecond: the loop sleeps with epoll_pwait2, or, where the kernel lacks it (Linux < 5.11, qemu-user
  // 7.2: ENOSYS, detected once per process), with epoll_wait and a timerfd armed to the microsecond deadline.
  TimerId add_timer(int64_t delay_ms, Task fn) { return add_timer_us(delay_ms * 1000, std::move(fn)); }
  TimerId add_timer_us(int64_t delay_us, Task fn);
  void cancel_timer(TimerId id);

  // Thread-safe: runs `fn` on the loop thread soon.
  void post(Task fn);
  // Loop thread only: runs `fn` at the end of the current iteration, after every ready fd was served (the next
  // iteration when called outside one). Transports use it to send everything an iteration produced in one write.
  void defer(Task fn);

  // Runs until stop(); stop() is thread-safe.
  void run();
  // One iteration: waits at most timeout_ms (-1: until something happens).
  void run_once(int timeout_ms);
  void stop();
  bool stopped() const { return stop_; }
  // While the loop polls (busy_poll_us, poll_until_us) it calls every poller instead of only spinning on epoll, and
  // stops polling as soon as one handled something. Providers with completion queues register one (verbs polls its
  // CQ); their completion channel fd stays on epoll for when the loop sleeps. `arm`, if given, runs every time
  // before the loop sleeps: a provider that lets its wake-up event lapse while it is polled (verbs under
  // busy_poll_us: no ibv_req_notify_cq per completion) re-enables it there and polls once more, returning how many
  // completions it handled (> 0: the loop does not sleep this time).
  PollerId add_poller(Poller p, Poller arm = {});
  void remove_poller(PollerId id);
  // Before blocking, poll without sleeping for this long: trades a little CPU for wake-up latency (0: off).
  void set_busy_poll_us(int us) { busy_poll_us_ = us; }
  int busy_poll_us() const { return busy_poll_us_; }
  // Poll (instead of sleeping) until this CLOCK_MONOTONIC microsecond at the latest, once: an answer is expected.
  void poll_until_us(int64_t deadline_us) { poll_until_us_ = std::max(poll_until_us_, deadline_us); }
  void stop_polling() { poll_until_us_ = 0; }

  static int64_t now_ms();
  static int64_t now_us();

  // Whether loops sleep with epoll_pwait2 (false after it answered ENOSYS once in this process).
  static bool has_epoll_pwait2();
  // Tests: make every loop of this process take the epoll_wait + timerfd path, as on a kernel without epoll_pwait2.
  static void force_epoll_wait_fallback();

 private:
  // Runs every hook of `which` (the pollers, or the arm hooks before a sleep) in id order; returns the work found.
  int run_hooks(std::map<PollerId, Poller>& which);
  int wait(::epoll_event* evs, int max, int64_t timeout_us);
  int wait_fallback(::epoll_event* evs, int max, int64_t timeout_us);

  UniqueFd epfd_;
  UniqueFd wakefd_;
  UniqueFd timerfd_;  // the epoll_wait fallback's microsecond timer, made on first use
  bool timerfd_armed_ = false;
  std::map<PollerId, Poller> pollers_;
  std::map<PollerId, Poller> arms_;  // the pollers' `arm` hooks, by the same id
  PollerId next_poller_ = 1;
  bool stop_ = false;
  int busy_poll_us_ = 0;
  int64_t poll_until_us_ = 0;
  std::unordered_map<int, std::shared_ptr<FdCallback>> fds_;
  TimerId next_timer_ = 1;
  std::multimap<int64_t, std::pair<TimerId, Task>> timers_;  // by deadline in microseconds
  std::unordered_map<TimerId, int64_t> timer_deadline_;
  std::mutex mu_;
  std::vector<Task> posted_;
  std::vector<Task> deferred_;
  bool in_iteration_ = false;
};

}  // namespace dipc

#include "common/event_loop.h"

#include "common/spare_cpu.h"

#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <new>
#include <stdexcept>
#include <system_error>

#include "common/log.h"

namespace dipc {

namespace {
// Whether epoll_pwait2 works in this process: it is a system call of Linux 5.11, so older kernels and qemu-user 7.2
// answer ENOSYS. Set once, the first time a loop sleeps; every loop after that goes straight to its fallback.
std::atomic<bool> g_no_pwait2{false};

timespec to_timespec(int64_t us) {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(us / 1000000);
  ts.tv_nsec = static_cast<long>(us % 1000000 * 1000);
  return ts;
}
}  // namespace

bool EventLoop::has_epoll_pwait2() { return !g_no_pwait2.load(std::memory_order_relaxed); }
void EventLoop::force_epoll_wait_fallback() { g_no_pwait2.store(true, std::memory_order_relaxed); }

// Setup only: a loop that cannot be built is fatal to its owner, so this one throws.
EventLoop::EventLoop() : epfd_(epoll_create1(EPOLL_CLOEXEC)), wakefd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  if (!epfd_ || !wakefd_) throw std::system_error(errno, std::generic_category(), "epoll/eventfd");
  Status s = add(wakefd_.get(), EPOLLIN, [this](uint32_t) {
    uint64_t v;
    while (read(wakefd_.get(), &v, sizeof v) > 0) {
    }
  });
  if (!s) throw std::system_error(s.code(), std::generic_category(), "epoll_ctl add");
}

EventLoop::~EventLoop() = default;

Status EventLoop::add(int fd, uint32_t events, FdCallback cb) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (epoll_ctl(epfd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return Status::err(errno);
  fds_[fd] = std::make_shared<FdCallback>(std::move(cb));
  return Status::ok();
}

EventLoop::PollerId EventLoop::add_poller(Poller p, Poller arm) {
  PollerId id = next_poller_++;
  pollers_.emplace(id, std::move(p));
  if (arm) arms_.emplace(id, std::move(arm));
  return id;
}

void EventLoop::remove_poller(PollerId id) {
  pollers_.erase(id);
  arms_.erase(id);
}

int EventLoop::run_hooks(std::map<PollerId, Poller>& which) {
  int n = 0;
  for (PollerId id = 1; id < next_poller_; ++id) {  // by id: a poller may remove itself or another
    auto it = which.find(id);
    if (it == which.end()) continue;
    Poller p = it->second;
    n += p();
  }
  return n;
}

void EventLoop::modify(int fd, uint32_t events) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  epoll_ctl(epfd_.get(), EPOLL_CTL_MOD, fd, &ev);
}

void EventLoop::remove(int fd) {
  epoll_ctl(epfd_.get(), EPOLL_CTL_DEL, fd, nullptr);
  fds_.erase(fd);
}

int64_t EventLoop::now_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

int64_t EventLoop::now_us() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

EventLoop::TimerId EventLoop::add_timer_us(int64_t delay_us, Task fn) {
  TimerId id = next_timer_++;
  int64_t deadline = now_us() + (delay_us < 0 ? 0 : delay_us);
  timers_.emplace(deadline, std::make_pair(id, std::move(fn)));
  timer_deadline_[id] = deadline;
  return id;
}

void EventLoop::cancel_timer(TimerId id) {
  auto it = timer_deadline_.find(id);
  if (it == timer_deadline_.end()) return;
  auto range = timers_.equal_range(it->second);
  for (auto t = range.first; t != range.second; ++t) {
    if (t->second.first == id) {
      timers_.erase(t);
      break;
    }
  }
  timer_deadline_.erase(it);
}

void EventLoop::post(Task fn) {
  {
    std::lock_guard<std::mutex> g(mu_);
    posted_.push_back(std::move(fn));
  }
  uint64_t one = 1;
  ssize_t r = write(wakefd_.get(), &one, sizeof one);
  (void)r;
}

void EventLoop::defer(Task fn) {
  deferred_.push_back(std::move(fn));
  if (!in_iteration_ && deferred_.size() == 1) {
    uint64_t one = 1;
    ssize_t r = write(wakefd_.get(), &one, sizeof one);
    (void)r;
  }
}

void EventLoop::stop() {
  stop_ = true;
  uint64_t one = 1;
  ssize_t r = write(wakefd_.get(), &one, sizeof one);
  (void)r;
}

// Sleeps until an fd is ready or timeout_us passed (-1: no timeout). Returns the number of ready events (0 on a
// timeout or an interrupting signal).
int EventLoop::wait(epoll_event* evs, int max, int64_t timeout_us) {
  if (!g_no_pwait2.load(std::memory_order_relaxed)) {
    timespec ts = to_timespec(timeout_us);
    int n = epoll_pwait2(epfd_.get(), evs, max, timeout_us < 0 ? nullptr : &ts, nullptr);
    if (n >= 0) return n;
    if (errno != ENOSYS) return 0;  // EINTR: the caller's loop comes back
    if (!g_no_pwait2.exchange(true))
      DIPC_LOG_INFO("epoll_pwait2 is not available (Linux < 5.11 or an emulator): microsecond timers use a timerfd");
  }
  return wait_fallback(evs, max, timeout_us);
}

// epoll_wait counts in milliseconds; a deadline that is not a whole number of them is kept by a timerfd armed to the
// microsecond, which wakes epoll_wait then.
int EventLoop::wait_fallback(epoll_event* evs, int max, int64_t timeout_us) {
  int ms = -1;
  bool need_timer = timeout_us > 0 && timeout_us % 1000 != 0;
  if (timeout_us >= 0 && !need_timer) ms = static_cast<int>(std::min<int64_t>(timeout_us / 1000, 1 << 30));
  if (need_timer && !timerfd_) {
    timerfd_.reset(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
    if (!timerfd_) throw std::system_error(errno, std::generic_category(), "timerfd_create");
    Status s = add(timerfd_.get(), EPOLLIN, [this](uint32_t) {
      uint64_t expirations;
      while (read(timerfd_.get(), &expirations, sizeof expirations) > 0) {
      }
    });
    if (!s) throw std::system_error(s.code(), std::generic_category(), "epoll_ctl add timerfd");
  }
  if (need_timer) {
    itimerspec its{};
    its.it_value = to_timespec(timeout_us);
    timerfd_settime(timerfd_.get(), 0, &its, nullptr);
    timerfd_armed_ = true;
  } else if (timerfd_armed_) {
    itimerspec off{};
    timerfd_settime(timerfd_.get(), 0, &off, nullptr);
    timerfd_armed_ = false;
  }
  int n = epoll_wait(epfd_.get(), evs, max, ms);
  return n < 0 ? 0 : n;
}

void EventLoop::run() {
  while (!stop_) run_once(-1);
}

void EventLoop::run_once(int timeout_ms) {
  int64_t now = now_us();
  int64_t timeout_us = timeout_ms < 0 ? -1 : int64_t{timeout_ms} * 1000;
  if (!timers_.empty()) {
    int64_t until = timers_.begin()->first - now;
    if (until < 0) until = 0;
    if (timeout_us < 0 || until < timeout_us) timeout_us = until;
  }
  if (!deferred_.empty()) timeout_us = 0;
  epoll_event evs[64];
  int n = 0;
  int64_t poll_end = std::max(busy_poll_us_ > 0 ? now + busy_poll_us_ : 0, poll_until_us_);
  if (timeout_us >= 0) poll_end = std::min(poll_end, now + timeout_us);
  bool polled = false;  // a poller handled completions: no sleeping this iteration
  // The answer poll (poll_until_us_) runs only while another CPU is idle: with every CPU busy, each yield gives the
  // CPU away for a time slice and the poll costs more than the wake-up it saves (docs/PERFORMANCE.md, "Wake-ups").
  // busy_poll_us is the operator's explicit choice of CPU for latency (and drives the providers' pollers): kept.
  const bool busy = busy_poll_us_ > 0;
  if (poll_end > now && timeout_us != 0 && (busy || spare_cpu())) {
    unsigned spins = 0;
    do {
      n = epoll_wait(epfd_.get(), evs, 64, 0);
      if (n != 0) break;
      if (!pollers_.empty() && run_hooks(pollers_) > 0) {
        polled = true;
        break;
      }
      sched_yield();  // poll politely: whoever must run to produce the answer may need this CPU
    } while (now_us() < poll_end && (busy || ++spins % 16 != 0 || spare_cpu()));
  }
  if (poll_until_us_ && now_us() >= poll_until_us_) poll_until_us_ = 0;
  // About to sleep: providers re-enable the wake-ups they let lapse while polled (and may find work doing so).
  if (n == 0 && !polled && timeout_us != 0 && !arms_.empty() && run_hooks(arms_) > 0) polled = true;
  if (n == 0 && !polled) n = wait(evs, 64, timeout_us);
  in_iteration_ = true;
  for (int i = 0; i < n; ++i) {
    auto it = fds_.find(evs[i].data.fd);
    if (it == fds_.end()) continue;
    auto cb = it->second;  // keep alive while it runs even if it removes itself
    // An allocation that fails while serving one event loses that event (its request gets no answer or ENOMEM
    // where the server catches it first), never the daemon.
    try {
      (*cb)(evs[i].events);
    } catch (const std::bad_alloc&) {
      DIPC_LOG_ERROR("out of memory while serving descriptor {}: that event is dropped", int{evs[i].data.fd});
    }
  }
  std::vector<Task> tasks;
  {
    std::lock_guard<std::mutex> g(mu_);
    tasks.swap(posted_);
  }
  for (auto& t : tasks) t();
  now = now_us();
  while (!timers_.empty() && timers_.begin()->first <= now) {
    auto node = timers_.extract(timers_.begin());
    timer_deadline_.erase(node.mapped().first);
    node.mapped().second();
  }
  while (!deferred_.empty()) {
    std::vector<Task> d;
    d.swap(deferred_);
    for (auto& t : d) t();
  }
  in_iteration_ = false;
}

}  // namespace dipc

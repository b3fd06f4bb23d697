#include "daemon/sched.h"

#include <hwloc.h>
#include <sched.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "common/log.h"

namespace dipc {

namespace {

constexpr int kAutoFifoPriority = 10;  // above every normal task, below the kernel's own threads (50) and watchdogs

Status fail(int err, std::string* error, const std::string& what) {
  if (error) *error = what + ": " + strerror(err);
  return Status::err(err);
}

Status apply_bind(const BindSpec& b, std::string* error) {
  if (b.kind == BindSpec::kNone) return Status::ok();
  hwloc_topology_t topo = nullptr;
  if (hwloc_topology_init(&topo) != 0) return fail(errno, error, "hwloc_topology_init");
  std::unique_ptr<hwloc_topology, decltype(&hwloc_topology_destroy)> guard(topo, hwloc_topology_destroy);
  if (hwloc_topology_load(topo) != 0) return fail(errno, error, "hwloc_topology_load");
  hwloc_obj_type_t type = b.kind == BindSpec::kCore ? HWLOC_OBJ_CORE : HWLOC_OBJ_PU;
  const char* name = b.kind == BindSpec::kCore ? "core" : "pu";
  hwloc_obj_t obj = hwloc_get_obj_by_type(topo, type, b.index);
  if (!obj) {
    int n = hwloc_get_nbobjs_by_type(topo, type);
    if (error) *error = "bind = \"" + std::string(name) + ":" + std::to_string(b.index) + "\": this machine has " +
                        std::to_string(n) + " " + name + "(s), numbered from 0";
    return Status::err(EINVAL);
  }
  if (hwloc_set_cpubind(topo, obj->cpuset, HWLOC_CPUBIND_PROCESS) != 0)
    return fail(errno, error, std::string("hwloc_set_cpubind to ") + name + " " + std::to_string(b.index));
  return Status::ok();
}

}  // namespace

Status apply_sched(const Config& cfg, std::string* error) {
  SchedSpec s;
  BindSpec b;
  if (!parse_sched(cfg.sched, &s) || !parse_bind(cfg.bind, &b)) {  // parse_config validated both already
    if (error) *error = "invalid sched or bind";
    return Status::err(EINVAL);
  }
  switch (s.kind) {
    case SchedSpec::kAuto: {
      // Real-time priority: the loop preempts busy programs at once when a message arrives (docs/PERFORMANCE.md,
      // "Spinning processes"). Without CAP_SYS_NICE (or RLIMIT_RTPRIO) the daemon keeps the normal policy.
      sched_param p{};
      p.sched_priority = kAutoFifoPriority;
      if (sched_setscheduler(0, SCHED_FIFO, &p) == 0)
        DIPC_LOG_INFO("sched auto: SCHED_FIFO priority {}", kAutoFifoPriority);
      else
        DIPC_LOG_INFO("sched auto: SCHED_FIFO not allowed ({}), normal scheduling", strerror(errno));
      break;
    }
    case SchedSpec::kOther:
      break;
    case SchedSpec::kNice:
      if (setpriority(PRIO_PROCESS, 0, s.value) != 0)
        return fail(errno, error, "sched = \"" + cfg.sched + "\": setpriority (a negative nice needs CAP_SYS_NICE)");
      break;
    case SchedSpec::kFifo:
    case SchedSpec::kRr: {
      sched_param p{};
      p.sched_priority = s.value;
      if (sched_setscheduler(0, s.kind == SchedSpec::kFifo ? SCHED_FIFO : SCHED_RR, &p) != 0)
        return fail(errno, error, "sched = \"" + cfg.sched + "\": sched_setscheduler (needs CAP_SYS_NICE)");
      break;
    }
  }
  return apply_bind(b, error);
}

}  // namespace dipc

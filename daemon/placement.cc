#include "daemon/placement.h"

#include <hwloc.h>
#include <hwloc/openfabrics-verbs.h>

#include <cstdlib>
#include <memory>

#include "common/log.h"

namespace dipc::daemon {

namespace {
struct TopologyDel {
  void operator()(hwloc_topology* t) const { hwloc_topology_destroy(t); }
};
struct BitmapDel {
  void operator()(hwloc_bitmap_s* b) const { hwloc_bitmap_free(b); }
};
using TopologyPtr = std::unique_ptr<hwloc_topology, TopologyDel>;
using BitmapPtr = std::unique_ptr<hwloc_bitmap_s, BitmapDel>;

std::string list(hwloc_const_bitmap_t b) {
  char* s = nullptr;
  hwloc_bitmap_list_asprintf(&s, b);
  std::string r = s ? s : "?";
  free(s);
  return r;
}
}  // namespace

std::string place_near_rdma_device(const std::string& ibdev) {
  hwloc_topology_t raw = nullptr;
  if (hwloc_topology_init(&raw) != 0) return "no placement (hwloc unavailable)";
  TopologyPtr topo(raw);
  hwloc_topology_set_io_types_filter(raw, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
  if (hwloc_topology_load(raw) != 0) return "no placement (hwloc cannot read the topology)";
  int numa = hwloc_get_nbobjs_by_type(raw, HWLOC_OBJ_NUMANODE);
  if (numa <= 1) return "one NUMA node: no placement";
  hwloc_obj_t osdev = hwloc_ibv_get_device_osdev_by_name(raw, ibdev.c_str());
  hwloc_obj_t near = osdev ? hwloc_get_non_io_ancestor_obj(raw, osdev) : nullptr;
  if (!near || !near->cpuset || hwloc_bitmap_isequal(near->cpuset, hwloc_topology_get_topology_cpuset(raw)))
    return "no placement (" + ibdev + " is not local to one NUMA node)";
  BitmapPtr nodes(hwloc_bitmap_alloc());
  hwloc_cpuset_to_nodeset(raw, near->cpuset, nodes.get());
  std::string where = "numa node " + list(nodes.get()) + " (cpus " + list(near->cpuset) + ")";
  if (hwloc_set_cpubind(raw, near->cpuset, HWLOC_CPUBIND_THREAD) != 0)
    DIPC_LOG_WARN("cannot bind the loop thread near {}: {}", ibdev, strerror(errno));
  if (hwloc_set_membind(raw, nodes.get(), HWLOC_MEMBIND_BIND, HWLOC_MEMBIND_PROCESS | HWLOC_MEMBIND_BYNODESET) != 0)
    DIPC_LOG_WARN("cannot bind memory near {}: {}", ibdev, strerror(errno));
  DIPC_LOG_INFO("placed near {}: {}", ibdev, where);
  return where;
}

}  // namespace dipc::daemon

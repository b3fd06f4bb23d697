// NUMA placement (hwloc): dipcd's event loop thread and the memory it touches (DSM frames) go to the NUMA node of
// the RDMA device it uses, so completions, copies and DMA stay node-local. On a machine with one NUMA node, or when
// the device's locality is unknown, nothing is changed.
#pragma once

#include <string>

namespace dipc::daemon {

// Binds the calling thread (the loop thread) and the process's future memory to the NUMA node(s) local to RDMA
// device `ibdev` ("mlx5_0", "rxe0"). Returns what `dipc status` shows: "numa node 1 (cpus 16-31)", or why nothing
// was done ("one NUMA node: no placement").
std::string place_near_rdma_device(const std::string& ibdev);

}  // namespace dipc::daemon

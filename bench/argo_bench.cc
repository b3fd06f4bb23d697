// The kernels of bench/run_shm.sh (read miss, write miss, sequential first touch, Jacobi), written against Argo DSM
// (github.com/etascale/argodsm, MPI backend) so that bench/argo.sh can run both DSMs over the same dipc-sim network
// path. Built by bench/argo.sh with mpic++ against an Argo build; not part of the CMake build (Argo is optional).
//
//   mpiexec -n 2 argo_bench readmiss  [ITERS]      rank 0 stores a word, barrier, rank 1 loads it: the load's time
//   mpiexec -n 2 argo_bench writemiss [ITERS]      rank 0 stores a word, barrier, rank 1 stores into it: its time
//   mpiexec -n 2 argo_bench seqread   [MIB]        rank 0 writes MIB MiB, barrier, rank 1 reads one word per page
//   mpiexec -n P argo_bench jacobi    [N] [SWEEPS] Jacobi on an N x N grid, rows split as shm_bench's, a barrier
//                                                  per sweep; the checksum equals shm_bench's for the same N/sweeps
//
// Consistency: Argo is release consistent (data-race-free programs; a write is seen by another node after both
// passed a synchronisation: here argo::barrier()), dipc is strictly consistent (no synchronisation needed). So the
// Argo kernels synchronise with a barrier where shm_bench uses a semaphore; only the access itself is timed, as in
// shm_bench. Rank 0 prints "@key value" lines in bench/run_shm.sh's format (keys argo_readmiss_*, argo_writemiss_*,
// seqread_argo_mibps, jacobi_argoP_us_per_sweep, jacobi_argoP_checksum).
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "argo.hpp"
#include "latency.h"

namespace {

using dipc_bench::now_ns;
constexpr size_t kPage = 4096;
constexpr size_t kWarm = 50;

void stats_keys(const char* key, std::vector<int64_t> ns) {
  dipc_bench::Latency s = dipc_bench::latency_of(std::move(ns));
  printf("@%s_p50_us %.2f\n@%s_p99_us %.2f\n@%s_p999_us %.2f\n@%s_mean_us %.2f\n@%s_cdf_us %s\n", key, s.p50, key,
         s.p99, key, s.p999, key, s.mean, key, dipc_bench::cdf_csv(s).c_str());
  printf("Argo %s: p50 %.1f us  p99 %.1f us  p99.9 %.1f us  (n=%zu)\n", key, s.p50, s.p99, s.p999, s.n);
}

// Times, on rank 1, one access per round to a word of a page homed on rank 0 that rank 0 stored to just before the
// barrier. Rank 1's samples go to rank 0, which prints them.
int miss(bool write, size_t iters) {
  auto* a = argo::conew_array<long>(2 * kPage / sizeof(long));
  volatile long* w = a + kPage / sizeof(long);
  int me = argo::node_id();
  if (me == 0) *w = 0;
  argo::barrier();
  if (argo::get_homenode(const_cast<long*>(w)) != 0 && me == 0)
    fprintf(stderr, "argo_bench: the timed page is not homed on rank 0 (allocation policy?)\n");
  std::vector<int64_t> v;
  bool ok = true;
  for (size_t i = 0; i < iters + kWarm; ++i) {
    long x = static_cast<long>(i + 1);
    if (me == 0) {
      if (write && i > 0 && *w != -static_cast<long>(i)) ok = false;  // rank 1's store of the previous round
      *w = x;
    }
    argo::barrier();
    if (me == 1) {
      int64_t t0 = now_ns();
      if (write)
        *w = -x;
      else
        x = *w;
      int64_t t1 = now_ns();
      if (x != static_cast<long>(i + 1)) ok = false;
      if (i >= kWarm) v.push_back(t1 - t0);
    }
    argo::barrier();
  }
  int n = static_cast<int>(v.size());
  MPI_Bcast(&n, 1, MPI_INT, 1, MPI_COMM_WORLD);
  v.resize(static_cast<size_t>(n));
  MPI_Bcast(v.data(), n, MPI_INT64_T, 1, MPI_COMM_WORLD);
  int good = ok, all = 0;
  MPI_Allreduce(&good, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
  const char* key = write ? "argo_writemiss" : "argo_readmiss";
  if (me == 0) {
    if (all)
      stats_keys(key, v);
    else
      printf("%s: a rank read a value it should not have (not coherent at the barrier)\n", key);
  }
  argo::codelete_array(a);
  return all ? 0 : 1;
}

int seqread(size_t mib) {
  size_t pages = mib * 1048576 / kPage;
  auto* p = argo::conew_array<long>(pages * kPage / sizeof(long));
  int me = argo::node_id();
  if (me == 0)
    for (size_t i = 0; i < pages; ++i) p[i * (kPage / sizeof(long))] = static_cast<long>(i + 1);
  argo::barrier();
  int64_t ns = 0;
  bool ok = true;
  if (me == 1) {
    int64_t t0 = now_ns();
    for (size_t i = 0; i < pages; ++i)
      if (p[i * (kPage / sizeof(long))] != static_cast<long>(i + 1)) ok = false;
    ns = now_ns() - t0;
  }
  argo::barrier();
  MPI_Bcast(&ns, 1, MPI_INT64_T, 1, MPI_COMM_WORLD);
  int good = ok, all = 0;
  MPI_Allreduce(&good, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
  if (me == 0) {
    double mibps = static_cast<double>(mib) / (static_cast<double>(ns) / 1e9);
    if (all) {
      printf("Argo sequential first touch of %zu MiB on rank 1: %.1f MiB/s\n", mib, mibps);
      printf("@seqread_argo_mibps %.2f\n", mibps);
    } else {
      printf("seqread_argo: rank 1 read a wrong value\n");
    }
  }
  argo::codelete_array(p);
  return all ? 0 : 1;
}

// Same grid, boundary, row split, warm-up (3 sweeps) and checksum as shm_bench's jacobi_rank.
int jacobi(int n, int sweeps) {
  const int warm = 3;
  int me = argo::node_id(), np = argo::number_of_nodes();
  size_t cells = static_cast<size_t>(n) * static_cast<size_t>(n);
  double* g0 = argo::conew_array<double>(2 * cells);
  double* g[2] = {g0, g0 + cells};
  int interior = n - 2;
  int lo = 1 + interior * me / np, hi = 1 + interior * (me + 1) / np;
  auto at = [n](double* grid, int i, int j) -> double& {
    return grid[static_cast<size_t>(i) * static_cast<size_t>(n) + static_cast<size_t>(j)];
  };
  int init_lo = me == 0 ? 0 : lo, init_hi = me == np - 1 ? n : hi;
  for (double* grid : g)
    for (int i = init_lo; i < init_hi; ++i)
      for (int j = 0; j < n; ++j) at(grid, i, j) = i == 0 ? 1.0 : 0.0;
  argo::barrier();
  int64_t t0 = 0;
  int total = warm + sweeps;
  for (int s = 0; s < total; ++s) {
    if (s == warm) t0 = now_ns();
    double* src = g[s & 1];
    double* dst = g[(s + 1) & 1];
    for (int i = lo; i < hi; ++i)
      for (int j = 1; j < n - 1; ++j)
        at(dst, i, j) = 0.25 * (at(src, i - 1, j) + at(src, i + 1, j) + at(src, i, j - 1) + at(src, i, j + 1));
    argo::barrier();
  }
  int64_t ns = now_ns() - t0;
  double part = 0, sum = 0;
  for (int i = lo; i < hi; ++i)
    for (int j = 0; j < n; ++j) part += at(g[total & 1], i, j) * static_cast<double>(1 + (i * 31 + j) % 17);
  std::vector<double> parts(static_cast<size_t>(np));
  MPI_Gather(&part, 1, MPI_DOUBLE, parts.data(), 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  if (me == 0) {
    for (double x : parts) sum += x;  // in rank order, as shm_bench sums its ranks
    double per = static_cast<double>(ns) / sweeps / 1e3;
    printf("Jacobi %dx%d argo: %d processes, %d sweeps, %.1f us/sweep, checksum %.17g\n", n, n, np, sweeps, per,
           sum);
    printf("@jacobi_argo%d_us_per_sweep %.2f\n@jacobi_argo%d_checksum %.17g\n", np, per, np, sum);
  }
  argo::codelete_array(g0);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc < 2) {
    fprintf(stderr, "usage: argo_bench readmiss|writemiss [ITERS] | seqread [MIB] | jacobi [N] [SWEEPS]\n");
    return 2;
  }
  std::string cmd = argv[1];
  auto arg = [&](int i, long d) { return i < argc ? std::strtol(argv[i], nullptr, 10) : d; };
  // Global memory: room for the largest kernel (seqread's MiB, or Jacobi's two grids); ARGO_MEMORY_SIZE and
  // ARGO_CACHE_SIZE in the environment take precedence (argo::init reads them when given 0). argo::init starts MPI.
  argo::init(getenv("ARGO_MEMORY_SIZE") ? 0 : size_t{512} << 20, getenv("ARGO_CACHE_SIZE") ? 0 : size_t{256} << 20);
  int rc = 2;
  if (cmd == "readmiss" || cmd == "writemiss") {
    rc = argo::number_of_nodes() == 2 ? miss(cmd == "writemiss", static_cast<size_t>(arg(2, 2000))) : 2;
  } else if (cmd == "seqread") {
    rc = argo::number_of_nodes() == 2 ? seqread(static_cast<size_t>(arg(2, 32))) : 2;
  } else if (cmd == "jacobi") {
    rc = jacobi(static_cast<int>(arg(2, 1024)), static_cast<int>(arg(3, 100)));
  }
  if (rc == 2 && argo::node_id() == 0) fprintf(stderr, "argo_bench: unknown part or wrong number of ranks\n");
  argo::finalize();
  return rc;
}

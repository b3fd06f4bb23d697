#!/usr/bin/env bash
# The RDMA figures of docs/PERFORMANCE.md, in one run inside the Soft-RoCE VM (ratios only: emulation makes
# absolute times meaningless):
#   ../shared/softroce/vm-run --kernel trixie-backports --timeout 3000 -- bench/run_verbs.sh [BUILD_DIR]
# Measures, in this order: perftest (ib_read_lat -s 4096, ib_send_lat -s 64) between two processes on the VM's rxe0;
# bench/transport_bench (tcp and verbs providers, perftest style); bench/run.sh (semaphore ping-pong and message
# round trip) with transport tcp, then verbs; bench/run_shm.sh (read miss, Jacobi) with tcp, then verbs, scaled
# down (DIPC_SHM_* knobs, DIPC_BENCH_ITERS=300) to fit the emulation. Prints each part's output; run_verbs.sh itself
# computes nothing. ib_send_lat's t_typical is half a round trip: compare a semaphore round trip with twice it.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$top/build}" && pwd) || exit 2
dev=${VM_RUN_RXE:-rxe0}
dev=${dev%% *}
addr=${VM_RUN_ADDRS:-10.66.0.1}
addr=${addr%% *}
echo "=== load: $(cat /proc/loadavg)  kernel $(uname -r)  device $dev ($addr)"
perf() {  # perf TOOL ARGS...: server and client on the same rxe device
  local tool=$1
  shift
  "$tool" -d "$dev" -x 1 "$@" >/tmp/perf-server.out 2>&1 &
  local srv=$!
  local out
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    out=$(timeout 120 "$tool" -d "$dev" -x 1 "$@" "$addr" 2>&1) && break
  done
  wait "$srv"
  echo "$out" | sed -n '/#bytes/,$p'
}
echo "=== perftest: ib_read_lat -s 4096"
perf ib_read_lat -s 4096 -n 2000
echo "=== perftest: ib_send_lat -s 64"
perf ib_send_lat -s 64 -n 2000
echo "=== transport_bench"
"$build/bin/transport_bench" --benchmark_min_time=0.5 2>&1 | grep -v "^\[20"
for t in tcp verbs; do
  echo "=== bench/run.sh transport=$t"
  DIPC_BENCH_TRANSPORT=$t DIPC_BENCH_ITERS=${DIPC_BENCH_ITERS:-300} "$top/bench/run.sh" "$build" 2>&1 | tail -n 12
done
for t in tcp verbs; do
  echo "=== bench/run_shm.sh transport=$t"
  DIPC_BENCH_TRANSPORT=$t DIPC_SHM_ITERS=300 DIPC_SHM_STREAM_N=262144 DIPC_SHM_PASSES=3 DIPC_SHM_SWEEPS=20 \
    DIPC_SHM_JACOBI_N=256 DIPC_SHM_UPGRADE_READERS=0 "$top/bench/run_shm.sh" "$build" 2>&1 | tail -n 16
done

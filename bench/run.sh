#!/usr/bin/env bash
# Semaphores and message queues (docs/PERFORMANCE.md, first table): starts a simulated 2-node cluster, runs
# bench/ipc_bench on node1 with its partners on node2, with DIPC_BENCH_PAIRS repetitions in random interleaved order
# (every round runs each benchmark once: dipc and its baseline alternate, so a burst of noise hits both), and prints
# per pair the median of the per-round ratios, their min/max, p50/p99/p99.9 and the load average at start and end.
#   usage: bench/run.sh [BUILD_DIR] [extra Google Benchmark flags]
#   DIPC_BENCH_PAIRS=5        rounds (repetitions of every benchmark)
#   DIPC_BENCH_ITERS=2000     timed operations per repetition
#   DIPC_BENCH_SPINNERS=0     busy loops started on every node for the run ("under load")
#   DIPC_BENCH_OUT=DIR        where ipc.json goes (default BUILD_DIR/bench-results); bench/plot reads it
#   DIPC_BENCH_CPUS=0         pins every process of the run (daemons, benchmark, partners) to those CPUs
#   DIPC_BENCH_BUSY_POLL_US=50  the daemons poll that long before sleeping ([cluster] busy_poll_us)
#   DIPC_BENCH_SCHED=nice:-5  the daemons' scheduling ([cluster] sched, see README)
#   DIPC_BENCH_TRANSPORT=verbs  the cluster uses the verbs transport (softroce VM: docs/PERFORMANCE.md)
#   DIPC_BENCH_LINK_SECURITY=none  the cluster's [cluster] link_security (mac, the default; encrypt; none)
set -euo pipefail
if [ -n "${DIPC_BENCH_CPUS:-}" ] && [ -z "${DIPC_BENCH_PINNED:-}" ]; then
  DIPC_BENCH_PINNED=1 exec taskset -c "$DIPC_BENCH_CPUS" "$0" "$@"
fi
top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$top/build}" && pwd)
shift || true
bin=$build/bin
out_dir=${DIPC_BENCH_OUT:-$build/bench-results}
mkdir -p "$out_dir"
pairs=${DIPC_BENCH_PAIRS:-5}
dir=$(mktemp -d /tmp/dipc-bench.XXXXXX)
spin_pids=()
cleanup() {
  local p
  for p in "${spin_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$bin/dipc-sim" down --dir "$dir" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
up_flags=(--log-level warn --busy-poll-us "${DIPC_BENCH_BUSY_POLL_US:-0}" --transport "${DIPC_BENCH_TRANSPORT:-tcp}")
# Only when asked (dipc-sim's default is mac): a build from before per-frame integrity (bench/run_ab.sh against an
# old commit) has no such option.
[ -n "${DIPC_BENCH_LINK_SECURITY:-}" ] && up_flags+=(--link-security "$DIPC_BENCH_LINK_SECURITY")
[ -n "${DIPC_BENCH_SCHED:-}" ] && up_flags+=(--sched "$DIPC_BENCH_SCHED")
"$bin/dipc-sim" up -n 2 --dir "$dir" "${up_flags[@]}" >/dev/null
peer_addr=$("$bin/dipc-sim" exec --dir "$dir" node2 -- sh -c 'echo "$DIPC_NODE_ADDR"')
[ -n "$peer_addr" ] || peer_addr=127.0.0.1
for node in node1 node2; do
  for ((i = 0; i < ${DIPC_BENCH_SPINNERS:-0}; i++)); do
    "$bin/dipc-sim" exec --dir "$dir" "$node" -- sh -c 'while :; do :; done' &
    spin_pids+=($!)
  done
done
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
raw=$dir/bench.json
cdf=$dir/cdf.jsonl
DIPC_SIM="$bin/dipc-sim" DIPC_SIM_DIR="$dir" DIPC_PEER_ADDR="$peer_addr" DIPC_PEER=node2 DIPC_BENCH_CDF="$cdf" \
  "$bin/dipc-sim" exec --dir "$dir" --preload node1 -- "$bin/ipc_bench" \
  --benchmark_repetitions="$pairs" --benchmark_enable_random_interleaving=true \
  --benchmark_out="$raw" --benchmark_out_format=json "$@"
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
python3 "$top/bench/summary.py" ipc --raw "$raw" --cdf "$cdf" --load-start "$load_start" --load-end "$load_end" \
  --spinners "${DIPC_BENCH_SPINNERS:-0}" --sched "${DIPC_BENCH_SCHED:-default}" --out "$out_dir/ipc.json"

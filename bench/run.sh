#!/usr/bin/env bash
# Reproduces docs/PERFORMANCE.md: starts a simulated 2-node cluster (separate network and IPC namespaces when root),
# runs bench/ipc_bench on node1 with its partners on node2, and prints every figure as a ratio to its baseline
# measured in the same run.
#   usage: bench/run.sh [BUILD_DIR] [extra Google Benchmark flags]
#   DIPC_BENCH_CPUS=0 bench/run.sh   pins every process of the run (daemons, benchmark, partners) to those CPUs
#   DIPC_BENCH_BUSY_POLL_US=50 bench/run.sh   the daemons poll that long before sleeping ([cluster] busy_poll_us)
#   DIPC_BENCH_TRANSPORT=verbs bench/run.sh   the cluster uses the verbs transport (softroce VM: docs/PERFORMANCE.md)
set -euo pipefail
if [ -n "${DIPC_BENCH_CPUS:-}" ] && [ -z "${DIPC_BENCH_PINNED:-}" ]; then
  DIPC_BENCH_PINNED=1 exec taskset -c "$DIPC_BENCH_CPUS" "$0" "$@"
fi
top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$top/build}" && pwd)
shift || true
bin=$build/bin
dir=$(mktemp -d /tmp/dipc-bench.XXXXXX)
trap '"$bin/dipc-sim" down --dir "$dir" >/dev/null 2>&1 || true' EXIT
"$bin/dipc-sim" up -n 2 --dir "$dir" --log-level warn --busy-poll-us "${DIPC_BENCH_BUSY_POLL_US:-0}" \
  --transport "${DIPC_BENCH_TRANSPORT:-tcp}" >/dev/null
peer_addr=$("$bin/dipc-sim" exec --dir "$dir" node2 -- sh -c 'echo "$DIPC_NODE_ADDR"')
[ -n "$peer_addr" ] || peer_addr=127.0.0.1
out=$dir/bench.json
DIPC_SIM="$bin/dipc-sim" DIPC_SIM_DIR="$dir" DIPC_PEER_ADDR="$peer_addr" DIPC_PEER=node2 \
  "$bin/dipc-sim" exec --dir "$dir" --preload node1 -- "$bin/ipc_bench" \
  --benchmark_out="$out" --benchmark_out_format=json "$@"
python3 - "$out" <<'PY'
import json, sys
runs = {b["name"].split("/")[0]: b for b in json.load(open(sys.argv[1]))["benchmarks"] if b.get("run_type") != "aggregate"}
def us(name): return runs[name]["real_time"] * {"ns": 1e-3, "us": 1, "ms": 1e3}[runs[name]["time_unit"]]
tcp = us("BM_RawTcpRoundTrip")
print(f"\nraw TCP 64 B round trip node1<->node2: {tcp:.1f} us")
for name, base in [("BM_DipcSemPingPong", "BM_NativeSemPingPong"), ("BM_DipcMsgRoundTrip", "BM_NativeMsgRoundTrip")]:
    print(f"{name:22s} {us(name):8.1f} us  = {us(name)/tcp:4.2f}x raw TCP round trip   (native SysV on one node: {us(base):.1f} us)")
for name in ["BM_DipcMsgStream", "BM_NativeMsgStream"]:
    r = runs[name]
    print(f"{name:22s} {r['items_per_second']/1e3:8.1f} k msgs/s  {r['bytes_per_second']/1e6:6.2f} MB/s (64 B messages)")
PY

#!/usr/bin/env bash
# The cost of the seccomp path (DIPC_SECCOMP=1): bench/seccomp_bench on node1 of a simulated 1-node cluster, run
# ROUNDS times without and with the filter, interleaved (A B A B ...); prints per benchmark the median ratio
# with/without, its spread (min..max) and the load average.
#   usage: bench/run_seccomp.sh [BUILD_DIR] [ROUNDS]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$top/build}" && pwd)
rounds=${2:-5}
bin=$build/bin
dir=$(mktemp -d /tmp/dipc-bench.XXXXXX)
trap '"$bin/dipc-sim" down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
"$bin/dipc-sim" up -n 1 --dir "$dir" --log-level warn >/dev/null
for i in $(seq "$rounds"); do
  for mode in off on; do
    env=(); [ "$mode" = on ] && env=(DIPC_SECCOMP=1)
    "$bin/dipc-sim" exec --dir "$dir" --preload node1 -- env "${env[@]}" "$bin/seccomp_bench" \
      --benchmark_min_time=0.2 --benchmark_out="$dir/$mode.$i.json" --benchmark_out_format=json >/dev/null
  done
done
python3 - "$dir" "$rounds" <<'PY'
import json, os, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
def load(mode, i):
    return {b["name"]: b["real_time"] for b in json.load(open(f"{d}/{mode}.{i}.json"))["benchmarks"]}
runs = [(load("off", i), load("on", i)) for i in range(1, rounds + 1)]
print(f"load average: {open('/proc/loadavg').read().split()[:3]}")
print(f"{'benchmark':18s} {'without':>10s} {'with filter':>12s} {'ratio (median)':>15s} {'spread':>14s}")
for name in runs[0][0]:
    ratios = [on[name] / off[name] for off, on in runs]
    off = statistics.median(r[0][name] for r in runs)
    on = statistics.median(r[1][name] for r in runs)
    print(f"{name:18s} {off:8.1f}ns {on:10.1f}ns {statistics.median(ratios):14.2f}x {min(ratios):6.2f}..{max(ratios):.2f}")
PY

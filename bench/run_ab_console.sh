#!/usr/bin/env bash
# Before/after against builds older than the JSON output of bench/run.sh (which bench/run_ab.sh reads): runs one
# tree's bench/run.sh and bench/run_shm.sh on build A and build B alternately (A B A B, DIPC_AB_ROUNDS pairs) and
# reads the figures from their console lines, which every version prints: the ping-pong and message round trip as
# ratios to the same run's raw TCP round trip, the read miss, write upgrade and Jacobi as ratios to their own
# baselines, and the absolute p50s beside them. Prints per figure the median of the B / A quotients of the runs of
# one pair, their spread, and the load average.
#   usage: bench/run_ab_console.sh SCRIPTS_TREE BUILD_A BUILD_B
#   SCRIPTS_TREE: the tree whose bench/run.sh and bench/run_shm.sh run both builds (the older one, so both builds
#   understand its options); DIPC_AB_ROUNDS=12 pairs for run.sh, DIPC_AB_SHM_ROUNDS=8 for a short run_shm.sh
#   (1000 faults, 100 Jacobi sweeps of 512x512, no 4-node part).
set -uo pipefail
tree=$(cd "$1" && pwd)
a=$(cd "$2" && pwd)
b=$(cd "$3" && pwd)
log=$(mktemp /tmp/dipc-abc.XXXXXX)
trap 'rm -f "$log"' EXIT
for ((r = 0; r < ${DIPC_AB_ROUNDS:-12}; r++)); do
  for side in A B; do
    build=$a
    [ "$side" = B ] && build=$b
    echo "=== $side $(cut -d' ' -f1 /proc/loadavg)" >>"$log"
    timeout 300 "$tree/bench/run.sh" "$build" 2>&1 | grep -E '^(raw TCP|BM_Dipc)' | grep -v real_time >>"$log"
  done
done
for ((r = 0; r < ${DIPC_AB_SHM_ROUNDS:-8}; r++)); do
  for side in A B; do
    build=$a
    [ "$side" = B ] && build=$b
    echo "=== $side $(cut -d' ' -f1 /proc/loadavg)" >>"$log"
    DIPC_SHM_ITERS=1000 DIPC_SHM_PASSES=6 DIPC_SHM_SWEEPS=100 DIPC_SHM_STREAM_N=2097152 DIPC_SHM_UPGRADE_READERS=0 \
      DIPC_SHM_JACOBI_N=512 timeout 600 "$tree/bench/run_shm.sh" "$build" 2>&1 |
      grep -E 'read miss, node1|write upgrade, 1 reader|Jacobi, 1 proc|raw TCP 4 KiB round' >>"$log"
  done
done
python3 - "$log" <<'PY'
import re, statistics, sys
figures = {
    "semaphore ping-pong / raw TCP 64 B RTT": r"BM_DipcSemPingPong\s+[\d.]+ us\s+=\s+([\d.]+)x",
    "  ping-pong, mean (us)": r"BM_DipcSemPingPong\s+([\d.]+) us",
    "message round trip / raw TCP 64 B RTT": r"BM_DipcMsgRoundTrip\s+[\d.]+ us\s+=\s+([\d.]+)x",
    "  message round trip, mean (us)": r"BM_DipcMsgRoundTrip\s+([\d.]+) us",
    "message stream (k msgs/s)": r"BM_DipcMsgStream\s+([\d.]+) k",
    "read miss p50 / (TCP 4 KiB + uffd)": r"read miss.*\(TCP 4K \+ uffd\) ([\d.]+)",
    "  read miss p50 (us)": r"read miss.*?\)\s+([\d.]+) /",
    "write upgrade, 1 reader / TCP 4 KiB": r"upgrade.*TCP 4K ([\d.]+)",
    "Jacobi 2 nodes / native": r"Jacobi.*dipc/native ([\d.]+)",
}
runs, loads = [], []
for line in open(sys.argv[1]):
    m = re.match(r"=== (\w) ([\d.]+)", line)
    if m:
        runs.append({"side": m.group(1)})
        loads.append(float(m.group(2)))
        continue
    for name, rx in figures.items():
        m = re.search(rx, line)
        if m:
            runs[-1][name] = float(m.group(1))
print(f"load average (1 min) at the runs' starts: {min(loads):.2f}..{max(loads):.2f}")
print(f"{'figure':40s} {'A median':>9s} {'B median':>9s}   B / A per pair: median (min..max), pairs")
for name in figures:
    pairs = [(x, y) for x, y in zip(runs[0::2], runs[1::2]) if name in x and name in y]
    if not pairs:
        continue
    q = [y[name] / x[name] for x, y in pairs]
    am = statistics.median(x[name] for x, _ in pairs)
    bm = statistics.median(y[name] for _, y in pairs)
    print(f"{name:40s} {am:9.2f} {bm:9.2f}   {statistics.median(q):.2f} ({min(q):.2f}..{max(q):.2f}), {len(q)}")
PY

#!/usr/bin/env bash
# Before/after of the semaphore and message figures: runs bench/run.sh on build A and build B alternately
# (A B A B ..., DIPC_AB_ROUNDS pairs, each a short run.sh with DIPC_BENCH_PAIRS rounds), and prints per build the
# per-run dipc / raw TCP ratios (ping-pong, message round trip, each against its own run's raw TCP) and the message
# ratios against native SysV (round trip remote and on the home node, streaming rate) where the filter ran them,
# then the median of the B / A quotients of consecutive runs with its spread, and the load average.
#   usage: bench/run_ab.sh BUILD_A BUILD_B [extra Google Benchmark flags]
#   DIPC_AB_ROUNDS=4  pairs of runs;  DIPC_BENCH_PAIRS=2, DIPC_BENCH_ITERS=1000 per run (see bench/run.sh)
#   default filter: Raw|DipcSem|DipcMsgRound ('Raw|NativeMsg|HomeMsg|DipcMsg' for the queues, 'ShmAttach' for
#   shmget+shmat+shmdt); any env of run.sh
#   (spinners, sched, ...) applies to both builds
#   DIPC_AB_ENV_A / DIPC_AB_ENV_B="VAR=V ..."  extra environment of one side only (e.g. DIPC_SPIN_US=0): A and B
#   may then be the same build
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
a=$(cd "$1" && pwd)
b=$(cd "$2" && pwd)
shift 2
extra=("$@")
[ ${#extra[@]} -gt 0 ] || extra=(--benchmark_filter='Raw|DipcSem|DipcMsgRound')
rounds=${DIPC_AB_ROUNDS:-4}
out=$(mktemp -d /tmp/dipc-ab.XXXXXX)
trap 'rm -rf "$out"' EXIT
echo "A = $a"
echo "B = $b"
[ -n "${DIPC_AB_ENV_A:-}${DIPC_AB_ENV_B:-}" ] && echo "env A: ${DIPC_AB_ENV_A:-} / env B: ${DIPC_AB_ENV_B:-}"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for ((r = 0; r < rounds; r++)); do
  for side in A B; do
    build=$a
    side_env=${DIPC_AB_ENV_A:-}
    [ "$side" = B ] && build=$b && side_env=${DIPC_AB_ENV_B:-}
    # shellcheck disable=SC2086  # a list of VAR=V words
    env $side_env DIPC_BENCH_OUT="$out/$side$r" DIPC_BENCH_PAIRS=${DIPC_BENCH_PAIRS:-2} DIPC_BENCH_ITERS=${DIPC_BENCH_ITERS:-1000} \
      "$top/bench/run.sh" "$build" "${extra[@]}" >/dev/null 2>&1 || echo "run $side$r failed"
  done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" "$rounds" <<'PY'
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
labels = ["semaphore ping-pong / raw TCP 64 B RTT", "message round trip / raw TCP 64 B RTT",
          "message round trip / native SysV, one node",
          "message round trip, both processes on the home node / native SysV",
          "message streaming rate / native SysV, one node",
          "shmget + shmat + shmdt, segment homed on this node / native SysV"]
def load(side, r):
    try:
        d = json.load(open(os.path.join(out, f"{side}{r}", "ipc.json")))
    except OSError:
        return {}
    res = {l: p["median"] for p in d["pairs"] for l in labels if p["label"] == l}
    for field in ("p50_us", "p99_us"):
        per = {}
        for bm in d["benchmarks"]:
            if bm.get(field) is not None:
                per.setdefault(bm["name"], []).append(bm[field])
        res[field] = {k: statistics.median(v) for k, v in per.items()}
    return res
runs = {s: [load(s, r) for r in range(rounds)] for s in "AB"}
for l in labels:
    print(f"\n{l}")
    for s in "AB":
        v = [x.get(l) for x in runs[s]]
        print(f"  {s}: " + " ".join("-" if x is None else f"{x:.2f}" for x in v))
    q = [b[l] / a[l] for a, b in zip(runs["A"], runs["B"]) if a.get(l) and b.get(l)]
    if q:
        print(f"  B / A: median {statistics.median(q):.2f} (min {min(q):.2f}, max {max(q):.2f}, {len(q)} pairs)")
for field in ("p50_us", "p99_us"):
    print(f"\n{field} per run (A | B):")
    names = sorted({n for s in "AB" for x in runs[s] for n in x.get(field, {})})
    for n in names:
        fa = " ".join(f"{x[field][n]:.0f}" if n in x.get(field, {}) else "-" for x in runs["A"])
        fb = " ".join(f"{x[field][n]:.0f}" if n in x.get(field, {}) else "-" for x in runs["B"])
        print(f"  {n:24s} {fa} | {fb}")
PY

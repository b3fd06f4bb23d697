#!/usr/bin/env bash
# Before/after of the shared-memory figures: runs bench/run_shm.sh on build A and build B alternately (A B A B ...,
# DIPC_AB_ROUNDS pairs, each a short run_shm.sh of DIPC_SHM_ROUNDS rounds), and prints per build the per-run medians
# of every pair run_shm.sh reports (dipc / its baseline of the same round) and of the first-touch bandwidth, then the
# median of the B / A quotients of consecutive runs with its spread, and the load average.
#   usage: bench/run_shm_ab.sh BUILD_A BUILD_B
#   DIPC_AB_ROUNDS=4 pairs of runs; DIPC_SHM_ROUNDS=2 rounds per run; DIPC_SHM_PARTS='tcpbulk|tcpbulk_fresh|seqread' by default;
#   any other env of run_shm.sh (DIPC_SHM_TOUCH_MIB, spinners, ...) applies to both builds
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
a=$(cd "$1" && pwd)
b=$(cd "$2" && pwd)
rounds=${DIPC_AB_ROUNDS:-4}
out=$(mktemp -d /tmp/dipc-shm-ab.XXXXXX)
trap 'rm -rf "$out"' EXIT
echo "A = $a"
echo "B = $b"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for ((r = 0; r < rounds; r++)); do
  for side in A B; do
    build=$a
    [ "$side" = B ] && build=$b
    DIPC_BENCH_OUT="$out/$side$r" DIPC_SHM_ROUNDS=${DIPC_SHM_ROUNDS:-2} DIPC_SHM_PARTS=${DIPC_SHM_PARTS:-tcpbulk|tcpbulk_fresh|seqread} \
      "$top/bench/run_shm.sh" "$build" >/dev/null 2>&1 || echo "run $side$r failed"
  done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" "$rounds" <<'PY'
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(side, r):
    try:
        d = json.load(open(os.path.join(out, f"{side}{r}", "shm.json")))
    except OSError:
        return {}
    res = {p["label"]: p["median"] for p in d["pairs"] if p.get("median") is not None}
    per = {}
    for bm in d["benchmarks"]:
        if bm["name"].endswith("_mibps"):
            per.setdefault(bm["name"] + " (MiB/s, higher is better)", []).append(bm["real_time"])
    res.update({k: statistics.median(v) for k, v in per.items()})
    return res
runs = {s: [load(s, r) for r in range(rounds)] for s in "AB"}
labels = sorted({l for s in "AB" for x in runs[s] for l in x})
for l in labels:
    print(f"\n{l}")
    for s in "AB":
        v = [x.get(l) for x in runs[s]]
        good = [x for x in v if x is not None]
        med = f"   median {statistics.median(good):.2f}" if good else ""
        print(f"  {s}: " + " ".join("-" if x is None else f"{x:.2f}" for x in v) + med)
    q = [y[l] / x[l] for x, y in zip(runs["A"], runs["B"]) if x.get(l) and y.get(l)]
    if q:
        print(f"  B / A: median {statistics.median(q):.2f} (min {min(q):.2f}, max {max(q):.2f}, {len(q)} pairs)")
PY

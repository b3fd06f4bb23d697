#!/usr/bin/env bash
# The cost of [cluster] link_security on a transport: bench/transport_bench's 64 B request/reply round trip
# (BM_Request/64) and 4 KiB push (BM_WriteNotify/4096: a one-sided write and the message behind it, as dsm/ pushes
# a block) under "none", "mac" (the provider's plain name, the default) and "encrypt", two nodes in one process
# (tcp: over 127.0.0.1; verbs: on the first RDMA device, e.g. inside the softroce VM:
# ../shared/softroce/vm-run -- bench/run_link_security.sh build 10 verbs). On verbs the push's block travels by
# RDMA WRITE, which is never sealed: only its message is (docs/ARCHITECTURE.md, "Link security on verbs").
# REPS repetitions, randomly interleaved by Google Benchmark; per setting the median ratio of p50 to "none" over
# the repetitions, its spread (min..max) and the load average.
#   usage: bench/run_link_security.sh [BUILD_DIR] [REPS] [tcp|verbs]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$top/build}" && pwd)
reps=${2:-10}
tr=${3:-tcp}
case "$tr" in tcp|verbs) ;; *) echo "usage: $0 [BUILD_DIR] [REPS] [tcp|verbs]" >&2; exit 2 ;; esac
out=$(mktemp /tmp/dipc-linksec.XXXXXX.json)
trap 'rm -f "$out" "$out.log"' EXIT
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
"$build/bin/transport_bench" --benchmark_filter="^BM_(Request/$tr[a-z_]*/64|WriteNotify/$tr[a-z_]*/4096)/" \
  --benchmark_repetitions="$reps" --benchmark_enable_random_interleaving=true --benchmark_min_time=0.2 \
  --benchmark_report_aggregates_only=false --benchmark_out="$out" --benchmark_out_format=json >/dev/null 2>"$out.log" ||
  { tail -n 20 "$out.log"; exit 1; }
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$out" "$load_start" "$load_end" "$tr" <<'PY'
import json, statistics, sys
from collections import defaultdict
runs = [b for b in json.load(open(sys.argv[1]))["benchmarks"] if b.get("run_type", "iteration") == "iteration"]
p50 = defaultdict(dict)  # name -> repetition -> p50 (us)
for b in runs:
    p50[b["name"]][b.get("repetition_index", 0)] = b["p50_us"]
print(f"load average: start {sys.argv[2]}, end {sys.argv[3]}; {len(next(iter(p50.values())))} repetitions")
print(f"{'benchmark':28s} {'setting':8s} {'p50 (median)':>13s} {'ratio to none':>14s} {'spread':>13s}")
tr = sys.argv[4]
for op, arg in (("BM_Request", 64), ("BM_WriteNotify", 4096)):
    base = p50[f"{op}/{tr}_none/{arg}/real_time"]
    for setting, prov in (("none", f"{tr}_none"), ("mac", tr), ("encrypt", f"{tr}_encrypt")):
        cur = p50[f"{op}/{prov}/{arg}/real_time"]
        ratios = [cur[r] / base[r] for r in cur if r in base and base[r] > 0]
        print(f"{op + '/' + str(arg):28s} {setting:8s} {statistics.median(cur.values()):11.2f}us "
              f"{statistics.median(ratios):13.3f}x {min(ratios):6.3f}..{max(ratios):.3f}")
PY

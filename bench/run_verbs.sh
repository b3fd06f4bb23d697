#!/usr/bin/env bash
# The RDMA figures of docs/PERFORMANCE.md (issue 7), in one run of the Soft-RoCE VM. Measured length: clusters up
# 4 min, a round 7-14 min at host load 11-20 on 2 cores with a second VM running (2026-12-01), so 3 rounds took
# about 40 min there; DIPC_VERBS_ROUNDS=2 or a quieter host keeps it under 30.
#   bench/run_verbs.sh [BUILD_DIR] [BEFORE_BUILD_DIR]
# On the host it starts the VM itself (vm-run --kernel trixie-backports: one rxe device per simulated node needs
# kernel 7.x), samples the host's load average into the build folder meanwhile, and runs itself inside.
#   DIPC_VM_RUN       vm-run (default: ../shared/softroce/vm-run, or ../../shared/... from a worktree)
#   DIPC_VERBS_ROUNDS rounds (default 3); DIPC_VERBS_ITERS timed operations per dipc part and round (default 100)
#   DIPC_VERBS_TIMEOUT the VM's bound in seconds (default 3600)
# Inside the VM it starts 2-node dipc-sim clusters: V (transport verbs), T (transport tcp) and, with
# BEFORE_BUILD_DIR (the binaries of another commit, e.g. a copy of build/bin and build/lib), B (verbs, those
# binaries). Every round then runs, back to back (A B A B over the rounds, so a burst of noise hits every side):
#   perftest between node1 and node2 of V over their own rxe devices (rdma_cm, -R): ib_read_lat -s 4096 and
#     ib_send_lat -s 64 busy-polling (perftest's default), ib_read_lat also with -e (sleeping on the completion
#     channel, as dipcd does; ib_send_lat -e hung in this VM); the DSM read miss (shm_bench readmiss: node2 reads a 4 KiB page node1 wrote) on V, B, T; the
#     semaphore ping-pong (ipc_bench BM_DipcSemPingPong: program -> its dipcd -> the home's dipcd and back) on V, B,
#     T; the transport alone (transport_bench BM_Read/verbs/4096, BM_Request/verbs/64: two nodes in one process,
#     busy-polled, on the VM's rxe0); Jacobi with one process on each node on V and T.
# At the end: per figure the median over the rounds of the per-round ratio, with min..max, and the load averages
# (the host's, sampled outside, and the VM's). ib_send_lat's t_typical is half a round trip: a semaphore round trip
# is compared with twice it. Absolute times under emulation mean nothing; ratios of one run do.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$top/build}" && pwd) || exit 2
before=""
if [ -n "${2:-}" ]; then before=$(cd "$2" && pwd) || exit 2; fi
hostload=$build/.run_verbs.hostload

if [ -z "${VM_RUN_GUEST:-}" ]; then
  vmrun=${DIPC_VM_RUN:-}
  if [ -z "$vmrun" ]; then
    for c in "$(dirname "$top")/shared/softroce/vm-run" "$(dirname "$(dirname "$top")")/shared/softroce/vm-run"; do
      if [ -x "$c" ]; then vmrun=$c; break; fi
    done
  fi
  [ -n "$vmrun" ] || { echo "run_verbs.sh: no vm-run (set DIPC_VM_RUN)" >&2; exit 2; }
  # The host's load, for the record: the VM cannot see it. A sample every 10 s; the last one is what is read.
  (while :; do { date -u +%T; cat /proc/loadavg; } | tr '\n' ' ' >"$hostload.new" && mv "$hostload.new" "$hostload"
    sleep 10; done) &
  sampler=$!
  trap 'kill "$sampler" 2>/dev/null' EXIT
  cd "$top" || exit 2
  "$vmrun" --kernel trixie-backports --timeout "${DIPC_VERBS_TIMEOUT:-3600}" --times -- "$0" "$build" ${before:+"$before"}
  exit $?
fi

rounds=${DIPC_VERBS_ROUNDS:-3}
iters=${DIPC_VERBS_ITERS:-100}
tmo=300
work=$(mktemp -d /tmp/dipc-verbs-bench.XXXXXX)
log=$work/results  # "ROUND KEY VALUE" lines
clusters=()
cleanup() {
  local d
  for d in "${clusters[@]}"; do "${d%%|*}/bin/dipc-sim" down --dir "${d#*|}" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
loads() { echo "host load: $(cat "$hostload" 2>/dev/null || echo unknown)  |  VM load: $(cut -d' ' -f1-3 /proc/loadavg)"; }
echo "=== run_verbs.sh $(date -u '+%F %T') UTC, kernel $(uname -r), $(nproc) vCPUs, $rounds rounds, $iters iterations"
echo "=== $(loads)"

# up NAME BUILD TRANSPORT: a 2-node cluster in $work/NAME.
up() {
  local d=$work/$1
  mkdir -p "$d"
  if ! "$2/bin/dipc-sim" up -n 2 --dir "$d" --log-level warn --transport "$3" >"$d.up.log" 2>&1; then
    echo "run_verbs.sh: cluster $1 ($3) did not start:" >&2
    tail -n 20 "$d.up.log" >&2
    return 1
  fi
  clusters+=("$2|$d")
}
up V "$build" verbs || exit 1
up T "$build" tcp || exit 1
if [ -n "$before" ]; then up B "$before" verbs || exit 1; fi
sim() { "$build/bin/dipc-sim" "$@"; }
addr2=$(sim exec --dir "$work/V" node2 -- sh -c 'echo "$DIPC_NODE_ADDR"')
echo "=== clusters up; V node2 at $addr2; $(loads)"

# record ROUND KEY VALUE (empty VALUE: the part failed, nothing recorded)
record() { if [ -n "$3" ]; then echo "$1 $2 $3" >>"$log"; echo "    $2 = $3"; else echo "    $2: no figure"; fi; }

# perf ROUND KEY TOOL ARGS...: perftest server on V's node2, client on node1 (rdma_cm picks each node's rxe device
# by address); records t_typical (us).
perf() {
  local r=$1 key=$2 tool=$3 out
  shift 3
  sim exec --dir "$work/V" node2 -- timeout 90 "$tool" -R "$@" >"$work/perf-server.out" 2>&1 &
  local srv=$!
  for _ in $(seq 1 10); do  # the server listens within a moment; every attempt is bounded
    out=$(sim exec --dir "$work/V" node1 -- timeout 60 "$tool" -R "$@" "$addr2" 2>&1) && break
    # Retried only when it did not connect (the server not listening yet, or rejecting): a failure after the
    # connection, or a hang (the timeout), is final.
    echo "$out" | grep -q "Unable to perform rdma_client function\|Unable to init the socket connection" || break
    sleep 1  # back-off before the next bounded attempt (the server may not listen yet)
  done
  wait "$srv"  # bounded by its timeout; the next part's server needs the port
  local v
  v=$(echo "$out" | awk '/t_typical/ { getline; print $5; exit }')
  [ -n "$v" ] || { echo "$out" | tail -n 3; tail -n 3 "$work/perf-server.out"; } | sed "s/^/    $tool: /"
  record "$r" "$key" "$v"
}

# on CLUSTER NODE [--preload] CMD...: runs CMD on a node of cluster V, B or T with that cluster's binaries.
on() {
  local c=$1 n=$2 b=$build
  shift 2
  [ "$c" = B ] && b=$before
  local pre=()
  if [ "$1" = --preload ]; then pre=(--preload); shift; fi
  local peer
  peer=$("$b/bin/dipc-sim" exec --dir "$work/$c" node2 -- sh -c 'echo "$DIPC_NODE_ADDR"')
  DIPC_SIM="$b/bin/dipc-sim" DIPC_SIM_DIR="$work/$c" DIPC_PEER=node2 DIPC_PEER_ADDR="$peer" \
    timeout -k 10 "$tmo" "$b/bin/dipc-sim" exec --dir "$work/$c" "${pre[@]}" "$n" -- "$@"
}
bindir() { if [ "$1" = B ]; then echo "$before/bin"; else echo "$build/bin"; fi; }

readmiss() {  # ROUND CLUSTER
  local out
  out=$(on "$2" node1 --preload "$(bindir "$2")/shm_bench" readmiss --iters "$iters" 2>&1)
  record "$1" "readmiss_$2" "$(echo "$out" | awk '$1 == "@readmiss_p50_us" { print $2 }')"
}
pingpong() {  # ROUND CLUSTER
  local out=$work/sem.json
  rm -f "$out"
  DIPC_BENCH_ITERS=$iters on "$2" node1 --preload "$(bindir "$2")/ipc_bench" \
    --benchmark_filter='^BM_DipcSemPingPong/' --benchmark_out="$out" --benchmark_out_format=json >/dev/null 2>&1
  record "$1" "sem_$2" "$(python3 -c 'import json,sys
try: print(json.load(open(sys.argv[1]))["benchmarks"][0]["p50_us"])
except Exception: pass' "$out")"
}
jacobi() {  # ROUND CLUSTER
  local out
  out=$(on "$2" node1 --preload "$(bindir "$2")/shm_bench" jacobi --mode dipc --n 128 --sweeps 10 \
    --nodes node1,node2 2>&1)
  record "$1" "jacobi_$2" "$(echo "$out" | awk '$1 ~ /^@jacobi_dipc[0-9]*_us_per_sweep$/ { print $2 }')"
}
transport() {  # ROUND: the transport alone, on the VM's own rxe0 (both nodes in one process)
  local out=$work/tb.json
  rm -f "$out"
  timeout -k 10 "$tmo" "$build/bin/transport_bench" --benchmark_filter='^BM_(Read/verbs/4096|Request/verbs/64)/' \
    --benchmark_min_time=0.3 --benchmark_out="$out" --benchmark_out_format=json >/dev/null 2>&1
  python3 -c 'import json,sys
try:
  for b in json.load(open(sys.argv[1]))["benchmarks"]:
    print(("tb_read4k" if b["name"].startswith("BM_Read") else "tb_req64"), b["p50_us"])
except Exception: pass' "$out" | while read -r k v; do record "$1" "$k" "$v"; done
}

sides=(V T)
[ -n "$before" ] && sides=(V B T)
for ((r = 1; r <= rounds; r++)); do
  echo "=== round $r/$rounds, $(loads)"
  perf "$r" ib_read_lat ib_read_lat -s 4096 -n 500
  perf "$r" ib_read_lat_e ib_read_lat -e -s 4096 -n 300
  for c in "${sides[@]}"; do readmiss "$r" "$c"; done
  perf "$r" ib_send_lat ib_send_lat -s 64 -n 500
  for c in "${sides[@]}"; do pingpong "$r" "$c"; done
  transport "$r"
  jacobi "$r" V
  jacobi "$r" T
done
echo "=== done $(date -u '+%F %T') UTC, $(loads)"

python3 - "$log" <<'EOF'
import sys, statistics
vals = {}
for line in open(sys.argv[1]):
    r, k, v = line.split()
    vals.setdefault(k, {})[int(r)] = float(v)
def show(name, num, den, scale=1.0, target=""):
    a, b = vals.get(num, {}), vals.get(den, {})
    rs = [a[r] / (scale * b[r]) for r in sorted(a) if r in b and b[r] > 0]
    if not rs:
        print(f"{name:58s} n/a (no paired rounds)"); return
    med = lambda d: statistics.median(d.values())
    print(f"{name:58s} {statistics.median(rs):6.2f}x  ({min(rs):.2f}..{max(rs):.2f}, {len(rs)} rounds)  "
          f"p50 {med(a):.0f} us vs {scale * med(b):.0f} us {target}")
print("\nper-round medians (us):", {k: round(statistics.median(v.values()), 1) for k, v in sorted(vals.items())})
print("\nfigure (median of per-round ratios, min..max)")
show("DSM read miss verbs / ib_read_lat -s 4096", "readmiss_V", "ib_read_lat", target="(target <= 1.5x)")
show("DSM read miss verbs / ib_read_lat -e -s 4096 (events)", "readmiss_V", "ib_read_lat_e")
show("DSM read miss verbs / tcp", "readmiss_V", "readmiss_T")
show("DSM read miss verbs, before / ib_read_lat -s 4096", "readmiss_B", "ib_read_lat")
show("DSM read miss verbs, after / before", "readmiss_V", "readmiss_B")
show("transport read 4 KiB verbs / ib_read_lat -s 4096", "tb_read4k", "ib_read_lat")
show("sem ping-pong verbs / 2 x ib_send_lat -s 64", "sem_V", "ib_send_lat", 2.0, "(target <= 1.5x)")
show("sem ping-pong verbs / tcp", "sem_V", "sem_T")
show("sem ping-pong verbs, before / 2 x ib_send_lat -s 64", "sem_B", "ib_send_lat", 2.0)
show("sem ping-pong verbs, after / before", "sem_V", "sem_B")
show("transport request+reply 64 B verbs / 2 x ib_send_lat", "tb_req64", "ib_send_lat", 2.0)
show("Jacobi 2 nodes (per sweep) verbs / tcp", "jacobi_V", "jacobi_T")
EOF

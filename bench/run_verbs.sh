#!/usr/bin/env bash
# The RDMA figures of docs/PERFORMANCE.md (issue 7), in one run of the Soft-RoCE VM, in interleaved rounds.
#   bench/run_verbs.sh [BUILD_DIR] [BEFORE_BUILD_DIR]
# On the host it starts the VM itself (vm-run --kernel trixie-backports --cpus 2: one rxe device per simulated node
# needs kernel 7.x), samples the host's load average into the build folder meanwhile, and runs itself inside.
#   DIPC_VM_RUN            vm-run (default: ../shared/softroce/vm-run, or ../../shared/... from a worktree)
#   DIPC_VERBS_ROUNDS      rounds (default 3); DIPC_VERBS_ITERS timed operations per dipc part and round (default 100)
#   DIPC_VERBS_TIMEOUT     the VM's bound in seconds (default 3600); DIPC_VERBS_CPUS its vCPUs (default 2)
#   DIPC_BENCH_BUSY_POLL_US the polled sides' [cluster] busy_poll_us (default 50000: longer than a round trip here,
#                          so a polled daemon never sleeps while the benchmark runs; 0: no polled sides)
#   DIPC_VERBS_SIDES       the dipc sides to run (default "Vp Tp V0 T0", plus "Bp B0" with BEFORE_BUILD_DIR; no
#                          polled ones when DIPC_BENCH_BUSY_POLL_US=0)
#   DIPC_VERBS_EXTRA=1     also the transport alone (transport_bench) and Jacobi on 2 nodes (V0 and T0)
#   DIPC_VERBS_MTU         the simulated nodes' Ethernet MTU (dipc-sim --mtu; default 1500: rxe then uses 1024-byte
#                          RDMA packets, so a 4 KiB block is 4 of them; 4200 or more gives 4096)
# Sides: each is its own 2-node dipc-sim cluster with one rxe device per node, started once: V verbs, T tcp, B verbs
# with the binaries of BEFORE_BUILD_DIR (another commit: e.g. a copy of build/bin and build/lib); suffix p: the
# daemons busy-poll (busy_poll_us above: the EventLoop spins on epoll and the verbs CQs instead of sleeping), 0: the
# default (asleep on epoll, the verbs completion channel's fd on it). Every round then runs, back to back (the side
# order reversed every other round, so drift hits every side alike):
#   perftest between node1 and node2 of the first verbs cluster over their own rxe devices (rdma_cm, -R):
#     ib_read_lat -s 4096 and ib_send_lat -s 64 busy-polling (perftest's default), ib_read_lat also with -e
#     (asleep on the completion channel, as a default dipcd; ib_send_lat -e hung in this VM);
#   the DSM read miss (shm_bench readmiss: node2 reads a 4 KiB page node1 wrote) on every side;
#   the semaphore ping-pong (ipc_bench BM_DipcSemPingPong: program -> its dipcd -> the home's dipcd and back) on
#     every side.
# Around each dipc part the two daemons' voluntary context switches (sleeps: someone had to wake them) are counted:
# "sleeps/it" is their sum per timed iteration (the part's set-up and warm-up included, so an upper bound).
# At the end: per figure the median over the rounds of the per-round ratio, with min..max, and the load averages
# (the host's, sampled outside, and the VM's). ib_send_lat's t_typical is half a round trip: a semaphore round trip
# is compared with twice it. Absolute times under emulation mean nothing; ratios of one run do. Measured length
# (2026-12-01, host load 5-7): clusters 4 min, a round of 5 sides with 50 iterations 10 min (docs/PERFORMANCE.md,
# "Fourth session"); fewer sides (DIPC_VERBS_SIDES) or iterations keep it short.
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
  "$vmrun" --kernel trixie-backports --cpus "${DIPC_VERBS_CPUS:-2}" --timeout "${DIPC_VERBS_TIMEOUT:-3600}" --times -- "$0" "$build" ${before:+"$before"}
  exit $?
fi

rounds=${DIPC_VERBS_ROUNDS:-3}
iters=${DIPC_VERBS_ITERS:-100}
poll=${DIPC_BENCH_BUSY_POLL_US:-50000}
tmo=300
default_sides="Vp Tp V0 T0"
[ -n "$before" ] && default_sides+=" Bp B0"
[ "$poll" -gt 0 ] || default_sides=${default_sides//[VTB]p /}
read -r -a sides <<<"${DIPC_VERBS_SIDES:-$default_sides}"
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
echo "=== run_verbs.sh $(date -u '+%F %T') UTC, kernel $(uname -r), $(nproc) vCPUs, $rounds rounds, $iters iterations," \
  "busy_poll_us $poll on the polled sides, sides ${sides[*]}, MTU ${DIPC_VERBS_MTU:-default}"
echo "=== $(loads)"

# A side's binaries, transport and busy_poll_us, from its name (V/T/B + p/0).
side_build() { if [ "${1:0:1}" = B ]; then echo "$before"; else echo "$build"; fi; }
side_transport() { if [ "${1:0:1}" = T ]; then echo tcp; else echo verbs; fi; }
side_poll() { if [ "${1:1:1}" = p ]; then echo "$poll"; else echo 0; fi; }
for c in "${sides[@]}"; do
  [[ "$c" =~ ^[VTB][p0]$ ]] || { echo "run_verbs.sh: unknown side '$c' (V, T or B, then p or 0)" >&2; exit 2; }
  [ "${c:0:1}" != B ] || [ -n "$before" ] || { echo "run_verbs.sh: side $c needs BEFORE_BUILD_DIR" >&2; exit 2; }
  [ "${c:1:1}" != p ] || [ "$poll" -gt 0 ] || { echo "run_verbs.sh: side $c needs DIPC_BENCH_BUSY_POLL_US > 0" >&2; exit 2; }
done

# up SIDE: its 2-node cluster in $work/SIDE.
up() {
  local d=$work/$1 b
  b=$(side_build "$1")
  mkdir -p "$d"
  if ! "$b/bin/dipc-sim" up -n 2 --dir "$d" --log-level warn --transport "$(side_transport "$1")" \
    --busy-poll-us "$(side_poll "$1")" ${DIPC_VERBS_MTU:+--mtu "$DIPC_VERBS_MTU"} >"$d.up.log" 2>&1; then
    echo "run_verbs.sh: cluster $1 did not start:" >&2
    tail -n 20 "$d.up.log" >&2
    return 1
  fi
  clusters+=("$b|$d")
}
for c in "${sides[@]}"; do up "$c" || exit 1; done
# perftest runs between the nodes of the first verbs cluster (any verbs cluster has the same rxe set-up).
pc=""
for c in "${sides[@]}"; do if [ "$(side_transport "$c")" = verbs ]; then pc=$c; break; fi; done
sim() { "$build/bin/dipc-sim" "$@"; }
addr2=""
[ -n "$pc" ] && addr2=$(sim exec --dir "$work/$pc" node2 -- sh -c 'echo "$DIPC_NODE_ADDR"')
echo "=== clusters up; perftest between the nodes of ${pc:-(no verbs side)} (node2 at $addr2); $(loads)"

# record ROUND KEY VALUE (empty VALUE: the part failed, nothing recorded)
record() { if [ -n "$3" ]; then echo "$1 $2 $3" >>"$log"; echo "    $2 = $3"; else echo "    $2: no figure"; fi; }

# perf ROUND KEY TOOL ARGS...: perftest server on node2, client on node1 (rdma_cm picks each node's rxe device
# by address); records t_typical (us).
perf() {
  local r=$1 key=$2 tool=$3 out
  shift 3
  [ -n "$pc" ] || return 0
  sim exec --dir "$work/$pc" node2 -- timeout 90 "$tool" -R "$@" >"$work/perf-server.out" 2>&1 &
  local srv=$!
  for _ in $(seq 1 10); do  # the server listens within a moment; every attempt is bounded
    out=$(sim exec --dir "$work/$pc" node1 -- timeout 60 "$tool" -R "$@" "$addr2" 2>&1) && break
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

# on SIDE NODE [--preload] CMD...: runs CMD on a node of the side's cluster with that side's binaries.
on() {
  local c=$1 n=$2 b
  shift 2
  b=$(side_build "$c")
  local pre=()
  if [ "$1" = --preload ]; then pre=(--preload); shift; fi
  local peer
  peer=$("$b/bin/dipc-sim" exec --dir "$work/$c" node2 -- sh -c 'echo "$DIPC_NODE_ADDR"')
  DIPC_SIM="$b/bin/dipc-sim" DIPC_SIM_DIR="$work/$c" DIPC_PEER=node2 DIPC_PEER_ADDR="$peer" \
    timeout -k 10 "$tmo" "$b/bin/dipc-sim" exec --dir "$work/$c" "${pre[@]}" "$n" -- "$@"
}
bindir() { echo "$(side_build "$1")/bin"; }
# sleeps SIDE: the voluntary context switches of the side's two daemons so far (summed).
sleeps() {
  local k s=0 pid v
  for k in 1 2; do
    pid=$(cat "$work/$1/node$k.dipcd.pid" 2>/dev/null) || continue
    v=$(awk '/^voluntary_ctxt_switches/ { print $2 }' "/proc/$pid/status" 2>/dev/null) || continue
    s=$((s + ${v:-0}))
  done
  echo "$s"
}
# record_sleeps ROUND KEY BEFORE SIDE: daemon sleeps per timed iteration since BEFORE.
record_sleeps() { record "$1" "$2" "$(awk -v a="$3" -v b="$(sleeps "$4")" -v n="$iters" 'BEGIN { printf "%.2f", (b - a) / n }')"; }

readmiss() {  # ROUND SIDE
  local out s0
  s0=$(sleeps "$2")
  out=$(on "$2" node1 --preload "$(bindir "$2")/shm_bench" readmiss --iters "$iters" 2>&1)
  record "$1" "readmiss_$2" "$(echo "$out" | awk '$1 == "@readmiss_p50_us" { print $2 }')"
  record_sleeps "$1" "sleeps_readmiss_$2" "$s0" "$2"
}
pingpong() {  # ROUND SIDE
  local out=$work/sem.json s0
  rm -f "$out"
  s0=$(sleeps "$2")
  DIPC_BENCH_ITERS=$iters on "$2" node1 --preload "$(bindir "$2")/ipc_bench" \
    --benchmark_filter='^BM_DipcSemPingPong/' --benchmark_out="$out" --benchmark_out_format=json >/dev/null 2>&1
  record "$1" "sem_$2" "$(python3 -c 'import json,sys
try: print(json.load(open(sys.argv[1]))["benchmarks"][0]["p50_us"])
except Exception: pass' "$out")"
  record_sleeps "$1" "sleeps_sem_$2" "$s0" "$2"
}
jacobi() {  # ROUND SIDE
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

has() { local c; for c in "${sides[@]}"; do [ "$c" = "$1" ] && return 0; done; return 1; }
for ((r = 1; r <= rounds; r++)); do
  echo "=== round $r/$rounds, $(date -u +%T), $(loads)"
  order=("${sides[@]}")
  if ((r % 2 == 0)); then
    order=()
    for ((i = ${#sides[@]} - 1; i >= 0; i--)); do order+=("${sides[i]}"); done
  fi
  perf "$r" ib_read_lat ib_read_lat -s 4096 -n 500
  perf "$r" ib_read_lat_e ib_read_lat -e -s 4096 -n 300
  for c in "${order[@]}"; do readmiss "$r" "$c"; done
  perf "$r" ib_send_lat ib_send_lat -s 64 -n 500
  for c in "${order[@]}"; do pingpong "$r" "$c"; done
  if [ "${DIPC_VERBS_EXTRA:-0}" = 1 ]; then
    transport "$r"
    for c in V0 T0; do has "$c" && jacobi "$r" "$c"; done
  fi
done
echo "=== done $(date -u '+%F %T') UTC, $(loads)"
cp "$log" "$build/.run_verbs.results" 2>/dev/null || true  # the raw "ROUND KEY VALUE" lines, kept for the record

python3 - "$log" "${sides[*]}" <<'PY'
import sys, statistics
vals = {}
for line in open(sys.argv[1]):
    r, k, v = line.split()
    vals.setdefault(k, {})[int(r)] = float(v)
sides = sys.argv[2].split()
def show(name, num, den, scale=1.0, target=""):
    a, b = vals.get(num, {}), vals.get(den, {})
    if not a and not b: return
    rs = [a[r] / (scale * b[r]) for r in sorted(a) if r in b and b[r] > 0]
    if not rs:
        print(f"{name:58s} n/a (no paired rounds)"); return
    med = lambda d: statistics.median(d.values())
    print(f"{name:58s} {statistics.median(rs):6.2f}x  ({min(rs):.2f}..{max(rs):.2f}, {len(rs)} rounds)  "
          f"p50 {med(a):.0f} us vs {scale * med(b):.0f} us {target}")
print("\nper-round values:", {k: [v[r] for r in sorted(v)] for k, v in sorted(vals.items())})
print("\nmedian daemon sleeps per timed iteration (both daemons; set-up included):")
for part in ("readmiss", "sem"):
    print("  " + part + ": " + "  ".join(f"{s} {statistics.median(vals[f'sleeps_{part}_{s}'].values()):.2f}"
                                      for s in sides if f"sleeps_{part}_{s}" in vals))
print("\nfigure (median of per-round ratios, min..max)")
for part, title in (("readmiss", "DSM read miss"), ("sem", "sem ping-pong")):
    base, scale, e = ("ib_read_lat", 1.0, "ib_read_lat_e") if part == "readmiss" else ("ib_send_lat", 2.0, None)
    bname = "ib_read_lat -s 4096" if part == "readmiss" else "2 x ib_send_lat -s 64"
    show(f"{title} verbs polled / {bname}", f"{part}_Vp", base, scale, "(target <= 1.5x)")
    show(f"{title} verbs polled / tcp polled", f"{part}_Vp", f"{part}_Tp", target="(target < 1)")
    show(f"{title} verbs default / {bname}", f"{part}_V0", base, scale)
    if e: show(f"{title} verbs default / ib_read_lat -e -s 4096", f"{part}_V0", e)
    show(f"{title} verbs default / tcp default", f"{part}_V0", f"{part}_T0", target="(target < 1)")
    show(f"{title} verbs polled / verbs default", f"{part}_Vp", f"{part}_V0")
    show(f"{title} tcp polled / tcp default", f"{part}_Tp", f"{part}_T0")
    show(f"{title} verbs polled, after / before", f"{part}_Vp", f"{part}_Bp")
    show(f"{title} verbs default, after / before", f"{part}_V0", f"{part}_B0")
show("ib_read_lat -e / ib_read_lat (what a sleep costs perftest)", "ib_read_lat_e", "ib_read_lat")
show("transport read 4 KiB verbs / ib_read_lat -s 4096", "tb_read4k", "ib_read_lat")
show("transport request+reply 64 B verbs / 2 x ib_send_lat", "tb_req64", "ib_send_lat", 2.0)
show("Jacobi 2 nodes (per sweep) verbs / tcp, default", "jacobi_V0", "jacobi_T0")
PY

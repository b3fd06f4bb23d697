#!/usr/bin/env bash
# What one shmget + shmat + shmdt of a segment homed on the program's node costs in system calls and in wake-ups of
# dipcd (docs/PERFORMANCE.md, "Local-home speed, fifth pass"): starts a simulated 2-node cluster, runs
# BM_DipcShmAttach of bench/ipc_bench on node1 under `strace -c -f` while node1's dipcd is traced the same way, and
# prints both tables per iteration, with dipcd's voluntary and nonvoluntary context switches per iteration (from
# /proc/PID/status before and after; strace's own stops are not counted there, so they are measured in a second,
# untraced run).
#   usage: bench/shmat_syscalls.sh [BUILD_DIR]      DIPC_SYSCALLS_N=1000 iterations
#   DIPC_BENCH_SCHED as bench/run.sh; any environment of the program (DIPC_SHM_NOTE_CHANNEL=0, ...) applies
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$top/build}" && pwd)
bin=$build/bin
n=${DIPC_SYSCALLS_N:-1000}
dir=$(mktemp -d /tmp/dipc-syscalls.XXXXXX)
tpid=
cleanup() {
  [ -n "$tpid" ] && kill "$tpid" 2>/dev/null || true
  "$bin/dipc-sim" down --dir "$dir" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
up_flags=(--log-level warn --busy-poll-us 0)
[ -n "${DIPC_BENCH_SCHED:-}" ] && up_flags+=(--sched "$DIPC_BENCH_SCHED")
"$bin/dipc-sim" up -n 2 --dir "$dir" "${up_flags[@]}" >/dev/null
peer_addr=$("$bin/dipc-sim" exec --dir "$dir" node2 -- sh -c 'echo "$DIPC_NODE_ADDR"')
d1=$(cat "$dir/node1.dipcd.pid")
csw() { awk '/^voluntary_ctxt_switches/ {v=$2} /^nonvoluntary_ctxt_switches/ {i=$2} END {print v, i}' "/proc/$1/status"; }
# The benchmark makes iters / 20 timed iterations (bench/ipc_bench.cc, batches).
run() {
  DIPC_SIM="$bin/dipc-sim" DIPC_SIM_DIR="$dir" DIPC_PEER_ADDR="${peer_addr:-127.0.0.1}" DIPC_PEER=node2 \
    DIPC_BENCH_ITERS=$((n * 20)) "$bin/dipc-sim" exec --dir "$dir" --preload node1 -- "$@" "$bin/ipc_bench" \
    --benchmark_filter=BM_DipcShmAttach --benchmark_repetitions=1 >"$dir/run.out" 2>&1 || { cat "$dir/run.out" >&2; exit 1; }
}
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); $n iterations"
read -r v1 nv1 < <(csw "$d1")
run
read -r v2 nv2 < <(csw "$d1")
awk -v n="$n" -v v="$((v2 - v1))" -v nv="$((nv2 - nv1))" \
  'BEGIN { printf "dipcd context switches per iteration (untraced run): voluntary %.3f, nonvoluntary %.3f\n", v / n, nv / n }'
strace -c -f -o "$dir/dipcd.strace" -p "$d1" 2>"$dir/strace.err" &
tpid=$!
for ((i = 0; i < 100; i++)); do  # until strace says it attached (bounded: 10 s)
  grep -q attached "$dir/strace.err" 2>/dev/null && break
  sleep 0.1
done
run strace -c -f -o "$dir/prog.strace"
kill -INT "$tpid"
wait "$tpid" 2>/dev/null || true
tpid=
per() {
  awk -v n="$n" '$1 ~ /^[0-9.]+$/ && NF >= 5 { name = $NF; calls = $4; if (calls / n >= 0.01) printf "  %-22s %8.2f\n", name, calls / n }' "$1" |
    sort -k2 -rn
}
echo "program (ipc_bench, all threads), system calls per iteration (setup included):"
per "$dir/prog.strace"
echo "node1's dipcd, system calls per iteration:"
per "$dir/dipcd.strace"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

#!/usr/bin/env bash
# Counts the context switches of one remote semop, one ping-pong round and one read miss end to end (docs/PERFORMANCE.md, "Wake-ups"):
# the program on node2, node2's dipcd and the home's dipcd (node1), from /proc/PID/status voluntary_ctxt_switches
# and nonvoluntary_ctxt_switches before and after N operations (the program's own from getrusage), per operation.
# A voluntary switch is a sleep (the process blocked and someone must wake it); a nonvoluntary one is preemption,
# or a sched_yield() that found another task to run.
#   usage: bench/wakeups.sh [BUILD_DIR]      DIPC_WAKEUPS_N=2000 operations; DIPC_WAKEUPS_SPIN_US: DIPC_SPIN_US
#   DIPC_BENCH_SCHED, DIPC_BENCH_BUSY_POLL_US, DIPC_BENCH_TRANSPORT (tcp, verbs: in the softroce VM) as bench/run.sh
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$top/build}" && pwd)
bin=$build/bin
n=${DIPC_WAKEUPS_N:-2000}
dir=$(mktemp -d /tmp/dipc-wakeups.XXXXXX)
trap '"$bin/dipc-sim" down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
up_flags=(--log-level warn --busy-poll-us "${DIPC_BENCH_BUSY_POLL_US:-0}" --transport "${DIPC_BENCH_TRANSPORT:-tcp}")
[ -n "${DIPC_BENCH_SCHED:-}" ] && up_flags+=(--sched "$DIPC_BENCH_SCHED")
"$bin/dipc-sim" up -n 2 --dir "$dir" "${up_flags[@]}" >/dev/null
env_spin=()
[ -n "${DIPC_WAKEUPS_SPIN_US:-}" ] && env_spin=(env "DIPC_SPIN_US=$DIPC_WAKEUPS_SPIN_US")
csw() { awk '/^voluntary_ctxt_switches/ {v=$2} /^nonvoluntary_ctxt_switches/ {i=$2} END {print v, i}' "/proc/$1/status"; }
# CPU time of every thread of a process, exited ones included (utime + stime of /proc/PID/stat), in clock ticks.
cpu() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
d1=$(cat "$dir/node1.dipcd.pid")
d2=$(cat "$dir/node2.dipcd.pid")
read -r shmid semid < <("$bin/dipc-sim" exec --dir "$dir" --preload node1 -- "$bin/wakeups" create "$n")
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); $n operations each; DIPC_SPIN_US=${DIPC_WAKEUPS_SPIN_US:-default}"
printf '%-28s %14s %18s %18s %18s %14s\n' "operation (node2 -> home node1)" "us/op" "program v/nv" \
  "node2 dipcd v/nv" "home dipcd v/nv" "home CPU us/op"
measure() {
  local what=$1 a1 a2 b1 b2 out c1 c2
  shift
  c1=$(cpu "$d1")
  read -r -a a1 < <(csw "$d1")
  read -r -a a2 < <(csw "$d2")
  out=$("$bin/dipc-sim" exec --dir "$dir" --preload node2 -- "${env_spin[@]}" "$bin/wakeups" "$@")
  read -r -a b1 < <(csw "$d1")
  read -r -a b2 < <(csw "$d2")
  c2=$(cpu "$d1")
  echo "$out" | awk -v what="$what" -v v1=$((b1[0] - a1[0])) -v i1=$((b1[1] - a1[1])) -v v2=$((b2[0] - a2[0])) \
    -v i2=$((b2[1] - a2[1])) -v cpu=$((c2 - c1)) -v hz="$hz" '{ ops = $2
      printf "%-28s %14.1f %9.2f/%-8.2f %9.2f/%-8.2f %8.2f/%-8.2f %14.1f\n", what, $4 / ops / 1e3, $6 / ops, $8 / ops,
        v2 / ops, i2 / ops, v1 / ops, i1 / ops, cpu / hz * 1e6 / ops }'
}
measure "semop (nonblocking)" semop "$semid" "$((n / 2))"
measure "read miss (4 KiB page)" read "$shmid" "$n"
# The ping-pong round of bench/run.sh, counted per round: node2's V (nonblocking) and P (waits at the home, in a
# worker asleep in the kernel set, until the home's program "pong" posts it). pong's own switches are not counted.
"$bin/dipc-sim" exec --dir "$dir" --preload node1 -- "$bin/wakeups" pong "$semid" "$((n / 2))" &
pong=$!
measure "ping-pong round (V + P)" ping "$semid" "$((n / 2))"
wait "$pong"
# A P from node2 that always waits at the home (a worker asleep in the kernel set, the caller told kBlocked) until
# the home's program "post" sees it counted (GETNCNT, looked at every 20 us) and posts. In the ping-pong above the
# home's program usually posts before the P arrives, so this is the path that ping-pong takes only when it loses
# that race.
"$bin/dipc-sim" exec --dir "$dir" --preload node1 -- "$bin/wakeups" post "$semid" "$((n / 4))" &
poster=$!
measure "P that waits at the home" wait "$semid" "$((n / 4))"
wait "$poster"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
"$bin/dipc-sim" exec --dir "$dir" --preload node1 -- "$bin/wakeups" rm "$shmid" "$semid"

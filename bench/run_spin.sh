#!/usr/bin/env bash
# Spinning processes against the protocol (docs/PERFORMANCE.md, "Spinning processes"): the message-passing litmus
# and a CAS spinlock of tests/progs/shm_work.c on 2 and 3 simulated nodes, with DIPC_BENCH_SPINNERS busy loops per
# node on top (default 1: with 2 spinlock processes per node there are always more spinners than cores), on two
# clusters at once: A with the daemons' default scheduling, B with [cluster] sched = DIPC_SPIN_SCHED (default
# "nice:-10"). Each round runs every workload on A then on B; prints per workload the median of the per-round
# ratios B/A of the wall time with min/max and the load average, and writes BUILD_DIR/bench-results/spin.json.
#   usage: bench/run_spin.sh [BUILD_DIR]
#   DIPC_SHM_ROUNDS=5  DIPC_SPIN_LITMUS_ROUNDS=200  DIPC_SPIN_LOCK_ITERS=100  DIPC_SPIN_NODES="2 3"
#   DIPC_SPIN_BIND_A / DIPC_SPIN_BIND_B: [cluster] bind of each cluster (default none)
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$top/build}" && pwd) || exit 2
bin=$build/bin
work_bin=$build/tests/progs/shm_work
tool=$build/tests/progs/shm_tool
for f in "$bin/dipc-sim" "$work_bin" "$tool"; do [ -x "$f" ] || { echo "run_spin.sh: $f missing" >&2; exit 2; }; done
rounds=${DIPC_SHM_ROUNDS:-5}
lrounds=${DIPC_SPIN_LITMUS_ROUNDS:-200}
liters=${DIPC_SPIN_LOCK_ITERS:-100}
sched_b=${DIPC_SPIN_SCHED:-nice:-10}
out_dir=${DIPC_BENCH_OUT:-$build/bench-results}
mkdir -p "$out_dir"
work=$(mktemp -d /tmp/dipc-spin-bench.XXXXXX)
log=$work/results
: >"$log"
clusters=()
spin_pids=()
cleanup() {
  local p d
  for p in "${spin_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for d in "${clusters[@]}"; do "$bin/dipc-sim" down --dir "$d" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

up() {  # up DIR N SCHED BIND
  "$bin/dipc-sim" up -n "$2" --dir "$1" --log-level warn --sched "$3" --bind "$4" >"$1.up.log" 2>&1 ||
    { echo "run_spin.sh: cluster did not start:" >&2; tail -n 5 "$1.up.log" >&2; exit 1; }
  clusters+=("$1")
  local k i
  for ((k = 1; k <= $2; k++)); do
    for ((i = 0; i < ${DIPC_BENCH_SPINNERS:-1}; i++)); do
      "$bin/dipc-sim" exec --dir "$1" "node$k" -- sh -c 'while :; do :; done' &
      spin_pids+=($!)
    done
  done
}
on() { local d=$1 n=$2; shift 2; timeout -k 5 300 "$bin/dipc-sim" exec --dir "$d" --preload "$n" -- "$@"; }
key=$((0x5e000 + RANDOM))
# run_one DIR N LABEL: one round of both workloads on the cluster in DIR, "@ROUND key ms" lines to $log.
run_one() {
  local d=$1 n=$2 label=$3 t0 t1 pids=() ok=1 k
  key=$((key + 1))
  on "$d" node1 "$tool" "get:$key:12288:creat+excl+dipc+0666" >/dev/null
  t0=$(date +%s%N)
  on "$d" node2 "$work_bin" litmus "$key" reader "$lrounds" >"$work/reader.out" 2>&1 & pids+=($!)
  on "$d" node1 "$work_bin" litmus "$key" writer "$lrounds" >/dev/null 2>&1 & pids+=($!)
  for k in "${pids[@]}"; do wait "$k" || ok=0; done
  t1=$(date +%s%N)
  grep -q '^mismatches=0' "$work/reader.out" || ok=0
  [ "$ok" = 1 ] && echo "@$round litmus_n${n}_${label}_ms $(((t1 - t0) / 1000000))" >>"$log" ||
    echo "litmus on $n nodes ($label) failed: $(cat "$work/reader.out")"
  on "$d" node1 "$tool" "get:$key:12288:dipc+0666" rm >/dev/null
  key=$((key + 1))
  on "$d" node1 "$tool" "get:$key:16384:creat+excl+dipc+0666" >/dev/null
  local np=$((2 * n)) outs=()
  pids=(); ok=1
  t0=$(date +%s%N)
  for ((k = 0; k < np; k++)); do
    on "$d" "node$((k % n + 1))" "$work_bin" spinlock "$key" "$liters" "$np" >"$work/lock$k.out" 2>&1 & pids+=($!)
  done
  for k in "${pids[@]}"; do wait "$k" || ok=0; done
  t1=$(date +%s%N)
  grep -q "^counter=$((np * liters))" "$work/lock0.out" || ok=0
  [ "$ok" = 1 ] && echo "@$round spinlock_n${n}_${label}_ms $(((t1 - t0) / 1000000))" >>"$log" ||
    echo "spinlock on $n nodes ($label) failed: $(cat "$work/lock0.out")"
  on "$d" node1 "$tool" "get:$key:16384:dipc+0666" rm >/dev/null
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "spinning processes: A = sched other, B = sched $sched_b; ${DIPC_BENCH_SPINNERS:-1} busy loop(s) per node;" \
  "load average at start $load_start"
for n in ${DIPC_SPIN_NODES:-2 3}; do
  up "$work/a$n" "$n" other "${DIPC_SPIN_BIND_A:-none}"
  up "$work/b$n" "$n" "$sched_b" "${DIPC_SPIN_BIND_B:-none}"
  for ((round = 1; round <= rounds; round++)); do
    run_one "$work/a$n" "$n" A
    run_one "$work/b$n" "$n" B
    grep "^@$round .*_n${n}_" "$log" | tr '\n' ' '; echo
  done
  for p in "${spin_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  spin_pids=()
  "$bin/dipc-sim" down --dir "$work/a$n" >/dev/null 2>&1
  "$bin/dipc-sim" down --dir "$work/b$n" >/dev/null 2>&1
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
cp "$log" "$out_dir/spin.log"
python3 "$top/bench/summary.py" spin --log "$log" --load-start "$load_start" --load-end "$load_end" \
  --spinners "${DIPC_BENCH_SPINNERS:-1}" --sched "A other / B $sched_b" --out "$out_dir/spin.json"

#!/usr/bin/env bash
# Distributed shared memory benchmarks (docs/PERFORMANCE.md): runs bench/shm_bench on simulated clusters in
# DIPC_SHM_ROUNDS rounds; each round runs every dipc part and its baselines back to back (A B A B ... over the
# rounds), so a burst of noise hits both. Prints per pair the median of the per-round ratios with min/max, p50/p99/
# p99.9, the load average at start and end, and writes BUILD_DIR/bench-results/shm.json (Google Benchmark's JSON
# shape, see bench/summary.py) for bench/plot.
#   usage: bench/run_shm.sh [BUILD_DIR]        (expects ./scripts/build.sh output; builds nothing)
#
# Parts:
#   2-node cluster, all driven from node1 under libdipc.so:
#     once: STREAM triad, 2 processes on node1: native SysV segment vs dipc segment (passes interleaved inside)
#     every round: userfaultfd fault + UFFDIO_COPY resolve on node1; raw TCP 4 KiB request/response node1 <-> node2;
#       dipc read miss (node1 writes a page, node2 reads it: the timed load); dipc write upgrade, 1 reader;
#       raw TCP bulk transfer (into one reused buffer; tcpbulk_fresh: into a new shared mapping of the transfer's
#       size, the memory a first touch must fill) and dipc sequential first touch of DIPC_SHM_TOUCH_MIB MiB, in normal pages and
#       (seqread_huge, when this host can give the huge pages: root raises vm.nr_hugepages for the run and restores
#       it) in a SHM_HUGETLB segment; seqwrite: node2 writes a word of every page of a fresh DIPC_SHM_TOUCH_MIB MiB
#       segment homed on node1 in order (a sequential writer on a node that is not the home; against tcpbulk_fresh);
#       Jacobi: 2 processes on node1 with native shm + semaphores, then one process on node1 and one on node2
#   (R+1)-node cluster (R = DIPC_SHM_UPGRADE_READERS, default 3; 0 skips), every round: raw TCP 4 KiB, dipc write
#     upgrade with R reader nodes; Jacobi with 3 and 4 processes, native (one node) and dipc (one per node)
#     every round, with DIPC_SHM_ARGO: the same read miss, write miss, first touch and Jacobi written against Argo DSM
#       (bench/argo_bench.cc, built by bench/argo.sh), run with MPICH over the same nodes' network namespaces
#   If the 2-node cluster cannot start, the native parts (STREAM native, uffd, Jacobi native) run on this host.
#
# Knobs: DIPC_SHM_PARTS (a regex of part names to run, e.g. 'tcp4k|readmiss|upgrade1|tcpbulk|seqread'; default all),
# DIPC_SHM_ROUNDS (5), DIPC_SHM_ITERS (500 per round), DIPC_SHM_SWEEPS (100 per round), DIPC_SHM_TOUCH_MIB
# (32), DIPC_SHM_STREAM_N (8388608 doubles per array), DIPC_SHM_PASSES (30), DIPC_SHM_JACOBI_N (1024),
# DIPC_SHM_PART_TIMEOUT (600 s per part), DIPC_BENCH_SPINNERS (busy loops per node), DIPC_BENCH_SCHED (the daemons'
# [cluster] sched), DIPC_BENCH_OUT (output directory), DIPC_BENCH_CPUS=0 pins every process (as bench/run.sh).
# DIPC_SHM_ARGO=PATH: the argo_bench binary bench/argo.sh built (needs MPICH's mpiexec; UCX over tcp on eth0).
# DIPC_SHM_BENCH_KERNEL_SHM=1 is a self-test of the orchestration: loopback clusters (one shared IPC namespace),
# "dipc" segments are kernel segments.
#
# Page traffic: the Jacobi dipc part reports, per timed sweep, the change of the counters `dipc status` prints as
# "pages fetched N" and "dsm faults N zero-fills N ..." (summed over node1 and node2; see page_counters).
set -uo pipefail
if [ -n "${DIPC_BENCH_CPUS:-}" ] && [ -z "${DIPC_BENCH_PINNED:-}" ]; then
  DIPC_BENCH_PINNED=1 exec taskset -c "$DIPC_BENCH_CPUS" "$0" "$@"
fi
top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$top/build}" && pwd) || exit 2
bin=$build/bin
for f in shm_bench dipc-sim dipc; do
  [ -x "$bin/$f" ] || { echo "run_shm.sh: $bin/$f missing: run ./scripts/build.sh first" >&2; exit 2; }
done
iters=${DIPC_SHM_ITERS:-500}
sweeps=${DIPC_SHM_SWEEPS:-100}
rounds=${DIPC_SHM_ROUNDS:-5}
touch_mib=${DIPC_SHM_TOUCH_MIB:-32}
out_dir=${DIPC_BENCH_OUT:-$build/bench-results}
mkdir -p "$out_dir"
jn=${DIPC_SHM_JACOBI_N:-1024}
readers=${DIPC_SHM_UPGRADE_READERS:-3}
tmo=${DIPC_SHM_PART_TIMEOUT:-600}
up_flags=(--log-level warn)
# DIPC_SHM_QUANTUM_US / DIPC_SHM_BLOCK: the [dsm] settings of the benchmark clusters (default: the daemon's defaults).
[ -n "${DIPC_SHM_QUANTUM_US:-}" ] && up_flags+=(--dsm-quantum-us "$DIPC_SHM_QUANTUM_US")
[ -n "${DIPC_SHM_BLOCK:-}" ] && up_flags+=(--dsm-block "$DIPC_SHM_BLOCK")
[ -n "${DIPC_SHM_BUSY_POLL_US:-}" ] && up_flags+=(--busy-poll-us "$DIPC_SHM_BUSY_POLL_US")
[ -n "${DIPC_BENCH_SCHED:-}" ] && up_flags+=(--sched "$DIPC_BENCH_SCHED")
# DIPC_BENCH_TRANSPORT=verbs: the clusters use the verbs transport (one Soft-RoCE device per node in the softroce VM).
[ -n "${DIPC_BENCH_TRANSPORT:-}" ] && up_flags+=(--transport "$DIPC_BENCH_TRANSPORT")
if [ "${DIPC_SHM_BENCH_KERNEL_SHM:-}" = 1 ]; then up_flags+=(--loopback); export DIPC_SHM_BENCH_KERNEL_SHM; fi

work=$(mktemp -d /tmp/dipc-shm-bench.XXXXXX)
log=$work/results
: >"$log"
clusters=()
spin_pids=()
cleanup() {
  local d
  stop_spinners
  for d in "${clusters[@]}"; do "$bin/dipc-sim" down --dir "$d" >/dev/null 2>&1 || true; done
  rm -rf "$work"
  if [ -n "${hp_before:-}" ]; then echo "$hp_before" >/proc/sys/vm/nr_hugepages 2>/dev/null || true; fi
}
trap cleanup EXIT
# seqread_huge: the segment's huge pages on both nodes (the simulated nodes share the host's pool), and a few more.
hp_kb=$(awk '/^Hugepagesize:/ { print $2 }' /proc/meminfo 2>/dev/null)
if [ -n "$hp_kb" ] && [ "$hp_kb" -gt 0 ] && [ -w /proc/sys/vm/nr_hugepages ]; then
  hp_before=$(cat /proc/sys/vm/nr_hugepages)
  echo $((hp_before + 2 * touch_mib * 1024 / hp_kb + 4)) >/proc/sys/vm/nr_hugepages 2>/dev/null || true
fi

# up N: starts a cluster and sets cdir to its directory (not in a subshell: cleanup must see it).
cdir=""
up() {
  local d
  d=$(mktemp -d "$work/cluster$1.XXXXXX")
  if "$bin/dipc-sim" up -n "$1" --dir "$d" "${up_flags[@]}" >"$d.up.log" 2>&1; then
    clusters+=("$d")
    cdir=$d
  else
    echo "run_shm.sh: a $1-node cluster did not start:" >&2
    tail -n 5 "$d.up.log" >&2
    "$bin/dipc-sim" down --dir "$d" >/dev/null 2>&1 || true
    return 1
  fi
}

# spinners DIR N: starts DIPC_BENCH_SPINNERS busy loops on each of the N nodes of the cluster in DIR.
spinners() {
  local k i
  for ((k = 1; k <= $2; k++)); do
    for ((i = 0; i < ${DIPC_BENCH_SPINNERS:-0}; i++)); do
      "$bin/dipc-sim" exec --dir "$1" "node$k" -- sh -c 'while :; do :; done' &
      spin_pids+=($!)
    done
  done
}
stop_spinners() {
  local p
  for p in "${spin_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  spin_pids=()
}

# part NAME CMD...: runs one part (CMD is `on ...` or `bounded ...`); human lines to the terminal, "@ROUND key value"
# lines to $log (ROUND: the current value of $round; 0 for the parts run once).
round=0
part() {
  local name=$1 rc
  shift
  if [ -n "${DIPC_SHM_PARTS:-}" ] && ! [[ $name =~ ^(${DIPC_SHM_PARTS})$ ]]; then return 0; fi
  echo "--- $name${round:+ (round $round)}"
  "$@" 2>&1 | sed -u "s/^@/@$round /" | tee -a "$log" | grep -v '^@'
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "@$round part_${name}_rc $rc" >>"$log"
    [ "$rc" -eq 3 ] || echo "    ($name exited with $rc)"
  fi
  return 0
}

bounded() { timeout -k 10 "$tmo" "$@"; }

# on DIR NODE [--preload] CMD...: runs CMD on NODE of the cluster in DIR, bounded by the timeout.
on() {
  local d=$1 n=$2
  shift 2
  local pre=()
  if [ "$1" = --preload ]; then pre=(--preload); shift; fi
  DIPC_SIM="$bin/dipc-sim" DIPC_PEER=node2 DIPC_PEER_ADDR="$peer_addr" \
    timeout -k 10 "$tmo" "$bin/dipc-sim" exec --dir "$d" "${pre[@]}" "$n" -- "$@"
}

# argo DIR P ARGS...: runs DIPC_SHM_ARGO ARGS as P MPI ranks, rank k on node k+1 of the cluster in DIR: mpiexec on
# node1, each other node's proxy started in that node's namespaces by bench/argo_launcher.sh, UCX over tcp on eth0.
# ARGO_ALLOCATION_POLICY (Argo's page placement) passes through when set.
argo() {
  local d=$1 np=$2 hosts="" k
  shift 2
  for ((k = 1; k <= np; k++)); do hosts+="${hosts:+,}$(cat "$d/node$k.addr")"; done
  on "$d" node1 env DIPC_SIM="$bin/dipc-sim" DIPC_SIM_DIR="$d" UCX_TLS=tcp,self UCX_NET_DEVICES=eth0 \
    ${ARGO_ALLOCATION_POLICY:+ARGO_ALLOCATION_POLICY=$ARGO_ALLOCATION_POLICY} \
    mpiexec -launcher ssh -launcher-exec "$top/bench/argo_launcher.sh" -iface eth0 -hosts "$hosts" -n "$np" -ppn 1 \
    -genvlist "UCX_TLS,UCX_NET_DEVICES${ARGO_ALLOCATION_POLICY:+,ARGO_ALLOCATION_POLICY}${ARGO_MEMORY_SIZE:+,ARGO_MEMORY_SIZE}${ARGO_CACHE_SIZE:+,ARGO_CACHE_SIZE}" "$DIPC_SHM_ARGO" "$@"
}

# Sums the page-traffic counters of `dipc status` over node1 and node2, one "name N" line per counter: every
# "pages <what> N" line and every "<word...> N" pair of a line starting "dsm " (e.g. "dsm faults 3 zero-fills 1").
page_counters() {
  local d=$1 n
  for n in node1 node2; do "$bin/dipc-sim" exec --dir "$d" "$n" -- "$bin/dipc" status 2>/dev/null; done |
    awk '
      /^[[:space:]]*pages[ _]+[a-z_-]+[ :=]+[0-9]+/ { s["pages_" $2] += $NF; next }
      /^[[:space:]]*dsm / {
        name = ""; prev = ""
        for (i = 2; i <= NF; i++) {
          if ($i ~ /^[0-9]+$/) {
            if (name == "in" && prev ~ /^messages/) name = "messages_in"
            s["dsm_" name] += $i; prev = name; name = ""
          } else name = (name == "" ? $i : name "_" $i)
        }
      }
      END { for (k in s) print k, s[k] }'
}

stream_args=(--n "${DIPC_SHM_STREAM_N:-8388608}" --passes "${DIPC_SHM_PASSES:-30}")
peer_addr=127.0.0.1
echo "dipc shared-memory benchmarks, $(date '+%F %T'), $(nproc) CPUs${DIPC_BENCH_CPUS:+, pinned to CPUs $DIPC_BENCH_CPUS}, $rounds rounds"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average at start: $load_start"
if up 2; then
  c2=$cdir
  spinners "$c2" 2
  peer_addr=$(on "$c2" node2 sh -c 'echo "$DIPC_NODE_ADDR"')
  [ -n "$peer_addr" ] || peer_addr=127.0.0.1
  part stream on "$c2" node1 --preload "$bin/shm_bench" stream "${stream_args[@]}"
  if ! grep -q 'stream_native_gbps' "$log"; then  # the dipc half took the native figure down with it
    part stream_native on "$c2" node1 "$bin/shm_bench" stream --native-only "${stream_args[@]}"
  fi
  for ((round = 1; round <= rounds; round++)); do
    part uffd on "$c2" node1 "$bin/shm_bench" uffd --iters "$iters"
    part tcp4k on "$c2" node1 "$bin/shm_bench" tcp --iters "$iters"
    part readmiss on "$c2" node1 --preload "$bin/shm_bench" readmiss --iters "$iters"
    part writemiss on "$c2" node1 --preload "$bin/shm_bench" readmiss --write --iters "$iters"
    part upgrade1 on "$c2" node1 --preload "$bin/shm_bench" upgrade --readers 1 --iters "$iters"
    part tcpbulk on "$c2" node1 "$bin/shm_bench" tcpbulk --mib "$touch_mib"
    part tcpbulk_fresh on "$c2" node1 "$bin/shm_bench" tcpbulk --fresh --mib "$touch_mib"
    part seqread on "$c2" node1 --preload "$bin/shm_bench" seqread --mib "$touch_mib"
    part seqread_huge on "$c2" node1 --preload "$bin/shm_bench" seqread --huge --mib "$touch_mib"
    part seqwrite on "$c2" node1 --preload "$bin/shm_bench" seqwrite --mib "$touch_mib"
    part jacobi_native on "$c2" node1 --preload "$bin/shm_bench" jacobi --mode native --n "$jn" --sweeps "$sweeps"
    page_counters "$c2" >"$work/pages.before"
    part jacobi_dipc on "$c2" node1 --preload "$bin/shm_bench" jacobi --mode dipc --n "$jn" --sweeps "$sweeps" \
      --nodes node1,node2
    page_counters "$c2" >"$work/pages.after"
    if [ -n "${DIPC_SHM_ARGO:-}" ]; then
      part argo_readmiss argo "$c2" 2 readmiss "$iters"
      part argo_writemiss argo "$c2" 2 writemiss "$iters"
      part argo_seqread argo "$c2" 2 seqread "$touch_mib"
      part argo_jacobi argo "$c2" 2 jacobi "$jn" "$sweeps"
    fi
    if grep -q "^@$round jacobi_dipc2_us_per_sweep" "$log"; then
      # Counters also include the warm-up sweeps (3) and the first touch; reported per timed sweep all the same.
      awk -v s="$sweeps" -v r="$round" 'NR == FNR { b[$1] = $2; next }
        { printf "@%d jacobi_dipc_traffic_%s_per_sweep %.2f\n", r, $1, ($2 - b[$1]) / s }' \
        "$work/pages.before" "$work/pages.after" >>"$log"
    fi
  done
  stop_spinners
  "$bin/dipc-sim" down --dir "$c2" >/dev/null 2>&1
else
  echo "(no 2-node cluster: running the native parts on this host)"
  part stream bounded "$bin/shm_bench" stream --native-only "${stream_args[@]}"
  for ((round = 1; round <= rounds; round++)); do
    part uffd bounded "$bin/shm_bench" uffd --iters "$iters"
    part jacobi_native bounded "$bin/shm_bench" jacobi --mode native --n "$jn" --sweeps "$sweeps"
  done
fi
if [ "$readers" -gt 1 ]; then
  if up $((readers + 1)); then
    cn=$cdir
    spinners "$cn" $((readers + 1))
    peer_addr=$(on "$cn" node2 sh -c 'echo "$DIPC_NODE_ADDR"')
    [ -n "$peer_addr" ] || peer_addr=127.0.0.1
    all=node1
    for ((k = 2; k <= readers + 1; k++)); do all+=",node$k"; done
    for ((round = 1; round <= rounds; round++)); do
      part "tcp4k_n$((readers + 1))" on "$cn" node1 "$bin/shm_bench" tcp --iters "$iters" --key "tcp4k_n$((readers + 1))"
      part "upgrade$readers" on "$cn" node1 --preload "$bin/shm_bench" upgrade --readers "$readers" --iters "$iters"
      for np in 3 4; do
        [ "$np" -le $((readers + 1)) ] || continue
        part "jacobi_native$np" on "$cn" node1 --preload "$bin/shm_bench" jacobi --mode native --n "$jn" \
          --sweeps "$sweeps" --nodes "$(printf ',%.0s' $(seq 2 "$np"))"
        part "jacobi_dipc$np" on "$cn" node1 --preload "$bin/shm_bench" jacobi --mode dipc --n "$jn" \
          --sweeps "$sweeps" --nodes "$(echo "$all" | cut -d, -f1-"$np")"
      done
    done
    stop_spinners
    "$bin/dipc-sim" down --dir "$cn" >/dev/null 2>&1
  fi
fi
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
cp "$log" "$out_dir/shm.log"
python3 "$top/bench/summary.py" shm --log "$log" --load-start "$load_start" --load-end "$load_end" \
  --spinners "${DIPC_BENCH_SPINNERS:-0}" --sched "${DIPC_BENCH_SCHED:-default}" --readers "$readers" \
  --out "$out_dir/shm.json"

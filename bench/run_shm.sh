#!/usr/bin/env bash
# Distributed shared memory benchmarks (docs/PERFORMANCE.md): runs bench/shm_bench on simulated clusters and prints
# every figure beside its baseline measured in the same run, then a summary table.
#   usage: bench/run_shm.sh [BUILD_DIR]        (expects ./scripts/build.sh output; builds nothing)
#
# Parts (each runs even when another fails; the native ones run even when every dipc part fails):
#   2-node cluster, all driven from node1 under libdipc.so:
#     STREAM triad, 2 processes on node1: native SysV segment vs dipc segment (passes interleaved), ratio
#     userfaultfd fault + UFFDIO_COPY resolve on node1 (resolver thread and resolver process)
#     raw TCP 4 KiB request/response node1 <-> node2
#     dipc read miss: node1 writes a page, node2 reads it (the timed load); ratio to TCP 4 KiB RTT + uffd resolve
#     dipc write upgrade: node2 stores into a page read-shared with node1
#     Jacobi: 2 processes on node1 with native shm + semaphores vs one process on node1 and one on node2 with dipc
#   (R+1)-node cluster: dipc write upgrade with R reader nodes (R = DIPC_SHM_UPGRADE_READERS, default 3; 0 skips)
#   If the 2-node cluster cannot start, the native parts (STREAM native, uffd, Jacobi native) run on this host.
#
# Knobs: DIPC_BENCH_CPUS=0 pins every process (as bench/run.sh); DIPC_SHM_ITERS (2000), DIPC_SHM_STREAM_N
# (8388608 doubles per array), DIPC_SHM_PASSES (30), DIPC_SHM_JACOBI_N (1024), DIPC_SHM_SWEEPS (200),
# DIPC_SHM_PART_TIMEOUT (600 s per part). DIPC_SHM_BENCH_KERNEL_SHM=1 is a self-test of the orchestration before
# dipc shm exists: loopback clusters (one shared IPC namespace), "dipc" segments are kernel segments.
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
iters=${DIPC_SHM_ITERS:-2000}
sweeps=${DIPC_SHM_SWEEPS:-200}
jn=${DIPC_SHM_JACOBI_N:-1024}
readers=${DIPC_SHM_UPGRADE_READERS:-3}
tmo=${DIPC_SHM_PART_TIMEOUT:-600}
up_flags=(--log-level warn)
# DIPC_SHM_QUANTUM_US / DIPC_SHM_BLOCK: the [dsm] settings of the benchmark clusters (default: the daemon's defaults).
[ -n "${DIPC_SHM_QUANTUM_US:-}" ] && up_flags+=(--dsm-quantum-us "$DIPC_SHM_QUANTUM_US")
[ -n "${DIPC_SHM_BLOCK:-}" ] && up_flags+=(--dsm-block "$DIPC_SHM_BLOCK")
[ -n "${DIPC_SHM_BUSY_POLL_US:-}" ] && up_flags+=(--busy-poll-us "$DIPC_SHM_BUSY_POLL_US")
# DIPC_BENCH_TRANSPORT=verbs: the clusters use the verbs transport (one Soft-RoCE device per node in the softroce VM).
[ -n "${DIPC_BENCH_TRANSPORT:-}" ] && up_flags+=(--transport "$DIPC_BENCH_TRANSPORT")
if [ "${DIPC_SHM_BENCH_KERNEL_SHM:-}" = 1 ]; then up_flags+=(--loopback); export DIPC_SHM_BENCH_KERNEL_SHM; fi

work=$(mktemp -d /tmp/dipc-shm-bench.XXXXXX)
log=$work/results
: >"$log"
clusters=()
cleanup() {
  local d
  for d in "${clusters[@]}"; do "$bin/dipc-sim" down --dir "$d" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

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

# part NAME CMD...: runs one part (CMD is `on ...` or `bounded ...`); human lines to the terminal, "@key value"
# lines to $log.
part() {
  local name=$1 rc
  shift
  echo "--- $name"
  "$@" 2>&1 | tee -a "$log" | grep -v '^@'
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "@part_${name}_rc $rc" >>"$log"
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
echo "dipc shared-memory benchmarks, $(date '+%F %T'), $(nproc) CPUs${DIPC_BENCH_CPUS:+, pinned to CPUs $DIPC_BENCH_CPUS}"
if up 2; then
  c2=$cdir
  peer_addr=$(on "$c2" node2 sh -c 'echo "$DIPC_NODE_ADDR"')
  [ -n "$peer_addr" ] || peer_addr=127.0.0.1
  part stream on "$c2" node1 --preload "$bin/shm_bench" stream "${stream_args[@]}"
  if ! grep -q '^@stream_native_gbps' "$log"; then  # the dipc half took the native figure down with it
    part stream_native on "$c2" node1 "$bin/shm_bench" stream --native-only "${stream_args[@]}"
  fi
  part uffd on "$c2" node1 "$bin/shm_bench" uffd --iters "$iters"
  part tcp4k on "$c2" node1 "$bin/shm_bench" tcp --iters "$iters"
  part readmiss on "$c2" node1 --preload "$bin/shm_bench" readmiss --iters "$iters"
  part upgrade1 on "$c2" node1 --preload "$bin/shm_bench" upgrade --readers 1 --iters "$iters"
  part jacobi_native on "$c2" node1 --preload "$bin/shm_bench" jacobi --mode native --n "$jn" --sweeps "$sweeps"
  page_counters "$c2" >"$work/pages.before"
  part jacobi_dipc on "$c2" node1 --preload "$bin/shm_bench" jacobi --mode dipc --n "$jn" --sweeps "$sweeps" \
    --nodes node1,node2
  page_counters "$c2" >"$work/pages.after"
  if grep -q '^@jacobi_dipc_us_per_sweep' "$log"; then
    # Counters also include the warm-up sweeps (3) and the first touch; reported per timed sweep all the same.
    awk -v s="$sweeps" 'NR == FNR { b[$1] = $2; next } { printf "@jacobi_dipc_traffic_%s_per_sweep %.2f\n", $1, ($2 - b[$1]) / s }' \
      "$work/pages.before" "$work/pages.after" >>"$log"
  fi
  "$bin/dipc-sim" down --dir "$c2" >/dev/null 2>&1
else
  echo "(no 2-node cluster: running the native parts on this host)"
  part stream bounded "$bin/shm_bench" stream --native-only "${stream_args[@]}"
  part uffd bounded "$bin/shm_bench" uffd --iters "$iters"
  part jacobi_native bounded "$bin/shm_bench" jacobi --mode native --n "$jn" --sweeps "$sweeps"
fi
if [ "$readers" -gt 1 ]; then
  if up $((readers + 1)); then
    cn=$cdir
    part "upgrade$readers" on "$cn" node1 --preload "$bin/shm_bench" upgrade --readers "$readers" --iters "$iters"
    "$bin/dipc-sim" down --dir "$cn" >/dev/null 2>&1
  fi
fi

python3 - "$log" "$readers" <<'PY'
import sys
r = {}
for line in open(sys.argv[1]):
    if line.startswith("@"):
        k, _, v = line[1:].strip().partition(" ")
        try: r[k] = float(v)
        except ValueError: pass
readers = int(sys.argv[2])
def f(k, fmt="{:.1f}"): return fmt.format(r[k]) if k in r else "n/a"
def lat(k): return f"{f(k + '_p50_us')} / {f(k + '_p99_us')}" if k + "_p50_us" in r else "n/a"
def ratio(a, b, fmt="{:.2f}"): return fmt.format(a / b) if a is not None and b else "n/a"
def g(k): return r.get(k)
rows = []
rows.append(("STREAM triad, 2 procs, native SysV shm (GB/s)", f("stream_native_gbps", "{:.2f}"), "baseline"))
rows.append(("STREAM triad, 2 procs, dipc shm (GB/s)", f("stream_dipc_gbps", "{:.2f}"),
             f"dipc/native best {ratio(g('stream_dipc_gbps'), g('stream_native_gbps'), '{:.3f}')}, "
             f"median of pass pairs {f('stream_ratio_paired', '{:.3f}')} (target >= 0.97)"))
rows.append(("uffd fault + UFFDIO_COPY, resolver thread (us p50/p99)", lat("uffd_thread"), ""))
rows.append(("uffd fault + UFFDIO_COPY, resolver process (us p50/p99)", lat("uffd_proc"), "baseline"))
rows.append(("  same, both pinned to one CPU (us p50/p99)", lat("uffd_proc_samecpu"), ""))
rows.append(("  same, pinned to two CPUs (us p50/p99)", lat("uffd_proc_othercpu"), "cross-CPU wake-up"))
rows.append(("raw TCP 4 KiB round trip node1<->node2 (us p50/p99)", lat("tcp4k"), "baseline"))
base = (g("tcp4k_p50_us") or 0) + (g("uffd_proc_p50_us") or 0) if "tcp4k_p50_us" in r and "uffd_proc_p50_us" in r else None
rows.append(("dipc read miss, node1 writes / node2 reads (us p50/p99)", lat("readmiss"),
             f"p50 / (TCP 4K + uffd) {ratio(g('readmiss_p50_us'), base)} (target <= 1.3)"))
rows.append(("dipc write upgrade, 1 reader node (us p50/p99)", lat("upgrade1"),
             f"p50 / TCP 4K {ratio(g('upgrade1_p50_us'), g('tcp4k_p50_us'))}"))
if readers > 1:
    rows.append((f"dipc write upgrade, {readers} reader nodes (us p50/p99)", lat(f"upgrade{readers}"),
                 f"p50 / TCP 4K {ratio(g(f'upgrade{readers}_p50_us'), g('tcp4k_p50_us'))} (separate cluster)"))
rows.append(("Jacobi, 2 procs on 1 node, native shm+sem (us/sweep)", f("jacobi_native_us_per_sweep"), "baseline"))
same = ""
if "jacobi_native_checksum" in r and "jacobi_dipc_checksum" in r:
    same = ", result identical" if r["jacobi_native_checksum"] == r["jacobi_dipc_checksum"] else ", RESULT DIFFERS"
rows.append(("Jacobi, 1 proc on each of 2 nodes, dipc (us/sweep)", f("jacobi_dipc_us_per_sweep"),
             f"dipc/native {ratio(g('jacobi_dipc_us_per_sweep'), g('jacobi_native_us_per_sweep'))}{same}"))
for k in sorted(k for k in r if k.startswith("jacobi_dipc_traffic_")):
    what = k[len("jacobi_dipc_traffic_"):-len("_per_sweep")].replace("_", " ")
    rows.append((f"  Jacobi dipc: {what} per sweep (node1+node2)", f(k, "{:.2f}"), ""))
w = max(len(a) for a, _, _ in rows)
print("\nSummary (baselines measured in the same run; n/a: part unavailable or failed, see above)")
for a, b, c in rows:
    print(f"  {a:<{w}}  {b:>15}  {c}")
PY

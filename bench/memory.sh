#!/usr/bin/env bash
# Memory a node's dipcd holds for a distributed segment touched on two nodes (issue 11 item 5): a 2-node dipc-sim
# cluster; node1 (the home) writes every page of a DIPC_MEM_MIB-MiB segment (default 1024), a process on node2
# reads every page, and while both are attached each dipcd's VmRSS, RssShmem and the bytes allocated in its view and
# frames memfds are printed (shm_bench memory). The ideal is about the touched size once per node.
#   usage: bench/memory.sh [BUILD_DIR]      (one run; DIPC_BENCH_OUT: where memory.log goes, default BUILD_DIR/bench-results)
# DIPC_MEM_TRANSPORT=verbs (inside the softroce VM, kernel trixie-backports: one rxe device per node) runs the
# cluster over verbs twice in turn, registration pinned (DIPC_VERBS_ODP=off) then On-Demand Paging
# (DIPC_VERBS_ODP=on), each on a fresh cluster; memory.log then holds both. E.g.
#   cd build && vm-run --kernel trixie-backports --mem 3072 -- env DIPC_MEM_TRANSPORT=verbs DIPC_MEM_MIB=256 ../bench/memory.sh .
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$top/build}" && pwd) || exit 2
bin=$build/bin
for f in shm_bench dipc-sim; do
  [ -x "$bin/$f" ] || { echo "memory.sh: $bin/$f missing: build first" >&2; exit 2; }
done
mib=${DIPC_MEM_MIB:-1024}
out_dir=${DIPC_BENCH_OUT:-$build/bench-results}
mkdir -p "$out_dir"
transport=${DIPC_MEM_TRANSPORT:-tcp}
case "$transport" in tcp) modes=(default) ;; verbs) modes=(off on) ;; *) echo "memory.sh: DIPC_MEM_TRANSPORT must be tcp or verbs" >&2; exit 2 ;; esac
dir=""
trap '[ -z "$dir" ] || { "$bin/dipc-sim" down --dir "$dir" >/dev/null 2>&1; rm -rf "$dir"; }' EXIT
: >"$out_dir/memory.log"
rc=0
for mode in "${modes[@]}"; do
  dir=$(mktemp -d /tmp/dipc-mem-bench.XXXXXX)
  up=(-n 2 --dir "$dir" --log-level warn --transport "$transport")
  what="transport $transport"
  if [ "$transport" = verbs ]; then up+=(--env "DIPC_VERBS_ODP=$mode"); what+=", DIPC_VERBS_ODP=$mode"; fi
  echo "dipc memory of a touched segment ($what), $(date '+%F %T'), load $(cut -d' ' -f1-3 /proc/loadavg)" |
    tee -a "$out_dir/memory.log"
  if ! "$bin/dipc-sim" up "${up[@]}" >"$dir.up.log" 2>&1; then
    echo "memory.sh: the 2-node cluster did not start:" >&2
    tail -n 5 "$dir.up.log" >&2
    exit 1
  fi
  "$bin/dipc-sim" exec --dir "$dir" node1 -- "$bin/dipc" status | grep -E ' via ' | sed 's/^/  /' | tee -a "$out_dir/memory.log"
  peer_addr=$("$bin/dipc-sim" exec --dir "$dir" node2 -- sh -c 'echo "$DIPC_NODE_ADDR"')
  DIPC_SIM="$bin/dipc-sim" DIPC_SIM_DIR="$dir" DIPC_PEER=node2 DIPC_PEER_ADDR="$peer_addr" \
    timeout -k 10 "${DIPC_SHM_PART_TIMEOUT:-900}" "$bin/dipc-sim" exec --dir "$dir" --preload node1 -- \
    "$bin/shm_bench" memory --mib "$mib" | tee -a "$out_dir/memory.log" | grep -v '^@'
  st=${PIPESTATUS[0]}
  [ "$st" = 0 ] || rc=$st
  "$bin/dipc-sim" down --dir "$dir" >/dev/null 2>&1
  rm -rf "$dir" "$dir.up.log"
  dir=""
done
exit "$rc"

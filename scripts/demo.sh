#!/usr/bin/env bash
# The main job on the embedded default: installs dependencies, builds, starts a 3-node cluster simulated on this
# machine (network + IPC namespaces when root, else loopback ports), runs the producer/consumer example with its
# processes on different nodes, then a shared-memory counter updated with atomics from all three nodes, prints what
# happened, and takes the cluster down again.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/install-deps.sh"
"$top/scripts/build.sh"
build=${DIPC_BUILD_DIR:-$top/build}
bin=$build/bin
dir=$(mktemp -d /tmp/dipc-demo.XXXXXX)
trap '"$bin/dipc-sim" down --dir "$dir" >/dev/null 2>&1 || true' EXIT
echo "== starting a simulated 3-node cluster in $dir"
"$bin/dipc-sim" up -n 3 --dir "$dir"
for n in 1 2 3; do "$bin/dipc-sim" exec --dir "$dir" "node$n" -- "$bin/dipc" status | head -1; done
echo "== producer/consumer: consumer on node3, producers on node1 and node2 (message queue + semaphores)"
"$bin/dipc-launch" --sim "$dir" --timeout 120 \
  -H node3 -n 1 "$build/bin/prodcons" consumer 2 200 : \
  -H node1 -n 1 "$build/bin/prodcons" producer 0 200 : \
  -H node2 -n 1 "$build/bin/prodcons" producer 1 200
echo "== shared memory: 2 processes on each node add to one counter in a dipc segment with atomic fetch-adds"
"$bin/dipc-launch" --sim "$dir" --timeout 120 -H node1,node2,node3 -n 6 "$build/bin/shmcount" 0x5eed 6 100000
echo "== objects are gone again:"
"$bin/dipc-sim" exec --dir "$dir" node3 -- "$bin/dipc" status | grep -E "hosted|refereed"
echo "== done"

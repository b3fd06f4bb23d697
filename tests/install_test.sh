#!/usr/bin/env bash
# Installs the build into a scratch prefix and runs the installed tools: a 2-node cluster in the loopback fallback
# (no namespaces), the example across both nodes through dipc-launch, and the pkg-config file.
#   usage: install_test.sh BUILD_DIR
set -euo pipefail
build=$1
prefix=$(mktemp -d /tmp/dipc-install.XXXXXX)
dir=$prefix/cluster
trap '"$prefix/bin/dipc-sim" down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
for f in bin/dipcd bin/dipc bin/dipc-launch bin/dipc-sim include/dipc/dipc.h lib/pkgconfig/dipc.pc \
         lib/systemd/system/dipcd.service; do
  [ -e "$prefix/$f" ] || { echo "missing after install: $f"; exit 1; }
done
lib=$(find "$prefix" -name libdipc.so | head -n 1)
[ -n "$lib" ] || { echo "missing after install: libdipc.so"; exit 1; }
exports=$(nm -D --defined-only "$lib" | awk '{print $3}' | sort | tr '\n' ' ')
[ "$exports" = "dipc_shm_attach_for dipc_shm_detach_for msgctl msgget msgrcv msgsnd semctl semget semop semtimedop shmat shmctl shmdt shmget " ] || { echo "unexpected exports: $exports"; exit 1; }
PKG_CONFIG_PATH=$prefix/lib/pkgconfig pkg-config --cflags --libs dipc | grep -q -- "-I.*/include"
"$prefix/bin/dipc-sim" up -n 2 --loopback --dir "$dir"
out=$("$prefix/bin/dipc-launch" --sim "$dir" --timeout 60 \
  -H node2 "$build/bin/prodcons" consumer 1 100 : -H node1 "$build/bin/prodcons" producer 0 100)
echo "$out"
grep -q "^\[node2:0\] consumer on node2: received 100 items, none lost, none duplicated" <<<"$out"
grep -q "^\[node1:1\] producer 0 on node1: sent 100 items" <<<"$out"
echo "install test passed"

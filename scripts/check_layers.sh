#!/usr/bin/env bash
# The layering rule, checked on the sources (ctest "layering"): each folder includes only its own headers and the
# layers below it; nothing in dsm/ or ipc/ names a transport provider (transport/<provider>/). The build enforces the
# same with per-target include roots (CMakeLists.txt, dipc_layer); this check names the offending line.
#   usage: check_layers.sh SOURCE_DIR
set -euo pipefail
src=${1:-.}
cd "$src"
status=0
# folder -> allowed include prefixes (besides <system> headers and include/dipc)
check() {
  local dir=$1; shift
  local allowed=("$@")
  while IFS= read -r line; do
    file=${line%%:*}
    inc=$(sed -E 's/.*#include "([^"]+)".*/\1/' <<<"$line")
    ok=0
    for a in "${allowed[@]}"; do
      if [[ $inc == "$a"* ]]; then ok=1; break; fi
    done
    if [[ $ok == 0 ]]; then
      echo "layering: $line  ($dir/ may include only: ${allowed[*]})"
      status=1
    fi
  done < <(grep -Hn '^#include "' "$dir"/*.h "$dir"/*.cc 2>/dev/null || true)
}
api=(common/ transport/transport.h transport/ops.h dipc/)
check common common/ dipc/
check transport/loopback "${api[@]}" transport/pending.h transport/loopback/
check transport/tcp "${api[@]}" transport/conn.h transport/link_seal.h transport/pending.h transport/tcp/
check transport/verbs "${api[@]}" transport/conn.h transport/link_seal.h transport/pending.h transport/verbs/
check transport "${api[@]}" transport/conn.h transport/link_seal.h transport/pending.h
check dsm "${api[@]}" dsm/
check ipc "${api[@]}" dsm/ ipc/
exit $status

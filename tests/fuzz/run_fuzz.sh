#!/usr/bin/env bash
# Builds the frame/protocol decoder fuzzer with clang (libFuzzer + ASan + UBSan) and runs it for a bounded time.
#   usage: run_fuzz.sh SOURCE_DIR WORK_DIR SECONDS
set -euo pipefail
src=$1 work=$2 secs=$3
mkdir -p "$work/corpus"
clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"$src" -I"$src/include" "$src/tests/fuzz/frame_fuzz.cc" "$src/common/frame.cc" "$src/ipc/protocol.cc" "$src/dsm/coherence.cc" \
  "$src/transport/conn.cc" "$src/transport/link_seal.cc" "$src/common/auth.cc" -lsodium -lcrypto -lfmt \
  -o "$work/frame_fuzz"
"$work/frame_fuzz" -max_total_time="$secs" -max_len=4096 -print_final_stats=1 "$work/corpus" 2>&1 | tail -n 12

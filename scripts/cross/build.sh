#!/usr/bin/env bash
# Cross-builds dipc for ARCH (s390x: 64-bit big-endian; i386: 32-bit) into DIR with Debian 12's cross compiler and
# a sysroot of that architecture's Debian packages (scripts/cross/sysroot.sh): dipcd, libdipc.so, the examples, the
# SysV test programs, and with --unit the unit tests. -O1 and only these targets: on a 2-core machine a cross
# build is most of the time CI spends on the mixed cluster. Programs run under qemu-user (tests/hetero/).
# Usage: build.sh ARCH DIR [--unit]
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
arch=$1
dir=$2
unit=${3:-}
case "$arch" in s390x|i386) ;; *) echo "build.sh: ARCH is s390x or i386" >&2; exit 2 ;; esac
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
"$top/scripts/cross/sysroot.sh" "$arch" "$dir/sysroot"
cmake -S "$top" -B "$dir" -G Ninja -DCMAKE_TOOLCHAIN_FILE="$top/cmake/toolchain-$arch.cmake" -DDIPC_SYSROOT="$dir/sysroot" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS_RELEASE=-O1 -DCMAKE_CXX_FLAGS_RELEASE=-O1 -DDIPC_BUILD_BENCH=OFF \
  >/dev/null
targets=(dipcd dipc_preload prodcons shmcount prog_ipcop prog_semundo prog_shm_tool)
[ "$unit" != --unit ] || targets+=(dipc_unit_tests)
cmake --build "$dir" -j "$(nproc)" --target "${targets[@]}"

#!/usr/bin/env bash
# Runs the whole unit suite of a cross build under qemu-user (the s390x build: 64-bit big-endian).
# Death tests fork without re-executing the binary (qemu-user without binfmt_misc cannot exec a foreign binary).
# Usage: unit_under_qemu.sh CROSS_BUILD QEMU      (exit 77 when the cross build has no unit tests)
set -euo pipefail
dir=$1
qemu=$2
bin="$dir/bin/dipc_unit_tests"
if [ ! -x "$bin" ]; then echo "no $bin (scripts/cross/build.sh ARCH DIR --unit): skipped"; exit 77; fi
command -v "$qemu" >/dev/null || { echo "$qemu is not installed: skipped"; exit 77; }
exec "$qemu" -L "$dir/sysroot" "$bin" --gtest_death_test_style=fast --gtest_brief=1

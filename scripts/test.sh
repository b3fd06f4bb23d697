#!/usr/bin/env bash
# Installs dependencies, builds, and runs the whole test suite (unit + integration) with ctest.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/install-deps.sh"
"$top/scripts/build.sh"
build=${DIPC_BUILD_DIR:-$top/build}
# Cross builds for the heterogeneous-cluster tests (ctest label hetero): s390x (with the unit tests, run under
# qemu-s390x) and i386. DIPC_HETERO=0 skips them (those tests then report "skipped").
if [ "${DIPC_HETERO:-1}" != 0 ]; then
  t0=$SECONDS
  "$top/scripts/cross/build.sh" s390x "$build/cross/s390x" --unit
  "$top/scripts/cross/build.sh" i386 "$build/cross/i386"
  echo "cross builds (s390x, i386): $((SECONDS - t0)) s"
fi
cd "$build"
ctest --output-on-failure --timeout 300 -j "${DIPC_TEST_JOBS:-2}" "$@"

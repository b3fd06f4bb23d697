#!/usr/bin/env bash
# Installs dependencies, builds, and runs the whole test suite (unit + integration) with ctest.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/install-deps.sh"
"$top/scripts/build.sh"
build=${DIPC_BUILD_DIR:-$top/build}
cd "$build"
ctest --output-on-failure --timeout 300 -j "${DIPC_TEST_JOBS:-2}" "$@"

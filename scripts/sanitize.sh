#!/usr/bin/env bash
# The sanitizer runs (presets of CMakePresets.json, Debug builds in build-<preset>/). Not part of CI (.ci/run): too
# long for it (see README, "Sanitizers").
#   scripts/sanitize.sh [asan|tsan]...   (default: asan tsan)
#   asan  AddressSanitizer + UndefinedBehaviorSanitizer in one build: the unit tests (ctest -L unit: the transport
#         conformance suite over tcp and loopback included), then the suites that run in namespaces: integration
#         Cluster.* and Shm.* (dipc-sim clusters, daemons and preloaded programs instrumented) and ctest -L faults
#   tsan  ThreadSanitizer: the unit tests (the event loop, the kernel-semaphore workers of ipc/service_ksem.cc)
# Only the targets a run needs are built (the machine may be shared: nice, -j ${DIPC_SANITIZE_JOBS:-2}).
# Every process writes its reports to build-<preset>/sanitizer-reports/ as well (log_path): a report from a daemon
# inside a simulated node is seen even when its test passes; the run fails when there is any.
# Suppressions (third-party false positives only, each with its reason) are in scripts/sanitize/.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
jobs=${DIPC_SANITIZE_JOBS:-2}
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(asan tsan)
rc=0

run_ctest() {  # build dir, ctest args...
  local b=$1
  shift
  (cd "$b" && ctest --output-on-failure -j "$jobs" "$@") || rc=1
}

reports() {  # report dir, preset: prints the reports and fails when there is any
  local d=$1 files
  mapfile -t files < <(find "$d" -type f -size +0 2>/dev/null | sort)
  if [ ${#files[@]} -gt 0 ]; then
    echo "sanitize.sh: $2: ${#files[@]} sanitizer report(s) in $d:" >&2
    head -n 60 "${files[@]}" >&2
    rc=1
  else
    echo "sanitize.sh: $2: no sanitizer report"
  fi
}

for preset in "${presets[@]}"; do
  b=$top/build-$preset
  t0=$SECONDS
  [ -f "$b/build.ninja" ] || cmake --preset "$preset" >/dev/null
  rep=$b/sanitizer-reports
  rm -rf "$rep"
  mkdir -p "$rep"
  case $preset in
    asan)
      nice cmake --build "$b" -j "$jobs" --target dipc_unit_tests
      export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$rep/ubsan"
      ASAN_OPTIONS="detect_leaks=1:log_path=$rep/asan" run_ctest "$b" -L unit
      nice cmake --build "$b" -j "$jobs" --target dipc_integration_tests dipc_faults_tests
      # The preload library is instrumented: the runtime goes first into every process (dipc-sim exec --preload keeps
      # it ahead of libdipc.so), also into uninstrumented ones (sh, env). Leak checks stay with the unit tests: in
      # the namespace suites they would report the shell's and the other uninstrumented programs' own. SIGBUS and
      # SIGSEGV are left to the program: the suites assert that a process dies of them (a block whose home is gone,
      # a write through an SHM_RDONLY attach).
      LD_PRELOAD=$(gcc -print-file-name=libasan.so) \
        ASAN_OPTIONS="detect_leaks=0:verify_asan_link_order=0:handle_sigbus=0:handle_segv=0:log_path=$rep/asan" \
        run_ctest "$b" -R '^(Cluster|Shm)\.|^Faults\.'
      ;;
    tsan)
      nice cmake --build "$b" -j "$jobs" --target dipc_unit_tests
      TSAN_OPTIONS="halt_on_error=0:second_deadlock_stack=1:log_path=$rep/tsan:suppressions=$top/scripts/sanitize/tsan.supp" \
        run_ctest "$b" -L unit
      ;;
    *)
      echo "usage: $0 [asan|tsan]..." >&2
      exit 2
      ;;
  esac
  reports "$rep" "$preset"
  echo "sanitize.sh: $preset took $((SECONDS - t0)) s"
done
exit $rc

#!/usr/bin/env bash
# Argo DSM beside dipc (issue 11 item 6): builds Argo DSM (github.com/etascale/argodsm, MPI backend, Debian's MPICH,
# whose ch4 device is UCX; UCX runs over tcp on the nodes' eth0) and bench/argo_bench.cc against it, then runs
# bench/run_shm.sh with the Argo parts on: in every round, on the same 2-node dipc-sim cluster and so over the same
# veth + bridge path, dipc's read miss, write miss, sequential first touch and Jacobi, then Argo's. Prints the
# per-round ratios (median, min..max) beside run_shm.sh's table; writes BUILD_DIR/bench-results/argo.json (the shape
# bench/plot reads: Argo's CDFs and Jacobi point) and shm.json.
#
#   usage: bench/argo.sh [BUILD_DIR]          (as root: dipc-sim needs namespaces; builds nothing of dipc)
#
# Optional, never a CI requirement. Knobs:
#   ARGO_PREFIX=DIR   an installed Argo (DIR/include/argo/argo.hpp, DIR/lib/libargo.so): skips fetching and building
#   ARGO_SRC=DIR      an argodsm checkout with its submodules (extern/qd or submodules/qd): built without network
#   ARGO_GIT, ARGO_REF  where to clone from (default https://github.com/etascale/argodsm.git, its default branch)
#   ARGO_ALLOCATION_POLICY  Argo's page placement (0 naive, the default: every page here is homed on rank 0 as every
#                     dipc page is homed on node1; 4 first-touch: Jacobi's rows homed on the rank that owns them)
#   DIPC_SHM_ROUNDS, DIPC_SHM_ITERS, DIPC_SHM_SWEEPS, DIPC_SHM_TOUCH_MIB, DIPC_SHM_JACOBI_N: as bench/run_shm.sh.
#
# What each needs to be correct: dipc is strictly consistent (shm_bench's processes synchronise with semaphores only
# to pace the rounds; a load sees the latest store without them); Argo is release consistent (a store is seen by
# another node only after both passed a synchronisation, here argo::barrier(), which also self-invalidates the
# reader's cache: that is where Argo's read miss comes from). Only the access itself is timed on both sides.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$top/build}" && pwd) || exit 2
work=$build/argo
mkdir -p "$work"
log=$work/build.log

if ! command -v mpic++ >/dev/null || ! command -v mpiexec >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "argo.sh: installing MPICH (apt-get install mpich libmpich-dev)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q mpich libmpich-dev >"$log" 2>&1 ||
      { tail -n 20 "$log" >&2; echo "argo.sh: apt-get install mpich failed" >&2; exit 2; }
  else
    echo "argo.sh: needs MPICH: apt-get install mpich libmpich-dev" >&2
    exit 2
  fi
fi

prefix=${ARGO_PREFIX:-}
if [ -z "$prefix" ]; then
  prefix=$work/install
  src=${ARGO_SRC:-$work/src}
  submod=ON
  if [ -n "${ARGO_SRC:-}" ]; then
    submod=OFF  # Argo's CMake would otherwise run `git submodule update --remote`, which needs the network
  elif [ ! -e "$src/CMakeLists.txt" ]; then
    echo "argo.sh: cloning ${ARGO_GIT:-https://github.com/etascale/argodsm.git}"
    if ! git clone -q --recurse-submodules ${ARGO_REF:+--branch "$ARGO_REF"} \
      "${ARGO_GIT:-https://github.com/etascale/argodsm.git}" "$src" >>"$log" 2>&1; then
      tail -n 5 "$log" >&2
      echo "argo.sh: cannot fetch Argo DSM; give ARGO_SRC (a checkout with submodules) or ARGO_PREFIX" >&2
      exit 2
    fi
  fi
  if [ ! -e "$prefix/lib/libargo.so" ]; then
    echo "argo.sh: building Argo DSM from $src (log: $log)"
    cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DARGO_BACKEND_MPI=ON -DARGO_BACKEND_SINGLENODE=OFF \
      -DARGO_TESTS=OFF -DBUILD_DOCUMENTATION=OFF -DGIT_SUBMODULE="$submod" -DCMAKE_C_COMPILER=mpicc \
      -DCMAKE_CXX_COMPILER=mpic++ -DCMAKE_INSTALL_PREFIX="$prefix" >>"$log" 2>&1 &&
      cmake --build "$work/build" -j "$(nproc)" >>"$log" 2>&1 && cmake --install "$work/build" >>"$log" 2>&1 ||
      { tail -n 20 "$log" >&2; echo "argo.sh: building Argo DSM failed (log: $log)" >&2; exit 2; }
  fi
fi
libdir=$prefix/lib
[ -d "$libdir" ] || libdir=$prefix/lib64
echo "argo.sh: building argo_bench against $prefix"
mpic++ -O2 -std=c++17 -I"$prefix/include/argo" -I"$prefix/include" -I"$top/bench" "$top/bench/argo_bench.cc" \
  -L"$libdir" -Wl,-rpath,"$libdir" -largo -largobackend-mpi -o "$work/argo_bench" >>"$log" 2>&1 ||
  { tail -n 20 "$log" >&2; echo "argo.sh: building bench/argo_bench.cc failed" >&2; exit 2; }

out=${DIPC_BENCH_OUT:-$build/bench-results}
mkdir -p "$out"
DIPC_SHM_ARGO=$work/argo_bench DIPC_SHM_UPGRADE_READERS=0 DIPC_BENCH_OUT=$out \
  DIPC_SHM_PARTS=${DIPC_SHM_PARTS:-'uffd|tcp4k|readmiss|writemiss|tcpbulk|seqread|jacobi_native|jacobi_dipc|argo_.*'} \
  "$top/bench/run_shm.sh" "$build"
cp "$out/shm.json" "$out/argo.json"
echo "argo.sh: $out/argo.json (bench/plot draws Argo beside dipc from it)"

#!/usr/bin/env bash
# Installs what dipc needs to build and test on Debian 12 (apt-get). Safe to run again.
set -euo pipefail
pkgs=(cmake ninja-build g++ clang pkgconf libtomlplusplus-dev libsodium-dev libssl-dev libcli11-dev libspdlog-dev libfmt-dev
      libgtest-dev libgmock-dev libbenchmark-dev libibverbs-dev librdmacm-dev libhwloc-dev libclang-rt-14-dev iproute2 util-linux
      procps python3 openssh-client openssh-server
      # the Soft-RoCE VM the verbs tests run in (../shared/softroce/vm-run) and RDMA tools for the benches
      qemu-system-x86 busybox-static cpio kmod xz-utils zstd ibverbs-utils ibverbs-providers perftest rdmacm-utils
      g++-s390x-linux-gnu g++-i686-linux-gnu qemu-user-static debian-archive-keyring)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

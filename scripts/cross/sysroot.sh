#!/usr/bin/env bash
# Makes a sysroot for cross-building dipc for ARCH (s390x, i386): Debian 12's packages of that architecture,
# fetched with apt-get download through a private apt configuration (the machine's sources, lists and dpkg
# database are left untouched) and unpacked with dpkg-deb -x. The C library and libstdc++ come from the cross
# compiler packages (g++-s390x-linux-gnu, g++-i686-linux-gnu); this adds the libraries dipc links with.
# Usage: sysroot.sh ARCH DIR     (safe to run again: packages already unpacked are kept)
set -euo pipefail
arch=$1
dir=$2
mirror=${DIPC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Runtime libraries and their -dev packages: what dipcd, libdipc.so, the examples and the unit tests need.
pkgs=(libsodium23 libsodium-dev libssl3 libssl-dev libtomlplusplus3 libtomlplusplus-dev libspdlog1.10 libspdlog-dev libfmt9 libfmt-dev
      libcli11-dev libgtest-dev libgmock-dev googletest libc6 libc6-dev libstdc++6 libgcc-s1 libstdc++-12-dev
      libgcc-12-dev linux-libc-dev
      libibverbs1 libibverbs-dev librdmacm1 librdmacm-dev libnl-3-200 libnl-route-3-200 libnl-3-dev libnl-route-3-dev
      libhwloc15 libhwloc-dev libudev1)
stamp="$dir/.dipc-sysroot-$arch"
want="${pkgs[*]}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
apt="$dir/.apt"
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs" "$apt/etc/preferences.d" "$apt/etc/apt.conf.d"
: > "$apt/status"
cat > "$apt/sources.list" <<SRC
deb [arch=$arch signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main
deb [arch=$arch signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm-updates main
SRC
opts=(-o "APT::Architecture=$arch" -o "APT::Architectures::=$arch" -o "Dir::Etc::SourceList=$apt/sources.list"
      -o "Dir::Etc::SourceParts=$apt/etc/sources.list.d" -o "Dir::Etc::Preferences=$apt/etc/preferences"
      -o "Dir::Etc::PreferencesParts=$apt/etc/preferences.d" -o "Dir::Etc::Parts=$apt/etc/apt.conf.d"
      -o "Dir::State::Lists=$apt/lists" -o "Dir::State::status=$apt/status" -o "Dir::Cache=$apt/cache"
      -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root" -o "APT::Get::List-Cleanup=0")
mkdir -p "$apt/etc/sources.list.d"
apt-get "${opts[@]}" -qq update
(cd "$apt/debs" && apt-get "${opts[@]}" -qq download "${pkgs[@]/%/:$arch}")
for deb in "$apt/debs"/*.deb; do dpkg-deb -x "$deb" "$dir"; done
# Absolute symlinks inside the sysroot (libfoo.so -> /lib/...) must point into it.
find "$dir" -type l -lname '/*' | while read -r l; do ln -sfn "$dir$(readlink "$l")" "$l"; done
echo "$want" > "$stamp"

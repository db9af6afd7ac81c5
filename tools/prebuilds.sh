#!/usr/bin/env bash
# The addon's prebuilds, shipped in the npm tarball so that installing needs no compiler:
# prebuilds/linux-<arch>/socket-takeover.<libc>.node, N-API (NAPI_VERSION is pinned in binding.gyp),
# found at run time by node-gyp-build. `npm pack` runs this (prepack); by hand, `npm run prebuilds`.
#
# linux-x64 glibc is built with the host's cc and must succeed. linux-x64 musl (musl-gcc, from
# Debian's musl-tools) and linux-arm64 glibc (aarch64-linux-gnu-gcc, from gcc-aarch64-linux-gnu) are
# built when their compiler is here, and skipped with a message when it is not. Each file is then
# checked with readelf: its machine, and the C library it links. A musl build that needed glibc's
# libc.so.6 or a GLIBC_ symbol version would fail to load on Alpine, hence the libc tag in the name,
# which node-gyp-build matches against the system it runs on.
set -euo pipefail
[ "$(uname -sm)" = 'Linux x86_64' ] || {
  echo 'prebuilds: builds on an x86_64 Linux host' >&2
  exit 1
}
root=$(cd "$(dirname "$0")/.." && pwd)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# node-gyp builds in its working directory: a copy leaves the checkout's build/ (what the tests load) alone.
cp -r "$root/binding.gyp" "$root/native" "$root/package.json" "$stage/"
rm -rf "$root/prebuilds"

# Without a nodedir, node-gyp downloads headers; the running Node's own serve any N-API build.
if [ -z "${npm_config_nodedir:-}" ]; then
  prefix=$(dirname "$(dirname "$(command -v node)")")
  if [ -f "$prefix/include/node/node_api.h" ]; then export npm_config_nodedir=$prefix; fi
fi

# The oldest glibc the glibc prebuilds load on (fstat and fstatat are GLIBC_2.33 symbols when built on Debian 12).
glibc_floor=2.33

fail() {
  echo "prebuilds: $*" >&2
  exit 1
}

# check FILE MACHINE LIBC: the ELF header's machine, and the libc in DT_NEEDED.
check() {
  local file=$1 machine=$2 libc=$3 header needed versions
  header=$(readelf -h "$file")
  grep -q 'Type: *DYN' <<<"$header" || fail "$file is not a shared object"
  grep -q "Machine: *$machine\$" <<<"$header" || fail "$file is not built for $machine: $(grep Machine: <<<"$header")"
  needed=$(readelf -d "$file" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | paste -sd' ')
  versions=$(readelf --dyn-syms -W "$file" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1 || true)
  case $libc in
    glibc)
      [[ " $needed " == *' libc.so.6 '* ]] || fail "$file does not link glibc (needs: $needed)"
      # The README promises this floor: a newer build host raises it unless the C avoids the new symbols.
      [ "$(printf '%s\n' "$versions" GLIBC_$glibc_floor | sort -V | tail -n1)" = GLIBC_$glibc_floor ] ||
        fail "$file needs $versions, past the glibc $glibc_floor that the README promises"
      ;;
    musl)
      [[ " $needed " == *' libc.so '* && " $needed " != *libc.so.6* ]] || fail "$file does not link musl (needs: $needed)"
      [ -z "$versions" ] || fail "$file wants glibc symbol versions ($versions)"
      ;;
  esac
  echo "prebuilds: ${file#"$root"/}: $machine, needs $needed${versions:+, glibc >= ${versions#GLIBC_}}"
}

# build ARCH LIBC CC STRIP MACHINE DEBIAN_PACKAGE
build() {
  local arch=$1 libc=$2 cc=$3 strip=$4 machine=$5 package=$6
  if ! command -v "$cc" >/dev/null; then
    [ -n "$package" ] || fail "no $cc: linux-$arch $libc is required"
    echo "prebuilds: skipped linux-$arch $libc: no $cc (apt-get install $package)"
    return
  fi
  rm -rf "$stage/build"
  # CXX and LINK too: gyp links with the C++ driver, and the cross and musl toolchains have only a C one.
  (cd "$stage" && CC=$cc CXX=$cc LINK=$cc prebuildify --napi --arch="$arch" --tag-libc="$libc" \
    --strip --strip-bin="$strip" --out="$root") >"$stage/log" 2>&1 || {
    cat "$stage/log" >&2
    fail "linux-$arch $libc: the build failed"
  }
  check "$root/prebuilds/linux-$arch/socket-takeover.$libc.node" "$machine" "$libc"
}

build x64 glibc cc strip 'Advanced Micro Devices X86-64' ''
build x64 musl musl-gcc strip 'Advanced Micro Devices X86-64' musl-tools
build arm64 glibc aarch64-linux-gnu-gcc aarch64-linux-gnu-strip AArch64 gcc-aarch64-linux-gnu

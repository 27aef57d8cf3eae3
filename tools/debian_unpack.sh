#!/usr/bin/env bash
# Downloads packages of any Debian suite from deb.debian.org and unpacks them into a folder
# (dpkg -x), installing nothing: how tools/check_torch2.sh and tools/check_cuda_build.sh put a
# newer Debian's LibTorch headers and libraries beside this machine's. What is installed here
# does not count (a newer installed libtorch-dev would otherwise stand in for the suite's).
#
#   tools/debian_unpack.sh [--depends REGEX] SUITE COMPONENTS DIR PACKAGE...
#     e.g. tools/debian_unpack.sh trixie main build/h libtorch-dev
#     --depends REGEX   also the packages' dependencies whose names match REGEX
#                       (libtorch-cuda-dev's versioned libtorch-cuda-2.6: 'libtorch-cuda-[0-9.]*')
set -euo pipefail
depends=""
if [ "${1:-}" = --depends ]; then depends=$2; shift 2; fi
if (($# < 4)); then sed -n '2,10p' "$0" >&2; exit 2; fi
suite=$1 components=$2 out=$3
shift 3

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 777 "$work"  # apt's download user writes there
mkdir -p "$work/lists/partial"
: >"$work/status"
echo "deb http://deb.debian.org/debian $suite $components" >"$work/sources.list"
apt_options=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$work/lists" -o "Dir::State::status=$work/status"
             -o APT::Architecture=amd64 -q)
apt-get "${apt_options[@]}" update >/dev/null
(cd "$work" && apt-get "${apt_options[@]}" download "$@" >/dev/null)
if [ -n "$depends" ]; then
  extra=$(for deb in "$work"/*.deb; do dpkg-deb -f "$deb" Depends; done | grep -o "$depends" | sort -u)
  if [ -n "$extra" ]; then
    echo "debian_unpack.sh: downloading $(echo $extra) from $suite"
    # shellcheck disable=SC2086  # one word per package
    (cd "$work" && apt-get "${apt_options[@]}" download $extra >/dev/null)
  fi
fi
rm -rf "$out"
mkdir -p "$out"
for deb in "$work"/*.deb; do dpkg -x "$deb" "$out"; done

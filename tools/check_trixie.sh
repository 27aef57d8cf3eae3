#!/usr/bin/env bash
# Builds sweep and runs its whole test suite in a Debian 13 (trixie) root: LibTorch 2.6, GCC 14,
# Boost 1.83, CMake 3.31 and Python's torch 2.6 for the reference check. CI tests Debian 12
# (LibTorch 1.13); GPU machines run a PyTorch 2.x, and this is where the trainer's 2.x code
# runs, on CPU, from the 2-rank Gloo trials to checkpoint resume, without a GPU machine.
# tools/check_torch2.sh only type-checks it, tools/check_cuda_build.sh links it against CUDA.
#
# By hand, as root (mmdebstrap, chroot, bind mounts), with Debian's mirror reachable: the root
# (about 2 GB) is made once and kept; the working tree is copied in on every run.
#
#   tools/check_trixie.sh [--root DIR] [-- CTEST_ARGS...]   # default root /var/tmp/sweep-trixie
#
# Chromium and clang are left out of the root, so dashboard_browser_test and fuzz_smoke are not
# run there (ctest -E); CI runs both on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
root=/var/tmp/sweep-trixie
ctest_args=()
while (($#)); do
  case "$1" in
    --root) root=$2; shift 2 ;;
    --) shift; ctest_args=("$@"); break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "check_trixie.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
say() { echo "check_trixie.sh: $*"; }
[ "$(id -u)" -eq 0 ] || { echo "check_trixie.sh: run as root (chroot, mount)" >&2; exit 1; }

# tools/setup.sh's list, in trixie's names (Boost without a version, Boost.URL a library).
packages=g++,cmake,ninja-build,pkg-config,git,libtorch-dev,libopenblas0-pthread,libgloo-dev
packages+=,libyaml-cpp-dev,libcli11-dev,nlohmann-json3-dev,libabsl-dev,libspdlog-dev,libfmt-dev
packages+=,libgtest-dev,libgmock-dev,libsqlite3-dev,sqlite3,libgrpc++-dev,protobuf-compiler-grpc
packages+=,libprotobuf-dev,protobuf-compiler,libboost-dev,libboost-filesystem-dev
packages+=,libboost-url-dev,libeigen3-dev,openssl,python3,python3-torch,python3-yaml
packages+=,python3-numpy,bible-kjv,procps,mount
if [ ! -x "$root/usr/bin/cmake" ]; then
  command -v mmdebstrap >/dev/null || { echo "check_trixie.sh: apt-get install mmdebstrap" >&2; exit 1; }
  say "making a trixie root in $root"
  mmdebstrap --variant=apt --include="$packages" trixie "$root" http://deb.debian.org/debian
fi

mounted=()
cleanup() { for m in "${mounted[@]}"; do umount "$m" || true; done; }
trap cleanup EXIT
for fs in proc dev; do
  if ! mountpoint -q "$root/$fs"; then mount --bind "/$fs" "$root/$fs"; mounted+=("$root/$fs"); fi
done

say "copying the working tree to $root/src"
mkdir -p "$root/src"
find "$root/src" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
git ls-files -z --cached --others --exclude-standard |
  tar --null --ignore-failed-read -cf - -T - 2>/dev/null | tar -xf - -C "$root/src"

chroot "$root" bash -c '
  set -euo pipefail
  cd /src
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -Wno-dev >build-configure.log
  cmake --build build -j "$(nproc)"
  data=/root/.local/share/sweep/data
  [ -s $data/kjv/kjv.chunk.00.jsonl ] || ./build/sweep-prepare-data kjv --out $data
  version=$(sed -n "s/^#define TORCH_VERSION_[A-Z]* \([0-9]*\)$/\1/p" \
            /usr/include/torch/csrc/api/include/torch/version.h | paste -sd.)
  echo "check_trixie.sh: LibTorch $version, $(g++ --version | head -1)"
'
say "running the tests"
chroot "$root" bash -c 'cd /src && ctest --test-dir build --output-on-failure -j "$(nproc)" \
  -E "dashboard_browser_test|fuzz_smoke" "$@"' ctest "${ctest_args[@]}"

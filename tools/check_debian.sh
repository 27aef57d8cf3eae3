#!/usr/bin/env bash
# Builds sweep and runs its whole test suite in a newer Debian's root: trixie (Debian 13:
# LibTorch 2.6, GCC 14, Boost 1.83, CMake 3.31, Python's torch 2.6 for the reference check) or
# sid (unstable: LibTorch 2.14 in 2026-11). CI tests Debian 12 (LibTorch 1.13); GPU machines run
# a PyTorch 2.x, and this is where the trainer's 2.x code runs, on CPU, from the 2-rank Gloo
# trials to checkpoint resume, without a GPU machine. tools/check_torch2.sh only type-checks it,
# tools/check_cuda_build.sh links it against CUDA.
#
# It runs the README's test command there (tools/setup.sh --tests, then ctest), so it also checks
# that the two commands work on that Debian. By hand, as root (mmdebstrap, chroot, bind mounts),
# with Debian's and npm's registries reachable: the root (about 3 GB) is made once and kept; the
# working tree is copied in on every run.
#
#   tools/check_debian.sh [--suite trixie|sid] [--root DIR] [-- CTEST_ARGS...]
#                         # default root: /var/tmp/sweep-SUITE
set -euo pipefail
cd "$(dirname "$0")/.."
suite=trixie
root=""
ctest_args=()
while (($#)); do
  case "$1" in
    --suite) suite=$2; shift 2 ;;
    --root) root=$2; shift 2 ;;
    --) shift; ctest_args=("$@"); break ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "check_debian.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$root" ] || root=/var/tmp/sweep-$suite
say() { echo "check_debian.sh: $*"; }
[ "$(id -u)" -eq 0 ] || { echo "check_debian.sh: run as root (chroot, mount)" >&2; exit 1; }

if [ ! -x "$root/usr/bin/apt-get" ]; then
  command -v mmdebstrap >/dev/null || { echo "check_debian.sh: apt-get install mmdebstrap" >&2; exit 1; }
  say "making a $suite root in $root"
  # What a fresh machine has (priority required: apt, mount, ...); tools/setup.sh adds the rest.
  # A mirror's copy of sid can lag behind its Valid-Until date; the check does not mind.
  mmdebstrap --variant=required --aptopt='Acquire::Check-Valid-Until "false"' \
             "$suite" "$root" http://deb.debian.org/debian
fi

mounted=()
cleanup() { for m in "${mounted[@]}"; do umount "$m" || true; done; }
trap cleanup EXIT
for fs in proc sys dev dev/shm dev/pts; do  # Chromium (the browser test) wants all of them
  if ! mountpoint -q "$root/$fs"; then
    mkdir -p "$root/$fs"
    mount --bind "/$fs" "$root/$fs"
    mounted=("$root/$fs" "${mounted[@]}")  # unmounted in reverse order
  fi
done
# The root reaches the registries as the host does: its resolver, and its CA certificates for
# npm (a proxy's own CA, where there is one).
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/host-ca-certificates.crt" 2>/dev/null || true

say "copying the working tree to $root/src"
mkdir -p "$root/src"
find "$root/src" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
git ls-files -z --cached --others --exclude-standard |
  tar --null --ignore-failed-read -cf - -T - 2>/dev/null | tar -xf - -C "$root/src"

# The README's test command, as .ci/run runs it.
say "running tools/setup.sh --tests and ctest in the $suite root"
NODE_EXTRA_CA_CERTS=/etc/host-ca-certificates.crt chroot "$root" bash -c 'cd /src &&
  bash tools/setup.sh --tests &&
  version_h=/usr/include/torch/csrc/api/include/torch/version.h &&
  if [ -f /usr/include/torch/headeronly/version.h ]; then
    version_h=/usr/include/torch/headeronly/version.h  # from some 2.x on
  fi &&
  version=$(sed -n "s/^#define TORCH_VERSION_[A-Z]* \([0-9]*\)$/\1/p" "$version_h" | paste -sd.) &&
  echo "check_debian.sh: LibTorch $version, $(g++ --version | head -1)" &&
  ctest --test-dir build --output-on-failure -j "$(nproc)" "$@"' ctest "${ctest_args[@]}"

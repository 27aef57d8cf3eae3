#!/usr/bin/env bash
# Type-checks sweep-train's LibTorch 2.x code paths (CUDA attention, fused AdamW, autocast, the
# NCCL backend) without a GPU machine: compiles every source of the trainer with -fsyntax-only
# against the headers of a newer Debian's libtorch-dev, which this Debian 12 machine can
# download but not install, in the C++ standard that LibTorch asks for. CI runs it against
# trixie's 2.6 (ctest trainer_compiles_against_libtorch2) so a change that breaks the GPU build
# fails here, not on the next GPU machine; `--suite sid` checks unstable's (2.14 in 2026-11,
# C++20), nearer to what GPU machines run.
#
#   tools/check_torch2.sh [--suite trixie|sid] [--headers DIR]   # DIR: unpacked headers (cached)
set -euo pipefail
cd "$(dirname "$0")/.."
suite=trixie
headers=""
while (($#)); do
  case "$1" in
    --suite) suite=$2; shift 2 ;;
    --headers) headers=$2; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "check_torch2.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
# trixie's keeps the old folder, which CI caches.
[ -n "$headers" ] || headers=$PWD/build/torch2-headers$([ "$suite" = trixie ] || echo "-$suite")

if [ ! -f "$headers/usr/include/torch/csrc/api/include/torch/version.h" ]; then
  bash tools/debian_unpack.sh "$suite" main "$headers" libtorch-dev
fi
include=$headers/usr/include
version_h=$include/torch/csrc/api/include/torch/version.h
[ -f "$include/torch/headeronly/version.h" ] && version_h=$include/torch/headeronly/version.h
version=$(sed -n 's/^#define TORCH_VERSION_\(MAJOR\|MINOR\) \([0-9]*\)/\2/p' "$version_h" | paste -sd.)
# The C++ standard this LibTorch's CMake config asks of its users (20 from some 2.x on); the
# trainer's CMake raises its own to match (CMakeLists.txt, after find_package(Torch)).
standard=$(sed -n 's/^ *CXX_STANDARD \([0-9]*\)$/\1/p' \
           "$headers"/usr/lib/*/cmake/Torch/TorchConfig.cmake 2>/dev/null | head -1)
[ "${standard:-0}" -gt 17 ] || standard=17
flags=(-std=c++$standard -fsyntax-only -I. -I"$include" -I"$include/torch/csrc/api/include")
# NCCL's path needs nccl.h and CUDA's runtime headers (this image's CUDA toolkit has both).
# The CPU package lacks the one header a CUDA build generates (c10's CUDA export macros):
# an empty stand-in beside the headers is enough to type-check against them.
cuda_include=""
for dir in /usr/local/cuda/include /usr/local/cuda/targets/x86_64-linux/include; do
  [ -f "$dir/nccl.h" ] && [ -f "$dir/cuda_runtime_api.h" ] && { cuda_include=$dir; break; }
done
generated=$headers/generated
mkdir -p "$generated/c10/cuda/impl"
[ -f "$generated/c10/cuda/impl/cuda_cmake_macros.h" ] ||
  echo "#pragma once" >"$generated/c10/cuda/impl/cuda_cmake_macros.h"

sources=(worker/trainer/*.cc tools/prepare_data.cc)
failed=0
check() {  # label, extra flags..., source
  local label=$1 source=${*: -1}
  local errors
  if errors=$(g++ "${flags[@]}" "${@:2:$#-2}" "$source" 2>&1); then
    echo "ok    $label $source"
  else
    echo "FAIL  $label $source"
    head -40 <<<"$errors"
    failed=1
  fi
}
echo "check_torch2.sh: LibTorch $version headers, C++$standard"
for source in "${sources[@]}"; do check "torch $version" "$source"; done
check "torch $version + gloo" -DUSE_C10D_GLOO worker/trainer/distributed.cc
if [ -n "$cuda_include" ]; then
  check "torch $version + nccl" -DUSE_C10D_NCCL -DUSE_CUDA -I"$cuda_include" -I"$generated" \
        worker/trainer/distributed.cc
else
  echo "skip  nccl: no nccl.h + CUDA headers on this machine"
fi
exit $failed

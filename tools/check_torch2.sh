#!/usr/bin/env bash
# Type-checks sweep-train's LibTorch 2.x code paths (CUDA attention, fused AdamW, autocast, the
# NCCL backend) without a GPU machine: compiles every LibTorch source of the trainer with
# -fsyntax-only against the headers of Debian trixie's libtorch-dev (2.6), which this Debian 12
# machine can download but not install. CI runs it (ctest trainer_compiles_against_libtorch2)
# so a change that breaks the GPU build fails here, not on the next GPU machine.
#
#   tools/check_torch2.sh [--headers DIR]   # DIR: where the headers are unpacked (cached)
set -euo pipefail
cd "$(dirname "$0")/.."
headers=$PWD/build/torch2-headers
while (($#)); do
  case "$1" in
    --headers) headers=$2; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "check_torch2.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ ! -f "$headers/usr/include/torch/csrc/api/include/torch/version.h" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  chmod 777 "$work"
  mkdir -p "$work/lists/partial"
  echo "deb http://deb.debian.org/debian trixie main" >"$work/sources.list"
  apt_options=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
               -o "Dir::State::Lists=$work/lists" -o APT::Architecture=amd64 -q)
  apt-get "${apt_options[@]}" update >/dev/null
  (cd "$work" && apt-get "${apt_options[@]}" download libtorch-dev >/dev/null)
  rm -rf "$headers"
  mkdir -p "$headers"
  dpkg -x "$work"/libtorch-dev_*.deb "$headers"
fi
include=$headers/usr/include
version=$(sed -n 's/^#define TORCH_VERSION_\(MAJOR\|MINOR\) \([0-9]*\)/\2/p' \
          "$include/torch/csrc/api/include/torch/version.h" | paste -sd.)
flags=(-std=c++17 -fsyntax-only -I. -I"$include" -I"$include/torch/csrc/api/include")
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

sources=(worker/trainer/model.cc worker/trainer/optimizer.cc worker/trainer/train.cc
         worker/trainer/checkpoint.cc worker/trainer/fused_ops.cc)
[ -f worker/trainer/distributed.cc ] && sources+=(worker/trainer/distributed.cc)
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
echo "check_torch2.sh: LibTorch $version headers"
for source in "${sources[@]}"; do check "torch $version" "$source"; done
if [ -f worker/trainer/distributed.cc ]; then
  check "torch $version + gloo" -DUSE_C10D_GLOO worker/trainer/distributed.cc
  if [ -n "$cuda_include" ]; then
    check "torch $version + nccl" -DUSE_C10D_NCCL -DUSE_CUDA -I"$cuda_include" -I"$generated" \
          worker/trainer/distributed.cc
  else
    echo "skip  nccl: no nccl.h + CUDA headers on this machine"
  fi
fi
exit $failed

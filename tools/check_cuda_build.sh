#!/usr/bin/env bash
# Builds sweep-train the way a GPU machine does (docs/gpu.md: SWEEP_TRAINER_ONLY, a CUDA
# LibTorch found through CMAKE_PREFIX_PATH, NCCL and Gloo) against a real CUDA LibTorch, on a
# machine without a GPU: Debian trixie's libtorch-cuda-dev and libtorch-cuda-2.x (contrib, about
# 480 MB), downloaded and unpacked, not installed, with this machine's CUDA toolkit (nvcc, nccl.h).
#
# It configures through the CUDA branch of LibTorch's CMake config and of ours, compiles every
# trainer source with USE_CUDA, USE_C10D_NCCL and USE_C10D_GLOO, and links: every LibTorch
# symbol the trainer uses (ProcessGroupNCCL, _fused_adamw_, scaled_dot_product_attention, the
# autocast API, torch::cuda) must resolve in the CUDA libraries. The binary cannot run here
# (trixie's libraries need glibc 2.38 and the CUDA runtime), so the link lets those libraries'
# own references stay open (--allow-shlib-undefined); the trainer's may not. By hand: CI's
# machines have no CUDA toolkit. tools/check_torch2.sh type-checks the same sources in CI.
#
#   tools/check_cuda_build.sh [--cuda DIR] [--torch DIR] [--build DIR]
#     --cuda DIR   the CUDA toolkit (default: the one nvcc on PATH or /usr/local/cuda belongs to)
#     --torch DIR  where the LibTorch packages are unpacked (default build/torch-cuda; cached)
#     --build DIR  the build folder (default build-cuda-check)
set -euo pipefail
cd "$(dirname "$0")/.."
cuda="" torch=$PWD/build/torch-cuda build=$PWD/build-cuda-check
while (($#)); do
  case "$1" in
    --cuda) cuda=$2; shift 2 ;;
    --torch) torch=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "check_cuda_build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
say() { echo "check_cuda_build.sh: $*"; }

if [ -z "$cuda" ]; then
  if command -v nvcc >/dev/null; then cuda=$(dirname "$(dirname "$(command -v nvcc)")")
  else cuda=/usr/local/cuda; fi
fi
if [ ! -x "$cuda/bin/nvcc" ]; then
  echo "check_cuda_build.sh: no CUDA toolkit (no $cuda/bin/nvcc); pass --cuda DIR" >&2
  exit 1
fi
cuda_version=$("$cuda/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
nccl_include=""
for dir in "$cuda/include" "$cuda/targets/x86_64-linux/include" /usr/include; do
  [ -f "$dir/nccl.h" ] && { nccl_include=$dir; break; }
done
if [ -z "$nccl_include" ]; then
  echo "check_cuda_build.sh: no nccl.h beside $cuda (install NCCL's headers)" >&2
  exit 1
fi

if ! compgen -G "$torch/usr/lib/*/libtorch_cuda.so" >/dev/null; then
  # The shared objects' package is named after the version (libtorch-cuda-2.6): about 480 MB.
  say "downloading trixie's libtorch-cuda-dev and its libraries"
  bash tools/debian_unpack.sh --depends 'libtorch-cuda-[0-9.]*' trixie "main contrib" "$torch" \
    libtorch-cuda-dev
fi
torch_prefix=$torch/usr
prefix_path=$torch_prefix
# Use the libraries a GPU machine is given (tools/gpu_deps.sh) when they are here.
[ -d .gpu-deps/root/usr ] && prefix_path+=";$PWD/.gpu-deps/root/usr"

mkdir -p "$build"
# LibTorch 2.6's CMake config names CUDA::nvToolsExt, which CUDA 13 no longer has (newer
# PyTorch builds for CUDA 13 use the header-only NVTX 3). The link does not need it.
cat >"$build/cuda13-nvtoolsext.cmake" <<'EOF'
if(NOT TARGET CUDA::nvToolsExt)
  add_library(CUDA::nvToolsExt INTERFACE IMPORTED)
endif()
EOF
say "CUDA $cuda_version in $cuda, nccl.h in $nccl_include, LibTorch in $torch_prefix"
log=$build/check.log
if ! NCCL_INCLUDE_DIR=$nccl_include CUDAToolkit_ROOT=$cuda PATH=$cuda/bin:$PATH \
     cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSWEEP_TRAINER_ONLY=ON \
           -DSWEEP_BUILD_TESTS=OFF -DCMAKE_PREFIX_PATH="$prefix_path" \
           -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_PROJECT_INCLUDE="$build/cuda13-nvtoolsext.cmake" \
           -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined >"$log" 2>&1; then
  grep -A8 "CMake Error" "$log" | head -40
  say "FAIL: configure ($log)"
  exit 1
fi
for backend in NCCL GLOO; do
  if ! grep -q "^SWEEP_${backend}_INCLUDE_DIR:PATH=/" "$build/CMakeCache.txt"; then
    say "FAIL: the configure did not enable c10d's $backend backend ($log)"
    exit 1
  fi
done
say "building sweep-train, sweep-prepare-data"
if ! cmake --build "$build" --target sweep-train sweep-prepare-data -j "$(nproc)" >>"$log" 2>&1; then
  grep -v "warning: lib.*not found" "$log" | grep -m20 -B2 -A6 "error" || tail -40 "$log"
  say "FAIL: build ($log)"
  exit 1
fi

# What the binary must hold: the CUDA library itself (so that its kernels register) and the
# CUDA-only code paths, resolved against it.
binary=$build/sweep-train
failed=0
readelf -d "$binary" | grep -q 'NEEDED.*libtorch_cuda' ||
  { say "FAIL: $binary does not load libtorch_cuda"; failed=1; }
undefined=$(nm -C -u "$binary")
for symbol in 'c10d::ProcessGroupNCCL::ProcessGroupNCCL' 'c10d::ProcessGroupGloo::ProcessGroupGloo' \
              'at::_ops::_fused_adamw_::call' 'at::_ops::scaled_dot_product_attention::call' \
              'at::autocast::set_autocast_enabled' 'torch::cuda::is_available'; do
  if grep -qF "$symbol" <<<"$undefined"; then
    echo "ok    $symbol"
  else
    echo "FAIL  $symbol is not used by $binary (a CUDA code path was compiled out)"
    failed=1
  fi
done
torch_version=$(basename "$(readlink -f "$(compgen -G "$torch_prefix/lib/*/libtorch_cuda.so")")")
((failed)) || say "ok: sweep-train links against $torch_version with NCCL and Gloo (CUDA $cuda_version)"
exit $failed

#!/usr/bin/env bash
# The GPU check of issue #9, one prepared script for a machine with a CUDA PyTorch install
# (docs/gpu.md): builds sweep-train against that PyTorch's LibTorch with the libraries
# tools/gpu_deps.sh carried, then runs tools/gpu_bench.py (peak bf16 matmul, a GPU-vs-CPU
# loss check, GPT-2-small tokens/s and MFU against the PyTorch eager reference, 8 packed tiny
# trials). Results: $OUT/gpu_check.md and .json (OUT defaults to build-gpu/gpu_check).
#
#   tools/gpu_deps.sh                       # here, on Debian 12: fills .gpu-deps/
#   tools/gpu_check.sh [--steps N]          # there, from the repository root
#   tools/gpu_check.sh --device cpu --quick --sweep-train build/sweep-train   # dry run here
#
# Options: --steps N (GPT-2 run, default 300), --sweep-train PATH (skip the build),
# --device cuda|cpu, --quick (tiny sizes), --build-dir DIR (default build-gpu).
# Environment: PYTHON (default python3, the one with torch), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
build_dir=build-gpu
sweep_train=""
bench_args=()
while (($#)); do
  case "$1" in
    --sweep-train) sweep_train=$2; shift 2 ;;
    --build-dir) build_dir=$2; shift 2 ;;
    --steps|--device|--packed) bench_args+=("$1" "$2"); shift 2 ;;
    --quick) bench_args+=("$1"); shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
out=${OUT:-$build_dir/gpu_check}
mkdir -p "$out"
say() { echo "[gpu_check $(date +%H:%M:%S)] $*" >&2; }

[ -d .gpu-deps/root/usr ] || { echo "gpu_check.sh: .gpu-deps/ missing: run tools/gpu_deps.sh on Debian 12 and carry it" >&2; exit 1; }
export SWEEP_DATA_DIR=${SWEEP_DATA_DIR:-$PWD/.gpu-deps/data}

if [ -z "$sweep_train" ]; then
  read -r torch_version torch_prefix abi cuda < <("$python" - <<'EOF'
import torch
print(torch.__version__, torch.utils.cmake_prefix_path, int(torch._C._GLIBCXX_USE_CXX11_ABI),
      torch.version.cuda or "none")
EOF
  )
  say "torch $torch_version (CUDA $cuda, C++11 ABI $abi) at $torch_prefix"
  if [ "$abi" != 1 ]; then
    echo "gpu_check.sh: this PyTorch uses the pre-C++11 ABI; the carried Debian libraries need the C++11 ABI" >&2
    exit 1
  fi
  # NCCL's header for the data-parallel path: the nvidia-nccl wheel next to torch, or CUDA's.
  # (nvidia/nccl/include in the cu12 wheels; searched for, as the cu13 layout may differ.)
  nccl_include=$("$python" - 2>/dev/null <<'EOF'
import glob, os
import nvidia
for root in nvidia.__path__:
    for header in sorted(glob.glob(os.path.join(root, "**", "nccl.h"), recursive=True)):
        print(os.path.dirname(header))
        raise SystemExit
EOF
  ) || true
  [ -n "$nccl_include" ] && [ -f "$nccl_include/nccl.h" ] && export NCCL_INCLUDE_DIR=$nccl_include
  say "configuring $build_dir (NCCL headers: ${NCCL_INCLUDE_DIR:-none})"
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSWEEP_TRAINER_ONLY=ON \
        -DSWEEP_BUILD_TESTS=OFF -DCMAKE_PREFIX_PATH="$torch_prefix;$PWD/.gpu-deps/root/usr" \
        -DCMAKE_CUDA_ARCHITECTURES=90 >"$out/cmake.log" 2>&1 || { tail -40 "$out/cmake.log"; exit 1; }
  say "building sweep-train"
  cmake --build "$build_dir" --target sweep-train -j "$(nproc)" >"$out/build.log" 2>&1 ||
    { grep -m20 -A5 "error" "$out/build.log" || tail -40 "$out/build.log"; exit 1; }
  sweep_train=$build_dir/sweep-train
  if missing=$(ldd "$sweep_train" | grep "not found"); then
    echo "gpu_check.sh: $sweep_train cannot find libraries:" >&2
    echo "$missing" >&2
    exit 1
  fi
fi
say "sweep-train: $sweep_train"
"$python" tools/gpu_bench.py --sweep-train "$sweep_train" --out "$out" --python "$python" "${bench_args[@]}"

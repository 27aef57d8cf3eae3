#!/usr/bin/env bash
# Gathers what sweep-train needs besides LibTorch into .gpu-deps/, for a GPU machine that has a
# CUDA PyTorch install, CMake and a compiler but no Debian dev packages and no network
# (docs/gpu.md). Run it here, on Debian 12, then carry .gpu-deps/ there and run
# tools/gpu_check.sh.
#
#   tools/gpu_deps.sh [--out DIR]        # default: .gpu-deps in the repository root
#
# .gpu-deps/root/usr  abseil, yaml-cpp, nlohmann-json, CLI11, spdlog and fmt: Debian 12's
#                     packages (headers, shared libraries, CMake configs) unpacked with
#                     dpkg -x. Their CMake configs are relocatable, so
#                     CMAKE_PREFIX_PATH=.gpu-deps/root/usr finds them; CMake's build RPATH
#                     then points sweep-train at these libraries. They are built with
#                     _GLIBCXX_USE_CXX11_ABI=1 and glibc 2.36, which PyTorch >= 2.7 wheels
#                     and any newer distribution match (gpu_check.sh checks the ABI first).
# .gpu-deps/data      the bundled corpus (kjv), as tools/setup.sh prepared it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu-deps
while (($#)); do
  case "$1" in
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu_deps.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

packages=(libabsl-dev libabsl20220623 libyaml-cpp-dev libyaml-cpp0.7 nlohmann-json3-dev
          libcli11-dev libspdlog-dev libspdlog1.10 libfmt-dev libfmt9)
debs=$(mktemp -d)
trap 'rm -rf "$debs"' EXIT
chmod 777 "$debs"  # apt's download user writes there
(cd "$debs" && apt-get download -q "${packages[@]}" >/dev/null)
rm -rf "$out/root"
mkdir -p "$out/root"
for deb in "$debs"/*.deb; do dpkg -x "$deb" "$out/root"; done
rm -rf "$out/root/usr/share/doc" "$out/root/usr/share/lintian"

data_root=${SWEEP_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/sweep/data}
if [ ! -s "$data_root/kjv/kjv.chunk.00.jsonl" ]; then
  echo "gpu_deps.sh: no corpus in $data_root/kjv: run tools/setup.sh first" >&2
  exit 1
fi
mkdir -p "$out/data"
cp -r "$data_root/kjv" "$out/data/"
echo "gpu_deps.sh: $(du -sh "$out" | cut -f1) in $out (${#packages[@]} packages, the kjv corpus)"

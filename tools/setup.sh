#!/usr/bin/env bash
# Installs every Debian 12 package sweep needs, builds it and prepares the bundled corpora
# (KJV, and fortunes for sweeps/data_lr.yaml).
# Idempotent and non-interactive; run as root (or with sudo) on a fresh Debian 12 machine. Debian
# 13 works too (tools/check_debian.sh runs the whole suite there).
#
#   tools/setup.sh                 # packages, build (./build), corpus
#   tools/setup.sh --tests         # the same, plus Chromium (dashboard test) and clang (fuzzing)
#   tools/setup.sh --no-build      # packages and corpus only
#   BUILD_DIR=out/b tools/setup.sh # another build folder
#
# The corpus goes to $SWEEP_DATA_DIR, else $XDG_DATA_HOME/sweep/data, else
# ~/.local/share/sweep/data: the default data.root_dir of sweep-train.
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
build=1
tests=0
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    --tests) tests=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

packages=(
  # toolchain
  g++ cmake ninja-build pkg-config git
  # the trainer: LibTorch (CPU) and an optimised BLAS. Without libopenblas0-pthread LibTorch
  # falls back to the reference BLAS and trains ~8x slower.
  libtorch-dev libopenblas0-pthread
  # data-parallel trials on CPU: c10d's Gloo backend needs gloo's headers (LibTorch has the code)
  libgloo-dev
  # libraries: config, CLI, JSON, status, logging, tests
  libyaml-cpp-dev libcli11-dev nlohmann-json3-dev libabsl-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev
  # the orchestrator: its store (sqlite3 is the shell users query it with) and gRPC
  libsqlite3-dev sqlite3
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  # analysis: least squares and bootstrap fits (header-only)
  libeigen3-dev
  # tests: a self-signed certificate for sweepd's TLS test
  openssl
  # the PyTorch reference (tools/reference) and the benchmark
  python3 python3-torch python3-yaml python3-numpy
  # the orchestrator benchmark's baseline (tools/bench_orchestrator)
  python3-optuna
  # the bundled corpus: the King James Bible
  bible-kjv
  # a second English corpus for sweeps/data_lr.yaml: the fortune cookie files (~15,000
  # quotations, jokes and poems; pulls in fortunes-min)
  fortunes
)

# Boost: Boost.Process for sweep-worker (links Boost.Filesystem), Beast and URL for the dashboard,
# Math for the analysis. Debian 12's default Boost is 1.74, too old: 1.81 by name. Later
# Debians' default will do, and there Boost.URL is a library of its own (from 1.83).
if [ "$(. /etc/os-release && echo "${ID:-}-${VERSION_ID:-}")" = debian-12 ]; then
  packages+=(libboost1.81-dev libboost-filesystem1.81-dev)
else
  packages+=(libboost-dev libboost-filesystem-dev libboost-url-dev)
fi

# The dashboard's front end is built with npm (uPlot, esbuild; dashboard/package-lock.json).
# Debian's nodejs and npm unless a Node.js with npm is already installed.
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
# The dashboard's browser test drives Debian's Chromium headless; the fuzz targets (fuzz/,
# tools/fuzz.sh, ctest -L fuzz) need clang and its libFuzzer and sanitizer runtimes.
((tests)) && packages+=(chromium clang libclang-rt-dev)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup.sh: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup.sh: all ${#packages[@]} Debian packages present"
fi

if ((build)); then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
  cmake --build "$BUILD_DIR" -j "$(nproc)"
  data_root=${SWEEP_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/sweep/data}
  if [ -s "$data_root/kjv/kjv.chunk.00.jsonl" ] && [ -s "$data_root/kjv/kjv.val.jsonl" ]; then
    echo "setup.sh: corpus present in $data_root/kjv"
  else
    "$BUILD_DIR/sweep-prepare-data" kjv --out "$data_root"
  fi
  # fortunes: one document per fortune (the files separate them with a line "%"; blank lines
  # inside a fortune are dropped so that each stays one document), every 40th held out.
  if [ -s "$data_root/fortunes/fortunes.chunk.00.jsonl" ] && [ -s "$data_root/fortunes/fortunes.val.jsonl" ]; then
    echo "setup.sh: corpus present in $data_root/fortunes"
  else
    find /usr/share/games/fortunes -maxdepth 1 -type f ! -name '*.dat' | LC_ALL=C sort | xargs cat |
      awk '/^%$/ {print ""; next} /^[[:space:]]*$/ {next} {print}' |
      "$BUILD_DIR/sweep-prepare-data" text - --name fortunes --out "$data_root"
  fi
fi

#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/CMakeLists.txt: clang, ASan + UBSan) and runs each for N
# seconds over its seed corpus. Exits non-zero on any crash, leak, timeout, out-of-memory or
# sanitizer report, naming the reproducer file.
#
#   tools/fuzz.sh                      # each target 300 s, build in build/fuzz
#   tools/fuzz.sh --seconds 20         # the CI smoke run (ctest -L fuzz)
#   tools/fuzz.sh --build-dir D --targets "fuzz_spec fuzz_checkpoint" --jobs 2
#
# The corpus a run grows is kept apart from the committed seeds (fuzz/corpus/<target>), in
# <build-dir>/corpus/<target>; reproducers go to <build-dir>/artifacts/<target>/. Replay one
# with: <build-dir>/<target> <file>.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
seconds=300
build_dir=build/fuzz
targets="fuzz_spec fuzz_metrics_line fuzz_checkpoint"
jobs=$(nproc)
while (($#)); do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --build-dir) build_dir=$2; shift 2 ;;
    --targets) targets=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "fuzz.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
case "$build_dir" in /*) ;; *) build_dir=$root/$build_dir ;; esac

# 77: ctest's "skipped" (SKIP_RETURN_CODE), as the dashboard's browser test without Chromium.
command -v clang++ >/dev/null || { echo "fuzz.sh: clang++ is missing (tools/setup.sh --tests installs it)" >&2; exit 77; }
mkdir -p "$build_dir"
cmake -S fuzz -B "$build_dir" -G Ninja -DCMAKE_CXX_COMPILER=clang++ >"$build_dir/cmake.log" 2>&1 ||
  { cat "$build_dir/cmake.log" >&2; exit 2; }
# shellcheck disable=SC2086  # $targets is a list
ninja -C "$build_dir" -j "$jobs" $targets >"$build_dir/build.log" 2>&1 ||
  { tail -50 "$build_dir/build.log" >&2; exit 2; }

# Inputs longer than this are cut: a spec of 64 KiB reaches every limit that matters with the
# fuzzer's small limits, a metrics line of 4 KiB any nesting the parser follows.
max_len() {
  case "$1" in
    fuzz_spec) echo 65536 ;;
    fuzz_metrics_line) echo 4096 ;;
    fuzz_checkpoint) echo 8192 ;;
  esac
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
status=0
summary=()
for target in $targets; do
  corpus=$build_dir/corpus/$target
  artifacts=$build_dir/artifacts/$target
  mkdir -p "$corpus" "$artifacts"
  log=$build_dir/$target.log
  echo "fuzz.sh: $target for ${seconds} s (seeds fuzz/corpus/$target, log $log)"
  set +e
  # The outer timeout: libFuzzer's own -timeout handler can deadlock in the allocator when the
  # alarm lands inside malloc, and a hung run must fail, not wait for ctest's limit.
  timeout -s KILL $((seconds + 120)) "$build_dir/$target" "$corpus" "$root/fuzz/corpus/$target" \
    -max_total_time="$seconds" -max_len="$(max_len "$target")" -timeout=2 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  found=$(ls "$artifacts" 2>/dev/null | head -5 | tr '\n' ' ')
  if ((rc != 0)) || [ -n "$found" ] || grep -q "runtime error:\|ERROR: AddressSanitizer\|ERROR: LeakSanitizer" "$log"; then
    status=1
    summary+=("$target: FAILED (exit $rc) after ${execs:-?} execs; reproducers: ${found:-none} in $artifacts")
    grep -m 5 -A 12 "runtime error:\|ERROR: \|==ERROR\|deadly signal\|ALARM\|fuzz_[a-z_]*: " "$log" >&2 || tail -30 "$log" >&2
  else
    summary+=("$target: ok, ${execs:-?} execs (${rate:-?}/s), corpus $(ls "$corpus" | wc -l) files")
  fi
done
printf '%s\n' "${summary[@]}"
exit $status

#!/usr/bin/env bash
# The long chaos run of issue 8: ChaosTest.DISABLED_Long (tests/chaos/chaos_test.cc), a sweep
# of short builtin trials on 3 workers while workers and sweepd are SIGKILLed and workers
# SIGSTOPped past their lease, then every trial, row and resumed trace checked. It prints the
# seed first and the figures last (kills survived, trials resumed, rows checked, mismatches).
#
#   tools/chaos.sh                          # 60 trials, 60 events, a seed from the clock
#   tools/chaos.sh --events 100 --trials 90 --seed 1234
#   BUILD_DIR=/tmp/b tools/chaos.sh         # another build folder (default: build)
#
# Builds what it runs first (chaos_test, sweepd, sweep-worker, sweep-train). Exit status: the
# test's (0: every check passed).
set -euo pipefail

cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
events=60
trials=60
seed=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --events) events=$2; shift 2 ;;
    --trials) trials=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "chaos.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

cmake --build "$BUILD_DIR" --target chaos_test sweepd sweep-worker sweep-train
export SWEEP_CHAOS_EVENTS=$events SWEEP_CHAOS_TRIALS=$trials
if [[ -n $seed ]]; then export SWEEP_CHAOS_SEED=$seed; fi
exec "$BUILD_DIR/tests/chaos_test" --gtest_also_run_disabled_tests --gtest_filter=ChaosTest.DISABLED_Long

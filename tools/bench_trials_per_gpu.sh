#!/usr/bin/env bash
# What sweep-worker's --trials-per-gpu buys in leasing, without a GPU: a real sweepd and one
# worker with two stand-in GPUs (--gpus 0,1, so no nvidia-smi is needed) run 16 one-GPU
# command trials of 1 s each (tests/worker/fixtures/ranks_train.py, 20 steps of 0.05 s), once
# per K, alternating K over --rounds rounds. Prints the sweep's wall time per K and its ratio
# to K=1 from the same round. This measures the orchestration, not GPU throughput (that is
# tools/gpu_check.sh's packed-trials stage).
#
#   tools/bench_trials_per_gpu.sh [--build build] [--rounds 2] [--ks "1 2 4"]
set -euo pipefail
cd "$(dirname "$0")/.."
build=build
rounds=2
ks="1 2 4"
while (($#)); do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --ks) ks=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "bench_trials_per_gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

run_once() {  # K -> seconds from submit to the sweep's end
  local k=$1 dir
  dir=$(mktemp -d -p "$work")
  "$build/sweepd" --db "$dir/sweep.db" --listen 127.0.0.1:0 --port-file "$dir/port" >"$dir/sweepd.log" 2>&1 &
  pids+=($!)
  local sweepd=$!
  for _ in $(seq 100); do [ -s "$dir/port" ] && break; sleep 0.05; done
  local address=127.0.0.1:$(cat "$dir/port")
  cat >"$dir/spec.yaml" <<EOF
name: tpg
method: grid
metric: {name: loss/out, goal: minimize}
trainer:
  command: [/usr/bin/python3, "$PWD/tests/worker/fixtures/ranks_train.py", "config=\${config}"]
base: {steps: 20, step_seconds: 0.05}
parameters:
  seed: {values: [$(seq -s, 1 16)]}
resources: {gpus_per_trial: 1}
EOF
  "$build/sweep-worker" --orchestrator "$address" --name w --workdir "$dir/work" --gpus 0,1 \
    --cpu-slots 0 --trials-per-gpu "$k" --gpu-telemetry 0 --heartbeat 0.2 >"$dir/worker.log" 2>&1 &
  pids+=($!)
  local worker=$!
  local start end
  start=$(date +%s.%N)
  "$build/sweepctl" --orchestrator "$address" submit "$dir/spec.yaml" >/dev/null
  until [ "$(sqlite3 "$dir/sweep.db" "SELECT state FROM sweeps WHERE name = 'tpg'")" = completed ]; do
    sleep 0.05
  done
  end=$(date +%s.%N)
  kill "$worker" "$sweepd" 2>/dev/null || true
  wait "$worker" "$sweepd" 2>/dev/null || true
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }'
}

echo "16 one-GPU trials of 1 s on 2 stand-in GPUs; sweep wall time per --trials-per-gpu K"
for round in $(seq "$rounds"); do
  line="round $round:"
  base=""
  for k in $ks; do
    t=$(run_once "$k")
    [ -z "$base" ] && base=$t
    line+=$(awk -v k="$k" -v t="$t" -v b="$base" 'BEGIN { printf "  K=%s %.1f s (%.2fx)", k, t, b / t }')
  done
  echo "$line"
done

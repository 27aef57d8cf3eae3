#!/usr/bin/python3
"""Re-checks the calibration of sweeps/depth_lr.yaml without sweepd: runs its grid with
sweep-train directly, two trials at a time with one thread each (what two sweep-workers do on
a 2-core machine), and prints, per seed set, the numbers its comment block quotes.

  tools/calibrate_depth_lr.py                          # the spec's own seeds, into /tmp/depth_lr_cal
  tools/calibrate_depth_lr.py --seeds 4,5,6,7 --out /tmp/cal_b   # a disjoint seed set
  tools/calibrate_depth_lr.py --analyze-only --out /tmp/cal_b    # just the table

For each depth x lr over the seeds: the largest optim/grad_norm after warmup (max and median
over seeds), the steps after warmup with optim/grad_norm above 1.0 (summed over seeds), the
mean final loss/val and its penalty over the depth's best lr. Trials whose metrics.jsonl ends
with a `completed` event are not run again. Needs python3-yaml (tools/setup.sh installs it).
Grid specs with the builtin trainer only.
"""
import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def set_dotted(config, key, value):
    *parents, last = key.split(".")
    for part in parents:
        config = config.setdefault(part, {})
    config[last] = value


def expand(spec, seeds):
    """The grid in spec order (last parameter fastest), as (folder name, params, config)."""
    axes = []
    for key, body in spec["parameters"].items():
        values = body["values"] if "values" in body else [body["value"]]
        if key == "seed" and seeds is not None:
            values = seeds
        axes.append((key, values))
    for combo in itertools.product(*(values for _, values in axes)):
        config = json.loads(json.dumps(spec.get("base") or {}))
        params = {}
        for (key, _), value in zip(axes, combo):
            set_dotted(config, key, value)
            params[key] = value
        yield ",".join(f"{k}={v}" for k, v in params.items()), params, config


def completed(metrics):
    if not os.path.exists(metrics):
        return False
    with open(metrics) as f:
        return any(json.loads(line).get("event") == "completed" for line in f if line.strip())


def run_trial(train, folder, config):
    metrics = os.path.join(folder, "metrics.jsonl")
    if completed(metrics):
        return None
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(metrics):
        os.remove(metrics)  # An interrupted run: start it again from step 0.
    path = os.path.join(folder, "trial.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    start = time.time()
    with open(os.path.join(folder, "stderr.log"), "w") as err:
        proc = subprocess.Popen([train, "--config", path, "--dump-dir", folder, "threads=1"],
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), time.time() - start, usage.ru_utime + usage.ru_stime


def summarize(folder, warmup):
    """(peak grad norm after warmup, steps above 1.0 after warmup, final loss/val) or None."""
    peak, above, val, done = None, 0, None, False
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            done = done or row.get("event") == "completed"
            if "loss/val" in row:
                val = row["loss/val"]
            g = row.get("optim/grad_norm")
            if g is not None and row.get("global_step", 0) > warmup:
                peak = g if peak is None else max(peak, g)
                above += g > 1.0
    return (peak, above, val) if done and peak is not None and val is not None else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=os.path.join(ROOT, "sweeps", "depth_lr.yaml"))
    parser.add_argument("--seeds", help="comma-separated seeds instead of the spec's")
    parser.add_argument("--out", default="/tmp/depth_lr_cal")
    parser.add_argument("--sweep-train", default=os.path.join(ROOT, "build", "sweep-train"))
    parser.add_argument("--jobs", type=int, default=2, help="trials at once (default 2)")
    parser.add_argument("--analyze-only", action="store_true")
    args = parser.parse_args()

    with open(args.spec) as f:
        spec = yaml.safe_load(f)
    if spec.get("method") != "grid" or spec.get("trainer", "builtin") != "builtin":
        sys.exit(f"{args.spec}: only grid specs with the builtin trainer")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    trials = list(expand(spec, seeds))

    if not args.analyze_only:
        start, cpu = time.time(), 0.0
        with ThreadPoolExecutor(args.jobs) as pool:
            runs = pool.map(lambda t: (t[0], run_trial(args.sweep_train, os.path.join(args.out, t[0]), t[2])),
                            trials)
            for name, result in runs:
                if result is None:
                    print(f"{name}: done before", flush=True)
                    continue
                rc, wall, used = result
                cpu += used
                print(f"{name}: exit {rc}, {wall:.1f} s, {used:.1f} s CPU", flush=True)
        print(f"{len(trials)} trials: {time.time() - start:.0f} s of wall time, {cpu:.0f} s of CPU "
              f"(2 idle cores: ~{(cpu + 1.5 * len(trials)) / 2 / 60:.1f} min with 1.5 s start-up each)\n")

    cells = {}  # (depth, lr) -> [(peak, above, val), ...] over seeds
    for name, params, config in trials:
        folder = os.path.join(args.out, name)
        result = summarize(folder, config["optim"]["warmup"]) if os.path.isdir(folder) else None
        if result is None:
            print(f"{name}: not completed, left out")
            continue
        cells.setdefault((params["model.n_layers"], params["optim.lr"]), []).append(result)
    depths = sorted({d for d, _ in cells})
    lrs = sorted({lr for _, lr in cells})
    print("layers  lr       peak max  median  steps>1  loss/val  penalty")
    for depth in depths:
        vals = {lr: statistics.mean(r[2] for r in cells[(depth, lr)]) for lr in lrs if (depth, lr) in cells}
        best = min(vals.values())
        for lr in lrs:
            rows = cells.get((depth, lr))
            if not rows:
                continue
            peaks = [r[0] for r in rows]
            print(f"{depth:6d}  {lr:<7g}  {max(peaks):8.2f}  {statistics.median(peaks):6.2f}  "
                  f"{sum(r[1] for r in rows):7d}  {vals[lr]:8.3f}  {vals[lr] - best:+.3f}  ({len(rows)} seeds)")


if __name__ == "__main__":
    main()

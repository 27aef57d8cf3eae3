#!/usr/bin/python3
"""Checks sweep-train against the PyTorch reference (reference_train.py), step by step.

    check_reference.py --sweep-train build/sweep-train [--workdir DIR] [--steps 20]
                       [--data-root DIR]

For each small config below: runs sweep-train, which trains on the kjv corpus and writes the
micro-batches it consumed (--dump-batches) and its metrics (--metrics); then runs
reference_train.py on the same config and batches; then compares, per optimizer step,
loss/out, optim/grad_norm, optim/lr and every grad_norm/<group> the reference logs, with a
relative tolerance of 1e-4. Prints a table per config and a last line
`reference: N passed, M failed` (N, M count configs). Exit status 0 only if all pass; 1 on a
mismatch, a failed run, or when torch is missing (this is a test: it never skips).
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import torch  # noqa: F401  (reference_train.py needs it; fail here with a clear message)
    import yaml
except ImportError as e:
    print(f"check_reference: cannot import {e.name} in {sys.executable}: install python3-torch "
          "and python3-yaml (tools/setup.sh does) to run the reference check", file=sys.stderr)
    print("reference: 0 passed, 3 failed")  # none of the 3 configs could be checked
    sys.exit(1)

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "reference_train.py")
RTOL = 1e-4
THREADS = 2


def base_config(name, steps):
    return {
        "name": name,
        "steps": steps,
        "threads": THREADS,
        "data": {"sources": {"kjv": 1.0}, "batch_size": 4, "seq_len": 64},
        "logging": {"freq": 1},
        "checkpoint": {"every": 0},
        "optim": {"warmup": 5},
    }


def configs(steps):
    """(name, config) pairs; each one exercises a different part of the trainer."""
    mha = base_config("mha", steps)
    mha["model"] = {"dim": 64, "n_layers": 2, "n_heads": 4}
    mha["optim"].update({"lr": 3e-3, "weight_decay": 0.1, "clip": 1.0, "scheduler": "cosine"})

    gqa = base_config("gqa_qknorm_zloss", steps)
    gqa["grad_acc_steps"] = 2
    gqa["model"] = {"dim": 96, "n_layers": 3, "n_heads": 6, "n_kv_heads": 2, "multiple_of": 32,
                    "qk_norm": True, "init_std_factor": "current_depth"}
    gqa["optim"].update({"z_loss": 1e-4, "scheduler": "wsd", "lr": 1e-2, "clip": 0.5})

    tied = base_config("tied_indep_wd", steps)
    tied["model"] = {"dim": 64, "n_layers": 2, "n_heads": 2, "weight_tying": True,
                     "init_std_factor": "global_depth", "init_base_std": 0.02}
    # Decay f(step)·wd per step (independent of lr): 0.01 still moves the weights measurably
    # without shrinking the model to nothing in 20 steps.
    tied["optim"].update({"independent_wd": True, "weight_decay": 0.01, "lr": 3e-3,
                          "scheduler": "linear"})
    return [("mha", mha), ("gqa_qknorm_zloss", gqa), ("tied_indep_wd", tied)]


def run(cmd, what):
    """Runs cmd; returns None on success, else a message with the tail of its output."""
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{what} did not run: {e}"
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-20:])
        return f"{what} exited with {proc.returncode}:\n  $ {' '.join(cmd)}\n{tail}"
    return None


def read_metrics(path):
    """{global_step: record} from a JSON-lines file; lines without loss/out (events) skipped."""
    steps = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            record = json.loads(line)
            if "loss/out" in record:
                steps[int(record["global_step"])] = record
    return steps


def rel_err(a, b):
    """Relative difference; inf when a value is missing or non-finite (unless both equal)."""
    if a is None or b is None:
        return math.inf
    a, b = float(a), float(b)
    if not (math.isfinite(a) and math.isfinite(b)):
        return 0.0 if a == b else math.inf
    scale = max(abs(a), abs(b))
    return 0.0 if scale == 0 else abs(a - b) / scale


def compare(name, cpp, ref, steps):
    """Prints the table for one config; returns the first mismatch as text, or None."""
    print(f"\n== {name}")
    print(f"{'step':>4} {'c++ loss':>10} {'ref loss':>10} {'rel err':>8}  {'c++ gnorm':>10} "
          f"{'ref gnorm':>10} {'rel err':>8}  worst other (lr, grad_norm/*)")
    first = None
    for step in range(1, steps + 1):
        c, r = cpp.get(step), ref.get(step)
        if c is None or r is None:
            which = "sweep-train" if c is None else "reference"
            print(f"{step:>4} missing from {which}")
            first = first or f"{name} step {step}: no record from {which}"
            continue
        keys = ["loss/out", "optim/grad_norm", "optim/lr"]
        keys += sorted(k for k in r if k.startswith("grad_norm/"))
        errs = {k: rel_err(c.get(k), r.get(k)) for k in keys}
        bad = [k for k in keys if not errs[k] <= RTOL]
        others = {k: e for k, e in errs.items() if k not in ("loss/out", "optim/grad_norm")}
        worst = max(others, key=others.get)
        missing = [k for k in keys if k not in c]
        note = f"{worst} {others[worst]:.1e}" + (f" (missing: {', '.join(missing)})" if missing else "")
        row = (f"{step:>4} {c['loss/out']:>10.6f} {r['loss/out']:>10.6f} {errs['loss/out']:>8.1e}  "
               f"{c['optim/grad_norm']:>10.6f} {r['optim/grad_norm']:>10.6f} "
               f"{errs['optim/grad_norm']:>8.1e}  {note}")
        if bad:
            row += f"  << MISMATCH: {', '.join(bad)}"
        print(row.rstrip())
        if bad and first is None:
            k = bad[0]
            first = (f"{name} step {step}: {k} c++ {c.get(k)!r} vs reference {r.get(k)!r} "
                     f"(rel err {errs[k]:.2e} > {RTOL:g})")
    extra = sorted({k for rec in cpp.values() for k in rec if k.startswith("grad_norm/")}
                   - {k for rec in ref.values() for k in rec if k.startswith("grad_norm/")})
    if extra:
        print(f"note: sweep-train logs groups the reference does not: {', '.join(extra)}")
    return first


def check_one(name, config, args, workdir):
    d = os.path.join(workdir, name)
    os.makedirs(d, exist_ok=True)
    cfg_path = os.path.join(d, "config.yaml")
    batches = os.path.join(d, "batches.i64")
    cpp_metrics = os.path.join(d, "metrics.jsonl")
    ref_metrics = os.path.join(d, "reference.jsonl")
    with open(cfg_path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    # sweep-train appends metrics and resumes from <dump_dir>/checkpoints: start clean.
    run_dir = os.path.join(d, "run")
    shutil.rmtree(run_dir, ignore_errors=True)
    for stale in (batches, cpp_metrics, ref_metrics):
        if os.path.exists(stale):
            os.remove(stale)

    cmd = [args.sweep_train, "--config", cfg_path, "--dump-batches", batches,
           "--metrics", cpp_metrics, "--dump-dir", run_dir]
    if args.data_root:
        cmd.append(f"data.root_dir={args.data_root}")
    error = run(cmd, "sweep-train")
    if error:
        return error
    error = run([sys.executable, REFERENCE, "--config", cfg_path, "--batches", batches,
                 "--steps", str(args.steps), "--threads", str(THREADS), "--out", ref_metrics],
                "reference_train.py")
    if error:
        return error
    return compare(name, read_metrics(cpp_metrics), read_metrics(ref_metrics), args.steps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep-train", required=True, help="path to the sweep-train binary")
    parser.add_argument("--workdir", help="keep configs, batches and metrics here "
                                          "(default: a temporary folder, removed at the end)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per config")
    parser.add_argument("--data-root", help="corpus root, passed as data.root_dir=DIR "
                                            "(default: sweep-train's, $SWEEP_DATA_DIR or "
                                            "~/.local/share/sweep/data)")
    args = parser.parse_args(argv)
    args.sweep_train = os.path.abspath(args.sweep_train)
    if not os.access(args.sweep_train, os.X_OK):
        print(f"check_reference: {args.sweep_train} is not an executable file", file=sys.stderr)
        print(f"reference: 0 passed, {len(configs(args.steps))} failed")
        return 1

    with tempfile.TemporaryDirectory(prefix="sweep-reference-") as tmp:
        workdir = os.path.abspath(args.workdir) if args.workdir else tmp
        passed, failures = 0, []
        for name, config in configs(args.steps):
            problem = check_one(name, config, args, workdir)
            if problem:
                failures.append(problem)
            else:
                passed += 1
    for problem in failures:
        print(f"\nFAILED: {problem}")
    if failures and not args.workdir:
        print("(rerun with --workdir DIR to keep the configs, batches and metrics)")
    print(f"reference: {passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

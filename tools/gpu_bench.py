#!/usr/bin/env python3
"""The measurements of tools/gpu_check.sh (issue #9), on one GPU, all in one run.

    gpu_bench.py --sweep-train build-gpu/sweep-train [--out DIR] [--steps 300]
    gpu_bench.py --sweep-train build/sweep-train --device cpu --quick   # a dry run of the script

1. peak: the bf16 matmul rate of this GPU (8192^3 products through PyTorch, 10 timed after 3
   warm-ups), the denominator of MFU.
2. check: a tiny model trained 100 steps by sweep-train on the GPU (bf16) and on the CPU
   (float32): the losses must agree to a few percent (bf16 rounding), and both must fall.
3. gpt2: a GPT-2-small-shaped model (dim 768, 12 layers, 12 heads, seq 1024, batch 32, the
   byte tokenizer) trained --steps steps by sweep-train and by the PyTorch eager reference
   (tools/reference/reference_train.py --device cuda: bf16 autocast, SDPA, fused AdamW) in the
   same run. Throughput = median speed/wps over the logging windows after the first 50 steps.
   MFU = tokens/s x (6 N + 12 L d S) / peak, N = parameters without the input embedding, the
   second term the attention matmuls (PaLM's definition, no causal discount).
4. packed: 8 tiny trials (dim 128, 4 layers, 4 heads, seq 256, batch 32) on the one GPU at once
   (what sweep-worker --trials-per-gpu 8 does) against one alone: aggregate tokens/s.

Writes DIR/gpu_check.md (the table for docs/benchmarks.md) and DIR/gpu_check.json, and each
run's metrics and logs beside them. Goals (issue #9): MFU >= 40 %, sweep-train >= 1.0x the
reference. Exit status 0 even when a goal is missed (the table says so); 1 when a run fails.
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "reference", "reference_train.py")


def log(msg):
    print(f"[gpu_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def config_yaml(model, seq_len, batch, steps, log_freq, lr=3e-4):
    # JSON is YAML: sweep-train and the reference read the same file.
    return json.dumps({
        "steps": steps, "seed": 7, "probe_freq": 0,
        "model": dict(model, multiple_of=model.get("multiple_of", 256)),
        "data": {"sources": {"kjv": 1.0}, "batch_size": batch, "seq_len": seq_len},
        "optim": {"lr": lr, "warmup": min(20, steps // 5), "clip": 1.0, "weight_decay": 0.1},
        "logging": {"freq": log_freq}, "eval": {"every": 0, "steps": 1},
        "checkpoint": {"every": 0, "keep": 1},
    })


def read_records(path):
    records = []
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if "speed/wps" in record or "loss/out" in record:
                records.append(record)
    return records


def steady_wps(records, skip):
    values = [r["speed/wps"] for r in records if "speed/wps" in r and r["global_step"] > skip]
    if not values:
        values = [r["speed/wps"] for r in records if "speed/wps" in r]
    return statistics.median(values)


def last_loss(records):
    return [r["loss/out"] for r in records if "loss/out" in r][-1]


def start_train(sweep_train, cfg_text, run_dir, device, threads, env_extra=None):
    os.makedirs(run_dir, exist_ok=True)
    cfg = os.path.join(run_dir, "config.in.yaml")
    with open(cfg, "w") as f:
        f.write(cfg_text)
    args = [sweep_train, "--config", cfg, "--dump-dir", run_dir, f"threads={threads}"]
    if device == "cuda":
        args.append("device=cuda")
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen(args, stdout=open(os.path.join(run_dir, "stdout.log"), "w"),
                            stderr=open(os.path.join(run_dir, "stderr.log"), "w"), env=env)


def run_train(sweep_train, cfg_text, run_dir, device, threads):
    start = time.perf_counter()
    proc = start_train(sweep_train, cfg_text, run_dir, device, threads)
    if proc.wait() != 0:
        tail = open(os.path.join(run_dir, "stderr.log")).read()[-3000:]
        raise SystemExit(f"sweep-train failed in {run_dir} (exit {proc.returncode}):\n{tail}")
    return read_records(os.path.join(run_dir, "metrics.jsonl")), time.perf_counter() - start


def run_reference(python, cfg_text, run_dir, steps, device, threads):
    os.makedirs(run_dir, exist_ok=True)
    cfg = os.path.join(run_dir, "config.in.yaml")
    with open(cfg, "w") as f:
        f.write(cfg_text)
    out = os.path.join(run_dir, "metrics.jsonl")
    args = [python, REFERENCE, "--config", cfg, "--random-batches", "--steps", str(steps),
            "--device", device, "--log-freq", "10", "--threads", str(threads), "--out", out]
    with open(os.path.join(run_dir, "stderr.log"), "w") as err:
        if subprocess.call(args, stderr=err) != 0:
            raise SystemExit(f"the reference failed: {open(err.name).read()[-3000:]}")
    return read_records(out)


def matmul_peak(device, quick):
    import torch
    n = 1024 if quick else 8192
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    return 2 * n ** 3 * 10 / (time.perf_counter() - start)


def model_flops_per_token(model, seq_len, vocab=258):
    d, layers = model["dim"], model["n_layers"]
    multiple_of = model.get("multiple_of", 256)
    hidden = int(2 * 4 * d / 3)
    hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
    per_layer = 4 * d * d + 3 * d * hidden + 2 * d  # attention, SwiGLU, two norms
    n = layers * per_layer + d + d * vocab  # + final norm + output projection
    return 6 * n + 12 * layers * d * seq_len, n


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep-train", required=True)
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of the script")
    parser.add_argument("--packed", type=int, default=8, help="trials packed on the GPU at once")
    parser.add_argument("--python", default=sys.executable, help="Python with torch (the reference)")
    args = parser.parse_args()

    import torch
    device, quick = args.device, args.quick
    os.makedirs(args.out, exist_ok=True)
    threads = 4 if device == "cuda" else max(1, (os.cpu_count() or 2) // 2)
    result = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
              "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu"}
    log(f"{result['device']}, torch {result['torch']}")

    # 1. Peak.
    result["peak_flops"] = matmul_peak(device, quick)
    log(f"peak matmul: {result['peak_flops'] / 1e12:.1f} TFLOP/s")

    # 2. The GPU trains what the CPU trains.
    tiny = {"dim": 64, "n_layers": 2, "n_heads": 4, "multiple_of": 64}
    check_steps = 20 if quick else 100
    check_cfg = config_yaml(tiny, 64, 8, check_steps, 10, lr=3e-3)
    if device == "cuda":
        on_gpu, _ = run_train(args.sweep_train, check_cfg, os.path.join(args.out, "check_cuda"), "cuda", threads)
        on_cpu, _ = run_train(args.sweep_train, check_cfg, os.path.join(args.out, "check_cpu"), "cpu", threads)
        gpu_loss, cpu_loss = last_loss(on_gpu), last_loss(on_cpu)
        first = on_cpu[0]["loss/out"]
        result["check"] = {"gpu_loss": gpu_loss, "cpu_loss": cpu_loss, "first_loss": first,
                           "relative_difference": abs(gpu_loss - cpu_loss) / cpu_loss,
                           "ok": abs(gpu_loss - cpu_loss) / cpu_loss < 0.03 and gpu_loss < first - 0.5}
        log(f"check: final loss cuda {gpu_loss:.4f} vs cpu {cpu_loss:.4f} (first {first:.4f})")

    # 3. GPT-2 small: sweep-train against the eager reference.
    if quick:
        gpt2, seq, batch, steps, skip = {"dim": 64, "n_layers": 2, "n_heads": 4, "multiple_of": 64}, 64, 4, 30, 10
    else:
        gpt2, seq, batch, steps, skip = {"dim": 768, "n_layers": 12, "n_heads": 12}, 1024, 32, args.steps, 50
    cfg = config_yaml(gpt2, seq, batch, steps, 10)
    flops_per_token, n_params = model_flops_per_token(gpt2, seq)
    records, _ = run_train(args.sweep_train, cfg, os.path.join(args.out, "gpt2_sweep_train"), device, threads)
    ours = steady_wps(records, skip)
    ref_records = run_reference(args.python, cfg, os.path.join(args.out, "gpt2_reference"), steps, device, threads)
    ref = steady_wps(ref_records, skip)
    result["gpt2"] = {"params_without_embedding": n_params, "flops_per_token": flops_per_token,
                      "tokens_per_step": seq * batch, "steps": steps,
                      "sweep_train_tokens_per_s": ours, "reference_tokens_per_s": ref,
                      "ratio": ours / ref, "mfu": ours * flops_per_token / result["peak_flops"],
                      "reference_mfu": ref * flops_per_token / result["peak_flops"],
                      "final_loss": last_loss(records), "reference_final_loss": last_loss(ref_records)}
    log(f"gpt2: sweep-train {ours:,.0f} tok/s (MFU {result['gpt2']['mfu']:.1%}), "
        f"reference {ref:,.0f} tok/s, ratio {ours / ref:.2f}")

    # 4. Packed tiny trials.
    packed_n = 2 if quick else args.packed
    small = {"dim": 128, "n_layers": 4, "n_heads": 4, "multiple_of": 128}
    small_cfg = config_yaml(small, 64 if quick else 256, 8 if quick else 32, 30 if quick else 300, 10, lr=3e-3)
    alone, alone_wall = run_train(args.sweep_train, small_cfg, os.path.join(args.out, "packed_alone"), device, threads)
    start = time.perf_counter()
    procs = [start_train(args.sweep_train, small_cfg, os.path.join(args.out, f"packed_{i}"), device, threads)
             for i in range(packed_n)]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit(f"a packed trial failed: see {args.out}/packed_*/stderr.log")
    packed_wall = time.perf_counter() - start
    small_skip = 10 if quick else 50
    each = [steady_wps(read_records(os.path.join(args.out, f"packed_{i}", "metrics.jsonl")), small_skip)
            for i in range(packed_n)]
    alone_wps = steady_wps(alone, small_skip)
    result["packed"] = {"trials": packed_n, "alone_tokens_per_s": alone_wps,
                        "packed_tokens_per_s": sum(each), "alone_wall_s": alone_wall,
                        "packed_wall_s": packed_wall, "speedup": sum(each) / alone_wps,
                        "wall_speedup": packed_n * alone_wall / packed_wall}
    log(f"packed: {packed_n} trials {sum(each):,.0f} tok/s together vs {result['packed']['alone_tokens_per_s']:,.0f} "
        f"alone ({result['packed']['speedup']:.2f}x; wall {result['packed']['wall_speedup']:.2f}x)")

    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(result, f, indent=1)
    g, p = result["gpt2"], result["packed"]
    lines = [
        f"GPU check, {result['date']}, {result['device']}, torch {result['torch']}"
        + (" (quick dry run)" if quick else ""),
        "",
        "| measure | value | goal |",
        "| --- | --- | --- |",
        f"| peak bf16 matmul (measured) | {result['peak_flops'] / 1e12:.1f} TFLOP/s | |",
    ]
    if "check" in result:
        c = result["check"]
        lines.append(f"| tiny model, loss after {check_steps} steps: GPU bf16 vs CPU fp32 | "
                     f"{c['gpu_loss']:.4f} vs {c['cpu_loss']:.4f} ({c['relative_difference']:.2%}) | < 3 % |")
    lines += [
        f"| GPT-2 small ({g['params_without_embedding'] / 1e6:.1f} M params, {g['tokens_per_step']} tok/step): sweep-train | "
        f"{g['sweep_train_tokens_per_s']:,.0f} tok/s, MFU {g['mfu']:.1%} | MFU >= 40 % |",
        f"| same, PyTorch eager reference | {g['reference_tokens_per_s']:,.0f} tok/s, MFU {g['reference_mfu']:.1%} | |",
        f"| sweep-train / reference | {g['ratio']:.2f}x | >= 1.0x |",
        f"| {p['trials']} tiny trials packed on one GPU vs one alone | {p['packed_tokens_per_s']:,.0f} vs "
        f"{p['alone_tokens_per_s']:,.0f} tok/s ({p['speedup']:.2f}x; wall {p['wall_speedup']:.2f}x) | |",
    ]
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

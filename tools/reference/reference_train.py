#!/usr/bin/python3
"""PyTorch reference for sweep-train: Lingua's apps/main model, AdamW and schedules, plainly.

It reproduces sweep-train's math (same initialisation order and RNG use) so that
check_reference.py can compare the two step by step, and bench_trainer can time both on the
same batches.

    reference_train.py --config CONFIG.yaml --batches FILE --steps N [--threads T] [--out FILE|-]
    reference_train.py --config CONFIG.yaml --random-batches --steps N ...
    reference_train.py ... --device cuda [--log-freq 10]     # the GPU baseline (gpu_check.sh)

--batches: raw little-endian int64, a sequence of micro-batches of shape
(batch_size, seq_len + 1), in the order sweep-train consumed them (sweep-train --dump-batches);
grad_acc_steps micro-batches make one optimizer step. --random-batches draws them instead from
a torch.Generator seeded with the config's `seed` (the model's RNG is not touched).

Output: one JSON object per optimizer step (Lingua's metric names): global_step, loss/out,
optim/grad_norm (pre-clip total), optim/lr (the lr that step used), grad_norm/<group>,
speed/wps. Logs go to stderr.

--device cuda runs the same model as a careful PyTorch eager user would on a GPU (the baseline
tools/gpu_check.sh holds sweep-train against): bf16 autocast around the forward pass (norms and
the loss in float32), F.scaled_dot_product_attention, torch.optim.AdamW(fused=True), and host
syncs only every --log-freq steps (records then cover those steps: speed/wps over the window,
loss/out of the last step). On CPU (the default) every step is recorded as before.

Standard library + torch + yaml + numpy only; run with /usr/bin/python3 (Debian python3-torch).
"""

import argparse
import contextlib
import json
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

BYTE_VOCAB_SIZE = 258  # Lingua's `bytes` tokenizer: 256 bytes + BOS + EOS.

# The keys this script reads, with sweep-train's defaults (worker/trainer/config.h).
DEFAULTS = {
    "seed": 42,
    "steps": 1000,
    "grad_acc_steps": 1,
    "threads": 0,
    "model": {
        "dim": 512,
        "n_layers": 8,
        "n_heads": 8,
        "n_kv_heads": 0,  # 0: n_heads
        "head_dim": 0,  # 0: dim // n_heads
        "norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "multiple_of": 256,
        "ffn_dim_multiplier": 0.0,  # 0: unset
        "init_base_std": 0.0,  # 0: unset
        "init_std_factor": "disabled",
        "weight_tying": False,
        "vocab_size": 0,  # 0: the byte tokenizer's 258
        "seed": -1,  # -1: the top-level seed
        "qk_norm": False,
    },
    "optim": {
        "lr": 3e-4,
        "weight_decay": 0.1,
        "beta1": 0.9,
        "beta2": 0.95,
        "epsilon": 1e-8,
        "clip": 1.0,
        "scheduler": "cosine",
        "warmup": 2000,
        "lr_min_ratio": 0.1,
        "cycle_length": 1.0,
        "cosine_theta": 1.0,
        "decay_fraction": 0.1,
        "exp_factor": 0.5,
        "z_loss": 0.0,
        "independent_wd": False,
    },
    "data": {
        "batch_size": 2,
        "seq_len": 2048,
    },
}


def _coerce(value, default, key):
    """Gives `value` the type of `default` (PyYAML reads `3e-3` as a string, for one)."""
    if isinstance(default, bool):
        if isinstance(value, str):
            if value.lower() in ("true", "yes", "on", "1"):
                return True
            if value.lower() in ("false", "no", "off", "0"):
                return False
            raise ValueError(f"{key}: expected a boolean, got {value!r}")
        return bool(value)
    if isinstance(default, int):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if isinstance(default, float):
        return float(value)
    return str(value)


def load_config(path, overrides=()):
    """Reads the keys in DEFAULTS from a Lingua-style YAML file; other keys are ignored."""
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    for item in overrides:  # key=value, dotted keys, as on sweep-train's command line
        key, _, value = item.partition("=")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)

    def merge(defaults, given, prefix):
        out = {}
        for key, default in defaults.items():
            full = prefix + key
            if isinstance(default, dict):
                out[key] = merge(default, (given or {}).get(key) or {}, full + ".")
            elif given is not None and key in given and given[key] is not None:
                out[key] = _coerce(given[key], default, full)
            else:
                out[key] = default
        return out

    cfg = merge(DEFAULTS, raw, "")
    m = cfg["model"]
    m["n_kv_heads"] = m["n_kv_heads"] or m["n_heads"]
    m["head_dim"] = m["head_dim"] or m["dim"] // m["n_heads"]
    m["vocab_size"] = m["vocab_size"] or BYTE_VOCAB_SIZE
    m["seed"] = m["seed"] if m["seed"] >= 0 else cfg["seed"]
    return cfg


# ----------------------------------------------------------------------------------------------
# Model: Lingua's LMTransformer (apps/main/transformer.py, lingua/transformer.py), float32.


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x = x.float()
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps) * self.weight.float()

    def reset_parameters(self):
        nn.init.ones_(self.weight)


def trunc_normal(weight, std, a, b):
    """Lingua's nn.init.trunc_normal_(weight, 0, std, a, b), drawn as PyTorch 1.13 to 2.6 (at
    least) draw it and as sweep-train does: uniform over the bounds' CDF range, then the inverse
    CDF. Newer PyTorch (2.14 in Debian unstable) draws the same distribution by rejection
    sampling, which uses the RNG differently, so the reference spells the older draw out instead
    of calling nn.init and stays bit-comparable whatever PyTorch runs it."""
    def norm_cdf(x):
        return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0

    with torch.no_grad():
        lo, hi = norm_cdf(a / std), norm_cdf(b / std)
        weight.uniform_(2 * lo - 1, 2 * hi - 1)
        weight.erfinv_()
        weight.mul_(std * math.sqrt(2.0))
        weight.add_(0.0)  # the mean
        weight.clamp_(min=a, max=b)


def rope_cos_sin(head_dim, seq_len, theta):
    """Lingua's precompute_freqs_cis, as cos and sin: (S, D/2) each."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    t = torch.arange(seq_len)
    freqs = torch.outer(t, freqs).float()
    return freqs.cos(), freqs.sin()


def apply_rope(x, cos, sin):
    """Rotates interleaved pairs (x[..., 0::2], x[..., 1::2]). x: (B, S, H, D); cos, sin: (S, D/2)."""
    cos = cos[None, :, None, :]  # (1, S, 1, D/2)
    sin = sin[None, :, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]  # (B, S, H, D/2)
    out0 = x0 * cos - x1 * sin
    out1 = x0 * sin + x1 * cos
    return torch.stack((out0, out1), dim=-1).flatten(3)  # (B, S, H, D), re-interleaved


def repeat_kv(x, n_rep):
    """(B, S, n_kv, D) -> (B, S, n_kv * n_rep, D), each kv head repeated n_rep times."""
    bs, slen, n_kv, hd = x.shape
    if n_rep == 1:
        return x
    return x[:, :, :, None, :].expand(bs, slen, n_kv, n_rep, hd).reshape(bs, slen, n_kv * n_rep, hd)


class Attention(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.dim = m["dim"]
        self.n_heads = m["n_heads"]
        self.n_kv_heads = m["n_kv_heads"]
        self.head_dim = m["head_dim"]
        self.wq = nn.Linear(self.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(self.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(self.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, self.dim, bias=False)
        self.qk_norm = m["qk_norm"]
        if self.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, m["norm_eps"])
            self.k_norm = RMSNorm(self.head_dim, m["norm_eps"])

    def forward(self, x, cos, sin, mask):
        bsz, seq_len, _ = x.shape  # (B, S, dim)
        xq = self.wq(x).view(bsz, seq_len, self.n_heads, self.head_dim)  # (B, S, H, D)
        xk = self.wk(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim)  # (B, S, Hkv, D)
        xv = self.wv(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim)
        if self.qk_norm:  # before RoPE
            xq = self.q_norm(xq)
            xk = self.k_norm(xk)
        xq = apply_rope(xq, cos, sin)
        xk = apply_rope(xk, cos, sin)
        n_rep = self.n_heads // self.n_kv_heads
        xk = repeat_kv(xk, n_rep)  # (B, S, H, D)
        xv = repeat_kv(xv, n_rep)

        q, k, v = (t.transpose(1, 2) for t in (xq, xk, xv))  # (B, H, S, D)
        if x.is_cuda:  # fused attention (flash / memory-efficient kernels)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.wo(out.transpose(1, 2).reshape(bsz, seq_len, self.n_heads * self.head_dim))
        scale = 1.0 / math.sqrt(self.head_dim)
        scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, H, S, S)
        scores = scores.masked_fill(mask, float("-inf"))  # causal
        probs = F.softmax(scores.float(), dim=-1)
        out = torch.matmul(probs, v)  # (B, H, S, D)
        out = out.transpose(1, 2).reshape(bsz, seq_len, self.n_heads * self.head_dim)
        return self.wo(out)  # (B, S, dim)

    def reset_parameters(self, init_std, factor):
        s = init_std or self.dim ** (-0.5)
        for w in (self.wq, self.wk, self.wv):
            trunc_normal(w.weight, s, -3 * s, 3 * s)
        trunc_normal(self.wo.weight, s / factor, -3 * s, 3 * s)  # Lingua: bounds not divided


def ffn_hidden_dim(m):
    multiple_of = m["multiple_of"]
    hidden = int(2 * (4 * m["dim"]) / 3)
    if m["ffn_dim_multiplier"]:
        hidden = int(m["ffn_dim_multiplier"] * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class FeedForward(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.dim = m["dim"]
        self.hidden_dim = ffn_hidden_dim(m)
        self.w1 = nn.Linear(self.dim, self.hidden_dim, bias=False)
        self.w3 = nn.Linear(self.dim, self.hidden_dim, bias=False)
        self.w2 = nn.Linear(self.hidden_dim, self.dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))

    def reset_parameters(self, init_std, factor):
        s_in = init_std or self.dim ** (-0.5)
        s_out = (init_std or self.hidden_dim ** (-0.5)) / factor
        for w in (self.w1, self.w3):
            trunc_normal(w.weight, s_in, -3 * s_in, 3 * s_in)
        trunc_normal(self.w2.weight, s_out, -3 * s_out, 3 * s_out)


class TransformerBlock(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.attention = Attention(m)
        self.feed_forward = FeedForward(m)
        self.attention_norm = RMSNorm(m["dim"], m["norm_eps"])
        self.ffn_norm = RMSNorm(m["dim"], m["norm_eps"])

    def forward(self, x, cos, sin, mask):
        h = x + self.attention(self.attention_norm(x), cos, sin, mask)
        return h + self.feed_forward(self.ffn_norm(h))

    def init_weights(self, init_std, factor):
        self.attention.reset_parameters(init_std, factor)
        self.attention_norm.reset_parameters()
        if self.attention.qk_norm:
            self.attention.q_norm.reset_parameters()
            self.attention.k_norm.reset_parameters()
        self.feed_forward.reset_parameters(init_std, factor)
        self.ffn_norm.reset_parameters()


class LMTransformer(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.dim = m["dim"]
        self.head_dim = m["head_dim"]
        self.rope_theta = m["rope_theta"]
        self.init_base_std = m["init_base_std"]
        self.init_std_factor = m["init_std_factor"]
        self.weight_tying = m["weight_tying"]
        self.tok_embeddings = nn.Embedding(m["vocab_size"], m["dim"])
        self.layers = nn.ModuleList(TransformerBlock(m) for _ in range(m["n_layers"]))
        self.norm = RMSNorm(m["dim"], m["norm_eps"])
        if not self.weight_tying:
            self.output = nn.Linear(m["dim"], m["vocab_size"], bias=False)

    def forward(self, tokens):  # tokens: (B, S) -> logits (B, S, V)
        seq_len = tokens.shape[1]
        cos, sin = rope_cos_sin(self.head_dim, seq_len, self.rope_theta)
        mask = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)  # (S, S): True where j > i
        if tokens.is_cuda:
            cos, sin, mask = (t.to(tokens.device) for t in (cos, sin, mask))
        h = self.tok_embeddings(tokens)  # (B, S, dim)
        for layer in self.layers:
            h = layer(h, cos, sin, mask)
        h = self.norm(h)
        if self.weight_tying:
            return F.linear(h, self.tok_embeddings.weight)
        return self.output(h)

    def init_weights(self):
        """Lingua's order: final norm, embeddings, output, then each layer. Call right after
        torch.manual_seed(model seed)."""
        s = self.dim ** (-0.5)
        self.norm.reset_parameters()
        trunc_normal(self.tok_embeddings.weight, s, -3 * s, 3 * s)
        if not self.weight_tying:
            trunc_normal(self.output.weight, s, -3 * s, 3 * s)
        n_layers = len(self.layers)
        for depth, layer in enumerate(self.layers):
            factor = {
                "disabled": 1.0,
                "global_depth": (2 * (n_layers + 1)) ** 0.5,
                "current_depth": (2 * (depth + 1)) ** 0.5,
                "dim_ratio": self.dim / 4096,
            }[self.init_std_factor]
            layer.init_weights(self.init_base_std, factor)


def cross_entropy(logits, target):
    return F.nll_loss(F.log_softmax(logits.flatten(0, 1).float(), -1), target.flatten())


# ----------------------------------------------------------------------------------------------
# Schedule: lingua/optim.py. Step `k` (1-based global_step) uses base_lr * lr_factor(k - 1).


def progress(step, warmup, n_steps):
    """Fraction of the post-warmup phase done; 1 when there is none (Lingua divides by 0)."""
    return 1.0 if n_steps <= warmup else float(step - warmup) / (n_steps - warmup)


def lr_factor(step, cfg):
    o = cfg["optim"]
    warmup, n_steps, m = o["warmup"], cfg["steps"], o["lr_min_ratio"]
    kind = o["scheduler"]
    if kind == "wsd":
        cycle_steps = max(1, int(n_steps * o["cycle_length"]))
        cycle_num = step // cycle_steps + 1
        curr_n_steps = cycle_steps * cycle_num
        decay_length = int(curr_n_steps * o["decay_fraction"])
        if step == n_steps:
            cycle_num -= 1
            curr_n_steps = n_steps
    if step < warmup:
        return float(step) / warmup
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        sign = ((step // (n_steps * o["cycle_length"])) % 2) * -2 + 1
        if step <= n_steps:
            s = progress(step, warmup, n_steps)
            return m + 0.5 * (1 - m) * (
                sign * math.cos(math.pi * s ** o["cosine_theta"] / o["cycle_length"]) + 1)
        return m
    if kind == "linear":
        if step <= n_steps:
            s = progress(step, warmup, n_steps)
            return s * m + (1 - s)
        return m
    if kind == "inv_sqrt":
        e = o["exp_factor"]
        if step == 0:  # only with warmup 0; Lingua divides by 0 here
            return 1.0
        return max((warmup ** e) / (step ** e), m)
    if kind == "wsd":
        if step <= curr_n_steps - decay_length:
            return 1.0
        if step <= curr_n_steps:
            st = step - (curr_n_steps - decay_length)
            return 1 / ((st / curr_n_steps) * (1 / m) + (1 - st / curr_n_steps))
        return m
    raise ValueError(f"optim.scheduler: unknown scheduler {kind!r}")


# ----------------------------------------------------------------------------------------------
# Gradient norms by group.


def grad_group(name):
    """Parameter name -> its grad_norm/ group (norms belong to the block part they precede)."""
    parts = name.split(".")
    if parts[0] == "layers":
        part = {"attention": "attention", "attention_norm": "attention",
                "feed_forward": "feed_forward", "ffn_norm": "feed_forward"}[parts[2]]
        return f"layers.{parts[1]}.{part}"
    return parts[0]  # tok_embeddings, output, norm


def group_grad_norms(model):
    squares = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        g = grad_group(name)
        squares[g] = squares.get(g, 0.0) + torch.norm(p.grad.detach(), 2.0).item() ** 2
    return {g: math.sqrt(v) for g, v in squares.items()}


# ----------------------------------------------------------------------------------------------
# Batches.


def file_batches(path, batch_size, seq_len, count):
    words = np.fromfile(path, dtype="<i8")
    per_batch = batch_size * (seq_len + 1)
    available = words.size // per_batch
    if words.size % per_batch:
        raise SystemExit(f"{path}: {words.size} int64 values is not a whole number of "
                         f"micro-batches of {batch_size} x {seq_len + 1}")
    if available < count:
        raise SystemExit(f"{path}: holds {available} micro-batches, {count} needed")
    data = torch.from_numpy(words[: count * per_batch].astype(np.int64))
    return data.view(count, batch_size, seq_len + 1)


def random_batches(batch_size, seq_len, count, vocab_size, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (count, batch_size, seq_len + 1), generator=gen)


# ----------------------------------------------------------------------------------------------


def train(cfg, batches, n_steps, emit, device="cpu", log_freq=1):
    m, o = cfg["model"], cfg["optim"]
    grad_acc = cfg["grad_acc_steps"]
    cuda = device == "cuda"

    model = LMTransformer(m)
    torch.manual_seed(m["seed"])
    model.init_weights()
    model.to(device)

    params = list(model.parameters())
    base_lr, wd = o["lr"], o["weight_decay"]
    optimizer = torch.optim.AdamW(params, lr=base_lr, betas=(o["beta1"], o["beta2"]),
                                  eps=o["epsilon"], weight_decay=wd,
                                  **({"fused": True} if cuda else {}))
    group = optimizer.param_groups[0]

    micro = 0
    window_start, window_tokens = time.perf_counter(), 0
    for step in range(1, n_steps + 1):
        start = time.perf_counter()
        log_now = not cuda or step % log_freq == 0 or step == n_steps
        lr = base_lr * lr_factor(step - 1, cfg)  # LambdaLR: step k uses f(k - 1)
        group["lr"] = lr
        if o["independent_wd"]:
            group["weight_decay"] = wd / base_lr  # lr * wd_group = f(step) * wd

        losses = []
        for _ in range(grad_acc):
            window = batches[micro].to(device, non_blocking=True)  # (B, S + 1)
            micro += 1
            tokens, target = window[:, :-1], window[:, 1:]
            with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext():
                logits = model(tokens)  # (B, S, V)
            ce = cross_entropy(logits, target)
            loss = ce
            if o["z_loss"] > 0:
                loss = ce + o["z_loss"] * (torch.logsumexp(logits.float(), -1) ** 2).mean()
            (loss / grad_acc).backward()
            losses.append(ce.detach())
        window_tokens += tokens.numel() * grad_acc

        groups = group_grad_norms(model) if log_now else {}
        if o["clip"] > 0:
            grad_norm = nn.utils.clip_grad_norm_(params, o["clip"])
        else:
            grad_norm = torch.norm(
                torch.stack([torch.norm(p.grad.detach(), 2.0) for p in params if p.grad is not None]),
                2.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not log_now:
            continue
        if cuda:
            torch.cuda.synchronize()
            now = time.perf_counter()
            wps = window_tokens / (now - window_start)
            window_start, window_tokens = now, 0
        else:
            wps = tokens.numel() * grad_acc / (time.perf_counter() - start)

        record = {
            "global_step": step,
            "loss/out": sum(x.item() for x in losses) / len(losses),
            "optim/grad_norm": grad_norm.item(),
            "optim/lr": lr,
        }
        record.update({f"grad_norm/{g}": v for g, v in groups.items()})
        record["speed/wps"] = wps
        emit(record)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="Lingua-style YAML config")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--batches", help="raw int64 micro-batches (sweep-train --dump-batches)")
    source.add_argument("--random-batches", action="store_true",
                        help="draw batches from a torch.Generator seeded with `seed`")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps to run")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (default: the config's `threads`, if set)")
    parser.add_argument("--out", default="-", help="metrics JSON lines file, or - for stdout")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: bf16 autocast, fused attention and AdamW (the GPU baseline)")
    parser.add_argument("--log-freq", type=int, default=10,
                        help="on cuda, sync and record every N steps (CPU records every step)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, args.overrides)
    threads = args.threads or cfg["threads"]
    if threads > 0:
        torch.set_num_threads(threads)

    b, s = cfg["data"]["batch_size"], cfg["data"]["seq_len"]
    count = args.steps * cfg["grad_acc_steps"]
    if args.random_batches:
        batches = random_batches(b, s, count, cfg["model"]["vocab_size"], cfg["seed"])
    else:
        batches = file_batches(args.batches, b, s, count)

    out = sys.stdout if args.out == "-" else open(args.out, "w")
    print(f"reference_train: {args.steps} steps, threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}", file=sys.stderr)

    def emit(record):
        out.write(json.dumps(record) + "\n")
        out.flush()

    try:
        train(cfg, batches, args.steps, emit, device=args.device, log_freq=args.log_freq)
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

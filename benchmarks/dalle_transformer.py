"""Benchmark: the DALL-E transformer's sampling (KV cache vs none) and training throughput, the latter
beside lucidrains' `dalle-pytorch` at the same configuration in the same run.

    python benchmarks/dalle_transformer.py                       # cache speed-up + t2i training tokens/s
    python benchmarks/dalle_transformer.py --peer /tmp/peer      # + dalle-pytorch, set up by --setup-peer
    python benchmarks/dalle_transformer.py --setup-peer /tmp/peer   # make that venv (see shared/PEERS.md)
    python benchmarks/dalle_transformer.py --only attention --precision bf16   # CPU attention path vs SDPA

dalle-pytorch is never a dependency of t2i: it lives in its own virtual environment, and this script
runs its half of the measurement there as a subprocess. Configuration (PEERS.md): dim 512, depth 2,
8 heads of 64, 256 text + 256 image tokens, text vocabulary 16384, 8192 image codes, batch 4.
Nothing here is a test: the numbers depend on the machine and are reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from t2i.models.dalle.transformer import PRESETS, DalleConfig, DalleTransformer

# "mlp_ratio" 4 is dalle-pytorch's feed-forward width (its ff_mult default).
BENCH = {"dim": 512, "depth": 2, "heads": 8, "mlp_ratio": 4, "text_len": 256, "image_len": 256,
         "text_vocab": 16384, "image_vocab": 8192, "batch": 4}
# The shapes benchmark's transformer: the tiny preset's shape (read from it, so the two cannot drift apart),
# 64px through the tiny VQGAN, BPE of 512.
_TINY = PRESETS["tiny"]
SHAPES = {"dim": _TINY.dim, "depth": _TINY.depth, "heads": _TINY.heads, "mlp_ratio": _TINY.mlp_ratio,
          "text_len": _TINY.text_len, "image_len": 256, "text_vocab": 512, "image_vocab": 64, "batch": 16}

# Runs inside the peer's venv: dalle-pytorch's DALLE at the same shape, timed the same way.
PEER_SCRIPT = r"""
import json, sys, time, torch
from dalle_pytorch import DALLE, DiscreteVAE
c = json.loads(sys.argv[1]); torch.manual_seed(0); torch.set_num_threads(c["threads"])
vae = DiscreteVAE(image_size=256, num_layers=4, num_tokens=c["image_vocab"], codebook_dim=256, hidden_dim=64)
model = DALLE(dim=c["dim"], vae=vae, num_text_tokens=c["text_vocab"], text_seq_len=c["text_len"],
              depth=c["depth"], heads=c["heads"], dim_head=c["dim"] // c["heads"])
opt = torch.optim.Adam(model.parameters(), lr=1e-4)
text = torch.randint(1, c["text_vocab"], (c["batch"], c["text_len"]))
image = torch.randint(0, c["image_vocab"], (c["batch"], c["image_len"]))
def step():
    loss = model(text, image, return_loss=True); opt.zero_grad(); loss.backward(); opt.step()
for _ in range(c["warmup"]): step()
t0 = time.perf_counter()
for _ in range(c["steps"]): step()
dt = time.perf_counter() - t0
params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("vae."))
print(json.dumps({"tokens_per_s": c["steps"] * c["batch"] * (c["text_len"] + c["image_len"]) / dt, "params": params}))
"""


def t2i_model(cfg: dict):
    torch.manual_seed(0)
    return DalleTransformer(DalleConfig(dim=cfg["dim"], depth=cfg["depth"], heads=cfg["heads"],
                                        mlp_ratio=cfg["mlp_ratio"], text_len=cfg["text_len"],
                                        text_vocab=cfg["text_vocab"] + cfg["text_len"],
                                        image_len=cfg["image_len"], image_vocab=cfg["image_vocab"]))


def training_tokens_per_s(cfg: dict, steps: int, warmup: int, precision: str) -> dict:
    """t2i's transformer: forward + backward + Adam step, tokens (text + image) per second."""
    from t2i.models.dalle.objective import dalle_loss

    model = t2i_model(cfg).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    text = torch.randint(0, cfg["text_vocab"], (cfg["batch"], cfg["text_len"]))
    image = torch.randint(0, cfg["image_vocab"], (cfg["batch"], cfg["image_len"]))

    def step():
        with torch.autocast("cpu" if not torch.cuda.is_available() else "cuda", dtype=torch.bfloat16,
                            enabled=precision == "bf16"):
            loss, _ = dalle_loss(model, text, image)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    return {"tokens_per_s": steps * cfg["batch"] * (cfg["text_len"] + cfg["image_len"]) / dt,
            "params": sum(p.numel() for p in model.parameters())}


def sampling_tokens_per_s(cfg: dict, batch: int) -> dict:
    """Image tokens per second sampled with and without the key/value cache (same model, same seed)."""
    from t2i.models.dalle.sampling import generate

    model = t2i_model(cfg).eval()
    text = torch.randint(0, cfg["text_vocab"], (batch, cfg["text_len"]))
    out = {}
    for use_cache in (True, False):
        t0 = time.perf_counter()
        codes = generate(model, text, top_k=cfg["image_vocab"] // 10, use_cache=use_cache,
                         generator=torch.Generator().manual_seed(0))
        out["cache" if use_cache else "no_cache"] = batch * cfg["image_len"] / (time.perf_counter() - t0)
        out.setdefault("codes", []).append(codes)
    out["same_tokens"] = bool(torch.equal(*out.pop("codes")))
    return out


def attention_paths(cfg: dict, steps: int, warmup: int, precision: str, rounds: int = 3) -> dict:
    """Training tokens/s with the CPU's three-matmul causal attention and with F.scaled_dot_product_attention
    in its place, alternated `rounds` times so drift in the machine's speed hits both; the best of each."""
    import torch.nn.functional as F

    import t2i.models.dalle.transformer as tr

    ours = tr.causal_attention
    paths = {"three matmuls": ours,
             "sdpa": lambda q, k, v, dropout=0.0: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                                 dropout_p=dropout)}
    best = {}
    for _ in range(rounds):
        for name, fn in paths.items():
            tr.causal_attention = fn
            try:
                rate = training_tokens_per_s(cfg, steps, warmup, precision)["tokens_per_s"]
            finally:
                tr.causal_attention = ours
            best[name] = max(best.get(name, 0.0), rate)
    return best


def setup_peer(venv: Path) -> None:
    """Create the dalle-pytorch venv exactly as shared/PEERS.md describes."""
    pip = [str(venv / "bin" / "pip"), "install", "-q"]
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(pip + ["torch==2.14.1", "torchvision==0.29.1", "setuptools<81"], check=True)
    subprocess.run(pip + ["--no-deps", "dalle-pytorch==1.6.6", "axial-positional-embedding", "einops", "ftfy", "regex",
                          "rotary-embedding-torch", "tokenizers", "tqdm", "packaging", "wcwidth", "requests",
                          "urllib3", "idna", "certifi", "pyyaml", "omegaconf", "antlr4-python3-runtime==4.9.3",
                          "taming-transformers-rom1504", "pytorch-lightning==1.9.5", "lightning-utilities",
                          "torchmetrics", "DALL-E"], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5, help="timed training steps per model")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads for both")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="t2i's training precision")
    p.add_argument("--sample_batch", type=int, default=1, help="prompts sampled at once for the cache timing")
    p.add_argument("--only", choices=["sampling", "training", "attention"],
                   help="run one part: sampling, training (+ the peer), or attention (the CPU attention path "
                        "against SDPA, training the shapes benchmark's transformer)")
    p.add_argument("--peer", type=Path, help="venv with dalle-pytorch (made by --setup-peer)")
    p.add_argument("--setup-peer", dest="setup_peer", type=Path, help="create the dalle-pytorch venv here, then exit")
    args = p.parse_args()
    if args.setup_peer:
        setup_peer(args.setup_peer)
        return
    torch.set_num_threads(args.threads)
    if args.only == "attention":
        rates = attention_paths(SHAPES, args.steps, args.warmup, args.precision)
        per_kimg = {k: 1000 * (SHAPES["text_len"] + SHAPES["image_len"]) / v for k, v in rates.items()}
        for name, rate in rates.items():
            print(f"training, attention by {name:<13} ({args.precision}, dim {SHAPES['dim']}, depth {SHAPES['depth']}, "
                  f"batch {SHAPES['batch']}, {SHAPES['text_len']} + {SHAPES['image_len']} tokens): {rate:.0f} tokens/s, "
                  f"{per_kimg[name]:.1f} s/kimg")
        print(f"three matmuls / sdpa: {rates['three matmuls'] / rates['sdpa']:.2f}x")
        return
    if args.only != "training":
        s = sampling_tokens_per_s(BENCH, args.sample_batch)
        print(f"sampling {BENCH['image_len']} image tokens (dim {BENCH['dim']}, depth {BENCH['depth']}, batch "
              f"{args.sample_batch}): with KV cache {s['cache']:.1f} tokens/s, without {s['no_cache']:.1f} "
              f"tokens/s, speed-up {s['cache'] / s['no_cache']:.1f}x, identical tokens: {s['same_tokens']}")
    if args.only == "sampling":
        return
    ours = training_tokens_per_s(BENCH, args.steps, args.warmup, args.precision)
    print(f"t2i training ({args.precision}, {ours['params'] / 1e6:.1f}M parameters, batch {BENCH['batch']}): "
          f"{ours['tokens_per_s']:.0f} tokens/s")
    if args.peer:
        conf = json.dumps({**BENCH, "threads": args.threads, "steps": args.steps, "warmup": args.warmup})
        r = subprocess.run([str(args.peer / "bin" / "python"), "-c", PEER_SCRIPT, conf], capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"dalle-pytorch run failed:\n{r.stderr[-2000:]}")
        peer = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"dalle-pytorch 1.6.6 training (fp32, {peer['params'] / 1e6:.1f}M parameters without its VAE): "
              f"{peer['tokens_per_s']:.0f} tokens/s")
        print(f"t2i / dalle-pytorch: {ours['tokens_per_s'] / peer['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()

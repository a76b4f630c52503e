"""Benchmark: peak memory and time of AttnGAN training steps with the `paper` networks (AttnGAN's CUB sizes: gf 32,
df 64, 2 residual blocks, a 256-d DAMSM with Inception-v3 regions), three stages ending at 64, 128 and 256 px.

Each setting is a fresh `t2i train attngan` process on shapes data rendered at that side, so its peak resident
memory (`Resources/peak_mem_gb` in stats.jsonl; the CUDA allocator's peak on a GPU) is its own. The DAMSM is a
`paper` one with a random Inception trunk (`--inception none`): the trunk's weights do not change the cost.

    python benchmarks/attngan_memory.py --workdir /tmp/t2i-attngan-mem                 # CPU, batch 2
    python benchmarks/attngan_memory.py --workdir /tmp/m --device cuda --batch 16 --sides 256 --precision bf16

Measured on this 2-core CPU (one thread, beside two other trainings; peak resident memory of the whole process,
about 1 GB of it torch, the Inception DAMSM and the data), batch 2:
    side 64:  fp32 1.20 GB 3.26 s/step, bf16 1.21 GB 2.20 s/step
    side 128: fp32 1.56 GB 5.42 s/step, bf16 1.55 GB 3.11 s/step
    side 256: fp32 3.05 GB 17.1 s/step, bf16 3.01 GB 14.6 s/step
Memory above the baseline grows about 4x per doubling of the side (activations scale with the pixels): about 1 GB
an image at 256px in fp32, so batch 16 at 256px needs roughly 16 GB of activations plus about 2 GB of weights and
Adam state: an estimate for the 24 GB goal, not a GPU measurement (no GPU was lent when this was written).

Nothing here is a test: the numbers depend on the machine and are reported.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import T2I, sh


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--sides", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="training steps per setting (the first warms up)")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--grad_checkpointing", type=int, nargs="+", default=[0, 1],
                   help="without (0) and with (1) gradient checkpointing of the stages")
    args = p.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for side in args.sides:
        data = work / f"shapes{side}"
        if not (data / "dataset.json").exists():
            sh(T2I + ["data", "shapes", "--out", data, "--n", 32, "--size", side, "--seed", 1])
        damsm_dir = work / f"damsm{side}"
        if not list(damsm_dir.glob("*-damsm-paper/snapshot-*")):
            sh(T2I + ["train", "damsm", "--data", data, "--preset", "paper", "--inception", "none", "--kimg", 0.004,
                      "--batch", 4, "--outdir", damsm_dir, "--device", args.device], work / f"damsm{side}.log")
        (damsm,) = damsm_dir.glob("*-damsm-paper")
        for precision in args.precision:
            for ckpt in args.grad_checkpointing:
                out = work / f"attngan{side}-{precision}-b{args.batch}-ckpt{ckpt}"
                kimg = args.batch * args.steps / 1000
                sh(T2I + ["train", "attngan", "--data", data, "--damsm", damsm, "--preset", "paper", "--batch",
                          args.batch, "--kimg", kimg, "--tick_kimg", args.batch / 1000, "--snap", 0, "--precision",
                          precision, "--grad_checkpointing", ckpt, "--device", args.device, "--outdir", out],
                   work / f"{out.name}.log")
                (run,) = out.glob("*-attngan-paper")
                ticks = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
                step_s = min(t["Timing/sec_per_kimg"] for t in ticks[1:] or ticks) * args.batch / 1000
                rows.append((side, precision, ckpt, max(t["Resources/peak_mem_gb"] for t in ticks), step_s))
    print(f"\n{'side':>5} {'precision':>9} {'checkpointing':>13} {'peak GB':>8} {'s/step':>7}   (paper networks, "
          f"batch {args.batch}, device {args.device})")
    for side, precision, ckpt, mem, step in rows:
        print(f"{side:>5} {precision:>9} {ckpt:>13} {mem:>8.2f} {step:>7.2f}")


if __name__ == "__main__":
    main()

"""Benchmark: peak memory and time of AttnGAN training steps with the `paper` networks (AttnGAN's CUB sizes: gf 32,
df 64, 2 residual blocks, a 256-d DAMSM with Inception-v3 regions), three stages ending at 64, 128 and 256 px.

Each setting is a fresh `t2i train attngan` process on shapes data rendered at that side, so its peak resident
memory (`Resources/peak_mem_gb` in stats.jsonl; the CUDA allocator's peak on a GPU) is its own. The DAMSM is a
`paper` one with a random Inception trunk (`--inception none`): the trunk's weights do not change the cost.

    python benchmarks/attngan_memory.py --workdir /tmp/t2i-attngan-mem                 # CPU, batch 2
    python benchmarks/attngan_memory.py --workdir /tmp/m --device cuda --batch 16 --sides 256 --precision bf16

It also counts, in this process, the tensors autograd keeps for the backward pass of one step's D and G phases
(fp32): the activations' own cost, free of the allocator and of the process's fixed memory.

Measured on this 2-core CPU with nothing else running (`--precision fp32 bf16`), batch 2; peak resident memory of
the whole process (about 1.2 GB of it is torch, the Inception DAMSM, Adam's state and the data); tensors kept for
backward in MB (fp32):
    side checkpointing   peak GB fp32 / bf16   s/step fp32 / bf16   kept D MB   kept G MB
     64        0           1.35 / 1.36          0.60 / 0.50            10.1       214.1
     64        1           1.31 / 1.32          0.73 / 0.68             2.8         4.2
    128        0           1.72 / 1.78          0.88 / 0.75            29.6       287.0
    128        1           1.62 / 1.78          1.14 / 0.98             3.5        11.0
    256        0           3.17 / 3.23          2.76 / 2.26           110.2       580.2
    256        1           2.97 / 3.00          3.49 / 3.09             6.5        38.6
The G phase's activations are mostly the frozen Inception's at 299x299 (about 100 MB an image, at every side: L_DAMSM
backpropagates through it to the fakes), the rest grows about 4x per doubling of the side, as D's do. Without
checkpointing, batch 16 at 256px keeps about 8 x 580 MB = 4.6 GB for G's backward and 0.9 GB for D's, beside about
2 GB of weights and Adam state: within 24 GB by this count (not a GPU measurement: no GPU was lent when this was
written). `--grad_checkpointing 1` keeps 15x less for G and 17x less for D at 256px, for 22-37% more time a step.

Nothing here is a test: the numbers depend on the machine and are reported.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import T2I, sh


def saved_activations(data: Path, damsm: Path, batch: int, checkpointing: bool, device: str) -> dict[str, float]:
    """MB of tensors autograd keeps for the backward pass of each phase (D, G) of one `t2i train attngan` step:
    what the activations cost, free of the allocator's and the process's own memory. Parameters are not counted
    (they are held anyway); a checkpointed region keeps only its inputs, which this count leaves out too."""
    from types import SimpleNamespace

    import torch

    from t2i.models.attngan.trainer import AttnGanTrainConfig, build

    cfg = AttnGanTrainConfig(data=str(data), damsm=str(damsm), preset="paper", grad_checkpointing=checkpointing)
    family = build(cfg, None, SimpleNamespace(device=torch.device(device)), lambda *a: None)
    params = {p.untyped_storage().data_ptr() for m in family.modules.values() for p in m.parameters()}
    batch_ = next(family.batches(0, batch, 0, 1, 0))
    out = {}
    for phase in family.phases():
        kept: dict[int, int] = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                kept[ptr] = t.untyped_storage().nbytes()
            return t

        torch.manual_seed(0)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = family.loss(phase, batch_)
        out[phase.name] = sum(kept.values()) / 2 ** 20
        del loss
    return out


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
                fp32 = precision == "fp32"
                kept = saved_activations(data, damsm, args.batch, bool(ckpt), args.device) if fp32 else {}
                rows.append((side, precision, ckpt, max(t["Resources/peak_mem_gb"] for t in ticks), step_s, kept))
    print(f"\n{'side':>5} {'precision':>9} {'checkpointing':>13} {'peak GB':>8} {'s/step':>7} {'kept D MB':>10} "
          f"{'kept G MB':>10}   (paper networks, batch {args.batch}, device {args.device})")
    for side, precision, ckpt, mem, step, kept in rows:
        print(f"{side:>5} {precision:>9} {ckpt:>13} {mem:>8.2f} {step:>7.2f} {kept.get('D', float('nan')):>10.1f} "
              f"{kept.get('G', float('nan')):>10.1f}")


if __name__ == "__main__":
    main()

"""Benchmark: `t2i train ldm` against a plain diffusers training loop, same UNet, text encoder and batch.

The plain loop is what diffusers' text-to-image example does: fp32, every step encodes its images through the
autoencoder (`vae.encode(x).latent_dist.sample() * scale`), noises them with `DDPMScheduler.add_noise`, and
regresses eps with torch's AdamW, keeping an EMA (`diffusers.training_utils.EMAModel`), diffusers'
UNet2DConditionModel as it comes (its default attention). t2i's loop reads latents from its cache (posteriors
computed once per dataset and autoencoder; a fresh z ~ q(z|x) each step), runs under bf16 autocast (AMX on this
CPU, tensor cores on a GPU), trains with diffusers' plain attention on a CPU and a fused AdamW. Both run here, one
after the other, on the same machine; the script prints the steady-state images/s of each, their ratio, and t2i's
one-time cost (start-up and latent cache).

    python benchmarks/ldm_train_speed.py --data /tmp/t2i-ldm/shapes64 \
        --autoencoder /tmp/t2i-ldm/seed0/00000-shapes64-autoencoder-tiny

On the 2-core CPU (tiny preset, 6.6M UNet, batch 32), two runs: the plain loop 69.0 and 66.4 img/s, t2i's 125.3
and 119.0 img/s (1.82x, 1.79x). Before t2i trained with diffusers' plain attention on a CPU and a fused AdamW it was
71.5 against 61.2 img/s (1.17x): torch's CPU flash-attention backward, diffusers' default, took a third of the
bf16 step, and at 64px the tiny autoencoder's encode is cheap. On 2026-12-02, after the loop's fused EMA update and
SDPA math kernel for the text encoder's training attention on a CPU: 71.9 and 74.6 against 140.3 and 137.4 img/s
(1.95x, 1.84x).

Nothing here is a test: the numbers depend on the machine and are reported.
"""

from __future__ import annotations

import argparse
import copy
import re
import statistics
import time
from pathlib import Path

import torch

from common import T2I, sh


def plain_diffusers_loop(args) -> float:
    """Images/s of the plain loop over args.steps timed steps (after 3 untimed ones)."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    from t2i.data.dataset import ImageTextDataset, captions_by_image
    from t2i.data.loader import load_images
    from t2i.data.transforms import to_model
    from t2i.models.first_stage.autoencoder_trainer import load_autoencoder_snapshot
    from t2i.models.ldm.model import PRESETS, LatentDiffusion
    from t2i.models.ldm.text_encoder import LdmTokenizer
    from t2i.text.bpe import train_bpe

    torch.manual_seed(0)
    dataset = ImageTextDataset(args.data)
    images = load_images(dataset, min(len(dataset), 4096))
    captions = [caps[0] for caps in captions_by_image(dataset, "en")[:len(images)]]
    vae = load_autoencoder_snapshot(args.autoencoder).vae
    tokenizer = LdmTokenizer.from_bpe(train_bpe(captions, 1024))
    cfg = copy.deepcopy(PRESETS[args.preset])
    cfg.text.vocab_size = tokenizer.vocab_size
    cfg.unet.sample_size = vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1)
    cfg.unet.latent_channels = vae.config.latent_channels
    model = LatentDiffusion(cfg).train()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4)
    ema = EMAModel(model.parameters())
    scale = vae.config.scaling_factor
    print(f"plain diffusers loop: UNet {sum(p.numel() for p in model.unet.parameters()) / 1e6:.2f}M, fp32, "
          f"batch {args.batch}, latents encoded every step")
    t0 = 0.0
    for step in range(args.steps + 3):
        if step == 3:
            t0 = time.perf_counter()
        idx = torch.randint(len(images), (args.batch,))
        with torch.no_grad():
            latents = vae.encode(to_model(images[idx])).latent_dist.sample() * scale
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,))
        ids, mask = tokenizer([captions[int(i)] for i in idx], cfg.text.max_len, truncate=True)
        # diffusers' UNet2DConditionModel itself, with its default attention (t2i's wrapper picks its own on a CPU).
        states = model.text(ids, mask)[0]
        pred = model.unet.net(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=states).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.step(model.parameters())
    return args.steps * args.batch / (time.perf_counter() - t0)


def t2i_loop(args, work: Path) -> tuple[float, float]:
    """Images/s of `t2i train ldm` (median over its ticks after the first) and the run's whole wall time."""
    runs = work / "speed-runs"
    wall = sh(T2I + ["train", "ldm", "--data", args.data, "--autoencoder", args.autoencoder, "--preset", args.preset,
                     "--batch", args.batch, "--kimg", args.kimg, "--tick_kimg", args.kimg / 6, "--precision", "bf16",
                     "--outdir", runs], work / "t2i-speed.log")
    log = (sorted(runs.glob("*-ldm-*"))[-1] / "log.txt").read_text()
    per_kimg = [float(s) for s in re.findall(r"sec/kimg ([\d.]+)", log)][1:]
    return 1000 / statistics.median(per_kimg), wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a t2i dataset (e.g. the shapes64 of benchmarks/ldm_shapes.py)")
    p.add_argument("--autoencoder", required=True, help="a `t2i train autoencoder` run on that data")
    p.add_argument("--preset", default="tiny", help="LDM preset of both loops")
    p.add_argument("--batch", type=int, default=32, help="batch of both loops")
    p.add_argument("--steps", type=int, default=60, help="timed steps of the plain loop")
    p.add_argument("--kimg", type=float, default=6.0, help="thousand images t2i's loop trains (6 ticks)")
    p.add_argument("--workdir", default="/tmp/t2i-ldm-speed", help="where t2i's run and log go")
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    plain = plain_diffusers_loop(args)
    ours, wall = t2i_loop(args, work)
    steady = args.kimg * 1000 / ours
    print(f"plain diffusers loop (fp32, encode every step): {plain:8.1f} img/s")
    print(f"t2i train ldm (bf16, cached latents):           {ours:8.1f} img/s   ratio {ours / plain:.2f}x")
    print(f"t2i one-time cost: {wall - steady:.0f}s of its {wall:.0f}s run (start-up, latent cache, snapshot)")


if __name__ == "__main__":
    main()

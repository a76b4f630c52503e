"""Benchmark: the whole latent-diffusion recipe on the shapes domain at 64px, every stage through the real CLI,
for each of several seeds.

For each seed it trains a KL autoencoder (`t2i train autoencoder`, tiny preset, f4: 16x16x4 latents) and, beside it
on the other core, a small CLIP (`t2i train clip`, English captions, `--clip_kimg`); then the text-conditioned UNet
(`t2i train ldm`, tiny preset) on both cores, reading the frozen text tower of that CLIP (or of `--clip RUN`; with
`--clip_kimg 0` a text encoder trained jointly, as LDM trains its BERT), within fixed budgets. It prints one table:
the autoencoder's PSNR and the oracle accuracy of its round trips (the LDM's ceiling); shapes_accuracy (seen and
held-out compositions) with DPM-Solver++ at 20 steps for guidance 1 (none), 2, 4 and 7.5, and with DDIM at 50 steps
at the chosen guidance, next to diversity (how often two seeds of a prompt get different backgrounds, the
background distribution's TV distance to the data's); for the chosen setting also the seed-diversity ratio,
precision, recall and oracle FID; the wall time of every stage (the budget counts the slower of the two side-by-side
stages, then the UNet's; training only, not the autoencoder's metrics) and of every evaluation (images/s of each
sampler).

    python benchmarks/ldm_shapes.py --workdir /tmp/t2i-ldm --seeds 0 1

A stage whose run already finished in the work directory is reused (delete it, or give another --workdir, to
retrain). Nothing here is a test: the numbers depend on the machine and are reported.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import T2I, metric, metric_seconds, sh, stage, stages

# The first stage follows the tiny VQGAN's recipe (benchmarks/dalle_shapes.py): 32px crops, a high peak
# learning rate after a warm-up, cosine decay, bf16, no patch-GAN within the budget. With the defaults of
# `t2i train autoencoder` (whole images, lr 1e-4, fp32) 20 kimg took 747 s and its round trips kept only
# 51% / 44% of scenes (the shapes blurred); this recipe reached 99.2% / 99.0% and 34.8 dB at 80 kimg, 99.4% / 98.8%
# and 35.1 dB at 96 kimg (423 s).
AUTOENCODER_ARGS = ("--preset tiny --batch 32 --crop 32 --lr 7e-4 --lr_decay 1 --warmup_kimg 5 --precision auto "
                    "--disc_start_kimg 1000")
# The UNet's budget is counted in optimizer steps more than in images: at 60 kimg, batch 64 and lr 5e-4 (940 steps)
# sampled 18% / 7% all-attribute (seen / held-out; DPM++ 20, guidance 4, 150 prompts a split), batch 32 and lr 8e-4
# (1875 steps) 51% / 38%, at about the same seconds per kimg; batch 16 learned no faster per second.
# Two seeds of the whole recipe (150 prompts a split, DPM++ 20, guidance 4): seed 0 61.3% / 46.7% in 1920 s (its
# autoencoder's round trips 95.4% / 98.0%); seed 1 25.3% / 28.7% in 1673 s, its autoencoder having kept only 42% / 37%
# at 72 kimg: the first stage is not yet seed-robust at this budget.
# Seed 1's first stage alone (72 kimg, `t2i train autoencoder ... --seed 1 --metrics psnr,shapes_recon`, round trips
# seen / held-out): this recipe 26.6 dB, 53.6% / 47.2%; --lr 3.5e-4 25.0 dB, 20.8% / 22.6%; --batch 16 26.7 dB, 34.8% /
# 35.4%; --precision fp32 20.2 dB and 0% at 40 kimg (stopped). In every one the L1 loss sits near 0.11 from about 8
# to 30 kimg before it falls, and the round trips lose the small objects' colours (purple comes back dark teal): a
# plateau this small network (0.7M parameters) leaves late or not at all, not a matter of precision, lr or batch.
# Capacity is: 8 latent channels (16x16x8) gave seed 1 33.2 dB, 95.6% / 96.0%; wider levels (32, 64, 64 channels,
# 0.95M parameters, latents still 16x16x4) left the plateau by 12 kimg and reached, seeds 0 / 1 / 2, 35.0 / 36.7 /
# 38.1 dB and 99.4% / 98.8%, 99.6% / 99.8%, 99.8% / 99.6% (697 s each, three at once on the 2 cores). Those widths
# are now the tiny preset's. The two whole-recipe rows above were measured with the old widths.
# With those widths the text encoder was what held the UNet back (seed 0, the same 72-kimg autoencoder, LDM 96 kimg
# on one core beside another run, 150 prompts a split, DPM++ 20, guidance 4; all attributes seen / held-out, then
# shape / colour / size on seen prompts): the jointly trained encoder (0.13M, 64 wide, 2 layers) 65.3% / 56.7%,
# 75% / 76% / 86%; as wide and deep as the CLIP's tower (128, 3 layers, 0.65M) 66.7% / 54.0%, 77% / 76% / 88%, so not
# its size; the shipped default model's frozen CLIP tower (trained 200 kimg with word-swap hard negatives) 88.7% /
# 82.7%, 99.5% / 89.4% / 100%. That CLIP tells a caption from the same caption with the two objects' colours, shapes
# or sizes swapped 100% of the time (benchmarks/clip_binding.py); the diffusion loss alone teaches an encoder that
# slowly. But a CLIP trained as a stage of this recipe for 60 kimg (`--clip_kimg 60`: English captions, bf16, 220 s
# on one core; binding colour / shape / size 0.92 / 0.61 / 0.63 seed 0, 0.94 / 0.65 / 0.47 seed 1) gave seeds 0 / 1
# 64.0% / 53.3% and 64.0% / 54.0% (guidance 4), no better than the joint encoder: the CLIP must first learn binding,
# which the shipped one had by 200 kimg (an English-only bf16 CLIP has it by 164 kimg on seeds 0 and 1; 200 kimg
# took 886 s on one core). With the shipped CLIP, seed 0, guidance 2 / 7.5 gave 86.7% / 82.0% and 90.0% / 80.0%.
# The whole recipe with `--clip_kimg 60`, seeds 0 / 1 side by side on one core each: stages 639 + 219 + 1779 s and 628
# + 224 + 1775 s (44 minutes, against the 30-minute budget), 64.0% / 53.3% and 64.0% / 54.0% at guidance 4.
# The recipe now (the defaults): the autoencoder (72 kimg) and a CLIP that binds (164 kimg: clip_binding 1.000 /
# 1.000 / 1.000 on seeds 0 and 1) train side by side on one core each, then the UNet 112 kimg on both cores, its
# steps 1.8x faster than before (diffusers' plain attention on a CPU, a fused AdamW: benchmarks/ldm_train_speed.py).
# Seeds 0 / 1: stages (639 | 631) + 1019 s = 1659 s and (628 | 610) + 1038 s = 1666 s. All attributes seen /
# held-out (150 prompts a split), DPM++ 20 at guidance 1 / 2 / 4 / 7.5: seed 0 77.3 / 68.0, 86.7 / 84.0, 88.7 / 84.7,
# 88.7 / 81.3; seed 1 84.7 / 78.0, 92.0 / 88.0, 90.0 / 86.7, 88.7 / 83.3; DDIM 50 at guidance 4 88.0 / 85.3 and 90.0 /
# 86.7 (1.9 against 2.8 images/s of the whole evaluation, DPM++'s with the full metrics). Diversity at guidance 4:
# backgrounds of two seeds differ 0.61 / 0.68 (data 0.74), background TV 0.25 / 0.08, seed-diversity ratio 0.89 /
# 0.91, precision 0.88 / 0.85, recall 0.94 / 0.87, oracle FID 176 / 142 (n = 150). With 500 prompts a split
# (`t2i eval RUN --metrics shapes_accuracy --n 500 --sampler dpm++ --steps 20 --guidance G`), seeds 0 / 1: guidance 2
# 86.2 / 79.8 and 89.4 / 87.0, guidance 4 87.0 / 80.4 and 88.2 / 85.6: short of 90% on seen prompts. What is left is
# binding in the UNet: seed 0 at guidance 4 drew 143 of 143 one-object prompts right and 115 of 157 two-object ones,
# and each of its 66 wrong colours was the other object's (the autoencoder keeps 99.4% of scenes, the CLIP binds).
# Cross-attention at 16x16 as well costs 1.8x a step (713 against 394 ms, bf16, batch 32, one core). Adding the CLIP's
# sentence feature to the UNet's timestep embedding (`--pooled_text 1`, seed 0, the shipped CLIP, 96 kimg on one core)
# gave 89.3% / 82.0% against 88.7% / 82.7% without: not adopted.
# Fine-tuning the CLIP's tower with the UNet instead of freezing it (seed 0, the recipe's lr 8e-4 for both, 112 kimg,
# 500 prompts a split, guidance 4) fell to 64.2% / 60.0%: the tower unlearns binding (a lower lr for it not tried).
# The UNet's size does not bind either (seed 0, 112 kimg on one core beside another run, 500 prompts a split,
# guidance 4, against 87.0% / 80.4%): 8 heads instead of 4, 84.0% / 76.8%; two transformer blocks per attention layer
# (1.33x a step), 84.2% / 79.8%. Nor the causal token states: seed 0's colour mistakes on 200 two-object prompts fall
# on the first-named object 33 times and on the second 36, and a template naming each object's place before it ("at
# the top a ..., at the bottom a ...") drew 147 of 200 right against 149 for "a ... above a ...". The noise does: the
# UNet's x_0 predictions at the first DDIM step already give the upper object a different colour per seed. The
# linear schedule ends at alpha_bar_T = 0.0047, so training's x_T still shows the image's colours faintly and the UNet
# learned to read them there; sampling's pure noise then picks the colour. `--prediction v --zero_snr 1` (the
# schedule rescaled to zero terminal SNR, Lin et al. 2024; seed 0, 112 kimg as above, 500 prompts) with Hang et al.'s
# v weights min(SNR, 5) / (SNR + 1), which vanish at T: colour 87.5% / 78.8%, all 85.0% / 79.0%; with plain v weights
# colour 97.7% / 97.7% but shape 91.4% / 84.2%, all 83.2% / 74.0%; with min(SNR + 1, 5) / (SNR + 1) (what min-SNR
# is on a zero-SNR schedule now), seeds 0 / 1: colour 98.5% / 98.5% and 97.3% / 97.6%, shape 90.8% / 84.0% and
# 90.7% / 88.7%, all 84.4% / 74.4% and 82.6% / 80.0%, backgrounds of two seeds differ 0.73 / 0.74 (data 0.75),
# background TV 0.10 / 0.12 (the recipe: 0.61 / 0.68, 0.25 / 0.08). Binding and the background's spread are solved
# there, but shapes now fail (squares drawn rounded): not the default yet. At guidance 2 (300 prompts a split) those
# two models drew 87.0% / 78.7% and 90.7% / 88.7% (colour 99.1%, shape 91.7% and 95.2% seen; backgrounds differ 0.77
# / 0.76, TV 0.02 / 0.08); guidance 4 rescaled as Lin et al. propose (phi 0.7) 82.3% / 71.3% and 84.3% / 79.7%.
# The sampler is not why shapes fail: seed 0's model with DDIM 50 at guidance 4 (300 prompts a split) drew 85.3% /
# 74.3%, shape 91.9% / 84.1% (DPM-Solver++ 20: 84.4% / 74.4%, shape 90.8% / 84.0%).
# What costs the shapes is the weight of the last steps: their x_0 error is the image's whole spread around what the caption fixes (v-loss
# 0.35 / 0.59 at t = 900 / 999 against 0.03-0.05 for t in 100..700, seed 0's model below), so at weight 1 the steps
# with SNR < 0.01 (t >= 850) carry 68% of the weighted loss, and the steps that draw outlines get little.
# `--terminal_weight 0.25` (weights min(SNR + 0.25, 5) / (SNR + 1): 53% of the loss there; Hang et al.'s 0 leaves
# 1.3% and the colours to the noise), all stages retrained, 112 kimg on one core beside other runs, 500 prompts a
# split, DPM++ 20, guidance 4, seeds 0 / 1: 94.4% / 89.6% and 88.0% / 85.4% all attributes seen / held-out, colour
# 99.1% / 99.1%, shape 96.9% / 93.1% (weight 1: 90.8% / 90.7%), backgrounds of two seeds differ 0.72 / 0.72, TV
# 0.07 / 0.11. Better than weight 1 on both seeds and than the recipe on seed 0 (87.0%), level on seed 1 (88.2%):
# seed 1's shapes still hold it under 90% at guidance 4. At guidance 2 (300 prompts a split) both seeds pass:
# 93.7% / 89.7% and 92.0% / 89.0%, colour 99.6% / 99.8%, shape 96.3% / 95.0%, backgrounds of two seeds differ 0.75 /
# 0.73 (data 0.75), TV 0.04 / 0.06 (data 0.05). So that is the recipe now and guidance 2 the chosen setting.
# The whole benchmark with it (`--seeds 0 1 --eval_n 300`, every stage retrained; all attributes seen / held-out),
# first run: seed 0 stages (639 | 630) + 978 s = 1618 s, DPM++ 20 at guidance 2 94.3 / 93.3, DDIM 50 94.7 / 93.7;
# seed 1 (742 | 728) + 1115 s = 1857 s, over the budget (the machine ran 12-15% slower per kimg that hour), 91.7 /
# 89.0, DDIM 50 92.3 / 89.0. The loop then stopped differentiating the frozen CLIP tower inside the LDM module (the
# UNet's step 9.2 -> 8.3 s/kimg, the same weights bit for bit) and took SDPA's math kernel for the CLIP's training
# attention on a CPU (3.6 -> 2.55 s/kimg), and the budget stopped counting the autoencoder's metrics (about 120 s
# of evaluation inside its run). Rerun on the slow machine (stages 8-13% slower per kimg for seed 1 than seed 0):
# seed 0 stages (553 | 437) + 993 s = 1547 s, round trips 99.2% / 99.2%, 35.2 dB; DPM++ 20 at guidance 1 / 2 / 4 /
# 7.5: 81.0 / 74.7, 92.7 / 90.0, 91.3 / 91.0, 86.3 / 86.7; DDIM 50 at guidance 2 93.3 / 90.0. Seed 1 (602 | 485) +
# 1057 s = 1660 s, 99.8% / 98.8%, 36.3 dB; 87.0 / 81.0, 95.0 / 89.3, 87.7 / 86.3, 80.0 / 75.3; DDIM 50 95.0 / 90.3.
# At guidance 2: colour 98.7% / 99.3%, shape 96.9% / 97.4%, backgrounds of two seeds differ 0.76 / 0.73 (data
# 0.75), TV 0.05 / 0.05, seed-diversity ratio 0.95 / 0.86, precision 0.90 / 0.86, recall 0.92 / 0.92, oracle FID
# 71.4 / 72.5 (300 images). Images/s of the whole evaluation with nothing else running: DPM++ 20 3.90 (seed 0,
# guidance 4) and 4.73 (seed 1, guidance 7.5), DDIM 50 1.73 and 1.95 (guidance 2).
CLIP_ARGS = "--langs en --precision auto"
LDM_ARGS = ("--preset tiny --batch 32 --lr 8e-4 --warmup_kimg 5 --min_snr 5 --precision auto --prediction v "
            "--zero_snr 1 --terminal_weight 0.25")


def evaluate(run: Path, data: Path, out: Path, opts: list, n: int, full: bool, work: Path) -> tuple[dict, dict, float]:
    """shapes_accuracy (and with `full` the sample-set metrics) of one sampling setting; (accuracy, extra, wall)."""
    metrics = "shapes_accuracy,fid,precision_recall,seed_diversity" if full else "shapes_accuracy"
    wall = sh(T2I + ["eval", run, "--data", data, "--metrics", metrics, "--n", n, "--out", out, *opts],
              work / f"{out.name}.log")
    extra = ({"fid": metric(out, "fid")["fid"], **metric(out, "precision_recall"),
              "div_ratio": metric(out, "seed_diversity")["feature_dist_ratio"]} if full else {})
    return metric(out, "shapes_accuracy"), extra, wall


def one_seed(seed: int, args, data: Path, work: Path) -> list[tuple]:
    """Train every stage with this seed and evaluate every sampling setting; the rows of the table."""
    runs, walls = work / f"seed{seed}", {}
    runs.mkdir(parents=True, exist_ok=True)
    # The first stage and the CLIP do not depend on each other: they train side by side on one core each, then the
    # UNet trains on every core.
    first = {f"autoencoder-seed{seed}": (runs, "-autoencoder-tiny", T2I + [
        "train", "autoencoder", "--data", data, "--kimg", args.ae_kimg, "--seed", seed,
        "--metrics", "psnr,shapes_recon", *args.ae_args.split()])}
    if args.clip_kimg and not args.clip:
        first[f"clip-seed{seed}"] = (runs, "-clip-small", T2I + [
            "train", "clip", "--data", data, "--kimg", args.clip_kimg, "--seed", seed, *args.clip_args.split()])
    ae, *clip = stages(first, work, walls, threads=1 if len(first) > 1 else None)
    # The budget counts training: the autoencoder's PSNR and round-trip metrics, evaluated inside its run at its
    # snapshots (about a minute each), are evaluation, as the UNet's sampling runs below are.
    evaluating = metric_seconds(ae)
    walls[f"autoencoder-seed{seed}"] -= evaluating
    clip = args.clip or (clip[0] if clip else None)
    text = ["--clip", clip] if clip else []
    ldm = stage(f"ldm-seed{seed}", runs, "-ldm-tiny",
                T2I + ["train", "ldm", "--data", data, "--autoencoder", ae, "--kimg", args.ldm_kimg, "--seed", seed,
                       *text, *args.ldm_args.split()], work, walls)
    rec, ceiling = metric(ae, "psnr"), metric(ae, "shapes_recon")
    last = walls[f"ldm-seed{seed}"]
    total = max(walls[name] for name in first) + last
    print(f"seed {seed}: autoencoder PSNR {rec['psnr_db']:.2f} dB, round trip {ceiling['seen_all']:.3f} / "
          f"{ceiling['heldout_all']:.3f} (seen / held-out); stages (" + " | ".join(f"{walls[n]:.0f}s" for n in first)
          + f") + {last:.0f}s = {total:.0f}s (budget 1800s; the autoencoder's metrics took {evaluating:.0f}s more)")
    settings = {f"dpm++ 20, g {g:g}": ["--sampler", "dpm++", "--steps", "20", "--guidance", str(g)]
                for g in args.guidances}
    settings[f"ddim 50, g {args.guidance:g}"] = ["--sampler", "ddim", "--steps", "50", "--guidance", str(args.guidance)]
    rows = []
    for label, opts in settings.items():
        out = runs / ("eval-" + label.replace(" ", "").replace(",", "-"))
        full = label == f"dpm++ 20, g {args.guidance:g}"
        acc, extra, wall = evaluate(ldm, data, out, opts, args.eval_n, full, work)
        rows.append((seed, label, acc, extra, 2 * args.eval_n / wall))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/t2i-ldm", help="where data, runs and logs go")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds of the whole recipe")
    p.add_argument("--n_images", type=int, default=10000, help="training images rendered")
    p.add_argument("--ae_kimg", type=float, default=72, help="autoencoder budget (thousand images)")
    p.add_argument("--clip_kimg", type=float, default=164,
                   help="train a CLIP (beside the autoencoder) for this many thousand images and condition the UNet on "
                        "its frozen text tower; 0: no CLIP, the UNet trains its own text encoder")
    p.add_argument("--clip", default="", help="an existing CLIP run to condition on instead (not trained, not timed; "
                                              "e.g. src/t2i/assets/default-lafite)")
    p.add_argument("--clip_args", default=CLIP_ARGS, help="extra options of `t2i train clip`")
    p.add_argument("--ldm_kimg", type=float, default=112, help="UNet (+ text encoder) budget (thousand images)")
    p.add_argument("--ae_args", default=AUTOENCODER_ARGS, help="extra options of `t2i train autoencoder`")
    p.add_argument("--ldm_args", default=LDM_ARGS, help="extra options of `t2i train ldm`")
    p.add_argument("--guidances", type=float, nargs="+", default=[1, 2, 4, 7.5], help="guidance scales of DPM++")
    p.add_argument("--guidance", type=float, default=2, help="the chosen guidance (DDIM's, and the full metrics')")
    p.add_argument("--eval_n", type=int, default=150,
                   help="prompts per split for shapes_accuracy (and images for the chosen setting's FID, precision / "
                        "recall and seed diversity)")
    args = p.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "shapes64"
    if not (data / "dataset.json").exists():
        sh(T2I + ["data", "shapes", "--out", data, "--n", args.n_images, "--size", 64, "--seed", 1], work / "data.log")
    rows = [row for seed in args.seeds for row in one_seed(seed, args, data, work)]

    print()
    print(f"{'seed':>4} {'sampling':<16} {'seen all':>9} {'held-out all':>12} {'seen colour':>11} {'seen shape':>10} "
          f"{'bg differs':>10} {'bg TV':>6} {'div ratio':>9} {'precision':>9} {'recall':>6} {'oracle FID':>10} "
          f"{'img/s':>6}")
    for seed, label, acc, extra, speed in rows:
        more = (f"{extra['div_ratio']:>9.3f} {extra['precision']:>9.3f} {extra['recall']:>6.3f} {extra['fid']:>10.2f}"
                if extra else f"{'-':>9} {'-':>9} {'-':>6} {'-':>10}")
        print(f"{seed:>4} {label:<16} {acc['seen_all']:>9.3f} {acc['heldout_all']:>12.3f} {acc['seen_colour']:>11.3f} "
              f"{acc['seen_shape']:>10.3f} {acc['background_seeds_differ']:>10.3f} {acc['seen_background_tv']:>6.3f} "
              f"{more} {speed:>6.2f}")
    print(f"data: backgrounds of two seeds differ {rows[0][2]['background_seeds_differ_data']:.3f}; bg TV 0 and div "
          "ratio 1 by definition; img/s counts the whole evaluation (model load, sampling, decoding, oracle)")


if __name__ == "__main__":
    main()

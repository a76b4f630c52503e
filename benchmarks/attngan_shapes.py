"""Benchmark: the whole AttnGAN recipe on the shapes domain at 64px, every stage through the real CLI, for each
seed and variant.

For each seed it trains the DAMSM (`t2i train damsm`, tiny preset) and then AttnGAN on it (`t2i train attngan`,
tiny preset: stages 16/32/64) within fixed budgets, and prints one table: the wall time of both stages (the
target: at most 30 minutes together on this 2-core CPU), the DAMSM's retrieval R@1 on the test split, and the
generator's oracle accuracy (seen and held-out compositions, all attributes and colour) next to its diversity
(how often two seeds of a prompt get different backgrounds, the background distribution's TV distance to the
data's, precision, recall, oracle FID) and its DAMSM R-precision. The recipe is the tiny preset (its D reads the
sentence by projection) with ControlGAN's channel attention and conditional batch norm from (c, z) without CA's
noise (`--cond_norm 1 --ca 0`), at `--precision auto`; the variants change one thing on the same budget and seeds:
`no_cond_norm` the recipe before 2026-12-03 (AttnGAN's G: CA's sampled code read by the first stage only),
`ca_noise` conditional batch norm with CA's sampled code (no KL), `concat_d` AttnGAN's own conditional logits,
`no_channel_attention` plain AttnGAN's stages.

    python benchmarks/attngan_shapes.py --workdir /tmp/attngan --seeds 0 1 --kimg 40 [--variants recipe no_cond_norm]

Measured on the 2-core CPU with AVX512-BF16 (`--precision auto` = bf16), one run a core beside another, DAMSM 30 kimg,
batch 16, 1000 prompts a split, 2026-12-02/03 (seen / held-out all attributes, colour, two seeds' backgrounds differ
(data 0.75), background TV, precision, recall, oracle FID, R-precision; seed 0 / seed 1):
- DAMSM R@1 (image to text, word / sentence) 0.62 / 0.94 and 0.59 / 0.97.
- 20 kimg (DAMSM 217-239 s + AttnGAN 644-737 s, 14.5-15.9 min):
  recipe (`--cond_norm 1 --ca 0`): 14.7% / 13.5%, 52.5%, 0.234, 0.081, 0.80, 0.22, 209.0, 81.2% |
  23.7% / 20.7%, 59.4%, 0.229, 0.089, 0.81, 0.37, 173.1, 80.8%;
  no_cond_norm (the recipe before): 14.4% / 13.3%, 54.3%, 0.004, 0.084, 0.86, 0.15, 224.0, 79.4% |
  22.0% / 18.8%, 59.7%, 0.003, 0.117, 0.83, 0.22, 177.5, 77.7%;
  ca_noise (`--cond_norm 1 --ca 1 --kl_weight 0`): 19.1% / 15.4%, 54.0%, 0.346, 0.176, 0.80, 0.22, 242.3, 76.6% |
  13.8% / 13.4%, 56.4%, 0.562, 0.227, 0.75, 0.30, 265.4, 75.9%.
  The recipe is ahead on accuracy, FID and R-precision on both seeds (narrowly on accuracy), and its G reads z; CA's
  noise in the code that the batch norms read buys more background variety at the cost of FID and, on seed 1,
  accuracy. Why drop CA: in the previous recipe's G (seed 1) mu varied 0.166 per dimension across 300 test captions
  against CA's sigma^2 of 0.962: the code the first stage read was mostly noise.
- 40 kimg, the half hour on this CPU (DAMSM 220 / 229 s + AttnGAN 1400 / 1380 s: 27.0 / 26.8 min):
  recipe: 21.3% / 18.7%, 56.3%, 0.005, 0.064, 0.87, 0.17, 169.7, 82.3% |
  32.9% / 25.5%, 67.7%, 0.337, 0.092, 0.88, 0.43, 125.5, 90.0%;
  no_cond_norm: 23.0% / 17.7%, 58.1%, 0.001, 0.128, 0.85, 0.18, 192.5, 82.7% (1375 s) |
  23.6% / 22.0%, 63.4%, 0.005, 0.103, 0.85, 0.26, 168.3, 80.6% (1351 s).
  On seed 1 the recipe leads by 9.3 / 3.5 points; on seed 0 it trails by 1.7 on seen prompts and leads by 1.0 on
  held-out ones (within seed noise); its FID is lower on every seed and budget. Seed 0's G had learnt to ignore z
  again by 40 kimg; seed 1's had not. Still far from the target (90% / 75%).
- The recipe with MSGAN's term (`--attngan_args '--ms_weight 1 --ms_clip 0.08'`, 20 kimg, 900 / 895 s):
  16.7% / 12.9%, 52.4%, 0.716, 0.095, 0.84, 0.42, 153.5, 80.9% | 14.9% / 13.0%, 59.9%, 0.688, 0.133, 0.79, 0.49,
  160.9, 80.1%: backgrounds as varied as the data's and a lower FID on both seeds, but accuracy split (+2.0 / -8.8
  seen) and steps 40% slower; not in the recipe.
2026-12-03, the same CPU and DAMSMs; variants on top of the recipe, 20 kimg (729-789 s), 1000 prompts a split (seen /
held-out all attributes, seen one-object / two-object scenes, colour, backgrounds differ, recall, FID, R-precision):
  attn_gamma_pos (`--attn_gamma 5 --pos_attention 1`): 21.3% / 20.2%, 39.0% / 3.2%, 55.1%, 0.118, 0.18, 215.2, 83.5% |
  18.8% / 18.7%, 35.8% / 1.4%, 58.7%, 0.456, 0.38, 172.9, 81.2%;
  gp_hard (that + G's `--hard_negatives 1`): 25.3% / 21.4%, 47.5% / 2.6%, 55.0%, 0.028, 0.14, 225.1, 78.6% |
  16.4% / 14.5%, 29.3% / 3.2%, 55.5%, 0.172, 0.24, 218.9, 77.0%;
  gp_wide (attn_gamma_pos + `--init_channels 256`): 17.2% / 17.3%, 32.1% / 2.0%, 53.6%, 0.154, 0.20, 195.7, 83.6% |
  13.1% / 13.1%, 23.2% / 2.8%, 57.7%, 0.188, 0.12, 277.8, 82.5%;
  gp_joint (attn_gamma_pos + `--d_joint_batch 1`): 17.3% / 18.1%, 31.9% / 2.4%, 58.1%, 0.264, 0.27, 414.3, 82.3% |
  17.0% / 19.4%, 32.3% / 1.4%, 63.9%, 0.514, 0.38, 238.2, 85.4%.
  Against the recipe's 14.7% / 13.5% and 23.7% / 20.7% none wins on both seeds (the seeds alone differ by 9 points),
  so the recipe is unchanged. Cosine attention does what it is for (`G/attention_entropy` 0.8 instead of 1.00, and
  R-precision up on both seeds), but the generator still does not bind: two-object scenes are 1-3% right, and with
  G's DAMSM term ranking each fake against its caption's word-swapped copy the fakes beat that copy 0.55-0.57 of the
  time through 16 kimg (chance 0.5). Screens at 8 kimg (200 prompts; recipe 10.5% / 11.0% and 15.0% / 14.5%):
  pos_attention alone 10.5% / 13.5% and 8.5% / 7.5% (the attention stayed uniform), attn_gamma alone 11.0% / 13.0%
  and 6.0% / 7.5%, d_hard_negatives 9.5% / 10.0% and 5.5% / 9.5%. Per stage (`benchmarks/attngan_stages.py`) the
  16 px stage is the weakest: 1.8% against the 72% that 16 px renders score.
2026-12-03, screens at 8 kimg on top of the recipe (`--kimg 8 --eval_n 200`, one run a core beside another, 316-324 s;
same columns as above, R-precision last):
  recipe (scored before the one/two-object split): 10.5% / 11.0%, 48.8%, 0.370, 0.30, 319.3, 74.5% |
  15.0% / 14.5%, 59.1%, 0.500, 0.45, 300.7, 76.0%;
  contrastive (`--d_contrastive 1`, LAFITE's itd on every D): 11.0% / 11.5%, 18.3% / 2.2%, 45.7%, 0.425, 0.40, 299.8,
  70.5% | 7.5% / 7.5%, 13.8% / 0.0%, 57.0%, 0.500, 0.36, 341.0, 76.5%;
  r1 (`--d_r1 0.05`, lazy every 4 steps): 10.5% / 9.0%, 19.3% / 0.0%, 43.3%, 0.250, 0.04, 523.6, 80.5% |
  9.0% / 6.0%, 15.6% / 1.1%, 48.8%, 0.350, 0.14, 389.3, 80.5%.
  Neither beats the recipe on both seeds: the contrastive term +0.5 / -7.5 seen, its diversity about the recipe's; R1
  0.0 / -6.0 seen, and worse held-out accuracy, recall and FID on both, though a higher R-precision.
Longer than the half hour: attn_gamma_pos's 40 kimg runs resumed exactly to 120 kimg (`t2i train attngan ... --kimg
120 --resume RUN` with the benchmark's options; 40 -> 120 kimg in 3754 / 3748 s, part of it beside other jobs), each
snapshot evaluated on 1000 prompts a split (seen / held-out all attributes, seen one-object / two-object scenes, colour,
backgrounds differ, recall, FID, R-precision; seed 0 | seed 1):
  40 kimg: 24.0% / 20.1%, 44.8% / 2.8%, 57.3%, 0.180, 0.23, 184.5, 79.9% | 24.6% / 23.0%, 46.3% / 2.4%, 61.7%, 0.423,
  0.36, 135.7, 84.6%;
  60 kimg: 33.9% / 28.9%, 62.2% / 5.1%, 62.6%, 0.310, 0.42, 121.0, 87.8% | 31.5% / 27.5%, 58.2% / 4.2%, 64.5%, 0.423,
  0.41, 125.7, 87.0%;
  80 kimg: 39.9% / 32.3%, 71.1% / 8.1%, 63.1%, 0.366, 0.41, 109.9, 90.4% | 29.6% / 21.6%, 55.4% / 3.2%, 63.2%, 0.495,
  0.46, 109.3, 88.1%;
  100 kimg: 38.6% / 29.9%, 67.7% / 8.9%, 63.5%, 0.471, 0.49, 99.4, 92.3% | 34.8% / 21.9%, 64.4% / 4.6%, 64.4%, 0.601,
  0.50, 95.8, 89.7%;
  120 kimg: 40.6% / 28.7%, 71.5% / 9.1%, 65.4%, 0.521, 0.53, 96.9, 89.8% | 37.4% / 29.9%, 67.9% / 6.3%, 66.0%, 0.629,
  0.55, 90.8, 89.4%.
  One run on both cores (`OMP_NUM_THREADS=2`, nothing else running) takes 22-23 s/kimg against 35 on one core, so the
  half hour holds about 70 kimg, not more.
  Three times the budget buys single objects (45% -> 70%), FID, recall and background variety, but two-object scenes
  (about half the prompts) stay below 10%, so all-attribute accuracy levels off near 40%: the target is not a matter of
  a few more minutes.
Is it the sentence vector, which the first stage lays the scene out from? A DAMSM trained with word-swapped hard
negatives (`t2i train damsm ... --hard_negatives 1`, 30 kimg, 605 / 554 s; its sentence cosine tells a caption from
its colour / shape / size swap 0.887 / 0.827 / 0.940 and 0.907 / 0.893 / 0.993, against 0.723 / 0.757 / 0.883 and
0.833 / 0.820 / 0.983 without) under attn_gamma_pos for 40 kimg (1881 / 1916 s beside other jobs): 24.2% / 20.9%,
42.4% / 5.7%, 53.6%, 0.260, 0.29, 159.3 | 30.1% / 23.0%, 57.6% / 2.0%, 61.7%, 0.350, 0.34, 138.2 (R-precision by its
own DAMSM, not comparable), against 24.0% / 20.1%, 2.8% two-object and 24.6% / 23.0%, 2.4%: within seed noise, and
two-object scenes are still not drawn.
The recipe before, fp32 on a CPU with AVX-512 but no bf16 (1.25 s a step against 2.0 in bf16), 20 kimg, 2026-12-02:
seed 0 322 s + 1589 s (31.8 min), DAMSM R@1 (image to text)
0.58 word / 0.96 sentence, 21.9% / 20.5% all attributes seen / held-out, colour 55.5%, two seeds' backgrounds differ
0.005 (data 0.75), background TV 0.263, precision 0.81, recall 0.11, oracle FID 278.6, R-precision 82.0%; seed 1 373
s + 1582 s (32.6 min), 0.60 / 0.97, 14.3% / 12.7%, colour 55.8%, 0.001, 0.070, 0.84, 0.18, 210.8, 77.1%. Still far
from the target (90% / 75% in 30 minutes). The 16px stage draws nearly the same faint blob for every prompt and seed
(the later stages paint the objects through word attention), the words' attention maps are nearly uniform over the
image, objects are often placed on the wrong side, and G ignores z.
Before (AttnGAN's concat D, no channel attention, bf16 on an AMX CPU, 28 kimg): 6.3% / 7.6% and 8.6% / 9.1%, colour
50.6% / 48.8%, R-precision 59.1% / 61.0%, FID 246.6 / 265.1, 32.7 / 32.3 min. At 20 kimg (500 prompts a split) channel
attention had won on both seeds: 16.2% / 13.0% (seed 0) and 11.8% / 13.2% (seed 1) against plain AttnGAN's 4.0% / 3.0%
and 2.6% / 4.0%, R-precision 70.0% / 79.6% against 54% / 55%.
MSGAN's mode-seeking term (`--ms_weight 1 --ms_clip 0.08`, the LAFITE default model's values; 8 kimg, 200 prompts a
split, one core beside another run), seeds 0 / 1: two seeds' backgrounds differ 0.64 / 0.475 instead of 0.015 /
0.005, at 8.5% / 11.5% seen and 8.5% / 10.0% held-out against 15.5% / 12.5% and 14.5% / 11.5% (R-precision 73.5% /
65.5% against 77.5% / 69.0%), 81 / 79 against 73 s/kimg. Not in the recipe yet: at this budget it costs accuracy,
and on LAFITE the same term's cost took long training to recover.

A stage whose run already finished in the work directory is reused (delete it, or give another --workdir, to
retrain). Nothing here is a test: the numbers depend on the machine and are reported.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import T2I, metric, sh, stage

DAMSM_ARGS = "--preset tiny --batch 48"
# At 12 kimg (one core each, 200 prompts a split) batch 16 with AttnGAN's lr 2e-4 drew 18% / 18% of colours right
# (1% / 2% all attributes), lr 5e-4 32% / 30% (0.5% / 1%); at 8 kimg lambda 20 drew 11% / 6%, batch 8 21% / 20%.
# `--precision auto`: on a CPU with AVX-512 but neither AMX nor AVX512-BF16 a step took 1.25 s in fp32 and 2.0 s under
# bf16 autocast (batch 16, one core each beside another run), so auto takes fp32 there; with AVX512-BF16 bf16 ran
# 36 s/kimg against 57 in fp32, and auto takes bf16. The tiny preset's D reads the sentence by projection; at 8 kimg
# (seeds 0 / 1, channel attention, 200 prompts a split) it drew 15.5% / 12.5% of seen prompts right against 6.0% /
# 8.5% with AttnGAN's concat (`--d_condition concat`), R-precision 77.5% / 69.0% against 66.0% / 69.5%, in 585 s /
# 581 s against 677 s / 704 s. Without channel attention the projection D drew 0.5% (seed 0).
# The recipe's fakes bind colours to the wrong object ("a large purple circle above a large black diamond" draws
# both purple-black), yet its DAMSM tells a render's caption from the same caption with the two objects' colour,
# shape or size swapped 100% / 96% / 100% of the time by its word-level score (72% / 76% / 88% by the sentence
# cosine; benchmarks/clip_binding.py --damsm). Tried on top of the recipe at 8 kimg (seed 0, 200 prompts a split,
# all attributes seen / held-out, against the recipe's 15.5% / 14.5%): the DAMSM term on every stage
# (`--damsm_stages all`) 12.0% / 12.0% (colour 52% against 42%; seed 1 12.5% / 11.5%, the recipe's own, colour 51%
# against 42%); a DAMSM trained with word-swapped hard negatives
# (`t2i train damsm --hard_negatives 1`: sentence binding 89% / 83% / 94%, R@1 0.61 / 0.95 word / sentence against
# 0.58 / 0.96; 788 s for 30 kimg beside two other runs) 11.0% / 12.5%, and with G's DAMSM term also ranking the
# swapped captions (`--hard_negatives 1`) 8.0% / 11.5%. None wins on seed 0 (seed noise is 3-4 points here), so
# the recipe keeps neither.
ATTNGAN_ARGS = ("--preset tiny --precision auto --batch 16 --g_lr 0.0005 --d_lr 0.0005 --channel_attention 1 "
                "--cond_norm 1 --ca 0")
VARIANTS = {"recipe": "", "pos_attention": "--pos_attention 1",
            "d_hard_negatives": "--d_hard_negatives 1", "attn_gamma": "--attn_gamma 5",
            "attn_gamma_pos": "--attn_gamma 5 --pos_attention 1", "no_cond_norm": "--cond_norm 0 --ca 1",
            "ca_noise": "--ca 1 --kl_weight 0", "gp_wide": "--attn_gamma 5 --pos_attention 1 --init_channels 256",
            "gp_hard": "--attn_gamma 5 --pos_attention 1 --hard_negatives 1",
            "gp_joint": "--attn_gamma 5 --pos_attention 1 --d_joint_batch 1",
            "no_channel_attention": "--channel_attention 0", "concat_d": "--d_condition concat",
            "contrastive": "--d_contrastive 1", "r1": "--d_r1 0.05"}


def one_seed(seed: int, variant: str, args, data: Path, test: Path, work: Path) -> dict:
    """Train both stages with this seed (the DAMSM is shared by the variants) and evaluate; one table row."""
    runs, walls = work / f"seed{seed}", {}
    runs.mkdir(parents=True, exist_ok=True)
    damsm = stage(f"damsm-seed{seed}", runs, "-damsm-tiny",
                  T2I + ["train", "damsm", "--data", data, "--test_data", test, "--kimg", args.damsm_kimg, "--seed",
                         seed, "--metrics", "r_at_1", *DAMSM_ARGS.split()], work, walls)
    vruns = runs / variant
    vruns.mkdir(exist_ok=True)
    gan = stage(f"attngan-{variant}-seed{seed}", vruns, "-attngan-tiny",
                T2I + ["train", "attngan", "--data", data, "--damsm", damsm, "--kimg", args.kimg, "--seed", seed,
                       *ATTNGAN_ARGS.split(), *args.attngan_args.split(), *VARIANTS[variant].split()], work, walls)
    out = vruns / "eval"
    if not (out / "metric-r_precision_damsm.jsonl").exists():
        metrics = "shapes_accuracy,precision_recall,fid,r_precision_damsm"
        walls["eval"] = sh(T2I + ["eval", gan, "--data", data, "--n", args.eval_n, "--out", out, "--metrics", metrics],
                           work / f"eval-{variant}-{seed}.log")
    acc = metric(out, "shapes_accuracy")
    return {"seed": seed, "variant": variant, "damsm_s": walls[f"damsm-seed{seed}"],
            "attngan_s": walls[f"attngan-{variant}-seed{seed}"], "r_at_1": metric(damsm, "r_at_1"), "acc": acc,
            **metric(out, "precision_recall"), "fid": metric(out, "fid")["fid"],
            "rprec": metric(out, "r_precision_damsm")["r_precision_damsm"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["recipe"])
    p.add_argument("--damsm_kimg", type=float, default=30)
    p.add_argument("--kimg", type=float, default=20,
                   help="AttnGAN's budget in thousands of images (40 fills the half hour on a CPU with bf16)")
    p.add_argument("--attngan_args", default="", help="more `t2i train attngan` options, e.g. '--batch 16'")
    p.add_argument("--eval_n", type=int, default=1000, help="prompts per split for shapes_accuracy (and images for "
                                                           "the other metrics)")
    args = p.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data, test = work / "shapes64", work / "shapes64-test"
    if not (data / "dataset.json").exists():
        sh(T2I + ["data", "shapes", "--out", data, "--n", 10000, "--size", 64, "--seed", 1])
    if not (test / "dataset.json").exists():
        sh(T2I + ["data", "shapes", "--out", test, "--n", 1000, "--size", 64, "--seed", 2, "--split", "test-seen"])
    rows = [one_seed(s, v, args, data, test, work) for s in args.seeds for v in args.variants]
    print(f"\n{'seed':>4} {'variant':>17} {'damsm s':>8} {'gan s':>6} {'total min':>9} {'R@1 w/s':>11} "
          f"{'seen':>6} {'held':>6} {'1 obj':>6} {'2 obj':>6} {'colour':>6} {'bg diff':>7} {'bg TV':>6} {'prec':>5} "
          f"{'rec':>5} {'FID':>6} {'R-prec':>6}")
    for r in rows:
        a = r["acc"]
        r1 = r["r_at_1"]
        print(f"{r['seed']:>4} {r['variant']:>17} {r['damsm_s']:>8.0f} {r['attngan_s']:>6.0f} "
              f"{(r['damsm_s'] + r['attngan_s']) / 60:>9.1f} {r1['i2t_word']:>5.2f}/{r1['i2t_sentence']:<5.2f} "
              f"{a['seen_all']:>6.1%} {a['heldout_all']:>6.1%} {a.get('seen_all_1_object', float('nan')):>6.1%} "
              f"{a.get('seen_all_2_objects', float('nan')):>6.1%} {a['seen_colour']:>6.1%} "
              f"{a['background_seeds_differ']:>7.3f} {a['seen_background_tv']:>6.3f} {r['precision']:>5.2f} "
              f"{r['recall']:>5.2f} {r['fid']:>6.1f} {r['rprec']:>6.1%}")
    print(f"\nshapes_accuracy over {args.eval_n} prompts a split; the data's own: backgrounds differ about 0.75, "
          "TV 0.03")


if __name__ == "__main__":
    main()

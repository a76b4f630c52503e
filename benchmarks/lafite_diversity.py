"""Experiment: which LAFITE ingredient makes samples ignore their noise, and which change cures it.

Trains the previous default model's recipe (no mode-seeking term) and variants of it at the same budget on the
shapes domain, two at a time (one core each), and prints accuracy next to diversity for every run:
oracle accuracy (seen / held-out, all attributes), how often two seeds of a prompt get different
backgrounds (data: 0.75), the background distribution's TV distance to the data's, how far two seeds move
the objects, the seed-diversity ratio (generated / real, oracle features), precision and recall.

    python benchmarks/lafite_diversity.py --workdir /work/exp/div --kimg 30 --variants baseline,no_contrastive
    python benchmarks/lafite_diversity.py --workdir /work/exp/div --kimg 30 --variants baseline --seeds 0,1

A run that already finished in the work directory is evaluated, not retrained. Nothing here is a test: the
numbers are reported, not asserted.

Measured on the 2-core CPU at 30 kimg (500 prompts per split; two seeds of a prompt differ in background for
0.748 of the data's renders):
- baseline, seed 0: 43.4% / 38.0% seen / held-out, backgrounds differ 0.000 (one background for every image,
  TV 0.75), seed-diversity ratio 0.30, precision 0.91, recall 0.14. Already one background at 10 kimg; the raw G
  is the same as G_ema (0.000), so the EMA does not cause it.
- no_contrastive (itd = itc = 0), seed 0: backgrounds differ 0.000, ratio 0.44, accuracy 5%: the contrastive
  terms make the prompts followed, they do not make the seed ignored.
- ms1 (MSGAN's term, weight 1), seeds 0 / 1: backgrounds differ 0.626 / 0.612, TV 0.35 / 0.25, ratio 0.86 /
  0.82, recall 0.39 / 0.31, but accuracy 30.0% / 32.2% seen. Weights 0.25 / 0.5 (seed 0): backgrounds differ
  0.550 / 0.596, ratio 0.62 / 0.78, accuracy 33.2% / 33.8% seen: the accuracy cost does not shrink with the weight.
- Is it the term's push on details, past the data's own spread? Capping the ratio at the data's 0.10
  (ms1_tau0.1, DSGAN-style) gives 32.4% / 31.8%, backgrounds differ 0.532; measuring the distance on 8x8
  pooled images so only the layout is pushed (ms1_pool8) gives 25.2% / 22.2%, 0.588 (seed 0 each). Neither
  recovers the accuracy: the cost comes with the diversity itself at this budget, not with how it is pushed.
- At 120 kimg (benchmarks/lafite_shapes.py with --ms_weight 1, 1000 prompts per split): supervised 85.8% / 80.6%,
  backgrounds differ 0.605, TV 0.31, precision 0.80, recall 0.61, oracle FID 188 (shipped model: 98.4% / 95.3%,
  0.000, 0.65, 0.94, 0.20, 623); language-free 56.6% / 46.9%.
- Longer (the same runs resumed): supervised 90.8% / 84.6% at 140 kimg, 91.9% / 86.1% at 160, 91.9% / 87.9% at
  180, 92.0% / 87.9% at 200, backgrounds differ 0.70 / 0.70 / 0.64 / 0.61; language-free 78.8% / 72.6% at 200.
  Sampling the 200-kimg model with truncation gives the accuracy back and keeps the variety: psi 0.7 95.8% /
  91.6% (backgrounds differ 0.636), psi 0.5 96.7% / 93.4% (0.624, precision 0.875, recall 0.586, FID 215),
  psi 0.3 97.2% / 93.8% (0.597). That model at psi 0.5 is the shipped default (docs/DEFAULT_MODEL.md).
- Fine-tuning the previous (collapsed) default model with --ms_weight 1, G from its G_ema and a fresh D, 20 kimg:
  87.6% / 86.0%, backgrounds differ 0.091 (0.001 learning rates: 82.0% / 82.9%, 0.098). Once collapsed, the
  generator does not quickly learn to use its noise, and the fresh D costs accuracy.
- Is the imbalance of the backgrounds (TV 0.27 in the shipped model: of 400 prompts, grey 27, olive 197, slate 117,
  tan 59 at psi 0.5; grey 11 at psi 1) the L1 distance's doing? The backgrounds lie 11 to 27 (of 255) apart, grey in
  the middle of them, so an L1 term that rewards distance would starve grey. Saturating each pixel's distance below
  that spacing (ms1_clip0.08, `--ms_clip 0.08`: every changed pixel counts alike), seeds 0 / 1 at 30 kimg:
  backgrounds differ 0.594 / 0.608, TV 0.352 / 0.280 (ms1: 0.35 / 0.25), ratio 0.76 / 0.76, recall 0.41 / 0.35,
  precision 0.78 / 0.86, oracle FID 252 / 245, accuracy 37.8% / 37.4% seen, 37.2% / 35.4% held-out (ms1: 30.0% /
  32.2% seen). The TV does not move: one background is still dropped, now olive (0 of 400 for both seeds; grey
  183 / 176, tan 149 / 132, slate 68 / 92). So the geometry of the distance is not the cause; a background mode is
  dropped either way, which is a coverage failure of the GAN itself. The saturated distance did buy about 6 points
  of accuracy at equal variety on both seeds (at 30 kimg only; not yet measured at the default model's 200).
- The two candidates left, seed 0 at 30 kimg, no mode-seeking term: z as wide as the condition's embedding (z256,
  `--z_dim 256`): backgrounds differ 0.000 (TV 0.75), ratio 0.41, recall 0.07, 23.0% / 21.2%; D without its projection
  term (no_projection, `--projection 0`): 0.000 (TV 0.75), ratio 0.30, recall 0.03, 41.8% / 33.0%. Neither lets the
  seed change the background: z's share and the projection term are not the cause either (baseline: 0.000).
- The dropped background is a coverage failure, so D was given a view of the sample distribution (PacGAN, `--pack`).
  First as a joint logit read off pairs of D's own 4x4 features, seed 0: pack2 (no mode-seeking term) backgrounds
  differ 0.000 (TV 0.75), 39.6% / 40.4%, recall 0.07; ms1_pack2 0.638, TV 0.336, 28.0% / 27.8%, ratio 0.85,
  precision 0.82, recall 0.38, oracle FID 258: no change. Those features are the ones the itd loss trains to read
  the prompt, which does not name the background, so `--pack` now is a separate small D on the pack's 16x16 images.
  ms1_pack2 / ms1_pack4, seed 0, backgrounds of 400 seen prompts (the `seen_background_*` shares of
  shapes_accuracy) at 10 kimg: grey 155 / 142, slate 85 / 92, olive 12 / 21, tan 148 / 145; at 20 kimg 171 / 181,
  80 / 80, 0 / 0, 149 / 139 (stopped there: olive was gone, as without packing). Neither packing keeps the mode.
- Olive is the one dropped early in every mode-seeking run at this budget (ms1_clip0.08 seeds 0 and 1, both packs,
  both R1 weights below); the raw G drops it as G_ema does (ms1_pack2, 20 kimg: 180 / 56 / 0 / 164), and the CLIP
  that itc scores with does not prefer a background (the same 256 scenes rendered on each: mean text-image cosine
  0.9381 / 0.9381 / 0.9380 / 0.9376, itc loss 1.2677 / 1.2679 / 1.2677 / 1.2682 for grey / slate / olive / tan).
- A smoother D (R1 weight 10x and 100x the recipe's 0.05), seed 0, 30 kimg: ms1_gamma0.5 31.0% / 28.6%, backgrounds
  differ 0.652, TV 0.286, ratio 0.86, precision 0.72, recall 0.37, oracle FID 266; ms1_gamma5 33.6% / 37.4%, 0.620,
  0.250, 0.84, 0.75, 0.36, 280. Olive 0 of 500 in both (grey 186 / 158, slate 107 / 167, tan 207 / 175).
- D knows which mode is missing; G does not follow. D's mean logit on real renders of the same 256 scenes on each
  background (grey / slate / olive / tan), 20 kimg: ms1_pack2 3.07 / 3.03 / 5.20 / 3.67 (olive, the mode G never
  draws, looks by far the most real), ms1_gamma0.5 1.94 / 2.28 / 2.52 / 2.37, ms1_gamma5 1.78 / 1.83 / 1.94 / 1.95.
  So the failure is on G's side: the gradient through D does not carry G's samples to the missing background.
- Is it G's mapping, which StyleGAN2's learning-rate multiplier 0.01 keeps near its random start over a run this
  short (z reaches the image only through it)? `--mapping_lr_mul` 0.1 / 1 (ms1_maplr0.1 / ms1_maplr1, seed 0):
  backgrounds at 10 kimg grey 41 / 83, slate 44 / 29, olive 32 / 20, tan 283 / 268; at 20 kimg 171 / 168, 61 / 78,
  0 / 0, 168 / 154 (stopped there). No: olive is dropped as before.
- IMLE's coverage term (`--imle_weight`: each of a quarter of the batch's reals pulls the nearest of 4 fakes of its
  caption towards it, on 8x8 pooled images), weights 1 / 10, seed 0: backgrounds at 10 kimg grey 38 / 155, slate
  33 / 118, olive 52 / 28, tan 277 / 99; at 20 kimg 169 / 186, 77 / 80, 0 / 0, 154 / 134. At 30 kimg: 25.4% / 24.4%
  and 24.2% / 21.4% (accuracy lost), backgrounds differ 0.608 / 0.616, TV 0.300 / 0.282, ratio 0.88 / 0.90,
  precision 0.77 / 0.78, recall 0.37 / 0.35, oracle FID 249 / 272. Even pulled, no sample
  reaches olive: the corner colours of ms1_imle10's 400 images at 20 kimg form three clusters, tan (150, 136, 115),
  slate (106, 116, 134) and one at (128, 126, 124), between grey (128, 128, 128) and olive (125, 125, 100) and
  nearer grey. Grey and olive are the closest pair of the four backgrounds (their difference is 28 levels of blue
  alone); G draws them as one mode, and a pull from olive reals lands on the fakes of that merged mode, whose grey
  reals pull them back. At 200 kimg (the shipped model) the two have split (clusters near (128, 126, 126) and
  (127, 126, 102)), but unevenly: 46 grey, 158 olive of 400 by corner colour.
- The saturated distance at the default model's budget (ms1_clip0.08, `--kimg 200 --seeds 0,1`, 7832 s / 7429 s on
  one core each; sampled at psi 1, 500 prompts a split), seeds 0 / 1: 96.4% / 92.8% and 97.2% / 91.6% seen /
  held-out, colour 100% / 99.5% and 99.9% / 98.9%, backgrounds differ 0.672 / 0.688, TV 0.206 / 0.176 (grey /
  slate / olive / tan shares 0.20 / 0.46 / 0.17 / 0.17 and 0.28 / 0.33 / 0.31 / 0.07), ratio 0.72 / 0.75, precision
  0.89 / 0.89, recall 0.87 / 0.78, oracle FID 96 / 147. Against plain ms1 at 200 kimg (psi 1: 92.0% / 87.9%, TV
  0.39; psi 0.5: 96.7% / 93.3%, TV 0.27, recall 0.59, FID 215) better on every figure and without truncation, which
  no longer pays (seed 0 at psi 0.5: 97.2% / 93.4%, TV 0.262, olive 4%; seed 1: 96.2% / 94.8%, TV 0.278, tan 0%).
  At 80 / 90 kimg the two seeds were at TV 0.27 / 0.275 (olive 1% / 10.5%): the dropped mode comes back later in
  training. Seed 0 is the shipped default since (docs/DEFAULT_MODEL.md). The background TV is still 0.18-0.21,
  not the 0.1 the data's spread asks: no background is dropped any more, one (slate, or grey and olive) is drawn
  too often.
- Which one is over-drawn depends on the prompt: the shipped model picks the background that contrasts with the
  object (`--by_prompt default --eval_n 1000`: 1000 seen prompts x 2 seeds, by the first object's colour; grey /
  slate / olive / tan). Orange 0.16 / 0.59 / 0.10 / 0.16, yellow 0.21 / 0.55 / 0.10 / 0.15, white 0.18 / 0.49 / 0.13
  / 0.20, against blue 0.18 / 0.32 / 0.29 / 0.21 and black 0.18 / 0.37 / 0.24 / 0.21; stars (thin arms) 0.54 slate,
  circles 0.41. Slate is the darkest background, olive the one nearest orange and yellow. The data draws the
  background independently of the prompt, so this is the imbalance's cause to remove, not a spread to widen. The
  CLIP that itc scores with does not prefer a contrasting background for any colour (text-image cosine of the same
  prompts' renders on each background within 0.0013 of each other per colour), so itc is not what rewards it; what
  is left to test is the D side that also reads the prompt off the image (G's itd term and the projection term).
- It is G's itd term. D keeps learning to read the prompt off real images (itd on reals), but G is no longer asked
  to make its fakes' D features name their prompt (ms1_clip0.08_gitd0, `--itd_g 0`; the term is AC-GAN's classifier
  loss on fakes, which is known to favour the samples a classifier reads most easily). At 40 kimg (seed 0, 500
  prompts a split) it changed little: 37.2% / 36.6% against 40.8% / 48.0%, olive dropped by both, no colour
  dependence yet in either. At 200 kimg (the first 40 resumed; 5066 s / 4781 s on one core each; 1000 prompts a
  split), seeds 0 / 1: 98.3% / 94.1% and 94.7% / 91.3% seen / held-out, backgrounds differ 0.718 / 0.695 (data
  0.729), TV 0.076 / 0.160, ratio 0.81 / 0.85, precision 0.89 / 0.89, recall 0.84 / 0.80, oracle FID 47.7 / 76.0
  (real-vs-real 14.9), against 0.206 / 0.176 TV and FID 96 / 147 with G's itd. The contrast preference is gone on
  both seeds (`--by_prompt`: orange objects on slate 0.22 / 0.27, yellow 0.17 / 0.25, blue 0.32 / 0.31; backgrounds
  by colour within 0.11-0.33 for seed 0), and accuracy rose. Seed 1's TV is the olive mode still short (grey / slate
  / olive / tan 0.29 / 0.28 / 0.10 / 0.33), the grey-olive merge above. Seed 0 is the shipped default since.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from common import T2I, run_parallel, sh

DEFAULT_CLIP = Path(__file__).resolve().parent.parent / "src" / "t2i" / "assets" / "default-lafite"
RECIPE = ("--preset tiny --batch 16 --precision auto --itc_crop_min 0.9 --gamma 0.05 --tick_kimg 2 --snap 5 "
          "--mixing_prob 0.0")
VARIANTS = {
    "baseline": "",
    "no_contrastive": "--itd 0 --itc 0",           # the contrastive terms pull samples to one image per condition?
    "no_itd": "--itd 0",
    "no_itc": "--itc 0",
    "ms0.25": "--ms_weight 0.25",                  # MSGAN's mode-seeking term, at several weights
    "ms0.5": "--ms_weight 0.5",
    "ms1": "--ms_weight 1",
    "ms5": "--ms_weight 5",
    "ms1_tau0.1": "--ms_weight 1 --ms_tau 0.1",    # capped at the data's distance ratio (DSGAN-style)
    "ms1_pool8": "--ms_weight 1 --ms_pool 8",      # distance on 8x8 images: push the layout apart, not details
    "ms1_clip0.08": "--ms_weight 1 --ms_clip 0.08",  # per-pixel distance saturated below the backgrounds' spacing
    "temp2": "--temp 2",                           # softer contrastive terms
    "z256": "--z_dim 256",                         # z as wide as the condition's embedding in the mapping input
    "no_projection": "--projection 0",             # D without the projection term <D features, condition>
    "pack2": "--pack 2",                           # D judges pairs of samples too (PacGAN): mode coverage
    "ms1_pack2": "--ms_weight 1 --pack 2",
    "ms1_pack4": "--ms_weight 1 --pack 4",
    "ms1_gamma0.5": "--ms_weight 1 --gamma 0.5",   # a smoother D (R1 10x the recipe's): mass moves between modes?
    "ms1_gamma5": "--ms_weight 1 --gamma 5",
    "ms1_maplr0.1": "--ms_weight 1 --mapping_lr_mul 0.1",  # a mapping that moves away from its random start
    "ms1_maplr1": "--ms_weight 1 --mapping_lr_mul 1",
    "ms1_imle1": "--ms_weight 1 --imle_weight 1",   # pull the nearest of 4 fakes to each real (coverage)
    "ms1_imle10": "--ms_weight 1 --imle_weight 10",
    "ms1_clip0.08_gitd0": "--ms_weight 1 --ms_clip 0.08 --itd_g 0",  # D reads the prompt, G is not asked to help it
}


def run_dir(work: Path, variant: str, seed: int) -> Path:
    return work / f"runs-{variant}-s{seed}"


def finished(outdir: Path, kimg: float) -> Path | None:
    """The run in outdir whose log says it finished `kimg`, or None."""
    for run in sorted(outdir.glob("*-lafite-tiny")) if outdir.is_dir() else []:
        log = (run / "log.txt").read_text() if (run / "log.txt").exists() else ""
        if any(line.startswith("done: ") and float(line.split()[1]) >= kimg for line in log.splitlines()):
            return run
    return None


def train_all(args, work: Path, data: Path, jobs: list[tuple[str, int]]) -> None:
    """Train every (variant, seed) not finished yet, `args.jobs` at a time with one core each."""
    commands = {}
    for variant, seed in jobs:
        outdir = run_dir(work, variant, seed)
        if finished(outdir, args.kimg):
            continue
        resume = ["--resume", "latest"] if outdir.is_dir() else []
        cmd = T2I + ["train", "lafite", "--data", data, "--clip", args.clip, *shlex.split(RECIPE),
                     *shlex.split(VARIANTS[variant]), "--seed", seed, "--kimg", args.kimg, "--outdir", outdir, *resume]
        print(f"{variant} seed {seed}: {shlex.join(map(str, cmd[2:]))}", flush=True)
        commands[f"training {variant} seed {seed}"] = (cmd, work / f"train-{variant}-s{seed}.log")
    run_parallel(commands, args.jobs)


def evaluate(args, work: Path, data: Path, variant: str, seed: int) -> dict:
    """Accuracy and diversity of a finished run (cached in its eval-*.json)."""
    run = finished(run_dir(work, variant, seed), args.kimg)
    cache = work / f"eval-{variant}-s{seed}-n{args.eval_n}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    out = work / f"eval-{variant}-s{seed}"
    sh(T2I + ["eval", run, "--data", data, "--metrics", "shapes_accuracy,seed_diversity,precision_recall,fid",
              "--n", args.eval_n, "--out", out], work / f"eval-{variant}-s{seed}.log")
    result = {}
    for name in ("shapes_accuracy", "seed_diversity", "precision_recall", "fid"):
        line = (out / f"metric-{name}.jsonl").read_text().splitlines()[-1]
        result |= {f"{name}/{k}": v for k, v in json.loads(line)["results"].items()}
    cache.write_text(json.dumps(result, indent=1))
    return result


def real_vs_real(work: Path, data: Path, n: int) -> dict:
    """The ceiling of precision/recall and the floor of FID at this sample size: n fresh real images (the
    test-seen split) against the training set, in the same oracle features as the runs."""
    import random

    import torch

    from t2i.data.dataset import ImageTextDataset
    from t2i.evaluate import EvalOptions, feature_extractor, features
    from t2i.metrics.diversity import precision_recall
    from t2i.metrics.fid import compute_stats, fid_from_stats

    test = work / f"shapes64-test-seen-{n}"
    if not (test / "dataset.json").exists():
        sh(T2I + ["data", "shapes", "--out", test, "--n", n, "--size", 64, "--seed", 2, "--split", "test-seen"])
    train, held = ImageTextDataset(data), ImageTextDataset(test)
    extractor = feature_extractor(EvalOptions(), train, "cpu", "real_vs_real")
    pick = sorted(random.Random("0-reals").sample(range(len(train)), n))   # as precision_recall picks them
    held_images = torch.stack([held[i]["image"] for i in range(len(held))])
    real = features(extractor, torch.stack([train[i]["image"] for i in pick]), 64)
    precision, recall = precision_recall(real, features(extractor, held_images, 64), k=3)
    train_batches = (torch.stack([train[i]["image"] for i in range(s, min(s + 256, len(train)))])
                     for s in range(0, len(train), 256))
    fid = fid_from_stats(compute_stats(extractor, train_batches, extractor.identity),
                         compute_stats(extractor, held_images.split(256), extractor.identity))
    return {"precision": precision, "recall": recall, "fid": fid}


def background_by_prompt(model: str | None, n: int) -> None:
    """Print a model's background shares by what the prompt names (its first object's colour and shape; two seeds
    of n seen prompts, the oracle's reading), then its CLIP's text-image cosine of the same prompts' renders on each
    background, by colour. In the data the background is drawn independently of the prompt."""
    import random
    from collections import Counter, defaultdict

    import torch
    import torch.nn.functional as F

    from t2i.data import shapes
    from t2i.evaluate import _oracle_predictions, generate
    from t2i.metrics.oracle_trainer import load_oracle
    from t2i.models import load_pipeline

    pipe, oracle = load_pipeline(model), load_oracle(None, "cpu")
    rng = random.Random("0-test-seen")
    scenes = [shapes.sample_scene(rng, "test-seen") for _ in range(n)]
    prompts = [shapes.prompt(s) for s in scenes]
    counts = defaultdict(Counter)
    for seed in (0, n):
        for scene, pred in zip(scenes, _oracle_predictions(oracle, generate(pipe, prompts, seed, 50), 100, "cpu")):
            for key in ("all", f"colour {scene.objects[0].colour}", f"shape {scene.objects[0].shape}"):
                counts[key][pred["background"]] += 1
    names = shapes.BACKGROUND_NAMES
    print(f"background shares by the prompt's first object ({n} seen prompts x 2 seeds)")
    print(f"{'':<16}" + "".join(f"{b:>8}" for b in names))
    for key in sorted(counts, key=lambda k: (k != "all", k)):
        total = sum(counts[key].values())
        print(f"{key:<16}" + "".join(f"{counts[key][b] / total:>8.2f}" for b in names) + f"   n={total}")
    if not hasattr(pipe, "clip"):
        return
    clip = pipe.clip.float()
    with torch.no_grad():
        text = F.normalize(clip.encode_text(prompts).float(), dim=-1)
        cos = {}
        for b in names:
            imgs = shapes.render_tensor([shapes.Scene(s.objects, background=b, relation=s.relation) for s in scenes])
            cos[b] = (F.normalize(clip.encode_image(imgs.float() / 127.5 - 1).float(), dim=-1) * text).sum(-1)
    print("its CLIP's text-image cosine of the same prompts' renders on each background")
    for colour in sorted({s.objects[0].colour for s in scenes}):
        pick = torch.tensor([s.objects[0].colour == colour for s in scenes])
        print(f"{'colour ' + colour:<16}" + "".join(f"{cos[b][pick].mean():>8.4f}" for b in names))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/t2i-lafite-diversity", help="where data, runs and results go")
    p.add_argument("--data", help="a shapes64 dataset (default: rendered in the work directory, as the default "
                                  "model's: 10000 images, seed 1)")
    p.add_argument("--clip", default=str(DEFAULT_CLIP), help="the CLIP to condition on (default: the default "
                                                             "model's own)")
    p.add_argument("--kimg", type=float, default=30, help="training budget of every run")
    p.add_argument("--variants", default="baseline,no_contrastive", help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at once (one core each)")
    p.add_argument("--eval_n", type=int, default=500, help="prompts per split (shapes_accuracy), images per metric")
    p.add_argument("--by_prompt", metavar="MODEL", help="only print MODEL's backgrounds by what its prompts name "
                                                        "('default': the embedded model; --eval_n prompts)")
    args = p.parse_args()
    if args.by_prompt:
        return background_by_prompt(None if args.by_prompt == "default" else args.by_prompt, args.eval_n)

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else work / "shapes64"
    if not (data / "dataset.json").exists():
        sh(T2I + ["data", "shapes", "--out", data, "--n", 10000, "--size", 64, "--seed", 1])
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    jobs = [(v, int(s)) for v in variants for s in args.seeds.split(",")]
    train_all(args, work, data, jobs)
    columns = [("seen all", "shapes_accuracy/seen_all"), ("held-out all", "shapes_accuracy/heldout_all"),
               ("bg differs", "shapes_accuracy/background_seeds_differ"),
               ("bg TV", "shapes_accuracy/seen_background_tv"),
               ("offset diff", "shapes_accuracy/offset_seeds_diff"),
               ("div ratio", "seed_diversity/feature_dist_ratio"),
               ("precision", "precision_recall/precision"), ("recall", "precision_recall/recall"),
               ("oracle FID", "fid/fid")]
    print(f"\n{args.kimg:g} kimg, {args.eval_n} prompts per split / images per metric")
    print(f"{'variant':<16}{'seed':>5}" + "".join(f"{name:>13}" for name, _ in columns))
    data_row = None
    for variant, seed in jobs:
        r = evaluate(args, work, data, variant, seed)
        print(f"{variant:<16}{seed:>5}" + "".join(f"{r[key]:>13.3f}" for _, key in columns), flush=True)
        data_row = r
    ceiling = real_vs_real(work, data, args.eval_n)
    print(f"{'data':<16}{'':>5}{'':>13}{'':>13}"
          f"{data_row['shapes_accuracy/background_seeds_differ_data']:>13.3f}"
          f"{data_row['shapes_accuracy/seen_background_tv_data']:>13.3f}"
          f"{data_row['shapes_accuracy/offset_seeds_diff_data']:>13.3f}{1.0:>13.3f}"
          f"{ceiling['precision']:>13.3f}{ceiling['recall']:>13.3f}{ceiling['fid']:>13.3f}")
    print("(data row: renders of the same prompts drawn as the data draws them; precision, recall and FID of "
          f"{args.eval_n} fresh test-seen images against the training set)")


if __name__ == "__main__":
    main()

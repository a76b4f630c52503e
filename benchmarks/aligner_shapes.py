"""Benchmark: Korean prompts through the multilingual aligner, on the shapes domain, through the real CLI.

For each base model given (trained on English captions only), `t2i train aligner` learns the map from multilingual
USE v3 vectors of the train split's Korean captions onto the model's English conditioning; then the oracle scores
the test splits' prompts (seen and held-out compositions) three ways with the same seeds: English prompts (the
model as it is), Korean prompts through the aligner, and Korean prompts straight into the model's own text encoder
(no aligner: what a Korean user gets today). The figure the issue asks for is Korean-through-aligner accuracy over
English accuracy, per split.

    python benchmarks/aligner_shapes.py --data /work/exp/align/shapes64 --workdir /work/exp/align/bench \\
        --model ldm=/work/exp/ldmbench/seed0/00001-shapes64-ldm-tiny --model lafite=RUN --n 300 \\
        --sampling '--sampler dpm++ --steps 20 --guidance 4'

A finished aligner run in the work directory is reused, not retrained. Nothing here is a test: the numbers are
reported, not asserted.

Measured on the 2-core CPU (aligner batch 64, bf16, `--words 16`, LAFITE 100 kimg, LDM 300; Korean over English
accuracy, seen / held-out; the session note of 2026-11-30 has the full tables):
- LAFITE, n = 1000 per split. The embedded model (the one before the 2026-12-01 re-ship): 97.1% / 93.0% Korean
  against 96.7% / 93.3% English, ratios 1.004 / 0.997 (aligner seed 0) and 1.004 / 0.992 (seed 1). Its own bilingual
  CLIP reading Korean directly: 0.898 / 0.864. A LAFITE on an English-only CLIP (40 kimg, 25% accurate): 0.992 /
  1.008, Korean refused without the aligner.
- The sentence vector alone (`--words 0`) on the embedded model: 51.5% / 51.1% (colour 63%), ratios 0.53 / 0.55.
- LDM (last session's seed-0 benchmark model, DPM++ 20, guidance 4, n = 200): the sentence vector alone at 100 kimg
  0.911 / 0.904, at 300 kimg 0.927 / 0.979; with the words at 100 kimg 0.911 / 0.979. At n = 200 these differ within
  noise (a split's standard error is near 3.5 points). With the words at 300 kimg, n = 500: 58.2% / 51.4% Korean
  against 57.8% / 51.8% English, ratios 1.007 / 0.992 (aligner seed 0).
- LDM, the zero-SNR recipe (benchmarks/ldm_shapes.py's seed-0 model of 2026-12-02, DPM++ 20, guidance 2, n = 300,
  with the words, 300 kimg in 890 s on one core beside other runs): English 92.7% / 90.0%; Korean through the
  aligner, aligner seeds 0 / 1: 92.7% / 89.3% (ratios 1.000 / 0.993) and 92.3% / 89.7% (0.996 / 0.996; 780 s).
  Korean straight into the model is refused: its English BPE spells a Korean prompt in 43 tokens, over its 30.
- LAFITE, the embedded model re-shipped on 2026-12-02 (`--itd_g 0`), n = 1000, 100 kimg (80 s / 76 s on one core):
  English 98.3% / 94.1%; Korean through the aligner, aligner seeds 0 / 1: 97.8% / 93.9% (ratios 0.995 / 0.998) and
  98.0% / 92.7% (0.997 / 0.985); its bilingual CLIP reading Korean directly 85.9% / 77.1% (0.874 / 0.819).
- LAFITE on a CLIP that read English captions only, 2026-12-03 (a CPU with AVX512-BF16, `--precision auto`):
  `t2i train clip --data shapes64 --langs en --kimg 100 --tick_kimg 4 --lr 1e-3` (410 s), then the embedded model's
  recipe (docs/DEFAULT_MODEL.md) on it for 60 kimg (1876 s on one core beside another run); n = 1000, aligner 100
  kimg (173 s / 171 s): English 42.5% / 43.0%; Korean through the aligner, aligner seeds 0 / 1: 42.5% / 42.4%
  (ratios 1.000 / 0.986) and 42.5% / 42.1% (1.000 / 0.979). Two seeds of a prompt draw different backgrounds 0.616
  English, 0.617 / 0.615 Korean. Korean straight into the model is refused: its CLIP's English-only tokenizer spells a
  Korean prompt in 43 tokens, over its 30.
- AttnGAN, benchmarks/attngan_shapes.py's seed-0 recipe model of 2026-12-02 (its DAMSM's word and sentence
  features; n = 300, aligner seed 0, `--train '--precision fp32'`, 300 kimg in 1191 s on one core beside another
  run, a CPU without AMX): English 21.3% / 21.3%, Korean through the aligner 21.3% / 21.0% (ratios 1.000 / 0.984).
  Korean straight into the model is refused: no word of a Korean prompt is in its DAMSM vocabulary.
- DALL-E, benchmarks/dalle_shapes.py's seed-0 recipe model of 2026-12-02 (transformer in fp32; its text input
  embeddings; n = 300, guidance 2, no reranking, aligner seed 0, fp32, 300 kimg in 2608 s on one core beside other
  runs): English 61.0% / 38.0%, Korean through the aligner 61.0% / 37.7% (ratios 1.000 / 0.991). Korean straight
  into the model is refused: its BPE spells a Korean prompt in 43 tokens, over its 32.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from common import T2I, finished, metric, sh


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=RUN", help="a base model (repeatable)")
    p.add_argument("--data", required=True, help="the shapes dataset with captions_ko (the base models' train data)")
    p.add_argument("--workdir", default="/tmp/t2i-aligner", help="where the aligner runs, evals and logs go")
    p.add_argument("--kimg", type=float, default=300, help="aligner training length (batch 64; LAFITE needs 100)")
    p.add_argument("--n", type=int, default=300, help="prompts per split")
    p.add_argument("--sampling", default="", help="sampling options for every model, e.g. '--sampler dpm++ --steps 20 "
                   "--guidance 4' (each family ignores the others')")
    p.add_argument("--train", default="--precision auto", help="extra options of `t2i train aligner`")
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    options = args.sampling.split()
    rows = []
    for spec in args.model:
        name, _, model = spec.partition("=")
        runs = work / f"runs-{name}"
        aligner = finished(runs, "-aligner-ko")
        if aligner is None:
            sh(T2I + ["train", "aligner", "--model", model, "--data", args.data, "--lang", "ko", "--kimg", args.kimg,
                      *args.train.split(), "--outdir", runs], work / f"aligner-{name}.log")
            aligner = finished(runs, "-aligner-ko")
        done = re.findall(r"^done: [\d.]+ kimg in ([\d.]+)s", (aligner / "log.txt").read_text(), re.M)
        wall = sum(map(float, done))   # over every resumed part
        result = {}
        for label, extra in (("english", ["--lang", "en"]), ("korean, aligner", ["--lang", "ko", "--aligner", aligner]),
                             ("korean, no aligner", ["--lang", "ko"])):
            out = work / f"eval-{name}-{label.replace(', ', '-').replace(' ', '-')}"
            if not (out / "metric-shapes_accuracy.jsonl").is_file():
                try:
                    sh(T2I + ["eval", model, "--metrics", "shapes_accuracy", "--n", args.n, "--out", out, *extra,
                              *options], work / f"{out.name}.log")
                except SystemExit:   # e.g. Korean prompts too long for an English BPE: the model cannot read them
                    refusal = (work / f"{out.name}.log").read_text().rsplit("t2i: error: ", 1)[-1].strip()
                    print(f"{name}, {label}: refused ({refusal})")
                    continue
            result[label] = metric(out, "shapes_accuracy")
        rows.append((name, result, wall))
    print(f"{'model':<10} {'prompts':<20} {'seen all':>9} {'held-out all':>13} {'seen colour':>12} {'seen shape':>11} "
          f"{'ratio seen':>11} {'ratio held-out':>15} {'aligner s':>10}")
    for name, result, wall in rows:
        en = result.get("english")
        if en is None:
            continue
        for label, acc in result.items():
            ratios = (f"{acc['seen_all'] / en['seen_all']:>11.3f} {acc['heldout_all'] / en['heldout_all']:>15.3f}"
                      if label != "english" and en["seen_all"] and en["heldout_all"] else f"{'-':>11} {'-':>15}")
            print(f"{name:<10} {label:<20} {acc['seen_all']:>9.3f} {acc['heldout_all']:>13.3f} "
                  f"{acc['seen_colour']:>12.3f} {acc['seen_shape']:>11.3f} {ratios} "
                  f"{f'{wall:.0f}' if label == 'korean, aligner' else '-':>10}")
    (work / "results.json").write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()

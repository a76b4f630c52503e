"""Diagnostic: which shapes a VQGAN loses, the ceiling of every DALL-E model trained on its tokens.

Renders fresh scenes of every (shape, colour) combination, passes them through the VQGAN (encode to
token ids, decode) and asks the shapes oracle what it sees. Prints, per shape and size, how often the
round trip changes an object's shape, and the most common confusions. The `shapes_recon` metric of
`t2i train vqgan` gives the same round trip's totals; this says where they come from.

    python benchmarks/vqgan_shapes_recon.py runs/00000-shapes64-vqgan-tiny --n 600
"""

from __future__ import annotations

import argparse
import random
from collections import Counter

import torch

from t2i.data import shapes
from t2i.data.transforms import to_model, to_uint8
from t2i.metrics.oracle import predict, render_batch
from t2i.metrics.oracle_trainer import load_oracle
from t2i.models.first_stage.vqgan_trainer import load_vqgan_snapshot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a `t2i train vqgan` run or snapshot at 64px")
    p.add_argument("--n", type=int, default=600, help="scenes rendered")
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args()

    vqgan, oracle = load_vqgan_snapshot(args.run), load_oracle(None)
    images, _, scenes = render_batch(args.n, random.Random(args.seed), vqgan.cfg.resolution)
    with torch.no_grad():
        # Through uint8, as a generated image reaches the oracle in `t2i eval`.
        rec = torch.cat([vqgan.decode_ids(vqgan.encode(x)).float().clamp(-1, 1) for x in images.split(64)])
        preds = predict(oracle(to_model(to_uint8(rec))))
    seen, lost, confusions = Counter(), Counter(), Counter()
    for pred, scene in zip(preds, scenes):
        by_slot = {o["slot"]: o for o in pred["objects"]}
        for obj in scene.objects:
            got = by_slot.get(obj.slot, {}).get("shape", "nothing")
            seen[obj.shape, obj.size] += 1
            if got != obj.shape:
                lost[obj.shape, obj.size] += 1
                confusions[f"{obj.size} {obj.shape} -> {got}"] += 1
    print(f"{args.n} scenes through {args.run}: shape changed by the round trip")
    print(f"{'shape':<9} {'small':>13} {'large':>13}")
    for shape in shapes.SHAPES:
        cells = [f"{lost[shape, s]:>4}/{seen[shape, s]:<4}({lost[shape, s] / max(seen[shape, s], 1):>4.0%})"
                 for s in shapes.SIZES]
        print(f"{shape:<9} {cells[0]:>13} {cells[1]:>13}")
    print("most common: " + ", ".join(f"{k} ({v})" for k, v in confusions.most_common(6)))


if __name__ == "__main__":
    main()

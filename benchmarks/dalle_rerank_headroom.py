"""Diagnostic: where guided sampling with CLIP reranking loses accuracy on the shapes domain.

For n prompts per split it samples K candidates each (classifier-free guidance, the run's own VQGAN),
judges every candidate with the shapes oracle and scores it with a CLIP, then prints for N = 1, 2, 4, ...
K the all-attribute accuracy of:
- `oracle best`: a prompt counts when any of its first N candidates is right (a perfect reranker);
- `CLIP best`: the candidate with the highest CLIP score is right (what `t2i eval --candidates N` scores).
The first row is single-sample accuracy. A low `oracle best` blames the transformer (or the VQGAN: see
vqgan_shapes_recon.py), a gap between the two blames the reranking CLIP.

    python benchmarks/dalle_rerank_headroom.py runs/00001-shapes64-dalle-tiny --clip src/t2i/assets/default-lafite
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from t2i.clip import load_clip
from t2i.data import shapes
from t2i.data.transforms import to_model, to_uint8
from t2i.metrics.oracle import predict, score
from t2i.metrics.oracle_trainer import load_oracle
from t2i.models.dalle.pipeline import DallePipeline
from t2i.training.snapshot import load_snapshot


@torch.no_grad()
def judge(pipe: DallePipeline, oracle, scenes: list, K: int, guidance: float, top_k: int,
          batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(right (n, K) bool, CLIP similarity (n, K)) of K candidates for each scene's prompt, candidate j of
    scene i drawn exactly as `DallePipeline` draws candidate j for seed i."""
    prompts = [shapes.prompt(s) for s in scenes]
    right, sim = [], []
    for b in range(0, len(scenes), max(1, batch // K)):
        chunk = list(range(b, min(b + max(1, batch // K), len(scenes))))
        images = pipe.sample_candidates([prompts[i] for i in chunk], chunk, K, guidance, top_k, batch=batch)
        preds = predict(oracle(to_model(to_uint8(images.flatten(0, 1)))))
        right += [score([p], [scenes[chunk[r // K]]])["all"] == 1.0 for r, p in enumerate(preds)]
        sim.append(pipe.clip_similarity(images, [prompts[i] for i in chunk]))
    return torch.tensor(right).view(len(scenes), K), torch.cat(sim)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a `t2i train dalle` run or snapshot trained on the shapes domain")
    p.add_argument("--clip", required=True, help="reranking CLIP (a t2i CLIP run, e.g. the default model)")
    p.add_argument("--n", type=int, default=60, help="prompts per split")
    p.add_argument("--candidates", type=int, default=16, help="candidates per prompt (K)")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale")
    p.add_argument("--top_k", type=int, default=0, help="sample among the k likeliest codes (0 = top 10%%)")
    p.add_argument("--batch", type=int, default=64, help="candidates sampled at once")
    args = p.parse_args()

    pipe = DallePipeline.from_snapshot(load_snapshot(args.run))
    pipe.clip, oracle = load_clip(args.clip), load_oracle(None)
    top_k = args.top_k or max(1, pipe.model.cfg.image_vocab // 10)
    Ns = sorted({2 ** e for e in range(args.candidates.bit_length()) if 2 ** e <= args.candidates} | {args.candidates})
    results = {}
    for split in ("test-seen", "test-heldout"):
        rng = random.Random(f"headroom-{split}")
        scenes = [shapes.sample_scene(rng, split) for _ in range(args.n)]
        t0 = time.time()
        right, sim = judge(pipe, oracle, scenes, args.candidates, args.guidance, top_k, args.batch)
        rows = torch.arange(args.n)
        results[split] = [(right[:, :N].any(1).float().mean().item(),
                           right[rows, sim[:, :N].argmax(1)].float().mean().item()) for N in Ns]
        print(f"{split}: {args.n} prompts x {args.candidates} candidates in {time.time() - t0:.0f}s; "
              f"single-sample accuracy {right.float().mean():.3f}")
    print(f"guidance {args.guidance}, top-k {top_k}; all-attribute accuracy of the best of N")
    print(f"{'N':>3} {'seen oracle best':>17} {'seen CLIP best':>15} {'held-out oracle best':>21} {'held-out CLIP best':>19}")
    for k, N in enumerate(Ns):
        (so, sc), (ho, hc) = results["test-seen"][k], results["test-heldout"][k]
        print(f"{N:>3} {so:>17.3f} {sc:>15.3f} {ho:>21.3f} {hc:>19.3f}")


if __name__ == "__main__":
    main()

"""`t2i train clip`: contrastive training of the small CLIP on any t2i dataset, in the shared loop."""

from __future__ import annotations

import argparse
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from t2i.clip.loss import info_nce
from t2i.clip.negatives import WordSwapper
from t2i.clip.model import CLIP_PRESETS, ClipConfig, SmallClip
from t2i.clip.tokenizer import ClipTokenizer, train_bpe
from t2i.data.loader import load_images, require_dataset, step_batches
from t2i.data.transforms import to_model
from t2i.errors import T2IError
from t2i.training.loop import Phase


@dataclass
class ClipTrainConfig:
    """Options of `t2i train clip`."""

    data: str = ""
    preset: str = "small"
    langs: str = "en"           # caption languages to train on, e.g. "en,ko" for a bilingual CLIP
    lr: float = 1e-3
    weight_decay: float = 0.05
    subset: int = 0             # train on the first N images only (0 = all)
    warmup_kimg: float = 5.0    # linear learning-rate warm-up (without it the towers collapse early)
    hard_negatives: bool = True  # add a word-swapped copy of each caption as a negative (attribute binding)


CONFIG = ClipTrainConfig
PRESETS = CLIP_PRESETS
LOOP_DEFAULTS = {"batch": 128, "kimg": 100.0, "tick_kimg": 5.0, "snap": 4}


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of `t2i train clip`."""
    S = argparse.SUPPRESS
    p.add_argument("--data", required=True, help="dataset folder or zip (t2i format)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=S, help="architecture (default small)")
    p.add_argument("--langs", default=S, help="caption languages, comma-separated (default en; e.g. en,ko)")
    p.add_argument("--lr", type=float, default=S, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--weight_decay", type=float, default=S, help="AdamW weight decay (default 0.05)")
    p.add_argument("--subset", type=int, default=S, help="use only the first N images (default all)")
    p.add_argument("--warmup_kimg", type=float, default=S, help="linear lr warm-up length in kimg (default 5)")
    p.add_argument("--hard_negatives", type=lambda s: bool(int(s)), default=S,
                   help="1/0: each image also sees its caption with two interchangeable words swapped as a "
                        "negative, so the CLIP learns which attribute goes with which object (default 1)")


def validate(cfg: ClipTrainConfig) -> None:
    """Reject options that cannot work, before anything heavy runs."""
    if cfg.preset not in PRESETS:
        raise T2IError(f"unknown CLIP preset {cfg.preset!r}; choose from {sorted(PRESETS)}")
    if not cfg.data:
        raise T2IError("--data is required: a dataset folder or zip in t2i format")
    require_dataset(cfg.data, "t2i train clip")


def describe(cfg: ClipTrainConfig) -> str:
    """Run-directory description, e.g. shapes64-clip-small."""
    return f"{Path(cfg.data.rstrip('/')).stem}-clip-{cfg.preset}"


def open_caption_sets(cfg: ClipTrainConfig):
    """The dataset, per image its captions over all requested languages, and the image count."""
    from t2i.data.dataset import ImageTextDataset, captions_by_image

    dataset = ImageTextDataset(cfg.data)
    dataset.require_captions("t2i train clip")
    n = len(dataset) if cfg.subset <= 0 else min(cfg.subset, len(dataset))
    return dataset, captions_by_image(dataset, cfg.langs, n), n


class ClipFamily:
    """One phase: symmetric InfoNCE between image and caption features."""

    name = "clip"

    def __init__(self, cfg: ClipTrainConfig, d, log, init=None):
        self.cfg, self.device = cfg, d.device
        dataset, captions, n = open_caption_sets(cfg)
        arch = PRESETS[cfg.preset] if init is None else ClipConfig.from_dict(init.meta["clip"]["arch"])
        if init is None:
            tokenizer = train_bpe((c for caps in captions for c in caps), arch.vocab_size)
        else:  # resuming or fine-tuning: keep the snapshot's tokenizer
            tokenizer = ClipTokenizer(init.meta["clip"]["tokenizer"])
        self.clip = SmallClip(arch, tokenizer).to(d.device)
        self.modules = {"clip": self.clip}
        self.ema = {}
        self.images = load_images(dataset, n)
        flat = [c for caps in captions for c in caps]
        self.ids = tokenizer(flat, arch.context)                             # (M, context)
        self.flat = flat
        self.swapper = WordSwapper(flat) if cfg.hard_negatives else None
        counts = torch.tensor([len(c) for c in captions])
        if (counts == 0).any():
            i = int((counts == 0).nonzero()[0])
            raise T2IError(f"image {dataset.records[i]['file']} has no captions in languages {cfg.langs!r}")
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        log(f"CLIP {cfg.preset}: {sum(p.numel() for p in self.clip.parameters()) / 1e6:.2f}M parameters, "
            f"{n} images, {len(flat)} captions, vocab {tokenizer.vocab_size}")

    def phases(self) -> list[Phase]:
        opt = torch.optim.AdamW(self.clip.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        warmup = max(self.cfg.warmup_kimg * 1000, 1.0)
        return [Phase("clip", self.clip, opt, lr_scale=lambda nimg: min(1.0, (nimg + 1) / warmup))]

    def batches(self, step, batch, rank, world, seed):
        def fetch(idx, g):
            count = self.offsets[idx + 1] - self.offsets[idx]
            j = self.offsets[idx] + (torch.rand(len(idx), generator=g) * count).long()
            out = {"image": self.images[idx], "ids": self.ids[j]}
            if self.swapper is not None:  # one word-swapped negative per caption (None: it has no pair)
                rng = random.Random(int(torch.randint(2 ** 62, (), generator=g)))
                negs = [self.swapper.negative(self.flat[int(k)], rng) for k in j]
                out["neg_ids"] = self.clip.tokenizer([n or "" for n in negs], self.clip.cfg.context)
                out["neg_valid"] = torch.tensor([n is not None for n in negs])
            return out
        return step_batches(len(self.images), fetch, step, batch, seed, rank)

    def loss(self, phase, batch):
        ids = batch["ids"].to(self.device)
        img = F.normalize(self.clip.encode_image(to_model(batch["image"].to(self.device))).float(), dim=-1)
        txt = F.normalize(self.clip.encode_tokens(ids).float(), dim=-1)
        same_caption = (ids[:, None, :] == ids[None, :, :]).all(-1)          # (B, B)
        temp = 1.0 / self.clip.logit_scale.exp().clamp(max=100)
        if "neg_ids" in batch:  # image -> text also ranks every hard negative (invalid ones masked)
            neg = F.normalize(self.clip.encode_tokens(batch["neg_ids"].to(self.device)).float(), dim=-1)
            extra = (img @ neg.t() / temp).masked_fill(~batch["neg_valid"].to(self.device)[None, :], float("-inf"))
            loss = info_nce(img, txt, temp, positives=same_caption, extra_negatives=extra)
        else:
            loss = info_nce(img, txt, temp, positives=same_caption)
        acc = ((img @ txt.t()).argmax(1) == torch.arange(len(ids), device=ids.device)).float().mean()
        return loss, {"Loss/clip": loss.detach(), "Clip/batch_top1": acc, "Clip/temp": temp.detach()}

    def sample_images(self):
        return None

    def real_images(self):
        return self.images[:64]

    def meta(self) -> dict:
        return {"family": "clip", "config": asdict(self.cfg), "clip": clip_meta(self.clip)}


def clip_meta(clip: SmallClip) -> dict:
    """What rebuilds a SmallClip: its architecture and tokenizer (stored in snapshots)."""
    return {"kind": "t2i", "arch": clip.cfg.to_dict(), "tokenizer": clip.tokenizer.spec}


def clip_from_meta(meta: dict, state: dict[str, torch.Tensor], device) -> SmallClip:
    """Rebuild a SmallClip from `clip_meta` output and its state_dict."""
    clip = SmallClip(ClipConfig.from_dict(meta["arch"]), ClipTokenizer(meta["tokenizer"]))
    clip.load_state_dict(state)
    return clip.to(device).eval().requires_grad_(False)


def load_clip_snapshot(path, device="cpu") -> SmallClip:
    """A frozen SmallClip from a `t2i train clip` run or snapshot (or any snapshot embedding one)."""
    from t2i.training.snapshot import load_snapshot

    snap = load_snapshot(path)
    if "clip" not in snap.meta or snap.meta["clip"].get("kind") != "t2i":
        raise T2IError(f"{snap.path} holds no t2i CLIP (family {snap.family!r}); train one with `t2i train clip`")
    return clip_from_meta(snap.meta["clip"], snap.state_dict("clip"), device)


def build(cfg: ClipTrainConfig, loop, d, log, init=None) -> ClipFamily:
    """The CLIP family object for the shared loop."""
    return ClipFamily(cfg, d, log, init)


def evaluate(name: str, snapshot: Path, cfg: ClipTrainConfig, device) -> dict:
    """Metrics of a CLIP snapshot on its training data (r_precision: caption retrieval)."""
    from t2i.metrics.clip_metrics import r_precision

    if name != "r_precision":
        raise T2IError(f"metric {name!r} is not available while training CLIP; use r_precision")
    clip = load_clip_snapshot(snapshot, device)
    dataset, captions, n = open_caption_sets(cfg)
    m = min(n, 500)
    images = to_model(torch.stack([dataset[i]["image"] for i in range(m)])).to(device)
    pool = [c for caps in captions for c in caps]
    return {"top1": r_precision(clip, images, [captions[i][0] for i in range(m)], pool), "n": m}

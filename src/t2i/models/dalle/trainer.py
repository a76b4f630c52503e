"""`t2i train dalle --vqgan RUN`: the DALL-E transformer in the shared loop (one phase).

Images are VQGAN token ids cached beside the dataset (`t2i.models.first_stage.cache`); captions are tokenised at every
step with BPE-dropout (a `t2i train bpe` run, or one trained here on the dataset's captions) and
dropped to the null caption with `--null_text_prob` so classifier-free guidance works at sampling.
The frozen VQGAN and the tokenizer travel inside every snapshot, so a run samples on its own.
"""

from __future__ import annotations

import argparse
import copy
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from t2i.data.loader import require_dataset, step_batches
from t2i.errors import T2IError
from t2i.models.dalle.objective import dalle_loss, drop_text
from t2i.models.dalle.transformer import PRESETS, DalleConfig, DalleTransformer
from t2i.text.vocab import caption_vocabulary
from t2i.training.loop import Phase, warmup_cosine
from t2i.training.run import grid_picks


@dataclass
class DalleTrainConfig:
    """Options of `t2i train dalle`."""

    data: str = ""
    vqgan: str = ""              # `t2i train vqgan` run or snapshot (its images' tokenizer and decoder)
    bpe: str = ""                # `t2i train bpe` run; empty = train one here on the captions
    bpe_vocab: int = 1024        # vocabulary of a BPE trained here
    bpe_dropout: float = 0.1     # BPE-dropout of a BPE trained here (a given --bpe keeps its own)
    langs: str = "en"            # caption languages to train on, e.g. en,ko
    preset: str = "tiny"
    lr: float = 5e-4             # AdamW
    weight_decay: float = 0.01
    warmup_kimg: float = 2.0     # linear learning-rate warm-up, then cosine decay to 10% at --kimg
    null_text_prob: float = 0.1  # captions replaced by the null caption (classifier-free guidance)
    image_weight: float = 7.0    # loss = (text + w * image) / (1 + w); DALL-E: 7
    crop_augs: int = 4           # DALL-E crops tokenised per image (1 if the crop is the identity)


CONFIG = DalleTrainConfig
PRESET_LOOP_DEFAULTS = {
    "test": {"batch": 8, "kimg": 0.032, "tick_kimg": 0.016, "snap": 1},
    "tiny": {"batch": 32, "kimg": 300.0, "tick_kimg": 5.0, "snap": 10},
    "bench": {"batch": 4, "kimg": 100.0, "tick_kimg": 1.0, "snap": 10},
    "paper": {"batch": 512, "kimg": 100000.0, "tick_kimg": 50.0, "snap": 20},
}

HELP = {
    "data": "dataset folder or zip (t2i format)",
    "vqgan": "`t2i train vqgan` run or snapshot that turns images into tokens",
    "bpe": "`t2i train bpe` run (empty: train one on the dataset's captions)",
    "bpe_vocab": "vocabulary size of a BPE trained here", "bpe_dropout": "BPE-dropout of a BPE trained here",
    "langs": "caption languages, comma-separated (e.g. en,ko for Korean prompts too)",
    "preset": f"transformer preset: {', '.join(PRESETS)}",
    "lr": "AdamW learning rate", "weight_decay": "AdamW weight decay",
    "warmup_kimg": "linear lr warm-up in kimg, then cosine decay to 10%%",
    "null_text_prob": "probability of training on the null caption (enables --guidance at sampling)",
    "image_weight": "weight of the image-token loss against the text loss", "crop_augs": "DALL-E crops per image",
}


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of `t2i train dalle`; each shows its default."""
    defaults = DalleTrainConfig()
    for f in fields(DalleTrainConfig):
        extra = {"choices": sorted(PRESETS)} if f.name == "preset" else {}
        p.add_argument(f"--{f.name}", type=type(getattr(defaults, f.name)), default=argparse.SUPPRESS,
                       required=f.name in ("data", "vqgan"), help=f"{HELP[f.name]} (default {getattr(defaults, f.name)!r})",
                       **extra)


def validate(cfg: DalleTrainConfig) -> None:
    """Reject options that cannot work, before anything heavy runs."""
    if cfg.preset not in PRESETS:
        raise T2IError(f"unknown DALL-E preset {cfg.preset!r}; choose from {sorted(PRESETS)}")
    if not cfg.vqgan:
        raise T2IError("--vqgan is required: a `t2i train vqgan` run or snapshot")
    if not 0 <= cfg.null_text_prob < 1:
        raise T2IError(f"--null_text_prob {cfg.null_text_prob} must be in [0, 1)")
    require_dataset(cfg.data, "t2i train dalle")


def describe(cfg: DalleTrainConfig) -> str:
    """Run-directory description, e.g. shapes64-dalle-tiny."""
    return f"{Path(cfg.data.rstrip('/')).stem}-dalle-{cfg.preset}"


def check_image_size(size: tuple[int, int], R: int, cfg: DalleTrainConfig, from_snapshot: bool) -> None:
    """The dataset's images must be at least the VQGAN's R x R: larger or non-square ones are DALL-E-cropped
    to it (`t2i.models.first_stage.cache`), smaller ones are never enlarged."""
    w, h = size
    if min(w, h) < R:
        whose = "the resumed snapshot's VQGAN" if from_snapshot else f"the VQGAN {cfg.vqgan!r}"
        raise T2IError(f"dataset {cfg.data!r} is {w}x{h}, smaller than the {R}x{R} images of {whose}; images are "
                       f"never enlarged: train a VQGAN on this data (`t2i train vqgan --data {cfg.data}`, its "
                       f"resolution follows the data) and a new DALL-E run on it, or give data of at least {R}x{R}")


def build_tokenizer(cfg: DalleTrainConfig, captions: list[list[str]], init=None):
    """The snapshot's tokenizer when resuming, else the --bpe run's, else one trained on the captions."""
    from t2i.text.bpe import BpeTokenizer, train_bpe
    from t2i.text.train import load_bpe

    if init is not None:
        tok = init.meta["tokenizer"]
        return BpeTokenizer(tok["spec"], dropout=tok["dropout"])
    if cfg.bpe:
        return load_bpe(cfg.bpe)
    return train_bpe((c for caps in captions for c in caps), cfg.bpe_vocab, dropout=cfg.bpe_dropout)


class DalleFamily:
    """Modules `dalle` (trained) and `vqgan` (frozen, for samples and sampling); data = tokens + captions."""

    name = "dalle"

    def __init__(self, cfg: DalleTrainConfig, loop, d, log, init=None):
        from t2i.data.dataset import ImageTextDataset, captions_by_image
        from t2i.models.first_stage.cache import load_or_encode_tokens
        from t2i.models.first_stage.vqgan import VQGAN, VQGANConfig
        from t2i.models.first_stage.vqgan_trainer import load_vqgan_snapshot

        self.cfg, self.loop, self.device = cfg, loop, d.device
        dataset = ImageTextDataset(cfg.data)
        dataset.require_captions("t2i train dalle")
        if init is not None:
            self.vqgan = VQGAN(VQGANConfig.from_dict(init.meta["vqgan"])).to(d.device)
            self.vqgan.load_state_dict(init.state_dict("vqgan"))
            self.vqgan.eval().requires_grad_(False)
        else:
            self.vqgan = load_vqgan_snapshot(cfg.vqgan, d.device)
        check_image_size(dataset.resolution, self.vqgan.cfg.resolution, cfg, init is not None)
        self.captions = captions_by_image(dataset, cfg.langs)
        if not all(self.captions):
            i = next(i for i, c in enumerate(self.captions) if not c)
            raise T2IError(f"image {dataset.records[i]['file']} has no captions in languages {cfg.langs!r}")
        self.vocab = caption_vocabulary(c for caps in self.captions for c in caps)  # every --langs caption
        self.tokenizer = build_tokenizer(cfg, self.captions, init)
        self.tokens = load_or_encode_tokens(dataset, self.vqgan, cfg.crop_augs, d.device, log)  # (N, A, n)
        if init is not None:
            self.net = DalleConfig(**init.meta["net"])
        else:
            self.net = copy.deepcopy(PRESETS[cfg.preset])
            self.net.text_vocab = self.tokenizer.vocab_size + self.net.text_len
            self.net.image_vocab, self.net.image_len = self.vqgan.cfg.n_embed, self.tokens.shape[-1]
        self.model = DalleTransformer(self.net).to(d.device)
        self.modules, self.ema = {"dalle": self.model, "vqgan": self.vqgan}, {}
        self.grid_prompts = [caps[0] for caps in self.captions[grid_picks(len(self.captions))]][:8]
        log(f"DALL-E {cfg.preset}: {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M parameters; "
            f"{len(dataset)} images x {self.tokens.shape[1]} crop(s) of {self.net.image_len} tokens "
            f"({self.net.image_vocab} codes); text {self.net.text_len} tokens, BPE vocabulary "
            f"{self.tokenizer.vocab_size} (dropout {self.tokenizer.dropout})")
        log("sample grid prompts (columns): " + " | ".join(self.grid_prompts))

    def phases(self) -> list[Phase]:
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        rest = [p for p in self.model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.cfg.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=self.cfg.lr, betas=(0.9, 0.95))
        schedule = warmup_cosine(self.cfg.warmup_kimg * 1000, self.loop.kimg * 1000, self.loop.batch)
        return [Phase("main", self.model, opt, lr_scale=schedule)]

    def batches(self, step, batch, rank, world, seed):
        def fetch(idx, g):
            aug = torch.randint(self.tokens.shape[1], (len(idx),), generator=g)
            pick = torch.rand(len(idx), generator=g)
            caps = [self.captions[int(i)][int(p * len(self.captions[int(i)]))] for i, p in zip(idx, pick)]
            seed = int(torch.randint(2 ** 62, (), generator=g))  # this step's BPE-dropout draws
            return {"image": self.tokens[idx, aug], "caption": caps, "bpe_seed": seed}
        return step_batches(len(self.tokens), fetch, step, batch, seed, rank)

    def loss(self, phase: Phase, batch: dict):
        from t2i.text.bpe import fixed_length_ids

        self.model.train()
        text = fixed_length_ids(self.tokenizer, batch["caption"], self.net.text_len, dropout=True, truncate=True,
                                rng=random.Random(batch["bpe_seed"]))
        text = drop_text(text.to(self.device), self.net, self.cfg.null_text_prob)
        return dalle_loss(self.model, text, batch["image"].to(self.device), self.cfg.image_weight)

    @torch.no_grad()
    def sample_images(self) -> torch.Tensor:
        """4 seeds (rows) x the grid prompts (columns), guidance 3, from the current weights."""
        from t2i.models.dalle.pipeline import DallePipeline

        self.model.eval()
        pipe = DallePipeline(self.model, self.vqgan, self.tokenizer, None, self.meta())
        n = len(self.grid_prompts)
        return pipe(self.grid_prompts * 4, [s for s in range(4) for _ in range(n)], truncate=True)

    def real_images(self) -> torch.Tensor:
        from t2i.data.transforms import to_uint8

        with torch.no_grad():
            ids = self.tokens[:32, 0].to(self.device).view(-1, *[self.vqgan.cfg.token_side] * 2)
            return to_uint8(self.vqgan.decode_ids(ids).cpu())  # what the transformer sees: decoded tokens

    def meta(self) -> dict:
        return {"family": "dalle", "config": asdict(self.cfg), "net": self.net.to_dict(),
                "vqgan": self.vqgan.cfg.to_dict(),
                "tokenizer": {"spec": self.tokenizer.spec, "dropout": self.tokenizer.dropout},
                "vocab": self.vocab}  # the words of its training captions (`t2i generate` warns about others)


def build(cfg: DalleTrainConfig, loop, d, log, init=None) -> DalleFamily:
    """The DALL-E family object for the shared loop."""
    return DalleFamily(cfg, loop, d, log, init)

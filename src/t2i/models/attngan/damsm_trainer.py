"""`t2i train damsm`: AttnGAN's Deep Attentional Multimodal Similarity Model, pretrained on the shared loop.

One phase trains the text encoder and the image encoder's projections (the `paper` Inception trunk stays
frozen) with the DAMSM loss on random batches. The vocabulary is built from the training captions and saved
with the model; captions longer than `--words` keep a random ordered subset of their words each time they are
drawn, as AttnGAN does. At every snapshot the run writes `attention-<kimg>.png`: for a few test images, each
word's attention over the image's regions.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from t2i.data.loader import data_name, load_images, require_dataset, step_batches
from t2i.data.transforms import to_model
from t2i.errors import T2IError
from t2i.models.attngan.captions import CaptionedImages, batch_hard_negatives
from t2i.models.attngan.damsm import PRESETS, Damsm, DamsmConfig, load_damsm
from t2i.models.attngan.objective import (GAMMA_HELP, DamsmWeights, batch_negatives, damsm_loss, same_caption,
                                          sentence_scores, word_scores)
from t2i.models.attngan.vocab import WordVocab, words_per_caption
from t2i.training.loop import Phase

MAP_SAMPLES = 4         # test images in each attention picture
RETRIEVAL_N = 500       # test images (with their first caption) the r_at_1 metric ranks against each other


@dataclass
class DamsmTrainConfig(DamsmWeights):
    """Options of `t2i train damsm` (the gammas inherited from DamsmWeights)."""

    data: str = ""
    test_data: str = ""          # dataset for r_at_1 and the attention pictures ("" = the training data)
    preset: str = "tiny"
    inception: str = ""          # paper preset: torchvision Inception-v3 weights file; "none" = random (tests only)
    words: int = 0               # words per caption; 0 = the 95th percentile of the training captions' lengths
    lr: float = 0.002
    class_mask: bool = True      # same-class pairs are not negatives (when every image has attributes.class_id)
    hard_negatives: bool = False  # each image also ranks its caption with two interchangeable words swapped
    subset: int = 0              # train on the first N images only (0 = all)


CONFIG = DamsmTrainConfig
PRESET_LOOP_DEFAULTS = {
    "test": {"batch": 8, "kimg": 0.032, "tick_kimg": 0.016, "snap": 1, "grad_clip": 0.25},
    "tiny": {"batch": 48, "kimg": 60.0, "tick_kimg": 5.0, "snap": 4, "grad_clip": 0.25},
    # AttnGAN's published CUB encoders: 200 epochs of 8855 images, batch 48.
    "paper": {"batch": 48, "kimg": 1771.0, "tick_kimg": 10.0, "snap": 20, "grad_clip": 0.25},
}
HELP = {
    "data": "training dataset folder or zip (t2i format, with captions; CUB from `t2i data cub` carries class ids)",
    "test_data": "dataset for the r_at_1 metric and the attention pictures, e.g. the test split; empty = --data",
    "preset": "architecture: test, tiny (small CNN, 64px shapes), paper (Inception-v3 regions, AttnGAN's sizes)",
    "inception": "paper preset: torchvision Inception-v3 weights (inception_v3_google-*.pth, a local file); "
                 "'none' = a random trunk, for tests only",
    "words": "words per caption (longer captions keep a random ordered subset); 0 = the 95th percentile of the "
             "training captions' lengths, printed in the log",
    "lr": "Adam learning rate (betas 0.5, 0.999 as AttnGAN)",
    "class_mask": "1/0: pairs from the same class are not negatives (needs attributes.class_id on every image)",
    "hard_negatives": "1/0: each image also ranks its caption with two interchangeable words swapped (\"a red "
                      "circle above a blue square\" -> \"a blue circle above a red square\"; NegCLIP's swap, as "
                      "`t2i train clip` does), so the encoders must bind attributes to objects (AttnGAN: 0)",
    "subset": "train on the first N images only (0 = all)",
    **GAMMA_HELP,
}


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of `t2i train damsm`."""
    from t2i.models.first_stage.trainer import add_config_args

    add_config_args(p, DamsmTrainConfig, HELP, PRESETS)


def validate(cfg: DamsmTrainConfig) -> None:
    """Reject options that cannot work, before anything heavy runs."""
    if cfg.preset not in PRESETS:
        raise T2IError(f"unknown DAMSM preset {cfg.preset!r}; choose from {sorted(PRESETS)}")
    if not cfg.data:
        raise T2IError("--data is required: a dataset folder or zip in t2i format")
    require_dataset(cfg.data, "t2i train damsm")
    if cfg.words < 0 or cfg.lr <= 0 or min(cfg.gamma1, cfg.gamma2, cfg.gamma3) <= 0:
        raise T2IError(f"--words {cfg.words}, --lr {cfg.lr}, gammas {cfg.gamma1}/{cfg.gamma2}/{cfg.gamma3}: need "
                       "words >= 0 and positive lr and gammas")
    if PRESETS[cfg.preset].image_encoder == "inception" and not cfg.inception:
        raise T2IError(f"--preset {cfg.preset} uses Inception-v3 regions: give its weights with --inception "
                       "PATH (torchvision's inception_v3_google-*.pth; nothing is downloaded), or --inception none "
                       "for a random trunk (tests only)")


def describe(cfg: DamsmTrainConfig) -> str:
    """Run-directory description, e.g. shapes64-damsm-tiny."""
    return f"{data_name(cfg.data)}-damsm-{cfg.preset}"


def first_captions(path: str, n: int) -> tuple[torch.Tensor, list[str]]:
    """The first n images (uint8) of a dataset and the first caption of each."""
    from t2i.data.dataset import ImageTextDataset

    dataset = ImageTextDataset(path)
    dataset.require_captions("the DAMSM's test metrics")
    n = min(n, len(dataset))
    return load_images(dataset, n), [dataset.records[i]["captions"][0] for i in range(n)]


class DamsmFamily:
    """One phase: the DAMSM loss between each image and one of its captions, drawn at random."""

    name = "damsm"

    def __init__(self, cfg: DamsmTrainConfig, d, log, init=None):
        self.cfg, self.device = cfg, d.device
        self.data = data = CaptionedImages(cfg.data, cfg.subset, "t2i train damsm", log, cfg.class_mask)
        if init is not None:   # resuming or fine-tuning: the snapshot's vocabulary, words and architecture
            meta = init.meta["damsm"]
            arch, vocab, words = DamsmConfig.from_dict(meta["arch"]), WordVocab(meta["vocab"]), int(meta["words"])
        else:
            vocab = WordVocab.build(c for caps in data.all_captions for c in caps)
            arch = replace(PRESETS[cfg.preset], vocab_size=len(vocab))
            if arch.image_encoder == "cnn":
                arch = replace(arch, resolution=data.dataset.resolution[0])
            words = cfg.words or words_per_caption((c for caps in data.all_captions for c in caps), vocab)
        data.keep_known(vocab)
        if cfg.hard_negatives:
            data.use_hard_negatives(log)
        self.damsm = Damsm(arch, vocab, words).to(d.device)
        if init is None and arch.image_encoder == "inception":
            if cfg.inception == "none":
                log("Inception-v3 trunk: random weights (--inception none; for tests only)")
            else:
                self.damsm.image_encoder.load_trunk(cfg.inception)
        self.modules = {"damsm": self.damsm}
        self.ema = {}
        self.test_images, self.test_captions = first_captions(cfg.test_data or cfg.data, MAP_SAMPLES)
        lengths = torch.tensor([len(vocab.ids(c)) for caps in data.captions for c in caps])
        log(f"DAMSM {cfg.preset}: {sum(p.numel() for p in self.damsm.parameters() if p.requires_grad) / 1e6:.2f}M "
            f"trained parameters, {data.n} images, {len(lengths)} captions, vocabulary {len(vocab)} words, words per "
            f"caption {words}" + (" (the 95th percentile of the training captions' lengths; longest "
                                  f"{int(lengths.max())})" if not cfg.words and init is None else ""))

    def phases(self) -> list[Phase]:
        params = [p for p in self.damsm.parameters() if p.requires_grad]
        return [Phase("damsm", self.damsm, torch.optim.Adam(params, lr=self.cfg.lr, betas=(0.5, 0.999)))]

    def batches(self, step, batch, rank, world, seed):
        fetch = lambda idx, g: self.data.fetch(idx, g, self.damsm.vocab, self.damsm.words)  # noqa: E731
        return step_batches(self.data.n, fetch, step, batch, seed, rank)

    def loss(self, phase, batch):
        ids, lengths = batch["ids"].to(self.device), batch["lengths"].to(self.device)
        words, sentence = self.damsm.text_encoder(ids, lengths)
        regions, global_features = self.damsm.image_encoder(to_model(batch["image"].to(self.device)))
        masked = batch_negatives(ids, batch.get("class_id"))
        negatives = batch_hard_negatives(batch, self.damsm.text_encoder, self.device)
        return damsm_loss(words, sentence, lengths, regions, global_features, self.cfg, masked, negatives)

    def sample_images(self):
        return None

    def real_images(self):
        return self.data.images[:64]

    @torch.no_grad()
    def on_snapshot(self, path: Path) -> None:
        """attention-<kimg>.png beside the snapshot: each test sample's words over its regions."""
        self.damsm.eval()
        try:
            words, _, lengths = self.damsm.encode_text(self.test_captions)
            regions, _ = self.damsm.image_encoder(to_model(self.test_images.to(self.device)))
            maps, labels = [], []
            for k in range(len(words)):
                _, alpha = word_scores(words[k:k + 1], lengths[k:k + 1], regions[k:k + 1], self.cfg)
                T = int(lengths[k])
                maps.append(alpha[0, 0, :T].reshape(T, *regions.shape[-2:]).cpu())
                labels.append(self.damsm.vocab.decode(self.damsm.vocab.encode([self.test_captions[k]], T)[0][0], T))
            from t2i.models.attngan.maps import attention_rows

            kimg = path.name.split("-")[-1]
            attention_rows(self.test_images, labels, maps).save(path.parent / f"attention-{kimg}.png")
        finally:
            self.damsm.train()

    def meta(self) -> dict:
        return {"family": "damsm", "config": asdict(self.cfg), "damsm": self.damsm.meta()}


def build(cfg: DamsmTrainConfig, loop, d, log, init=None) -> DamsmFamily:
    """The DAMSM family object for the shared loop."""
    return DamsmFamily(cfg, d, log, init)


@torch.no_grad()
def retrieval(damsm: Damsm, images: torch.Tensor, captions: list[str], w: DamsmWeights, chunk: int = 16) -> dict:
    """R@1 both ways among n images and their captions, by the word-level score R(Q, D) and by sentence cosine.
    A caption whose words equal the true caption's counts as a hit (shapes captions repeat)."""
    device = damsm.text_encoder.encoder.weight.device
    words, sentence, lengths = damsm.encode_text(captions)
    regions, glob = [], []
    for i in range(0, len(images), chunk):
        r, g = damsm.image_encoder(to_model(images[i:i + chunk].to(device)))
        regions.append(r)
        glob.append(g)
    regions, glob = torch.cat(regions), torch.cat(glob)
    scores = {"word": torch.cat([word_scores(words, lengths, regions[i:i + chunk], w)[0]
                                 for i in range(0, len(regions), chunk)]),       # (n images, n captions)
              "sentence": sentence_scores(glob, sentence)}
    ids, _ = damsm.vocab.encode(captions, damsm.words)
    same = same_caption(ids).to(device)                                        # (n, n) equal captions
    out = {}
    for kind, s in scores.items():
        out[f"i2t_{kind}"] = float(same.gather(1, s.argmax(1)[:, None]).float().mean())
        out[f"t2i_{kind}"] = float(same.t().gather(1, s.t().argmax(1)[:, None]).float().mean())
    return out


def evaluate(name: str, snapshot: Path, cfg: DamsmTrainConfig, device) -> dict:
    """r_at_1: image-to-text and text-to-image R@1 on the test data (`retrieval`)."""
    if name != "r_at_1":
        raise T2IError(f"metric {name!r} is not available while training DAMSM; use r_at_1")
    damsm = load_damsm(snapshot, device)
    images, captions = first_captions(cfg.test_data or cfg.data, RETRIEVAL_N)
    return {**retrieval(damsm, images, captions, cfg), "n": len(images),
            "split": "test" if cfg.test_data else "train"}

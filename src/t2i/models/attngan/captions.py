"""The in-memory data both AttnGAN trainers read: a canonical dataset's images, its captions with at least one
known word, and class ids where every image has one (CUB's, from `t2i data cub`)."""

from __future__ import annotations

import random

import torch

from t2i.data.loader import load_images
from t2i.errors import T2IError
from t2i.models.attngan.objective import HardNegatives
from t2i.models.attngan.vocab import WordVocab


class CaptionedImages:
    """Images (N, 3, H, W) uint8, per image its usable captions, class ids (N,) or None."""

    def __init__(self, path: str, subset: int, needed_by: str, log, class_mask: bool = True):
        from t2i.data.dataset import ImageTextDataset

        self.dataset = dataset = ImageTextDataset(path)
        dataset.require_captions(needed_by)
        self.n = len(dataset) if subset <= 0 else min(subset, len(dataset))
        self.all_captions = [list(dataset.records[i]["captions"]) for i in range(self.n)]
        self.images = load_images(dataset, self.n)
        self.class_ids = self._class_ids(log) if class_mask else None
        self.captions: list[list[str]] = []
        self.swapper = None      # set by `use_hard_negatives`

    def _class_ids(self, log) -> torch.Tensor | None:
        ids = [(self.dataset.records[i].get("attributes") or {}).get("class_id") for i in range(self.n)]
        if any(not isinstance(c, int) for c in ids):
            return None
        log(f"class ids: {len(set(ids))} classes; same-class pairs are not negatives")
        return torch.tensor(ids)

    def keep_known(self, vocab: WordVocab) -> None:
        """Keep the captions that have a word of vocab; an image left with none is an error naming it."""
        self.captions = [[c for c in caps if vocab.ids(c)] for caps in self.all_captions]
        if empty := [self.dataset.records[i]["file"] for i in range(self.n) if not self.captions[i]]:
            raise T2IError(f"{len(empty)} image(s) of {self.dataset.path} have no caption with a word the model "
                           f"knows (first: {empty[0]}); fix their captions or leave them out")

    def use_hard_negatives(self, log) -> None:
        """Batches also carry each caption's hard negative: two interchangeable words swapped (the CLIP trainer's
        `WordSwapper`, learnt from these captions: "a red circle above a blue square" -> "a blue circle above a red
        square"), so that a matching model must bind attributes to their objects, not count words."""
        from t2i.clip.negatives import WordSwapper

        flat = [c for caps in self.captions for c in caps]
        self.swapper = WordSwapper(flat)
        rng = random.Random(0)
        have = sum(self.swapper.negative(c, rng) is not None for c in flat[:2000])
        log(f"hard negatives: {have} of the first {min(len(flat), 2000)} captions have two words to swap")

    def fetch(self, idx: torch.Tensor, g: torch.Generator, vocab: WordVocab, words: int) -> dict:
        """A batch: images, one random caption each as ids (B, words) and lengths (B,), class ids if known; with
        hard negatives also neg_ids, neg_lengths and neg_valid (B,) (False where a caption has no swap: its
        negative is then the caption itself, to be masked)."""
        pick = [self.captions[int(i)][int(torch.randint(len(self.captions[int(i)]), (), generator=g))] for i in idx]
        subsets = g.get_state()        # the draws of long captions' word subsets, repeated for their negatives
        ids, lengths = vocab.encode(pick, words, g)
        out = {"image": self.images[idx], "ids": ids, "lengths": lengths}
        if self.class_ids is not None:
            out["class_id"] = self.class_ids[idx]
        if self.swapper is not None:   # drawn after the captions: runs without hard negatives see the same batches
            rng = random.Random(int(torch.randint(2 ** 62, (), generator=g)))
            negs = [self.swapper.negative(c, rng) for c in pick]
            same = torch.Generator().set_state(subsets)
            out["neg_ids"], out["neg_lengths"] = vocab.encode([n or c for n, c in zip(negs, pick)], words, same)
            out["neg_valid"] = torch.tensor([n is not None for n in negs])
        return out


def batch_hard_negatives(batch: dict, text_encoder, device) -> HardNegatives | None:
    """The text features of a batch's hard negatives (`CaptionedImages.use_hard_negatives`), or None without."""
    if "neg_ids" not in batch:
        return None
    ids, lengths = batch["neg_ids"].to(device), batch["neg_lengths"].to(device)
    words, sentence = text_encoder(ids, lengths)
    return HardNegatives(words, sentence, lengths, batch["neg_valid"].to(device))

"""The in-memory data both AttnGAN trainers read: a canonical dataset's images, its captions with at least one
known word, and class ids where every image has one (CUB's, from `t2i data cub`)."""

from __future__ import annotations

import torch

from t2i.data.loader import load_images
from t2i.errors import T2IError
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

    def fetch(self, idx: torch.Tensor, g: torch.Generator, vocab: WordVocab, words: int) -> dict:
        """A batch: images, one random caption each as ids (B, words) and lengths (B,), class ids if known."""
        pick = [self.captions[int(i)][int(torch.randint(len(self.captions[int(i)]), (), generator=g))] for i in idx]
        ids, lengths = vocab.encode(pick, words, g)
        out = {"image": self.images[idx], "ids": ids, "lengths": lengths}
        if self.class_ids is not None:
            out["class_id"] = self.class_ids[idx]
        return out

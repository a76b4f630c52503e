"""AttnGAN's words: its tokenizer (regex `\\w+` over the lower-cased caption) and the vocabulary built from
a dataset's captions, saved with the model.

Index 0 is "<end>", the padding word, as in AttnGAN's `captions.pickle` (ixtoword[0] = '<end>'); every word
of the training captions follows, in order of first appearance. Words outside the vocabulary are dropped
from a caption, as AttnGAN does; `t2i generate` names them in a warning first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from t2i.errors import T2IError

WORD = re.compile(r"\w+")
END = "<end>"


def tokenize(caption: str) -> list[str]:
    """AttnGAN's word tokenizer: the `\\w+` runs of the lower-cased caption."""
    return WORD.findall(caption.lower())


class WordVocab:
    """Word <-> index; index 0 is the padding word "<end>"."""

    def __init__(self, words: list[str]):
        if not words or words[0] != END:
            raise T2IError(f"a word vocabulary must start with {END!r} (index 0, padding); got {words[:3]!r}")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise T2IError("the word vocabulary lists a word twice")

    @classmethod
    def build(cls, captions: Iterable[str]) -> WordVocab:
        """The vocabulary of captions: "<end>", then every word in order of first appearance."""
        seen = dict.fromkeys(w for c in captions for w in tokenize(c))
        seen.pop(END, None)
        return cls([END, *seen])

    def __len__(self) -> int:
        return len(self.words)

    def ids(self, caption: str) -> list[int]:
        """The indices of the caption's known words, in order (unknown words dropped, as AttnGAN does)."""
        return [self.index[w] for w in tokenize(caption) if w in self.index]

    def unknown(self, caption: str) -> list[str]:
        """The caption's words that the vocabulary lacks."""
        return [w for w in tokenize(caption) if w not in self.index]

    def encode(self, captions: list[str], length: int, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, length) padded with 0, lengths (B,)). A caption longer than `length` keeps `length` of its
        words: a random ordered subset with a generator (AttnGAN's training), else the first ones."""
        out = torch.zeros(len(captions), length, dtype=torch.long)
        lens = torch.zeros(len(captions), dtype=torch.long)
        for i, caption in enumerate(captions):
            ids = self.ids(caption)
            if len(ids) > length:
                keep = (torch.randperm(len(ids), generator=generator)[:length].sort().values.tolist()
                        if generator is not None else range(length))
                ids = [ids[k] for k in keep]
            out[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            lens[i] = len(ids)
        return out, lens

    def decode(self, ids: torch.Tensor, length: int) -> list[str]:
        """The words of one encoded caption."""
        return [self.words[int(k)] for k in ids[:length]]


def words_per_caption(captions: Iterable[str], vocab: WordVocab, percentile: float = 95.0) -> int:
    """The percentile of the captions' lengths in known words (at least 1): AttnGAN's fixed 18 for CUB,
    chosen from the data instead."""
    lengths = torch.tensor([len(vocab.ids(c)) for c in captions], dtype=torch.float)
    if not len(lengths):
        raise T2IError("no captions to measure the words per caption from")
    return max(1, int(torch.quantile(lengths, percentile / 100).ceil()))

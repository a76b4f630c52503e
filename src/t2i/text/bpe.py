"""Byte-level BPE trained on a dataset's captions, with BPE-dropout; shared by every family.

Built with Hugging Face `tokenizers`: byte-level, so any UTF-8 text (Korean included) tokenises
without unknown tokens, and the whole tokenizer is one JSON document that travels inside snapshots
(or as `tokenizer.json`, loadable by `tokenizers.Tokenizer.from_file`).

BPE-dropout (Provilkov et al., arXiv 1910.13267; DALL-E uses 0.1) skips each merge with probability
p while encoding, so the model sees varied segmentations of the same words. It applies only where
asked (`ids(text, dropout=True)` in training); evaluation and sampling always get the one canonical
segmentation.
"""

from __future__ import annotations

import json
import random
from typing import Iterable

import torch

from t2i.errors import T2IError

PAD, SOT, EOT = "<pad>", "<sot>", "<eot>"


def train_bpe(texts: Iterable[str], vocab_size: int, dropout: float = 0.0,
              special_tokens: tuple[str, ...] = (PAD, SOT, EOT)) -> "BpeTokenizer":
    """Train a lower-casing byte-level BPE of `vocab_size` ids (special tokens first) on `texts`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return BpeTokenizer(json.loads(tok.to_str()), dropout=dropout)


class BpeTokenizer:
    """A trained BPE: text -> ids (canonical, or with BPE-dropout) and ids -> text."""

    def __init__(self, spec: dict, dropout: float = 0.0):
        from tokenizers import Tokenizer

        if not 0.0 <= dropout < 1.0:
            raise T2IError(f"BPE dropout {dropout} must be in [0, 1)")
        self.spec, self.dropout = spec, dropout
        self._tok = Tokenizer.from_str(json.dumps({**spec, "model": {**spec["model"], "dropout": None}}))
        self.vocab_size = self._tok.get_vocab_size()
        merges = spec["model"]["merges"]
        self._rank = {tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m): r for r, m in enumerate(merges)}
        self._vocab = spec["model"]["vocab"]

    def token_id(self, token: str) -> int:
        """The id of a (special) token; T2IError if the vocabulary lacks it."""
        i = self._tok.token_to_id(token)
        if i is None:
            raise T2IError(f"token {token!r} is not in this BPE vocabulary")
        return i

    def ids(self, text: str, dropout: bool = False, rng: random.Random | None = None) -> list[int]:
        """Token ids of one text, without special tokens; dropout=True samples a BPE-dropout
        segmentation from `rng` (seeded by the caller, so training is reproducible)."""
        if not dropout or self.dropout == 0:
            return self._tok.encode(text, add_special_tokens=False).ids
        rng = rng or random.Random()
        words = self._tok.pre_tokenizer.pre_tokenize_str(self._tok.normalizer.normalize_str(text))
        return [self._vocab[piece] for word, _ in words for piece in self._merge(list(word), rng)]

    def _merge(self, symbols: list[str], rng: random.Random) -> list[str]:
        """BPE with dropout on one pre-tokenised word: repeatedly apply the best-ranked adjacent merge
        that survives a coin flip (each candidate is dropped with probability p); stop when none does.
        Written here because the tokenizers library's BPE-dropout draws from an unseedable RNG, which
        would make an exact `--resume` impossible. With p = 0 it is the library's canonical BPE (tested)."""
        while len(symbols) > 1:
            best = None
            for i in range(len(symbols) - 1):
                r = self._rank.get((symbols[i], symbols[i + 1]))
                if r is not None and (best is None or r < best[0]) and rng.random() >= self.dropout:
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        return symbols

    def decode(self, ids: list[int]) -> str:
        """Text of ids (special tokens dropped); the inverse of `ids` up to lower-casing and NFC."""
        return self._tok.decode(ids, skip_special_tokens=True)

    def to_json(self) -> str:
        """The tokenizer as Hugging Face `tokenizer.json` text (canonical, dropout off)."""
        return self._tok.to_str(pretty=True)


def fixed_length_ids(tokenizer: BpeTokenizer, texts: list[str], length: int, dropout: bool = False,
                     truncate: bool = False, rng: random.Random | None = None) -> torch.Tensor:
    """(B, length) text ids for an autoregressive prefix: the BPE ids, then padding in which position i
    has its own id `vocab_size + i`, so the model can tell padding positions apart (DALL-E). Ids thus
    range over `vocab_size + length` values; an empty text is all padding (the null condition of
    classifier-free guidance). A longer text is cut (truncate=True, for training captions) or refused."""
    out = torch.arange(length).repeat(len(texts), 1) + tokenizer.vocab_size
    for i, text in enumerate(texts):
        ids = tokenizer.ids(text, dropout=dropout, rng=rng) if text else []
        if len(ids) > length:
            if not truncate:
                short = text if len(text) <= 60 else text[:57] + "..."
                raise T2IError(f"prompt {short!r} is {len(ids)} tokens; this model reads at most {length}. "
                               "Shorten the prompt.")
            ids = ids[:length]
        out[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out

"""Text tokenizer for t2i's own CLIP: a byte-level BPE trained on a dataset's captions.

Built with Hugging Face `tokenizers` (byte-level, so any UTF-8 text, Korean included, tokenises
without unknown tokens). Stored inside the snapshot's config.json, so a model carries its tokenizer.
"""

from __future__ import annotations

import json
from typing import Iterable

import torch

from t2i.errors import T2IError

PAD, SOT, EOT = "<pad>", "<sot>", "<eot>"


def train_bpe(texts: Iterable[str], vocab_size: int) -> "ClipTokenizer":
    """Train a lower-casing byte-level BPE with <pad>, <sot>, <eot> on `texts`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, SOT, EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return ClipTokenizer(json.loads(tok.to_str()))


class ClipTokenizer:
    """Encodes prompts to fixed-length id tensors: <sot> tokens <eot> <pad>..."""

    def __init__(self, spec: dict):
        from tokenizers import Tokenizer

        self.spec = spec
        self._tok = Tokenizer.from_str(json.dumps(spec))
        self.pad_id = self._tok.token_to_id(PAD)
        self.sot_id = self._tok.token_to_id(SOT)
        self.eot_id = self._tok.token_to_id(EOT)
        self.vocab_size = self._tok.get_vocab_size()

    def ids(self, text: str) -> list[int]:
        """Token ids of one text, without special tokens."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def __call__(self, texts: list[str], context: int) -> torch.Tensor:
        """(B, context) ids; a text longer than context - 2 tokens raises T2IError."""
        out = torch.full((len(texts), context), self.pad_id, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = self.ids(t)
            if len(ids) + 2 > context:
                short = t if len(t) <= 60 else t[:57] + "..."
                raise T2IError(
                    f"prompt {short!r} is {len(ids)} tokens; this text encoder takes at most "
                    f"{context - 2}. Shorten the prompt."
                )
            seq = [self.sot_id, *ids, self.eot_id]
            out[i, :len(seq)] = torch.tensor(seq)
        return out

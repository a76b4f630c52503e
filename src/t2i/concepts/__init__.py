"""New words for trained models, written once for every family: textual inversion (`t2i invert`), the
embedding files it writes and `--embeds` reads (`embeds.py`).

Each family shows its text side through one small interface (`textside.TextSide`): its tokenizer, its
token-embedding table and `encode(prompts)`, the conditioning that family consumes, plus the one hook that
differs, the loss that teaches a new embedding from images. Nothing here knows a family's internals beyond that.
`equip` loads onto a sampling pipeline what `t2i generate`, `t2i eval` and `t2i serve` name beyond the snapshot.
"""

from __future__ import annotations

from t2i.errors import T2IError


def equip(pipe, device="cpu", embeds: list[str] | tuple = (), aligner: str | None = None, lang: str = "auto",
          rerank_clip: str | None = None, candidates: int = 1) -> None:
    """Load onto a pipeline what sampling asks for beyond its snapshot: DALL-E's rerank CLIP, textual-inversion
    embeddings (`t2i invert`) and a Korean aligner (`t2i train aligner`); each is checked against the model."""
    if candidates > 1 and "candidates" in pipe.options and not rerank_clip:
        raise T2IError(f"{candidates} candidates per image need a rerank CLIP (--rerank_clip CLIP) to choose "
                       "among them")
    if rerank_clip and "candidates" in pipe.options:
        from t2i.clip import load_clip

        pipe.clip = load_clip(rerank_clip, device)
    if embeds:
        from t2i.concepts.embeds import apply_embeds

        apply_embeds(pipe, list(embeds))
    if aligner:
        from t2i.concepts.aligner import apply_aligner

        apply_aligner(pipe, aligner, lang)

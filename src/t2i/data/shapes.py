"""The procedural "shapes" domain: coloured shapes in named positions, with exactly scorable captions.

A scene holds one object in any of five slots, or two objects related by "left of" (slots left and
right) or "above" (slots top and bottom); `objects[0]` is then the left / upper one. Every caption
names every object's size, colour, shape and position, and `parse_prompt` inverts every English
template, so a generated image can be judged against its prompt by the shapes oracle.

Eight (shape, colour) combinations (`HELDOUT`) never appear in the train and test-seen splits, to
measure compositional generalisation on the test-heldout split.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, field

import torch
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
COLOURS = {
    "red": (225, 25, 25),
    "green": (20, 170, 40),
    "blue": (25, 60, 235),
    "yellow": (250, 225, 20),
    "purple": (140, 35, 190),
    "orange": (255, 135, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
COLOUR_NAMES = tuple(COLOURS)
# Low-saturation mid-luminance backgrounds: far (RGB distance > 90) from every object colour,
# white and black included, so no object ever blends into its background.
BACKGROUNDS = {
    "grey": (128, 128, 128),
    "slate": (105, 115, 130),
    "olive": (125, 125, 100),
    "tan": (150, 135, 115),
}
BACKGROUND_NAMES = tuple(BACKGROUNDS)
SIZES = ("small", "large")
SLOTS = ("center", "left", "right", "top", "bottom")
RELATIONS = ("left of", "above")
SPLITS = ("train", "test-seen", "test-heldout", "all")

HELDOUT = (
    ("circle", "green"),
    ("square", "purple"),
    ("triangle", "white"),
    ("diamond", "red"),
    ("star", "blue"),
    ("cross", "yellow"),
    ("circle", "orange"),
    ("square", "black"),
)
SEEN = tuple((s, c) for s in SHAPES for c in COLOUR_NAMES if (s, c) not in HELDOUT)
ALL_COMBOS = tuple((s, c) for s in SHAPES for c in COLOUR_NAMES)

# Geometry, in fractions of the image side. Slot centres sit a quarter of the image apart; the
# largest object (radius 0.19 * 1.1) jittered by 0.03 still stays inside its half of the image, so
# an object is never cut by the border nor mistaken for one in a neighbouring slot.
SLOT_CENTRES = {"center": (0.5, 0.5), "left": (0.25, 0.5), "right": (0.75, 0.5),
                "top": (0.5, 0.25), "bottom": (0.5, 0.75)}
RADII = {"small": 0.115, "large": 0.19}
POSITION_JITTER = 0.03
SCALE_JITTER = 0.1
SUPERSAMPLE = 4  # draw at 4x and box-downsample: antialiased edges at PIL's polygon speed
IGNORE_INDEX = -100  # torch cross_entropy's default, for the colour and size of empty slots


@dataclass
class ShapeObject:
    """One object: its attributes, plus a render-only jitter that equality ignores."""

    shape: str
    colour: str
    size: str
    slot: str
    dx: float = field(default=0.0, compare=False)  # offset, fraction of the image side
    dy: float = field(default=0.0, compare=False)
    scale: float = field(default=1.0, compare=False)  # radius multiplier

    def __post_init__(self):
        for value, allowed, what in ((self.shape, SHAPES, "shape"), (self.colour, COLOUR_NAMES, "colour"),
                                     (self.size, SIZES, "size"), (self.slot, SLOTS, "slot")):
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; expected one of {allowed}")


@dataclass
class Scene:
    """One or two objects; with two, `relation` says how objects[0] sits relative to objects[1]."""

    objects: list[ShapeObject]
    background: str | None = field(default=None, compare=False)
    relation: str | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict (the dataset's `attributes`)."""
        return {"objects": [asdict(o) for o in self.objects], "background": self.background,
                "relation": self.relation}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        """Rebuild a scene from `to_dict` output (missing background / relation default to None)."""
        return cls([ShapeObject(**o) for o in d["objects"]], d.get("background"), d.get("relation"))


def _jitter(rng: random.Random) -> dict[str, float]:
    """A random render-only offset (dx, dy) and scale, the attributes no caption names."""
    # Rounded so the JSON attributes round-trip exactly and re-render the identical image.
    return {"dx": round(rng.uniform(-POSITION_JITTER, POSITION_JITTER), 4),
            "dy": round(rng.uniform(-POSITION_JITTER, POSITION_JITTER), 4),
            "scale": round(rng.uniform(1 - SCALE_JITTER, 1 + SCALE_JITTER), 4)}


def _sample_object(rng: random.Random, combo: tuple[str, str], slot: str) -> ShapeObject:
    """An object of the given (shape, colour) in a slot, with random size and jitter."""
    size = rng.choice(SIZES)
    return ShapeObject(shape=combo[0], colour=combo[1], size=size, slot=slot, **_jitter(rng))


def concept_scene(rng: random.Random, shape: str) -> Scene:
    """One object of `shape`, any colour, size and place (a concept's prompts: "a large red * on the left")."""
    obj = _sample_object(rng, (shape, rng.choice(COLOUR_NAMES)), rng.choice(SLOTS))
    return Scene([obj], rng.choice(tuple(BACKGROUNDS)))


def resample_unnamed(scene: Scene, rng: random.Random) -> Scene:
    """The same named attributes (shapes, colours, sizes, slots, relation) with a fresh background and
    jitter: another image a caption of `scene` describes, drawn as the data draws them."""
    objects = [ShapeObject(o.shape, o.colour, o.size, o.slot, **_jitter(rng)) for o in scene.objects]
    return Scene(objects, rng.choice(tuple(BACKGROUNDS)), scene.relation)


def sample_scene(rng: random.Random, split: str = "train", exclude_shape: str | None = None) -> Scene:
    """A random scene: train/test-seen avoid HELDOUT combos, test-heldout has at least one, all = any;
    `exclude_shape` keeps a shape out of every scene (data whose model never saw it)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    n_objects = rng.choice((1, 2))
    if n_objects == 1:
        slots, relation = [rng.choice(SLOTS)], None
    else:
        relation = rng.choice(RELATIONS)
        slots = ["left", "right"] if relation == "left of" else ["top", "bottom"]
    pool = ALL_COMBOS if split in ("all", "test-heldout") else SEEN
    heldout = HELDOUT
    if exclude_shape is not None:
        pool, heldout = (tuple(c for c in combos if c[0] != exclude_shape) for combos in (pool, HELDOUT))
    combos = [rng.choice(pool) for _ in slots]
    if split == "test-heldout":
        combos[rng.randrange(len(combos))] = rng.choice(heldout)
    objects = [_sample_object(rng, combo, slot) for combo, slot in zip(combos, slots)]
    return Scene(objects, rng.choice(tuple(BACKGROUNDS)), relation)


# ---------------------------------------------------------------------------------------------
# Rendering


def _star(r: float, points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    """Vertices of a star pointing up, outer radius r."""
    out = []
    for k in range(2 * points):
        rho = r if k % 2 == 0 else r * inner
        a = math.pi * k / points - math.pi / 2
        out.append((rho * math.cos(a), rho * math.sin(a)))
    return out


def _outline(shape: str, r: float) -> list[tuple[float, float]]:
    """Polygon vertices around (0, 0) for a shape of nominal radius r (all but the circle)."""
    if shape == "square":
        a = 0.85 * r  # similar area to the circle of radius r
        return [(-a, -a), (a, -a), (a, a), (-a, a)]
    if shape == "triangle":
        # Equilateral, pointing up, bounding box centred: half-height 0.825 r, half-width 0.95 r.
        return [(0.0, -0.825 * r), (0.95 * r, 0.825 * r), (-0.95 * r, 0.825 * r)]
    if shape == "diamond":
        return [(0.0, -r), (0.72 * r, 0.0), (0.0, r), (-0.72 * r, 0.0)]
    if shape == "star":
        return _star(r)
    if shape == "cross":
        a, b = 0.9 * r, 0.3 * r  # arm reach and half-width
        return [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b),
                (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Draw a scene as an antialiased RGB image of size x size."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background or "grey"])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx, cy = SLOT_CENTRES[obj.slot]
        cx, cy = (cx + obj.dx) * big, (cy + obj.dy) * big
        r = RADII[obj.size] * obj.scale * big
        colour = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        else:
            draw.polygon([(cx + x, cy + y) for x, y in _outline(obj.shape, r)], fill=colour)
    return image.reduce(SUPERSAMPLE)


def render_tensor(scenes: list[Scene], size: int = 64) -> torch.Tensor:
    """uint8 (N, 3, size, size) renders of scenes."""
    import numpy as np

    return torch.from_numpy(np.stack([np.asarray(render(s, size)) for s in scenes])).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------
# Captions. Each template is a format string over {a} and {b} (objects[0] and [1] as "size colour
# shape") and {pos} (the position of a lone object); parse_prompt compiles the same strings into
# regular expressions, so every template is invertible by construction.

POSITIONS_EN = {"center": "in the center", "left": "on the left", "right": "on the right",
                "top": "at the top", "bottom": "at the bottom"}
TEMPLATES_EN = {
    None: ("a {a} {pos}", "{pos} there is a {a}", "a picture of a {a} {pos}", "{pos}, a {a}"),
    "left of": ("a {a} to the left of a {b}", "a {b} to the right of a {a}",
                "a {a} on the left and a {b} on the right", "on the left a {a}, on the right a {b}"),
    "above": ("a {a} above a {b}", "a {b} below a {a}",
              "a {a} at the top and a {b} at the bottom", "at the top a {a}, at the bottom a {b}"),
}

SHAPES_KO = {"circle": "원", "square": "정사각형", "triangle": "삼각형", "diamond": "마름모",
             "star": "별", "cross": "십자 모양"}
COLOURS_KO = {"red": "빨간", "green": "초록색", "blue": "파란", "yellow": "노란",
              "purple": "보라색", "orange": "주황색", "white": "하얀", "black": "검은"}
SIZES_KO = {"small": "작은", "large": "큰"}
POSITIONS_KO = {"center": "가운데", "left": "왼쪽", "right": "오른쪽", "top": "위쪽",
                "bottom": "아래쪽"}
# {ga}: the subject particle 이/가 chosen by whether the preceding noun ends in a consonant.
TEMPLATES_KO = {
    None: ("{pos}에 {a}", "{pos}에 있는 {a}", "{a}{ga} {pos}에 있다"),
    "left of": ("{b} 왼쪽에 {a}", "왼쪽에 {a}, 오른쪽에 {b}", "{a} 오른쪽에 {b}"),
    "above": ("{b} 위에 {a}", "위쪽에 {a}, 아래쪽에 {b}", "{a} 아래에 {b}"),
}


def _phrase_en(obj: ShapeObject) -> str:
    return f"{obj.size} {obj.colour} {obj.shape}"


def _phrase_ko(obj: ShapeObject) -> str:
    return f"{SIZES_KO[obj.size]} {COLOURS_KO[obj.colour]} {SHAPES_KO[obj.shape]}"


def _subject_particle(word: str) -> str:
    """이 after a Hangul syllable with a final consonant (batchim), else 가."""
    code = ord(word[-1]) - 0xAC00
    return "이" if 0 <= code < 11172 and code % 28 != 0 else "가"


def captions(scene: Scene, lang: str = "en") -> list[str]:
    """All captions of a scene in `en` (4 templates) or `ko` (3 templates)."""
    if lang not in ("en", "ko"):
        raise ValueError(f"unknown caption language {lang!r}; expected 'en' or 'ko'")
    phrase, positions = (_phrase_en, POSITIONS_EN) if lang == "en" else (_phrase_ko, POSITIONS_KO)
    templates = (TEMPLATES_EN if lang == "en" else TEMPLATES_KO)[scene.relation]
    a = scene.objects[0]
    b = scene.objects[1] if len(scene.objects) > 1 else None
    fields = {"a": phrase(a), "pos": positions[a.slot], "ga": _subject_particle(phrase(a))}
    if b is not None:
        fields["b"] = phrase(b)
    return [t.format(**fields) for t in templates]


def prompt(scene: Scene, lang: str = "en") -> str:
    """The canonical caption of a scene in `en` or `ko` (its first template)."""
    return captions(scene, lang)[0]


def _template_regex(template: str) -> re.Pattern:
    """Compile an English template into a regex whose groups capture its objects and position."""
    def obj(k: str) -> str:
        return (f"(?P<{k}_size>{'|'.join(SIZES)}) (?P<{k}_colour>{'|'.join(COLOUR_NAMES)}) "
                f"(?P<{k}_shape>{'|'.join(SHAPES)})")

    pos = "(?P<pos>" + "|".join(re.escape(p) for p in POSITIONS_EN.values()) + ")"
    pattern = re.escape(template)
    for field_name, group in (("{a}", obj("a")), ("{b}", obj("b")), ("{pos}", pos)):
        pattern = pattern.replace(re.escape(field_name), group)
    return re.compile(pattern)


_PARSERS = [(relation, _template_regex(t)) for relation, ts in TEMPLATES_EN.items() for t in ts]
_SLOT_OF_POSITION = {v: k for k, v in POSITIONS_EN.items()}


def parse_prompt(text: str) -> Scene | None:
    """Invert any English caption template into a Scene (no background, no jitter); None if none fits."""
    text = " ".join(text.lower().replace("centre", "center").split()).rstrip(".")
    for relation, regex in _PARSERS:
        m = regex.fullmatch(text)
        if m is None:
            continue
        g = m.groupdict()
        if relation is None:
            slots = [_SLOT_OF_POSITION[g["pos"]]]
        else:
            slots = ["left", "right"] if relation == "left of" else ["top", "bottom"]
        objects = [ShapeObject(g[f"{k}_shape"], g[f"{k}_colour"], g[f"{k}_size"], slot)
                   for k, slot in zip("ab", slots)]
        return Scene(objects, None, relation)
    return None


# ---------------------------------------------------------------------------------------------
# Oracle targets and dataset creation


def scene_targets(scene: Scene) -> dict[str, torch.Tensor]:
    """Per-slot (SLOTS order) class targets: shape (0 empty, 1..6), colour (0..7), size (0/1).

    Colour and size of an empty slot are IGNORE_INDEX (-100), cross_entropy's ignore_index.
    """
    shape = torch.zeros(len(SLOTS), dtype=torch.long)
    colour = torch.full((len(SLOTS),), IGNORE_INDEX, dtype=torch.long)
    size = torch.full((len(SLOTS),), IGNORE_INDEX, dtype=torch.long)
    for obj in scene.objects:
        k = SLOTS.index(obj.slot)
        shape[k] = SHAPES.index(obj.shape) + 1
        colour[k] = COLOUR_NAMES.index(obj.colour)
        size[k] = SIZES.index(obj.size)
    return {"shape": shape, "colour": colour, "size": size}


def unnamed_targets(scene: Scene) -> dict[str, torch.Tensor]:
    """Targets of what no caption names: the background class (a 0-d long, grey when unset) and per slot the
    jitter (dx, dy, scale), each scaled to [-1, 1] by its range (zeros in empty slots), (5, 3) float."""
    jitter = torch.zeros(len(SLOTS), 3)
    for obj in scene.objects:
        jitter[SLOTS.index(obj.slot)] = torch.tensor([obj.dx / POSITION_JITTER, obj.dy / POSITION_JITTER,
                                                      (obj.scale - 1) / SCALE_JITTER])
    return {"background": torch.tensor(BACKGROUND_NAMES.index(scene.background or "grey")), "jitter": jitter}


def dataset_name(size: int, split: str) -> str:
    """The dataset name: shapes64 for train, shapes64-test-seen etc. for the test splits."""
    return f"shapes{size}" if split == "train" else f"shapes{size}-{split}"


def make_dataset(out, n: int, size: int = 64, seed: int = 0, split: str = "train",
                 overwrite: bool = False, progress: bool = True, exclude_shape: str | None = None) -> str:
    """Render n random scenes of a split into a canonical dataset at `out` (none of `exclude_shape`); returns its
    name."""
    from tqdm import tqdm

    from t2i.data.dataset import DatasetWriter

    if split not in SPLITS[:3]:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS[:3]}")
    # The split is part of the seed so the same --seed gives unrelated train and test-seen scenes.
    rng = random.Random(f"shapes:{split}:{seed}")
    name = dataset_name(size, split)
    with DatasetWriter(out, name, (size, size), overwrite=overwrite) as writer:
        for _ in tqdm(range(n), desc=f"rendering {name}", unit="img", disable=not progress):
            scene = sample_scene(rng, split, exclude_shape)
            writer.add(render(scene, size), captions(scene, "en"), scene.to_dict(),
                       {"ko": captions(scene, "ko")})
    return name

"""The image side a family's networks are built for: the data's, unless --resolution states it or the
snapshot a run resumes (or fine-tunes) from fixes it. Images are never resized to fit; every refusal names
the sizes the family builds and the fix. Shared by LAFITE and the VQGAN."""

from __future__ import annotations

import math

from t2i.errors import T2IError


def sizes_text(sizes: list[int], open_ended: bool = False) -> str:
    """'square powers of two from 16 to 128 (16, 32, 64, 128)' (the middle of a long list elided), or with
    open_ended (convolutional networks without an upper bound) 'square powers of two from 32 up (32, 64, ...)'."""
    if open_ended:
        low = sizes[0]
        return f"square powers of two from {low} up ({low}, {2 * low}, {4 * low}, ...)"
    shown = sizes if len(sizes) <= 8 else [*sizes[:3], "...", sizes[-1]]
    return f"square powers of two from {sizes[0]} to {sizes[-1]} ({', '.join(map(str, shown))})"


def check_requested(requested: int, sizes: list[int], builder: str, open_ended: bool = False) -> None:
    """T2IError unless --resolution (0: the data's) is one of the sizes `builder` ("LAFITE preset 'tiny'")
    builds."""
    if requested and requested not in sizes:
        raise T2IError(f"--resolution {requested}: {builder} builds {sizes_text(sizes, open_ended)}; pick one of "
                       "them, or 0 for the data's")


def fit_resolution(size: tuple[int, int], data: str, requested: int, sizes: list[int], builder: str,
                   snapshot_side: int | None = None, open_ended: bool = False) -> int:
    """The side to build for data of `size` (w, h): the snapshot's (snapshot_side) when resuming or
    fine-tuning, else --resolution (`requested`, checked by check_requested), else the data's, which must
    then be one of `sizes`. The data must have that side."""
    w, h = size
    if snapshot_side is not None:  # the networks come from the snapshot: so does their resolution
        R = snapshot_side
        if requested not in (0, R):
            raise T2IError(f"--resolution {requested}, but the snapshot's networks are {R}x{R}; a resume or "
                           "fine-tune keeps its networks: drop --resolution, or train a new run at that size")
        if (w, h) != (R, R):
            raise T2IError(f"dataset {data!r} is {w}x{h} but the snapshot resumed from works at {R}x{R}; repack "
                           f"the data with `t2i data pack --width {R} --height {R}`, or train a new run on this "
                           "data (its resolution follows the data)")
        return R
    if requested:
        if (w, h) != (requested, requested):
            raise T2IError(f"--resolution {requested} but dataset {data!r} is {w}x{h}; images are never resized: "
                           f"repack the data with `t2i data pack --width {requested} --height {requested}`, or "
                           "leave out --resolution to train at the data's")
        return requested
    if w != h or w not in sizes:
        near = min(sizes, key=lambda s: abs(math.log2(s) - math.log2(max(w, h, 1))))
        raise T2IError(f"dataset {data!r} is {w}x{h}; {builder} builds {sizes_text(sizes, open_ended)}: repack "
                       f"the data with `t2i data pack --width {near} --height {near}`")
    return w

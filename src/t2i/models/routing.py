"""Prompts that bypass a family's own text encoder: the shared part of every sampling pipeline.

A pipeline's `prompt_route` is None, or an object with `takes(prompt) -> bool` and `__call__(prompts) ->
conditioning` in the family's own format (e.g. `t2i.concepts.aligner.PromptRoute`: Korean prompts through a
multilingual sentence encoder and an aligner). `condition(prompts)` gives each prompt's conditioning from the
route or from the family's `text_condition`, row by row, so one batch may mix both.
"""

from __future__ import annotations

import torch


def _merge(taken: list[bool], routed, own):
    """Rows of `routed` where taken, of `own` elsewhere; tensors or tuples of them."""
    if isinstance(own, tuple):
        return tuple(_merge(taken, r, o) for r, o in zip(routed, own))
    mask = torch.tensor(taken, device=own.device)
    out = torch.empty((len(taken), *own.shape[1:]), dtype=own.dtype, device=own.device)
    out[mask] = routed.to(own.device, own.dtype)
    out[~mask] = own
    return out


class PromptRouting:
    """Mixin of the sampling pipelines; each defines `text_condition(prompts, **kw)`, its text encoder's path."""

    prompt_route = None
    options: dict = {}   # the sampling options `pipe(...)` takes, with their defaults
    preview = {}   # sampling options of the small grids a run draws at its snapshots (fast over faithful)

    @classmethod
    def default_options(cls, meta: dict) -> dict:
        """The sampling options of a model of this family and their defaults, from its snapshot's config alone
        (what `t2i serve` offers before it loads the weights)."""
        return dict(cls.options)

    def routed(self, prompts: list[str]) -> list[bool]:
        """Which prompts the route takes."""
        route = self.prompt_route
        return [route is not None and route.takes(p) for p in prompts]

    def text_prompts(self, prompts: list[str]) -> list[str]:
        """The prompts the family's own text encoder reads (the others go through the route)."""
        return [p for p, taken in zip(prompts, self.routed(prompts)) if not taken]

    def condition(self, prompts: list[str], **kw):
        """The family's conditioning of each prompt, through the route where it takes the prompt."""
        taken = self.routed(prompts)
        if not any(taken):
            return self.text_condition(prompts, **kw)
        routed = self.prompt_route([p for p, t in zip(prompts, taken) if t])
        if all(taken):
            return routed
        return _merge(taken, routed, self.text_condition([p for p, t in zip(prompts, taken) if not t], **kw))

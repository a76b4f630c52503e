"""`t2i serve`: a local web page over every model family and run (FastAPI + one static page).

    runs.py    what the runs below --runs say about themselves: state, curves, grids (files only)
    models.py  the models on offer, their sampling options and bounds, the loaded pipelines
    jobs.py    generation requests: checked, queued, run one at a time on the device
    app.py     the HTTP API and the page (static/)

This module imports nothing heavy: `t2i --help` reads the limits' defaults from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Limits:
    """What one request may ask for, and how much the server keeps."""

    max_images: int = 64          # images per request, over every model compared
    max_prompts: int = 16
    max_prompt_chars: int = 300
    max_models: int = 4
    max_extras: int = 4           # textual-inversion embeddings per request
    max_queue: int = 8            # requests waiting; more are refused until one finishes
    kept_jobs: int = 32           # finished jobs whose images stay downloadable
    max_seed: int = 2 ** 31 - 1

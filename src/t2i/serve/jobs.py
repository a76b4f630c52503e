"""Generation requests of `t2i serve`: checked against the server's limits, queued, and run one at a time.

One worker thread owns the device: requests wait in a bounded queue, and each job publishes its images as they
are made (the page polls `Job.view`). Every image keeps its prompt, seed, model and options in its PNG's text
chunks, so a downloaded file says how to make it again.
"""

from __future__ import annotations

import io
import itertools
import json
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field

from t2i.errors import T2IError
from t2i.serve import Limits
from t2i.serve.models import HANGUL, Catalog, PipelineCache, check_option


@dataclass
class Request:
    """A checked request: every (model, prompt, seed) image it makes, and the options of each model."""

    prompts: list[str]
    models: list[str]
    seed: int
    n: int
    options: dict[str, dict]          # model id -> the options its family takes
    embeds: tuple[str, ...] = ()
    aligner: str | None = None
    rerank_clip: str | None = None

    def images(self) -> list[tuple[str, str, int]]:
        """(model, prompt, seed) of every image, model by model, prompt by prompt."""
        return [(m, p, self.seed + k) for m in self.models for p in self.prompts for k in range(self.n)]


def _int(body: dict, key: str, default: int, lo: int, hi: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
        raise T2IError(f"{key} = {value!r} must be a whole number")
    value = int(value)
    if not lo <= value <= hi:
        raise T2IError(f"{key} = {value} is out of range; give a value from {lo} to {hi}")
    return value


def parse_request(body, limits: Limits, catalog: Catalog) -> Request:
    """A Request from a JSON body, or T2IError naming the first value out of bounds and the fix."""
    if not isinstance(body, dict):
        raise T2IError("the request must be a JSON object")
    text = body.get("prompts", "")
    if not isinstance(text, str):
        raise T2IError("prompts must be text, one prompt per line")
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise T2IError('no prompt given; describe the image, e.g. "a large red circle on the left"')
    if len(prompts) > limits.max_prompts:
        raise T2IError(f"{len(prompts)} prompts; at most {limits.max_prompts} per request")
    for p in prompts:
        if len(p) > limits.max_prompt_chars:
            raise T2IError(f"a prompt of {len(p)} characters ({p[:40]!r}...); at most {limits.max_prompt_chars}")
    models = body.get("models", ["default"])
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise T2IError("models must be a list of model ids; pick at least one model")
    if len(models) > limits.max_models or len(set(models)) < len(models):
        raise T2IError(f"{len(models)} models; compare at most {limits.max_models} different models")
    n = _int(body, "n", 4, 1, limits.max_images)
    seed = _int(body, "seed", 0, 0, limits.max_seed - n)
    if len(prompts) * n * len(models) > limits.max_images:
        raise T2IError(f"{len(prompts)} prompt(s) x {n} image(s) x {len(models)} model(s) = "
                       f"{len(prompts) * n * len(models)} images; at most {limits.max_images} per request")
    given = body.get("options", {}) or {}
    if not isinstance(given, dict):
        raise T2IError("options must be an object of option names and values")
    options, used = {}, set()
    for m in models:
        family, defaults = catalog.family(m)
        options[m] = {k: check_option(k, given[k], v) if given.get(k) not in (None, "") else v
                      for k, v in defaults.items()}
        used |= set(defaults)
    if unknown := sorted(set(k for k, v in given.items() if v not in (None, "")) - used):
        raise T2IError(f"option(s) {', '.join(unknown)} belong to none of the chosen models' families")
    embeds = body.get("embeds", []) or []
    if not isinstance(embeds, list) or len(embeds) > limits.max_extras or not all(isinstance(e, str) for e in embeds):
        raise T2IError(f"embeds must be a list of at most {limits.max_extras} embedding ids")
    for e in embeds:
        catalog.path(e)
    extra = {k: body.get(k) or None for k in ("aligner", "rerank_clip")}
    for k, v in extra.items():
        if v is not None and not isinstance(v, str):
            raise T2IError(f"{k} must be an id from the page's list")
        if v is not None:
            catalog.path(v)
    return Request(prompts, models, seed, n, options, tuple(embeds), extra["aligner"], extra["rerank_clip"])


def png_bytes(image, text: dict[str, str]) -> bytes:
    """A uint8 (3, H, W) image as PNG bytes with text chunks."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in text.items():
        info.add_itxt(k, v)
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


@dataclass
class Job:
    """One request's progress and results, shared between the worker and the page's polls."""

    id: str
    request: Request
    state: str = "queued"           # queued, running, done, failed
    status: str = "waiting for the device"
    images: list[dict] = field(default_factory=list)     # per image: model, prompt, seed, verdict, png, size
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    started: float | None = None
    first_image_s: float | None = None

    @property
    def total(self) -> int:
        return len(self.request.prompts) * self.request.n * len(self.request.models)

    def view(self, position: int | None = None) -> dict:
        """What the page shows: state, progress and every finished image (without its bytes)."""
        return {"id": self.id, "state": self.state, "status": self.status, "done": len(self.images),
                "total": self.total, "position": position, "error": self.error, "warnings": self.warnings,
                "models": self.request.models, "prompts": self.request.prompts, "n": self.request.n,
                "first_image_s": self.first_image_s,
                "images": [{k: v for k, v in im.items() if k != "png"} | {"url": f"/api/jobs/{self.id}/images/{i}.png"}
                           for i, im in enumerate(self.images)]}


class Worker:
    """The queue and the one thread that generates on the device."""

    def __init__(self, catalog: Catalog, limits: Limits, device: str = "cpu"):
        self.catalog, self.limits = catalog, limits
        self.cache = PipelineCache(catalog, device)
        self.jobs: dict[str, Job] = {}
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._waiting: list[str] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._oracle = None
        self._thread = threading.Thread(target=self._run, name="t2i-serve-worker", daemon=True)
        self._thread.start()

    def warm(self, model_id: str = "default") -> None:
        """Load a model before the first request (the first image then comes without its loading time)."""
        try:
            self.cache.get(model_id)
        except T2IError:
            pass

    def submit(self, request: Request) -> Job:
        """Queue a request; T2IError when the queue is full."""
        with self._lock:
            if len(self._waiting) >= self.limits.max_queue:
                raise T2IError(f"{len(self._waiting)} requests are already waiting (at most {self.limits.max_queue});"
                               " try again when one has finished")
            job = Job(f"{next(self._ids)}-{int(time.time() * 1000) % 100000:05d}", request)
            self.jobs[job.id] = job
            self._waiting.append(job.id)
            finished = [j for j in self.jobs.values() if j.state in ("done", "failed")]
            for old in finished[:max(0, len(finished) - self.limits.kept_jobs)]:
                del self.jobs[old.id]
        self._queue.put(job)
        return job

    def position(self, job: Job) -> int | None:
        """How many requests are ahead of a queued job (None once it runs)."""
        with self._lock:
            return self._waiting.index(job.id) if job.id in self._waiting else None

    def close(self, timeout: float = 60.0) -> None:
        """Stop the worker after the job it is running (queued ones are dropped). A thread that has run torch must
        end before the interpreter does: torch's exit-time teardown aborts the process under a live one."""
        with self._lock:
            for job_id in self._waiting:
                self.jobs[job_id].state, self.jobs[job_id].error = "failed", "the server is shutting down"
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.state == "failed":   # (dropped by close)
                continue
            with self._lock:
                self._waiting.remove(job.id)
            job.state, job.started = "running", time.time()
            try:
                self._generate(job)
                job.state, job.status = "done", f"{len(job.images)} image(s) in {time.time() - job.started:.1f} s"
            except T2IError as e:
                job.state, job.error = "failed", str(e)
            except Exception as e:   # the server stays up and the page says what happened; the console has more
                traceback.print_exc()
                job.state, job.error = "failed", f"{type(e).__name__}: {e}"

    def _generate(self, job: Job) -> None:
        import torch

        from t2i.text.vocab import vocabulary_warning

        r = job.request
        torch.set_grad_enabled(False)
        for model_id in r.models:
            job.status = f"loading {model_id}"
            options = r.options[model_id]
            pipe = self.cache.get(model_id, r.embeds, r.aligner, r.rerank_clip, options.get("candidates", 1))
            pipe.check_prompts(r.prompts, **options)
            # (The vocabulary is the training captions' words; a Korean prompt is read by a bilingual text encoder or
            # an aligner, not matched against it.)
            english = [p for p in pipe.text_prompts(r.prompts) if not HANGUL.search(p)]
            if warning := vocabulary_warning(english, pipe.meta.get("vocab")):
                job.warnings.append(f"{model_id}: {warning.removeprefix('t2i: warning: ')}")
            for prompt in r.prompts:
                for k in range(r.n):
                    job.status = f"{model_id}: image {len(job.images) + 1} of {job.total}"
                    image = pipe([prompt], [r.seed + k], batch=1, **options)[0]
                    self._publish(job, model_id, prompt, r.seed + k, options, image)

    def _publish(self, job: Job, model_id: str, prompt: str, seed: int, options: dict, image) -> None:
        text = {"prompt": prompt, "seed": str(seed), "model": model_id, "options": json.dumps(options),
                "Software": "t2i serve"}
        job.images.append({"model": model_id, "prompt": prompt, "seed": seed, "size": list(image.shape[1:]),
                           "verdict": self._verdict(prompt, image), "png": png_bytes(image, text)})
        if job.first_image_s is None:
            job.first_image_s = time.time() - job.started

    def _verdict(self, prompt: str, image) -> str | None:
        """The shapes oracle's judgement of an image, when the prompt is a shapes prompt."""
        from t2i.data.shapes import parse_prompt

        scene = parse_prompt(prompt)
        if scene is None:
            return None
        from t2i.data.transforms import to_model
        from t2i.metrics.oracle import predict, verdict
        from t2i.metrics.oracle_trainer import load_oracle

        if self._oracle is None:
            self._oracle = load_oracle()
        return verdict(predict(self._oracle(to_model(image[None])))[0], scene)

    def grid(self, job: Job, model_id: str) -> bytes:
        """One model's images of a job as a PNG grid: a row per prompt, a column per seed (decoded from the kept
        PNGs: a finished job holds only those)."""
        import numpy as np
        import torch
        from PIL import Image

        from t2i.training.run import grid_image

        pngs = [im["png"] for im in job.images if im["model"] == model_id]
        if not pngs:
            raise T2IError(f"job {job.id} has no images of {model_id!r} yet")
        images = [torch.from_numpy(np.array(Image.open(io.BytesIO(b)).convert("RGB"))).permute(2, 0, 1) for b in pngs]
        if len({tuple(t.shape) for t in images}) > 1:
            raise T2IError("the images differ in size; download them one by one")
        buf = io.BytesIO()
        grid_image(torch.stack(images), nrow=job.request.n).save(buf, format="PNG")
        return buf.getvalue()

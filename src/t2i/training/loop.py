"""The one training loop every t2i family uses.

A family says *what* to train (its modules, phases, data and losses); this loop owns *how*:
gradient accumulation, bf16 autocast, multi-process gradient averaging, clipping, EMA, progress
counted in images (kimg) with ticks, snapshots, sample grids and metrics. GANs have four phases
(G main, G reg, D main, D reg, each with its own interval); CLIP, oracle, AR and diffusion have one.

Determinism: at every step the global RNG is reseeded from (seed, step, rank) and the family draws
its batch from a generator keyed the same way, so a run resumed from a snapshot continues exactly as
if it had never stopped, on any number of processes.
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn

from t2i.errors import T2IError
from t2i.training import distributed
from t2i.training.distributed import Dist
from t2i.training.run import RunLog, save_grid
from t2i.training.snapshot import list_snapshots, save_snapshot


@dataclass
class LoopConfig:
    """Options of the shared loop (the CLI's --kimg, --batch, --snap, ...)."""

    kimg: float = 10.0          # train until this many thousand images have been shown
    batch: int = 16             # total batch over all processes
    accum: int = 1              # micro-batches per process and step (gradient accumulation)
    tick_kimg: float = 1.0      # progress line + stats every this many kimg
    snap: int = 5               # snapshot every this many ticks (and at the end); 0 = only at the end
    keep: int = 0               # keep only the newest N snapshots (0 = keep all)
    seed: int = 0
    precision: str = "fp32"     # fp32 | bf16 (autocast; fast on CUDA and on CPUs with AVX512-BF16/AMX only) | auto
    ema_kimg: float = 10.0      # EMA half-life in kimg (for families with EMA modules)
    ema_rampup: float = 0.05    # EMA half-life at most this fraction of images seen so far (0 = off)
    grad_clip: float = 0.0      # max gradient norm per phase (0 = off)
    device: str = "auto"        # auto | cpu | cuda
    metrics: list[str] = field(default_factory=list)  # evaluated at every snapshot


@dataclass
class Phase:
    """One optimisation phase: which module it updates, with which optimizer, how often."""

    name: str
    module: nn.Module
    opt: torch.optim.Optimizer
    interval: int = 1           # run every `interval` steps (lazy regularisation)
    lr_scale: Callable[[int], float] | None = None  # images seen -> factor on the optimizer's base lr


def warmup_cosine(warmup_nimg: float, total_nimg: float, batch: int, floor: float = 0.1) -> Callable[[int], float]:
    """A Phase.lr_scale: linear warm-up over `warmup_nimg` images, then cosine decay to `floor` of the
    base lr at `total_nimg` (the run's planned end), flat after it."""
    total = max(total_nimg, 1.0)

    def scale(nimg: int) -> float:
        if nimg < warmup_nimg:
            return (nimg + batch) / warmup_nimg
        t = min(1.0, (nimg - warmup_nimg) / max(total - warmup_nimg, 1.0))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return scale


class Family(Protocol):
    """What a model family gives the loop."""

    name: str
    modules: dict[str, nn.Module]        # everything saved in a snapshot
    ema: dict[str, str]                  # {"G_ema": "G"}: EMA target <- source

    def phases(self) -> list[Phase]: ...
    def batches(self, step: int, batch: int, rank: int, world: int, seed: int) -> Iterator[dict]: ...
    def loss(self, phase: Phase, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...
    def sample_images(self) -> torch.Tensor: ...
    def real_images(self) -> torch.Tensor: ...
    def meta(self) -> dict[str, Any]: ...


@dataclass
class Progress:
    """Counters saved in the training state."""

    step: int = 0
    nimg: int = 0
    tick: int = 0


def split_batch(batch: dict, parts: int) -> list[dict]:
    """Split a batch dict (tensors and lists along dim 0) into `parts` micro-batches."""
    if parts == 1:
        return [batch]
    out = [dict() for _ in range(parts)]
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            chunks = v.chunk(parts)
        elif isinstance(v, list):
            size = math.ceil(len(v) / parts)
            chunks = [v[i * size:(i + 1) * size] for i in range(parts)]
        else:
            chunks = [v] * parts
        for i, c in enumerate(chunks):
            out[i][k] = c
    return out


def step_seed(seed: int, step: int, rank: int) -> int:
    """The RNG seed of one step on one process."""
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2 ** 63)


@torch.no_grad()
def update_ema(ema: nn.Module, src: nn.Module, beta: float) -> None:
    """ema = beta * ema + (1 - beta) * src for parameters; buffers are copied. One fused update of all parameters
    (a lerp each took 2% of an LDM tiny-preset step on a CPU)."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in src.parameters()], 1 - beta)
    for b_ema, b in zip(ema.buffers(), src.buffers()):
        b_ema.copy_(b)


def ema_beta(cfg: LoopConfig, nimg: int) -> float:
    """EMA decay for one step (half-life in images, ramped up early in training)."""
    half_life = cfg.ema_kimg * 1000
    if cfg.ema_rampup > 0:
        half_life = min(half_life, nimg * cfg.ema_rampup)
    return 0.5 ** (cfg.batch / max(half_life, 1e-8))


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast pays on this device: CUDA with bf16 support, or a CPU with AMX or AVX512-BF16. A CPU
    with neither emulates bf16 arithmetic (there the shapes presets' steps took 1.6x (AttnGAN) to 3x (DALL-E) longer
    than in fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(getattr(torch.cpu, f"_is_{name}_supported", lambda: True)() for name in ("amx_tile", "avx512_bf16"))
    return False


def effective_precision(device: torch.device, precision: str) -> str:
    """`--precision` as the steps run it: auto is bf16 where `fast_bf16`, else fp32 (the config keeps "auto", so a
    resume with the same options is the same run)."""
    return ("bf16" if fast_bf16(device) else "fp32") if precision == "auto" else precision


def slow_bf16_note(device: torch.device, precision: str) -> str | None:
    """A line for the log when bf16 autocast was asked for where it runs slower than fp32 (a CPU without AMX or
    AVX512-BF16)."""
    if precision != "bf16" or device.type != "cpu" or fast_bf16(device):
        return None
    return ("note: this CPU has neither AMX nor AVX512-BF16, so bf16 autocast runs slower than fp32 here "
            "(1.6-3x on the shapes presets); --precision fp32 (or auto) is faster on it")


def memory_gb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak, or the CPU resident-set peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def training_attention(device: torch.device):
    """The context a training step's forward runs in: on a CPU, `scaled_dot_product_attention` (torch's own
    transformer layers call it) takes its math kernel, whose backward runs at plain matmul speed; the default
    flash kernel's backward is far slower there (the small CLIP's training step, bf16, batch 128, one core: 220
    against 300 ms). The UNet's and DALL-E's attentions go further and skip SDPA on a CPU (`t2i.models.ldm.unet`,
    `t2i.models.dalle.transformer`). Other devices keep torch's choice."""
    if device.type != "cpu":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def phase_parameters(phase: Phase) -> list[nn.Parameter]:
    """The parameters a phase trains: its optimizer's."""
    return [p for group in phase.opt.param_groups for p in group["params"]]


def run_phase(family: Family, phase: Phase, micro: list[dict], cfg: LoopConfig, d: Dist,
              trained: list[nn.Module], stats: dict[str, list[float]], nimg: int) -> None:
    """Accumulate one phase's gradients over the micro-batches, average over ranks, step."""
    if phase.lr_scale is not None:
        for group in phase.opt.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * phase.lr_scale(nimg)
    # Only what this phase's optimizer updates needs gradients: the other phases' modules (a GAN's D while G
    # steps) and the frozen parts of this one (a frozen CLIP text tower, DAMSM's Inception trunk) are left out of
    # backward, rather than differentiated and thrown away.
    params = phase_parameters(phase)
    for m in trained:
        m.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    phase.opt.zero_grad(set_to_none=True)
    use_bf16 = effective_precision(d.device, cfg.precision) == "bf16"
    for mb in micro:
        with torch.autocast(device_type=d.device.type, dtype=torch.bfloat16, enabled=use_bf16), \
                training_attention(d.device):
            loss, values = family.loss(phase, mb)
        (loss / len(micro)).backward()
        for k, v in values.items():
            stats.setdefault(k, []).append(float(v.detach().float().mean()))
    distributed.average_gradients(params, d.world)
    for p in params:
        if p.grad is not None:
            torch.nan_to_num_(p.grad, nan=0, posinf=1e5, neginf=-1e5)
    if cfg.grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        stats.setdefault(f"Grad/{phase.name}", []).append(float(norm))
    phase.opt.step()


def training_state(phases: list[Phase], prog: Progress) -> dict[str, Any]:
    """What `--resume` needs beyond the weights: optimizers and counters."""
    return {"progress": asdict(prog), "optimizers": {ph.name: ph.opt.state_dict() for ph in phases}}


def restore_training_state(phases: list[Phase], state: dict[str, Any]) -> Progress:
    """Load optimizer states and counters saved by `training_state`."""
    for ph in phases:
        ph.opt.load_state_dict(state["optimizers"][ph.name])
    return Progress(**state["progress"])


def write_snapshot(family: Family, phases: list[Phase], prog: Progress, cfg: LoopConfig,
                   run_dir: Path, log: RunLog, evaluate: Callable | None) -> Path:
    """Snapshot + sample grid + metrics; prunes old snapshots when cfg.keep is set."""
    kimg = prog.nimg / 1000
    path = save_snapshot(
        run_dir / f"snapshot-{int(round(kimg * 1000)):06d}",
        family.modules,
        {**family.meta(), "kimg": kimg, "loop": asdict(cfg)},
        training_state(phases, prog),
    )
    if hasattr(family, "on_snapshot"):   # files a family writes beside its snapshots (e.g. an inversion's embedding)
        family.on_snapshot(path)
    fakes = family.sample_images()
    if fakes is not None:
        save_grid(fakes, run_dir / f"fakes-{int(round(kimg * 1000)):06d}.png", nrow=8)
    if cfg.keep > 0:
        import shutil

        for old in list_snapshots(run_dir)[:-cfg.keep]:
            shutil.rmtree(old, ignore_errors=True)
    for name in cfg.metrics if evaluate else []:
        t0 = time.time()
        result = evaluate(name, path)
        log.metric(name, kimg, path.name, result)
        log.print(f"metric {name} at {kimg:.1f} kimg ({time.time() - t0:.1f}s): "
                  + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    return path


def train(family: Family, cfg: LoopConfig, run_dir: Path, d: Dist, resume_state: dict | None = None,
          evaluate: Callable[[str, Path], dict] | None = None) -> Progress:
    """Run the loop until cfg.kimg; returns the final counters. Only rank 0 writes files."""
    if cfg.batch < 1 or cfg.accum < 1 or cfg.batch % (d.world * cfg.accum):
        raise T2IError(f"--batch {cfg.batch} must be a positive multiple of processes x --accum "
                       f"({d.world} x {cfg.accum})")
    log = RunLog(run_dir, enabled=d.main)
    phases = family.phases()
    trained = list({id(ph.module): ph.module for ph in phases}.values())
    prog = restore_training_state(phases, resume_state) if resume_state else Progress()
    for m in family.modules.values():
        distributed.broadcast_module(m)
    if d.main and not (run_dir / "reals.png").exists():
        save_grid(family.real_images(), run_dir / "reals.png", nrow=8)   # as the fakes
    batch_rank = cfg.batch // d.world
    total = int(cfg.kimg * 1000)
    tick_nimg = max(1, int(cfg.tick_kimg * 1000))
    data = family.batches(prog.step, batch_rank, d.rank, d.world, cfg.seed)
    bar = _progress_bar(d, total, prog.nimg)
    stats: dict[str, list[float]] = {}
    tick_start_nimg, tick_start_time, start_time = prog.nimg, time.time(), time.time()
    log.print(f"training {family.name} to {cfg.kimg} kimg, batch {cfg.batch} on {d.world} process(es), "
              f"device {d.device}, precision {cfg.precision}"
              + (f" ({effective_precision(d.device, 'auto')})" if cfg.precision == "auto" else "")
              + f", starting at {prog.nimg / 1000:.3f} kimg")
    if note := slow_bf16_note(d.device, cfg.precision):
        log.print(note)
    try:
        while prog.nimg < total:
            torch.manual_seed(step_seed(cfg.seed, prog.step, d.rank))
            micro = split_batch(next(data), cfg.accum)
            for ph in phases:
                if prog.step % ph.interval == 0:
                    run_phase(family, ph, micro, cfg, d, trained, stats, prog.nimg)
            prog.nimg += cfg.batch
            prog.step += 1
            for target, source in family.ema.items():
                update_ema(family.modules[target], family.modules[source], ema_beta(cfg, prog.nimg))
            if bar is not None:
                bar.update(cfg.batch)
            done = prog.nimg >= total
            if prog.nimg >= tick_start_nimg + tick_nimg or done:
                prog.tick += 1
                elapsed = time.time() - tick_start_time
                values = {k: float(distributed.all_reduce_mean(torch.tensor(sum(v) / len(v)), d.world))
                          for k, v in sorted(stats.items())}
                sec_per_kimg = elapsed / max(prog.nimg - tick_start_nimg, 1) * 1000
                values.update({"Timing/sec_per_kimg": sec_per_kimg, "Resources/peak_mem_gb": memory_gb(d.device)})
                log.stats(prog.nimg / 1000, values)
                if bar is not None:
                    bar.set_postfix_str(f"kimg {prog.nimg / 1000:.1f} sec/kimg {sec_per_kimg:.1f} "
                                        f"mem {values['Resources/peak_mem_gb']:.2f}GB", refresh=False)
                log.print(_tick_line(prog, time.time() - start_time, values))
                stats.clear()
                tick_start_nimg, tick_start_time = prog.nimg, time.time()
                if done or (cfg.snap > 0 and prog.tick % cfg.snap == 0):
                    # Buffers a rank updates from its own samples (LAFITE's w_avg) drift apart over ranks. A resume
                    # gives every rank the snapshot's (rank 0's), so the run takes them here too: the ranks agree,
                    # and a resumed run continues exactly on every rank, not only on the one that writes.
                    for m in family.modules.values():
                        distributed.broadcast_buffers(m)
                    if d.main:
                        write_snapshot(family, phases, prog, cfg, run_dir, log, evaluate)
                    tick_start_time = time.time()
    except BaseException as e:   # the run's state for readers of log.txt (`t2i serve`): why it ended
        if bar is not None:
            bar.close()
        reason = " ".join(str(e).split())[:300]   # one line: log.txt is read line by line
        what = "stopped: interrupted" if isinstance(e, KeyboardInterrupt) else f"failed: {type(e).__name__}: {reason}"
        log.print(f"{what} at {prog.nimg / 1000:.3f} kimg")
        log.close()
        raise
    if bar is not None:
        bar.close()
    log.print(f"done: {prog.nimg / 1000:.3f} kimg in {time.time() - start_time:.1f}s")
    log.close()
    return prog


def _progress_bar(d: Dist, total: int, initial: int):
    if not d.main:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", unit_scale=True, dynamic_ncols=True,
                mininterval=1.0, desc="train", leave=False)


def _tick_line(prog: Progress, elapsed: float, values: dict[str, float]) -> str:
    parts = [f"tick {prog.tick:<4d}", f"kimg {prog.nimg / 1000:<8.3f}", f"time {elapsed:<7.1f}s",
             f"sec/kimg {values['Timing/sec_per_kimg']:<7.2f}", f"mem {values['Resources/peak_mem_gb']:.2f}GB"]
    parts += [f"{k} {v:.4g}" for k, v in values.items() if not k.startswith(("Timing/", "Resources/"))]
    return "  ".join(parts)

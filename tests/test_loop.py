"""The shared training loop, on a fake linear-regression family: batches, EMA, accumulation, exact
resume, and the run directory it writes."""

import json
import math

import pytest
import torch
from PIL import Image
from torch import nn

from loop_fakes import LinearFamily
from t2i.errors import T2IError
from t2i.training.distributed import Dist
from t2i.training.loop import (LoopConfig, Phase, effective_precision, ema_beta, slow_bf16_note, split_batch, step_seed,
                               train, update_ema, warmup_cosine)
from t2i.training.snapshot import list_snapshots, load_snapshot, load_training_state


def cfg(**kw) -> LoopConfig:
    base = dict(kimg=0.128, batch=16, tick_kimg=0.032, snap=0, ema_kimg=0.05, device="cpu")
    return LoopConfig(**{**base, **kw})


def params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


# ---------------------------------------------------------------------------------------------
# Pure helpers

@pytest.mark.parametrize("parts", [1, 2, 4])
def test_split_batch_splits_tensors_and_lists_and_keeps_other_values(parts):
    batch = {"x": torch.arange(16).reshape(8, 2), "captions": [f"c{i}" for i in range(8)], "tag": "same"}
    micro = split_batch(batch, parts)
    assert len(micro) == parts
    assert all(len(m["captions"]) == 8 // parts and m["x"].shape == (8 // parts, 2) for m in micro)
    assert torch.equal(torch.cat([m["x"] for m in micro]), batch["x"])
    assert sum((m["captions"] for m in micro), []) == batch["captions"]
    assert all(m["tag"] == "same" for m in micro)
    # Rows stay paired across keys.
    assert all(m["captions"][0] == f"c{int(m['x'][0, 0]) // 2}" for m in micro)


def test_step_seed_differs_per_step_and_rank():
    seeds = {step_seed(0, s, r) for s in range(50) for r in range(4)}
    assert len(seeds) == 200
    assert step_seed(1, 0, 0) != step_seed(0, 0, 0)


def test_ema_beta_half_life_and_rampup():
    c = LoopConfig(batch=16, ema_kimg=10.0, ema_rampup=0.0)
    assert ema_beta(c, 0) == pytest.approx(0.5 ** (16 / 10_000))
    # After one half-life of images, a constant source has pulled the EMA half way.
    assert ema_beta(c, 123) ** (10_000 / 16) == pytest.approx(0.5)
    r = LoopConfig(batch=16, ema_kimg=10.0, ema_rampup=0.05)
    assert ema_beta(r, 1000) == pytest.approx(0.5 ** (16 / 50))         # half-life = 5% of 1000 images
    assert ema_beta(r, 10_000_000) == pytest.approx(0.5 ** (16 / 10_000))  # capped by ema_kimg
    betas = [ema_beta(r, n) for n in (16, 160, 1600, 16_000, 1_000_000)]
    assert betas == sorted(betas) and all(0 <= b < 1 for b in betas)   # slower decay as training goes on


def test_update_ema_lerps_parameters_and_copies_buffers():
    src, ema = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        src.weight.fill_(2.0), src.bias.fill_(-1.0), src.running_mean.fill_(5.0)
        ema.weight.fill_(0.0), ema.bias.fill_(1.0)
    update_ema(ema, src, beta=0.75)
    assert torch.allclose(ema.weight, torch.full((3,), 0.25 * 2.0))          # 0.75 * 0 + 0.25 * 2
    assert torch.allclose(ema.bias, torch.full((3,), 0.75 * 1.0 + 0.25 * -1.0))
    assert torch.equal(ema.running_mean, src.running_mean)
    update_ema(ema, src, beta=0.0)
    assert torch.equal(ema.weight, src.weight)


# ---------------------------------------------------------------------------------------------
# The loop

def test_training_reduces_the_loss_and_updates_ema(tmp_path):
    fam = LinearFamily()
    before = (fam.net(fam.x).squeeze(1) - fam.y).square().mean().item()
    prog = train(fam, cfg(kimg=0.32), tmp_path / "run", Dist())
    after = (fam.net(fam.x).squeeze(1) - fam.y).square().mean().item()
    assert after < 0.1 * before
    assert prog.nimg == 320 and prog.step == 20 and prog.tick == 10
    ema_err = (fam.net_ema(fam.x).squeeze(1) - fam.y).square().mean().item()
    assert ema_err < before and not torch.equal(fam.net_ema.weight, fam.net.weight)


def test_gradient_accumulation_gives_the_same_update(tmp_path):
    runs = []
    for accum in (1, 2, 4):
        fam = LinearFamily(noise=0.0)
        train(fam, cfg(kimg=0.064, accum=accum), tmp_path / f"run{accum}", Dist())
        runs.append(params(fam.net))
    start = params(LinearFamily().net)
    assert not torch.allclose(runs[0][0], start[0])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch, accum", [(15, 2), (0, 1), (16, 0)])
def test_bad_batch_or_accum_is_a_t2ierror(tmp_path, batch, accum):
    with pytest.raises(T2IError, match="--batch"):
        train(LinearFamily(), cfg(batch=batch, accum=accum), tmp_path / "run", Dist())
    assert not (tmp_path / "run").exists()   # rejected before anything is written


def test_seed_changes_the_data_and_noise(tmp_path):
    a, b = LinearFamily(), LinearFamily()
    train(a, cfg(kimg=0.032, seed=0), tmp_path / "a", Dist())
    train(b, cfg(kimg=0.032, seed=1), tmp_path / "b", Dist())
    assert not torch.equal(a.net.weight, b.net.weight)


def warmup(nimg: int) -> float:
    return min(1.0, (nimg + 1) / 100)


def resume(run_dir, c: LoopConfig) -> tuple[LinearFamily, object]:
    """What `t2i train --resume` does: rebuild, load the newest snapshot's weights and state, train."""
    snap = load_snapshot(run_dir, family="linear")
    fam = LinearFamily(lr_scale=warmup)
    for name, module in fam.modules.items():
        module.load_state_dict(snap.state_dict(name))
    prog = train(fam, c, run_dir, Dist(), resume_state=load_training_state(snap.path))
    return fam, prog


def test_exact_resume_is_bitwise_identical(tmp_path):
    """Half the images, then resume to the end == all at once (with noise, momentum, EMA, lr warm-up)."""
    whole = LinearFamily(lr_scale=warmup)
    prog_whole = train(whole, cfg(kimg=0.128), tmp_path / "whole", Dist())

    first = LinearFamily(lr_scale=warmup)
    train(first, cfg(kimg=0.064), tmp_path / "split", Dist())
    resumed, prog_resumed = resume(tmp_path / "split", cfg(kimg=0.128))

    for name in ("net", "net_ema"):
        for a, b in zip(whole.modules[name].state_dict().values(), resumed.modules[name].state_dict().values()):
            assert torch.equal(a, b), name
    assert (prog_resumed.nimg, prog_resumed.step, prog_resumed.tick) == (prog_whole.nimg, prog_whole.step,
                                                                          prog_whole.tick)
    assert load_snapshot(tmp_path / "split").meta["kimg"] == load_snapshot(tmp_path / "whole").meta["kimg"] == 0.128
    # The resumed run appended to the same files: ticks continue from 0.064 kimg.
    kimgs = [json.loads(line)["kimg"] for line in (tmp_path / "split" / "stats.jsonl").read_text().splitlines()]
    assert kimgs == [0.032, 0.064, 0.096, 0.128]


def test_resume_without_optimizer_state_is_not_exact(tmp_path):
    """Guards the test above: dropping the momentum buffers (a fine-tune) does change the result."""
    whole = LinearFamily()
    train(whole, cfg(kimg=0.128), tmp_path / "whole", Dist())
    train(LinearFamily(), cfg(kimg=0.064), tmp_path / "split", Dist())
    snap = load_snapshot(tmp_path / "split")
    state = load_training_state(snap.path)
    state["optimizers"]["main"]["state"] = {}
    fam = LinearFamily()
    for name, module in fam.modules.items():
        module.load_state_dict(snap.state_dict(name))
    train(fam, cfg(kimg=0.128), tmp_path / "split", Dist(), resume_state=state)
    assert not torch.equal(fam.net.weight, whole.net.weight)


def test_run_directory_contents(tmp_path):
    run = tmp_path / "00000-toy"
    train(LinearFamily(), cfg(kimg=0.096, snap=1), run, Dist())
    names = {p.name for p in run.iterdir()}
    assert {"log.txt", "stats.jsonl", "reals.png"} <= names
    assert {"snapshot-000032", "snapshot-000064", "snapshot-000096"} <= names
    assert {"fakes-000032.png", "fakes-000064.png", "fakes-000096.png"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)

    lines = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [line["kimg"] for line in lines] == [0.032, 0.064, 0.096]   # one line per tick
    for line in lines:
        assert math.isfinite(line["Loss/mse"]) and line["Timing/sec_per_kimg"] > 0
        assert line["Resources/peak_mem_gb"] > 0
    assert lines[-1]["Loss/mse"] < lines[0]["Loss/mse"]

    log = (run / "log.txt").read_text()
    assert "training linear to 0.096 kimg" in log
    assert sum(line.startswith("tick ") for line in log.splitlines()) == 3
    assert "done: 0.096 kimg" in log

    with Image.open(run / "reals.png") as reals:
        assert reals.size == (32, 8)  # 4 images of 8px in one row (up to 8 a row, as the fakes)
    snap = load_snapshot(run / "snapshot-000064")
    assert snap.meta["kimg"] == 0.064 and snap.meta["loop"]["batch"] == 16 and snap.meta["family"] == "linear"
    assert load_training_state(snap.path)["progress"] == {"step": 4, "nimg": 64, "tick": 2}


def test_snap_interval_and_no_fakes_when_the_family_has_no_samples(tmp_path):
    run = tmp_path / "run"
    train(LinearFamily(samples=False), cfg(kimg=0.128, snap=3), run, Dist())
    assert [p.name for p in list_snapshots(run)] == ["snapshot-000096", "snapshot-000128"]  # tick 3 + end
    assert not list(run.glob("fakes-*.png"))


def test_keep_prunes_old_snapshots(tmp_path):
    run = tmp_path / "run"
    train(LinearFamily(), cfg(kimg=0.128, snap=1, keep=2), run, Dist())
    assert [p.name for p in list_snapshots(run)] == ["snapshot-000096", "snapshot-000128"]
    assert not list(run.glob("snapshot-000032*")) and not list(run.glob(".snapshot*"))


def test_metrics_are_evaluated_at_every_snapshot(tmp_path):
    run = tmp_path / "run"
    calls = []

    def evaluate(name, path):
        calls.append((name, path.name))
        return {"score": float(len(calls)), "n": 3}

    train(LinearFamily(), cfg(kimg=0.064, snap=1, metrics=["toy"]), run, Dist(), evaluate=evaluate)
    assert calls == [("toy", "snapshot-000032"), ("toy", "snapshot-000064")]
    lines = [json.loads(line) for line in (run / "metric-toy.jsonl").read_text().splitlines()]
    assert [(m["kimg"], m["snapshot"], m["results"]) for m in lines] == [
        (0.032, "snapshot-000032", {"score": 1.0, "n": 3}), (0.064, "snapshot-000064", {"score": 2.0, "n": 3})]


def test_lr_scale_multiplies_the_base_learning_rate(tmp_path):
    """First SGD step (momentum buffer = gradient): the update is lr * lr_scale(nimg) * gradient."""
    start = params(LinearFamily().net)
    steps = {}
    for scale in (1.0, 0.25):
        fam = LinearFamily(noise=0.0, lr_scale=lambda nimg, s=scale: s)
        train(fam, cfg(kimg=0.016), tmp_path / f"run{scale}", Dist())
        steps[scale] = [a - b for a, b in zip(params(fam.net), start)]
    for full, quarter in zip(steps[1.0], steps[0.25]):
        assert torch.allclose(quarter, 0.25 * full, rtol=1e-5, atol=1e-7)
    seen = []
    fam = LinearFamily(lr_scale=lambda nimg: seen.append(nimg) or 0.5)
    train(fam, cfg(kimg=0.048), tmp_path / "r", Dist())
    assert seen == [0, 16, 32]                                        # images seen before each step
    assert fam.opt.param_groups[0]["lr"] == pytest.approx(0.025)      # base lr x scale, not compounded


def test_warmup_cosine_ramps_up_then_decays_to_the_floor():
    s = warmup_cosine(100, 1100, batch=10)
    assert s(0) == pytest.approx(0.1) and s(90) == pytest.approx(1.0)          # (nimg + batch) / warm-up
    assert s(100) == pytest.approx(1.0) and s(600) == pytest.approx(0.55)      # half-way: (1 + 0.1) / 2
    assert s(1100) == pytest.approx(0.1) and s(5000) == pytest.approx(0.1)     # floor at and after the end
    no_warmup = warmup_cosine(0, 1000, batch=10, floor=0.0)
    assert no_warmup(0) == pytest.approx(1.0) and no_warmup(1000) == pytest.approx(0.0, abs=1e-12)
    values = [no_warmup(n) for n in range(0, 1001, 50)]
    assert values == sorted(values, reverse=True)


def test_grad_clip_bounds_the_update_and_is_logged(tmp_path):
    fam = LinearFamily(noise=0.0, lr=1.0)
    start = params(fam.net)
    train(fam, cfg(kimg=0.016, grad_clip=1e-3), tmp_path / "run", Dist())
    step = torch.cat([(a - b).flatten() for a, b in zip(params(fam.net), start)])
    assert step.norm() <= 1e-3 * (1 + 1e-5)  # SGD lr 1 on the first step: update = clipped gradient
    line = json.loads((tmp_path / "run" / "stats.jsonl").read_text().splitlines()[0])
    assert line["Grad/main"] > 1e-3   # the logged norm is the one before clipping


class FrozenPartFamily(LinearFamily):
    """The trained module holds a frozen feature layer in front of the fitted head (as LDM holds a frozen CLIP text
    tower, DAMSM a frozen Inception trunk); the optimizer has the head only."""

    def __init__(self):
        super().__init__(noise=0.0)
        self.features = nn.Linear(4, 4).requires_grad_(False)
        self.model = nn.Sequential(self.features, self.net)
        self.modules, self.ema = {"model": self.model}, {}

    def phases(self) -> list[Phase]:
        return [Phase("main", self.model, torch.optim.SGD(self.net.parameters(), lr=self.lr))]

    def loss(self, phase, batch):
        loss = (self.model(batch["x"]).squeeze(1) - batch["y"]).square().mean()
        return loss, {"Loss/mse": loss.detach()}


def test_frozen_parameters_of_a_trained_module_get_no_gradient(tmp_path):
    fam = FrozenPartFamily()
    frozen, head = params(fam.features), params(fam.net)
    train(fam, cfg(kimg=0.016, tick_kimg=0.016, grad_clip=1e9), tmp_path / "run", Dist())   # one step
    assert all(p.grad is None and not p.requires_grad for p in fam.features.parameters())
    assert all(torch.equal(a, b) for a, b in zip(params(fam.features), frozen))
    assert not torch.equal(params(fam.net)[0], head[0])
    # The clipped (and logged) norm is the head's alone: the step's gradients are still on it.
    line = json.loads((tmp_path / "run" / "stats.jsonl").read_text().splitlines()[0])
    head_norm = torch.cat([p.grad.flatten() for p in fam.net.parameters()]).norm().item()
    assert line["Grad/main"] == pytest.approx(head_norm, rel=1e-5)


class AttentionFamily(LinearFamily):
    """Attention over the inputs in the loss; records which kernel's backward the step built."""

    def __init__(self):
        super().__init__(noise=0.0)
        self.kernels = []

    def loss(self, phase, batch):
        x = self.net.weight * batch["x"]                                   # (B, 4), differentiable
        q = x.view(len(x), 1, 4, 1).repeat(1, 2, 1, 2)                     # (B, heads, T, d)
        y = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        self.kernels.append(y.grad_fn.name())
        loss = (y.sum((1, 2, 3)) - batch["y"]).square().mean()
        return loss, {"Loss/mse": loss.detach()}


def test_training_attention_on_a_cpu_is_the_math_kernel(tmp_path):
    """torch's flash kernel's backward is slow on a CPU: a training step there takes SDPA's math kernel."""
    fam = AttentionFamily()
    train(fam, cfg(kimg=0.032), tmp_path / "run", Dist())
    assert len(fam.kernels) == 2 and not any("Flash" in k for k in fam.kernels)
    q = torch.randn(1, 2, 4, 2, requires_grad=True)   # outside training torch's default is left alone
    assert "Flash" in torch.nn.functional.scaled_dot_product_attention(q, q, q).grad_fn.name()


def test_slow_bf16_note_only_for_bf16_on_a_cpu_without_bf16_hardware(monkeypatch):
    cpu = torch.device("cpu")
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert "--precision fp32" in slow_bf16_note(cpu, "bf16")
    assert slow_bf16_note(cpu, "fp32") is None and slow_bf16_note(torch.device("cuda"), "bf16") is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert slow_bf16_note(cpu, "bf16") is None


def test_precision_auto_is_bf16_only_where_it_is_fast(monkeypatch):
    cpu = torch.device("cpu")
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert effective_precision(cpu, "auto") == "fp32"
    assert effective_precision(cpu, "bf16") == "bf16" and effective_precision(cpu, "fp32") == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert effective_precision(cpu, "auto") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert effective_precision(torch.device("cuda"), "auto") == "fp32"


class AutocastFamily(LinearFamily):
    """Records whether each step's loss ran under CPU bf16 autocast."""

    def __init__(self):
        super().__init__()
        self.autocast = []

    def loss(self, phase, batch):
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return super().loss(phase, batch)


@pytest.mark.parametrize("fast", [False, True])
def test_the_loop_steps_in_the_precision_auto_resolves_to(tmp_path, monkeypatch, fast):
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: fast, raising=False)
    fam = AutocastFamily()
    train(fam, cfg(kimg=0.032, precision="auto"), tmp_path / "run", Dist())
    assert fam.autocast == [fast, fast]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert f"precision auto ({'bf16' if fast else 'fp32'})" in log

"""LAFITE networks and objective: fused vs reference paths, shapes, per-sample conditioning, pseudo
text features, condition mixing, R1, InfoNCE, and a short training run."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from t2i.clip.loss import info_nce
from t2i.models.mode_seeking import mode_seeking
from t2i.models.lafite.networks import PRESETS, Discriminator, Generator, modulated_conv2d
from t2i.models.lafite.objective import (
    LafiteLoss,
    LossWeights,
    mix_conditions,
    nearest_fake_pull,
    perturbed_text_features,
    pseudo_text_features,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("k", [1, 3])
def test_fused_modulated_conv_matches_reference(demodulate, k):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, 8, generator=g)
    weight = torch.randn(7, 5, k, k, generator=g)
    styles = torch.randn(3, 5, generator=g) + 1.0
    fused = modulated_conv2d(x, weight, styles, demodulate=demodulate, fused=True)
    ref = modulated_conv2d(x, weight, styles, demodulate=demodulate, fused=False)
    assert fused.shape == (3, 7, 8, 8)
    assert torch.allclose(fused, ref, atol=1e-5, rtol=1e-5)
    # Per-sample: sample 0 alone gives the same result as inside the batch.
    alone = modulated_conv2d(x[:1], weight, styles[:1], demodulate=demodulate, fused=True)
    assert torch.allclose(alone, fused[:1], atol=1e-5)


def test_demodulation_normalises_output_channels():
    """With demodulation, a unit-variance input gives unit-variance outputs whatever the styles' scale."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 64, 16, 16, generator=g)
    weight = torch.randn(8, 64, 1, 1, generator=g)
    out = modulated_conv2d(x, weight, torch.full((2, 64), 30.0), demodulate=True)
    assert out.std().item() == pytest.approx(1.0, rel=0.1)


def make_G(fused: bool, seed: int = 0) -> Generator:
    cfg = copy.deepcopy(PRESETS["test"])
    cfg.fused_modconv = fused
    torch.manual_seed(seed)
    return Generator(cfg)


def test_generator_fused_and_reference_paths_agree():
    G_fused = make_G(True)
    G_ref = make_G(False, seed=1)
    G_ref.load_state_dict(G_fused.state_dict())
    z, c = torch.randn(4, 8), F.normalize(torch.randn(4, 16), dim=-1)
    a, b = G_fused(z, c, noise="none"), G_ref(z, c, noise="none")
    assert torch.allclose(a, b, atol=1e-5)


def test_generator_output_shape_and_conditioning():
    G = make_G(True)
    z, c = torch.randn(4, 8), F.normalize(torch.randn(4, 16), dim=-1)
    img = G(z, c, noise="none")
    assert img.shape == (4, 3, 16, 16) and img.dtype == torch.float32 and torch.isfinite(img).all()
    assert img.abs().max() < 10          # near the [-1, 1] image range at initialisation
    assert torch.equal(G(z, c, noise="none"), img)                        # deterministic without noise
    assert not torch.allclose(G(z, c.roll(1, 0), noise="none"), img)      # the condition matters
    # Truncation 0 collapses every z onto w_avg: images then depend only on c.
    G.mapping.w_avg.normal_()
    with torch.no_grad():
        t0 = G(z, c[:1].expand(4, -1), truncation=0.0, noise="none")
    assert torch.allclose(t0, t0[:1].expand_as(t0), atol=1e-6)


def test_discriminator_outputs_and_per_sample_projection():
    cfg = copy.deepcopy(PRESETS["test"])
    torch.manual_seed(0)
    D = Discriminator(cfg)
    img = torch.rand(4, 3, 16, 16) * 2 - 1
    c = F.normalize(torch.randn(4, cfg.c_dim), dim=-1)
    with torch.no_grad():
        logit, fts = D(img, c)
    assert logit.shape == (4,) and fts.shape == (4, cfg.c_dim)
    # The projection term is per sample: changing sample 2's condition changes only logit 2 ...
    c2 = c.clone()
    c2[2] = -c2[2]
    with torch.no_grad():
        logit2, fts2 = D(img, c2)
    assert torch.equal(fts2, fts)
    changed = ~torch.isclose(logit2, logit, atol=1e-6)
    assert changed.tolist() == [False, False, True, False]
    # ... by exactly <d_fts_2, c2_2 - c_2>.
    assert logit2[2] - logit[2] == pytest.approx(float((fts[2] * (c2[2] - c[2])).sum()), abs=1e-5)


def test_discriminator_without_the_projection_term_ignores_the_condition_in_its_logit():
    cfg = copy.deepcopy(PRESETS["test"])
    cfg.projection = False
    D = Discriminator(cfg)
    img = torch.rand(4, 3, 16, 16) * 2 - 1
    c = F.normalize(torch.randn(4, cfg.c_dim), dim=-1)
    with torch.no_grad():
        (logit, fts), (logit2, fts2) = D(img, c), D(img, -c)
    assert torch.equal(logit, logit2) and torch.equal(fts, fts2)   # (fts still feed itd)


def test_packed_discriminator_judges_pack_mates_together_and_keeps_per_sample_features():
    cfg = copy.deepcopy(PRESETS["test"])
    cfg.mbstd_group = 1      # no batch statistic: only the pack couples samples
    torch.manual_seed(0)
    img = torch.rand(4, 3, 16, 16) * 2 - 1
    c = F.normalize(torch.randn(4, cfg.c_dim), dim=-1)
    moved = img.clone()
    moved[2] = -moved[2]
    changes = {}
    for pack in (1, 2):
        cfg.pack = pack
        torch.manual_seed(0)
        D = Discriminator(cfg)
        with torch.no_grad():
            (logit, fts), (logit2, fts2) = D(img, c), D(moved, c)
        changes[pack] = (~torch.isclose(logit2, logit, atol=1e-6)).tolist()
        assert torch.equal(fts2[[0, 1, 3]], fts[[0, 1, 3]])    # d_fts (projection, itd) stay per sample
    # Packs are samples (i, i + B/2): moving sample 2 changes its own logit and its mate 0's, no other.
    assert changes == {1: [False, False, True, False], 2: [True, False, True, False]}
    with pytest.raises(ValueError, match="multiple"):
        D(img[:3], c[:3])


def test_z_dim_projection_and_mapping_lr_options_build_the_networks_and_a_resume_may_not_change_them(
        shapes16, clip_run, tmp_path, cli_error):
    from conftest import cli
    from t2i.training.snapshot import load_snapshot

    cli("train", "lafite", "--data", shapes16, "--clip", clip_run, "--preset", "test", "--kimg", 0.016,
        "--z_dim", 12, "--projection", 0, "--mapping_lr_mul", 0.1, "--outdir", tmp_path)
    (run,) = tmp_path.glob("*-lafite-test")
    snap = load_snapshot(run)
    assert snap.meta["net"]["z_dim"] == 12 and snap.meta["net"]["projection"] is False
    assert snap.meta["net"]["mapping_lr_mul"] == 0.1
    assert snap.state_dict("G")["mapping.layers.0.weight"].shape[1] == 12 + PRESETS["test"].w_dim
    message = cli_error("train", "lafite", "--data", shapes16, "--clip", clip_run, "--preset", "test",
                        "--kimg", 0.032, "--z_dim", 8, "--projection", 0, "--resume", run, "--outdir", tmp_path)
    assert "--z_dim 8" in message and "z_dim 12" in message


def test_pack_and_imle_options_train_and_a_batch_the_pack_cannot_split_is_named(
        shapes16, clip_run, tmp_path, cli_error):
    from conftest import cli
    from t2i.training.snapshot import load_snapshot

    cli("train", "lafite", "--data", shapes16, "--clip", clip_run, "--preset", "test", "--kimg", 0.016,
        "--pack", 2, "--imle_weight", 1, "--outdir", tmp_path / "ok")
    (run,) = (tmp_path / "ok").glob("*-lafite-test")
    snap = load_snapshot(run)
    assert snap.meta["net"]["pack"] == 2 and "pack_head.0.weight" in snap.state_dict("D")
    assert "Loss/G/imle" in (run / "stats.jsonl").read_text()     # the IMLE term ran too
    message = cli_error("train", "lafite", "--data", shapes16, "--clip", clip_run, "--preset", "test",
                        "--kimg", 0.032, "--pack", 4, "--resume", run, "--outdir", tmp_path / "ok")
    assert "--pack 4" in message and "pack 2" in message
    message = cli_error("train", "lafite", "--data", shapes16, "--clip", clip_run, "--preset", "test",
                        "--kimg", 0.016, "--pack", 3, "--outdir", tmp_path / "bad")
    assert "--pack" in message and "8" in message


def test_nearest_fake_pull_pulls_only_the_nearest_of_k_fakes_towards_each_real():
    class ColourG(nn.Module):
        """A flat image whose colour is z's first three numbers (the condition is ignored)."""

        cfg = type("cfg", (), {"z_dim": 3})

        def forward(self, z, c):
            return z[:, :, None, None].expand(-1, -1, 8, 8)

    real = torch.zeros(2, 3, 8, 8)
    real[1] += 1.0
    torch.manual_seed(0)
    z = torch.randn(2 * 5, 3).requires_grad_(True)
    torch.manual_seed(0)
    with torch.no_grad():
        value = nearest_fake_pull(ColourG(), real, torch.zeros(2, 4), k=5, pool=4, n=2)
    # By hand: fakes 0-4 belong to real 0, 5-9 to real 1; the nearest of each group in mean squared distance.
    d = (z.detach()[:, None, :] - real[:, :, 0, 0].repeat_interleave(5, 0)[:, None, :]).square().mean(-1).view(2, 5)
    assert value == pytest.approx(float(d.min(1).values.mean()), rel=1e-5)
    # Only the nearest fake of each real gets a gradient.
    G = ColourG()
    G.forward = lambda zz, c: z[:, :, None, None].expand(-1, -1, 8, 8)
    nearest_fake_pull(G, real, torch.zeros(2, 4), k=5, pool=4, n=2).backward()
    moved = (z.grad.abs().sum(1) > 0).view(2, 5)
    assert moved.sum(1).tolist() == [1, 1] and moved.float().argmax(1).tolist() == d.argmin(1).tolist()


def test_pseudo_text_features_have_the_papers_cosine():
    torch.manual_seed(0)
    f = torch.randn(2000, 256) * 5.0
    p = pseudo_text_features(f)
    assert torch.allclose(p.norm(dim=-1), torch.ones(2000), atol=1e-5)
    cos = F.cosine_similarity(p, f, dim=-1)
    assert cos.mean().item() == pytest.approx(0.32, abs=0.02)   # xi = 3 in Sec. 3.2 of the paper
    t = perturbed_text_features(f)
    assert torch.allclose(t.norm(dim=-1), torch.ones(2000), atol=1e-5)
    assert F.cosine_similarity(t, f, dim=-1).mean() > 0.99


def test_mix_conditions_uses_only_the_chosen_source():
    img = F.normalize(torch.randn(16, 32), dim=-1)
    txt_a, txt_b = F.normalize(torch.randn(16, 32), dim=-1), F.normalize(torch.randn(16, 32), dim=-1)

    def mix(i, t, p):
        torch.manual_seed(3)
        return mix_conditions(i, t, p)

    assert torch.equal(mix(img, txt_a, 1.0), mix(img, txt_b, 1.0))       # language-free: no text used
    assert not torch.equal(mix(img, txt_a, 1.0), mix(img.roll(1, 0), txt_a, 1.0))
    other_img = F.normalize(torch.randn(16, 32), dim=-1)
    assert torch.equal(mix(img, txt_a, 0.0), mix(other_img, txt_a, 0.0))  # supervised: no image used
    assert (F.cosine_similarity(mix(img, txt_a, 0.0), txt_a) > 0.9).all()
    half = mix(img, txt_a, 0.5)                                            # a per-sample choice
    from_text = F.cosine_similarity(half, txt_a) > 0.9
    assert 0 < int(from_text.sum()) < 16
    assert torch.allclose(half.norm(dim=-1), torch.ones(16), atol=1e-5)


class LinearD(nn.Module):
    """D(x, c) = <a, x> (+ <0, c>): the input gradient is a, so R1 = ||a||^2 exactly."""

    def __init__(self, scale: float):
        super().__init__()
        self.a = nn.Parameter(torch.linspace(-1, 1, 3 * 4 * 4).reshape(3, 4, 4) * scale)

    def forward(self, x, c):
        return (x * self.a).sum([1, 2, 3]), torch.zeros(len(x), c.shape[1])


def test_r1_penalty_is_the_squared_input_gradient():
    real, c = torch.randn(5, 3, 4, 4), torch.randn(5, 6)
    w = LossWeights(gamma=0.4)
    loss, stats = LafiteLoss(None, LinearD(1.0), None, w).d_reg(c, real, interval=16)
    expected = float(LinearD(1.0).a.detach().square().sum())
    assert float(stats["Loss/D/r1"]) == pytest.approx(expected, rel=1e-5)
    assert loss.item() == pytest.approx(expected * 0.4 / 2 * 16, rel=1e-5)
    loss.backward()  # differentiable w.r.t. D's parameters (double backward)
    zero, stats0 = LafiteLoss(None, LinearD(0.0), None, w).d_reg(c, real, interval=16)
    assert zero.item() == 0.0 and float(stats0["Loss/D/r1"]) == 0.0   # a D that ignores its input


def test_r1_penalty_on_the_real_discriminator_is_positive():
    cfg = copy.deepcopy(PRESETS["test"])
    torch.manual_seed(0)
    D = Discriminator(cfg)
    loss, stats = LafiteLoss(None, D, None, LossWeights()).d_reg(torch.randn(4, 16), torch.rand(4, 3, 16, 16), 16)
    assert loss.item() > 0 and math.isfinite(loss.item())
    loss.backward()  # (the last layers' biases do not affect the input gradient: no grad there)
    assert D.fromrgb.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in D.parameters() if p.grad is not None)


def test_path_length_regulariser_is_finite_and_tracks_its_mean():
    G = make_G(True)
    objective = LafiteLoss(G, None, None, LossWeights(pl_weight=2.0))
    loss, stats = objective.g_reg(torch.randn(4, 8), F.normalize(torch.randn(4, 16), dim=-1), interval=4)
    assert math.isfinite(loss.item()) and loss.item() >= 0
    assert float(objective.pl_mean) > 0
    loss.backward()
    assert G.mapping.layers[0].weight.grad is not None


class ShiftG(nn.Module):
    """G(z, c) = a * mean(z) + c[:, :1], broadcast to (B, 3, 4, 4): `a` says how much it uses z."""

    def __init__(self, a: float):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))

    def forward(self, z, c, track_w_avg=False):
        return (self.a * z.mean(1, keepdim=True) + c[:, :1])[:, :, None, None].expand(-1, 3, 4, 4)


def test_mode_seeking_term_is_the_inverse_image_to_latent_distance_ratio():
    torch.manual_seed(0)
    z, c = torch.randn(8, 16), torch.randn(8, 4)
    assert mode_seeking(ShiftG(0.0), ShiftG(0.0)(z, c), z, c).item() == pytest.approx(1e5)   # ignores z: 1 / eps
    G = ShiftG(2.0)
    ms = mode_seeking(G, G(z, c), z, c)
    assert 0 < ms.item() < 1e3
    ms.backward()
    assert G.a.grad < 0   # lowering the term means using z more
    loss, stats = LafiteLoss(G, lambda img, c: (img.mean([1, 2, 3]), c), None,
                             LossWeights(itd=0, itc=0, ms_weight=0.5)).g_main(z, c)
    assert "Loss/G/ms" in stats and math.isfinite(loss.item())


def test_itd_g_sets_the_generators_weight_on_itd_and_leaves_the_discriminators():
    torch.manual_seed(0)
    z, c, real = torch.randn(8, 16), F.normalize(torch.randn(8, 4), dim=-1), torch.randn(8, 3, 4, 4)
    G = ShiftG(2.0)
    D = lambda img, c: (img.mean([1, 2, 3]), img.flatten(1)[:, :4] + c)   # noqa: E731
    itd = {}
    for itd_g in (-1.0, 0.0, 3.0):
        loss = LafiteLoss(G, D, None, LossWeights(itd=2.0, itd_g=itd_g, itc=0))
        torch.manual_seed(1)
        (g, gs), (d, ds) = loss.g_main(z, c), loss.d_main(z, c, real)
        assert ds["Loss/D/itd"] > 0 and d.item() == pytest.approx(ds["Loss/D/adv"].item() + 2 * ds["Loss/D/itd"].item())
        itd[itd_g] = (g - gs["Loss/G/adv"]).item(), gs.get("Loss/G/itd")
    assert itd[0.0] == (pytest.approx(0.0), None)                       # G not asked to make D read its prompt
    assert itd[-1.0][0] == pytest.approx(2 * itd[-1.0][1].item())        # -1: the same weight as D's (--itd)
    assert itd[3.0][0] == pytest.approx(3 * itd[3.0][1].item())


def test_mode_seeking_cap_and_pooling():
    torch.manual_seed(0)
    z, c = torch.randn(8, 16), torch.randn(8, 4)
    G = ShiftG(50.0)                                   # images far apart: the cap holds the term at 1 / tau
    ms = mode_seeking(G, G(z, c), z, c, tau=0.1)
    assert ms.item() == pytest.approx(10.0, rel=1e-3)
    ms.backward()
    assert G.a.grad == 0                               # and pushes them no further
    G.a.grad = None
    mode_seeking(G, G(z, c), z, c).backward()
    assert G.a.grad < 0                                # without the cap it still pushes

    checker = (torch.arange(4)[:, None] + torch.arange(4)[None]) % 2 * 2.0 - 1  # 4x4 of +-1, mean 0 per 2x2

    def fine_g(z, c, track_w_avg=False):               # z moves only pixel-level detail
        return (z.mean(1)[:, None, None, None] * checker).expand(-1, 3, 4, 4)
    assert mode_seeking(fine_g, fine_g(z, c), z, c).item() < 100
    assert mode_seeking(fine_g, fine_g(z, c), z, c, pool=2).item() == pytest.approx(1e5)  # layout unchanged


def test_mode_seeking_clip_counts_a_changed_pixel_alike_however_far_its_colour_moves():
    z, c = torch.zeros(2, 4), torch.zeros(2, 1)
    colour = {"near": 0.1, "far": 0.5}

    def g_for(shift):
        def g(z2, c2, track_w_avg=False):              # the second latent moves every pixel by `shift`
            return torch.full((len(z2), 3, 4, 4), shift)
        return g

    def term(shift, **kw):
        torch.manual_seed(0)                           # (the same second latent each time)
        return mode_seeking(g_for(shift), torch.zeros(2, 3, 4, 4), z, c, **kw).item()
    plain = {k: term(v) for k, v in colour.items()}
    saturated = {k: term(v, clip=0.08) for k, v in colour.items()}
    assert plain["near"] == pytest.approx(5 * plain["far"], rel=1e-3)      # L1: the far colour is worth 5x
    assert saturated["near"] == pytest.approx(saturated["far"])             # saturated: a change is a change
    assert saturated["far"] == pytest.approx(plain["far"] * 0.5 / 0.08, rel=1e-3)


def test_info_nce_matches_hand_computed_cross_entropy():
    a = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=-1)
    b = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0], [-1.0, 0.2]]), dim=-1)
    temp = 0.5
    sims = [[sum(x * y for x, y in zip(ai, bj)) / temp for bj in b.tolist()] for ai in a.tolist()]

    def ce(rows):  # mean over i of -log softmax(rows[i])[i]
        return sum(math.log(sum(math.exp(v) for v in r)) - r[i] for i, r in enumerate(rows)) / len(rows)

    cols = [list(col) for col in zip(*sims)]
    expected = 0.5 * (ce(sims) + ce(cols))
    assert float(info_nce(a, b, temp)) == pytest.approx(expected, rel=1e-6)
    # positives = identity is the same loss.
    assert float(info_nce(a, b, temp, positives=torch.eye(3, dtype=torch.bool))) == pytest.approx(expected, rel=1e-6)


def test_info_nce_with_duplicate_captions():
    """Rows 0 and 1 share a caption: each image's target is spread over both columns."""
    a = F.normalize(torch.tensor([[1.0, 0.2], [0.9, -0.3], [-0.5, 1.0]]), dim=-1)
    b = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    temp = 0.25
    pos = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    sims = [[sum(x * y for x, y in zip(ai, bj)) / temp for bj in b.tolist()] for ai in a.tolist()]

    def direction(rows):
        total = 0.0
        for i, r in enumerate(rows):
            lse = math.log(sum(math.exp(v) for v in r))
            targets = [j for j in range(3) if pos[i, j]]
            total += sum(lse - r[j] for j in targets) / len(targets)
        return total / len(rows)

    expected = 0.5 * (direction(sims) + direction([list(c) for c in zip(*sims)]))
    assert float(info_nce(a, b, temp, positives=pos)) == pytest.approx(expected, rel=1e-6)


def test_training_run_has_finite_losses_in_every_phase(lafite_run):
    lines = [json.loads(line) for line in (lafite_run / "stats.jsonl").read_text().splitlines()]
    assert [line["kimg"] for line in lines] == [0.016, 0.032]
    g_main = {"Loss/G/adv", "Loss/G/itd", "Loss/G/itc", "Scores/fake"}
    d_main = {"Loss/D/adv", "Loss/D/itd", "Scores/real"}
    for line in lines:
        assert g_main | d_main <= line.keys()
        assert all(math.isfinite(v) for k, v in line.items() if k != "timestamp")
    assert "Loss/D/r1" in lines[0]               # D_reg runs on step 0, then every 16 steps
    assert lines[0]["Loss/D/r1"] > 0
    assert "Loss/G/pl" not in lines[0]           # G_reg is off with pl_weight 0
    names = {p.name for p in lafite_run.iterdir()}
    assert {"config.json", "log.txt", "reals.png", "fakes-000016.png", "fakes-000032.png",
            "snapshot-000016", "snapshot-000032"} <= names
    config = json.loads((lafite_run / "config.json").read_text())
    assert config["family"] == "lafite" and config["loop"]["batch"] == 8 and config["config"]["preset"] == "test"

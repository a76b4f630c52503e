"""AttnGAN: stage shapes, the word attention, CA's KL, the D and G loss terms, `t2i train attngan`, generate."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import cli
from t2i.errors import T2IError
from t2i.models.attngan.networks import (PRESETS, AttnGanConfig, Discriminators, Generator, WordAttention,
                                         WordCondition, attention_entropy)
from t2i.models.attngan.objective import Contrastive, d_stage_loss, g_stage_loss, kl_loss, r1_penalty


def condition(cfg: AttnGanConfig, lengths=(5, 3)) -> WordCondition:
    B = len(lengths)
    return WordCondition(torch.randn(B, cfg.embed_dim), torch.randn(B, max(lengths), cfg.embed_dim),
                         torch.tensor(lengths))


@pytest.mark.parametrize("resolutions", [[8, 16], [8, 16, 32], [16, 32, 64]])
def test_stage_shapes(resolutions):
    cfg = replace(PRESETS["test"], resolutions=resolutions)
    G, Ds = Generator(cfg), Discriminators(cfg)
    out = G(torch.randn(2, cfg.z_dim), condition(cfg))
    assert [tuple(x.shape) for x in out.images] == [(2, 3, r, r) for r in resolutions]
    assert [tuple(a.shape) for a in out.attention] == [(2, 5, r // 2, r // 2) for r in resolutions[1:]]
    assert out.mu.shape == out.logvar.shape == (2, cfg.c_dim)
    assert all(x.abs().max() <= 1 for x in out.images)
    for D, x in zip(Ds.stages, out.images):
        h = D(x)
        assert h.shape == (2, cfg.df * 8, 4, 4)
        assert D.COND_DNET(h, torch.randn(2, cfg.embed_dim)).shape == D.UNCOND_DNET(h).shape == (2,)


def test_paper_layout_keys():
    """The paper preset has AttnGAN's G_NET and D_NET256 module names."""
    keys = Generator(PRESETS["paper"]).state_dict().keys()
    for k in ("ca_net.fc.weight", "h_net1.fc.0.weight", "h_net1.upsample4.1.weight", "h_net2.att.conv_context.weight",
              "h_net3.residual.1.block.3.weight", "h_net3.upsample.2.running_var", "img_net3.img.0.weight"):
        assert k in keys
    d256 = Discriminators(PRESETS["paper"]).stages[2].state_dict().keys()
    for k in ("img_code_s16.0.weight", "img_code_s64_2.0.weight", "COND_DNET.jointConv.0.weight",
              "COND_DNET.outlogits.0.bias", "UNCOND_DNET.outlogits.0.weight"):
        assert k in d256
    assert Generator(PRESETS["paper"]).h_net1.fc[0].weight.shape == (32 * 16 * 4 * 4 * 2, 200)


def test_config_round_trip_and_bad_resolutions():
    cfg = PRESETS["tiny"]
    assert AttnGanConfig(**json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(T2IError, match="doubling"):
        AttnGanConfig(resolutions=[16, 64])


def test_word_attention_sums_to_one_over_real_words():
    att = WordAttention(6, 4)
    cond = WordCondition(torch.randn(2, 4), torch.randn(2, 5, 4), torch.tensor([5, 2]))
    context, attn = att(torch.randn(2, 6, 3, 3), cond)
    assert context.shape == (2, 6, 3, 3) and attn.shape == (2, 5, 3, 3)
    assert torch.allclose(attn.sum(1), torch.ones(2, 3, 3), atol=1e-6)
    assert attn[1, 2:].abs().sum() == 0                       # padding words get no attention


def test_attention_gamma_scales_the_cosine_not_the_dot_product():
    """--attn_gamma: logits are gamma * cos(region, projected word), so tiny features still attend sharply; plain
    AttnGAN's dot product of the same tiny features leaves the attention uniform."""
    torch.manual_seed(0)
    cos_att, dot_att = WordAttention(4, 6, gamma=10.0), WordAttention(4, 6)
    dot_att.load_state_dict(cos_att.state_dict())
    words = torch.randn(1, 3, 6)
    cond = WordCondition(torch.zeros(1, 6), words, torch.tensor([3]))
    e = F.linear(words, cos_att.conv_context.weight.flatten(1))[0]                     # (T, C)
    h = 1e-3 * e[1][None, :, None, None].expand(1, 4, 2, 2).clone()                  # every region points at word 1
    _, dot = dot_att(h, cond)
    assert torch.allclose(dot, torch.full_like(dot, 1 / 3), atol=1e-3)
    _, attn = cos_att(h, cond)
    expected = (10.0 * F.cosine_similarity(e[1][None], e, dim=-1)).softmax(0)
    assert torch.allclose(attn[0, :, 0, 0], expected, atol=1e-5) and attn[0, 1, 0, 0] > 0.5
    assert attention_entropy(dot, torch.tensor([3])).item() == pytest.approx(1.0, abs=1e-4)
    one_word = torch.zeros(1, 3, 2, 2)
    one_word[:, 2] = 1.0
    assert attention_entropy(one_word, torch.tensor([3])).item() == pytest.approx(0.0, abs=1e-6)
    assert 0.05 < attention_entropy(attn, torch.tensor([3])).item() < 0.95


def test_channel_attention_option():
    cfg = replace(PRESETS["test"], channel_attention=True)
    G = Generator(cfg)
    assert G.h_net2.channel_att is not None and G.h_net2.residual[0].block[0].in_channels == cfg.gf * 3
    assert G(torch.randn(2, cfg.z_dim), condition(cfg)).images[-1].shape == (2, 3, 16, 16)


def test_cond_norm_starts_as_plain_attngan_and_feeds_c_and_z_to_every_stage():
    """--cond_norm: the modulations are zero-initialised (the same G as without them, AttnGAN's keys kept), and once
    trained they make every stage's features depend on (c, z) through each batch norm."""
    cfg = replace(PRESETS["test"], resolutions=[8, 16, 32], cond_norm=True)
    torch.manual_seed(0)
    G = Generator(cfg).eval()
    plain = Generator(replace(cfg, cond_norm=False)).eval()
    extra = plain.load_state_dict(G.state_dict(), strict=False).unexpected_keys
    assert extra and all(".mods." in k for k in extra)
    assert len(extra) == 2 * (len(G.h_net1.mods) + 2 * (1 + cfg.res_blocks * 2))   # weight + bias per batch norm
    z, cond, eps = torch.randn(2, cfg.z_dim), condition(cfg), torch.randn(2, cfg.c_dim)
    for a, b in zip(G(z, cond, eps).images, plain(z, cond, eps).images):
        assert torch.equal(a, b)
    with torch.no_grad():
        for m in G.modules():
            if type(m).__name__ == "Modulation":
                m.affine.weight.normal_(0, 0.3)
    y = torch.cat([G.ca_net(cond.sentence)[0] + torch.exp(0.5 * G.ca_net(cond.sentence)[1]) * eps, z], 1)
    h = G.h_net1(z, y[:, :cfg.c_dim])
    other = y.clone()
    other[:, cfg.c_dim:] += 1.0                                    # another z, read only through the modulations
    assert not torch.allclose(G.h_net2(h, cond, y)[0], G.h_net2(h, cond, other)[0])
    assert not torch.allclose(G(z, cond, eps).images[-1], plain(z, cond, eps).images[-1])


def test_position_embedding_starts_as_attngan_and_lets_alike_regions_attend_apart():
    """--pos_attention: a zero-initialised embedding per region (AttnGAN's output at first, its keys kept); once
    learnt, two regions with the same features attend to different words, which plain AttnGAN cannot do."""
    cfg = replace(PRESETS["test"], resolutions=[8, 16, 32], pos_attention=True)
    torch.manual_seed(0)
    G = Generator(cfg).eval()
    plain = Generator(replace(cfg, pos_attention=False)).eval()
    extra = plain.load_state_dict(G.state_dict(), strict=False).unexpected_keys
    assert sorted(extra) == ["h_net2.att.position", "h_net3.att.position"]
    assert G.h_net2.att.position.shape == (1, cfg.gf, 8, 8) and G.h_net3.att.position.shape == (1, cfg.gf, 16, 16)
    z, cond, eps = torch.randn(2, cfg.z_dim), condition(cfg), torch.randn(2, cfg.c_dim)
    for a, b in zip(G(z, cond, eps).images, plain(z, cond, eps).images):
        assert torch.equal(a, b)
    att = G.h_net2.att
    h = torch.ones(2, cfg.gf, 8, 8)                                 # every region alike
    assert torch.allclose(plain.h_net2.att(h, cond)[1][..., 0, 0], plain.h_net2.att(h, cond)[1][..., 7, 7])
    with torch.no_grad():
        att.position.normal_(0, 3.0)
    _, attn = att(h, cond)
    assert not torch.allclose(attn[..., 0, 0], attn[..., 7, 7])
    assert torch.allclose(attn.sum(1), torch.ones(2, 8, 8))


def test_init_channels_widens_the_first_stage_only():
    """--init_channels: the first stage starts at that width and halves it, its last upsampling ending at gf as
    AttnGAN's does; 0 keeps AttnGAN's rule (gf * 2^upsamplings), so the published layout is unchanged."""
    cfg = replace(PRESETS["test"], resolutions=[16, 32])
    plain, wide = Generator(cfg), Generator(replace(cfg, init_channels=64))
    assert plain.h_net1.c0 == cfg.gf * 4 and wide.h_net1.c0 == 64
    assert wide.h_net1.upsample1[1].out_channels == 2 * 32 and wide.h_net1.upsample2[1].out_channels == 2 * cfg.gf
    assert plain.h_net1.upsample1[1].out_channels == 2 * 2 * cfg.gf
    out = wide(torch.randn(2, cfg.z_dim), condition(cfg))
    assert [tuple(i.shape) for i in out.images] == [(2, 3, 16, 16), (2, 3, 32, 32)]
    assert {k: v.shape for k, v in Generator(cfg).state_dict().items() if not k.startswith("h_net1")} == \
        {k: v.shape for k, v in wide.state_dict().items() if not k.startswith("h_net1")}
    with pytest.raises(T2IError, match="init_channels 4"):
        replace(cfg, init_channels=4)


def test_projection_discriminator_reads_the_sentence_by_an_inner_product():
    """--d_condition projection: the conditional logit is the unconditional-style 4x4 logit plus <W s, sum-pooled h>,
    with no jointConv; concat keeps AttnGAN's layout."""
    cfg = replace(PRESETS["test"], d_condition="projection")
    D = Discriminators(cfg).stages[0]
    assert D.COND_DNET.jointConv is None and D.UNCOND_DNET.embed is None
    h, s = torch.randn(3, cfg.df * 8, 4, 4), torch.randn(3, cfg.embed_dim)
    by_hand = D.COND_DNET.outlogits(h).view(-1) + ((s @ D.COND_DNET.embed.weight.t()) * h.sum((2, 3))).sum(-1)
    assert torch.allclose(D.COND_DNET(h, s), by_hand, atol=1e-5)
    assert not torch.allclose(D.COND_DNET(h, s), D.COND_DNET(h, -s))
    assert Discriminators(PRESETS["test"]).stages[0].COND_DNET.embed is None
    with pytest.raises(T2IError, match="projection"):
        AttnGanConfig(d_condition="dot")


def test_gradient_checkpointing_gives_the_same_step_and_batch_norm_statistics():
    """Checkpointed G stages and D image codes: same outputs, same gradients, and BatchNorm's running statistics
    updated once (the recomputation in backward must not apply the momentum again)."""
    cfg = replace(PRESETS["test"], resolutions=[8, 16, 32])
    torch.manual_seed(0)
    z, cond = torch.randn(4, cfg.z_dim), condition(cfg, lengths=(5, 3, 4, 2))
    eps = torch.randn(4, cfg.c_dim)
    results = []
    for on in (False, True):
        torch.manual_seed(1)
        G, Ds = Generator(cfg), Discriminators(cfg)
        G.grad_checkpointing = on
        for D in Ds.stages:
            D.grad_checkpointing = on
        out = G(z, cond, eps)
        loss = sum(g_stage_loss(D, x, cond.sentence) for D, x in zip(Ds.stages, out.images))
        loss.backward()
        grads = {k: p.grad for k, p in [*G.named_parameters(), *Ds.named_parameters()]}
        results.append((out.images[-1].detach(), grads,
                        {k: b.clone() for k, b in [*G.named_buffers(), *Ds.named_buffers()]}))
    (img0, grad0, buf0), (img1, grad1, buf1) = results
    assert torch.equal(img0, img1)
    assert grad0.keys() == grad1.keys() and all(torch.allclose(grad0[k], grad1[k], atol=1e-6) for k in grad0)
    assert any("running_mean" in k for k in buf0)
    assert all(torch.equal(buf0[k], buf1[k]) for k in buf0)     # num_batches_tracked included


def test_kl_loss():
    assert kl_loss(torch.zeros(3, 4), torch.zeros(3, 4)).item() == pytest.approx(0.0)
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(2.0)]])
    by_hand = -0.5 * ((1 + 0 - 1 - 1) + (1 + math.log(2) - 0 - 2)) / 2
    assert kl_loss(mu, logvar).item() == pytest.approx(by_hand)


def test_without_conditioning_augmentation_c_is_mu_and_there_is_no_kl(shapes16, damsm_run):
    """--ca 0: G reads c = mu (CA's noise changes nothing; with CA on it does) and G's loss has no KL term."""
    cfg = PRESETS["test"]
    torch.manual_seed(0)
    G = Generator(replace(cfg, ca=False)).eval()
    z, cond = torch.randn(2, cfg.z_dim), condition(cfg)
    mu = G.ca_net(cond.sentence)[0]
    out = G(z, cond, torch.randn(2, cfg.c_dim))
    assert torch.equal(out.images[-1], G(z, cond, torch.randn(2, cfg.c_dim)).images[-1])
    assert torch.equal(out.images[0], G.img_net1(G.h_net1(z, mu)))
    with_ca = Generator(cfg).eval()
    with_ca.load_state_dict(G.state_dict())                       # the same keys: CA's layers stay
    assert not torch.equal(with_ca(z, cond, torch.randn(2, cfg.c_dim)).images[-1], out.images[-1])
    _, _, on = g_phase(shapes16, damsm_run)
    _, _, off = g_phase(shapes16, damsm_run, ca=False)
    assert on["Loss/G_kl"].item() > 0 and off["Loss/G_kl"].item() == 0


class ScriptedD(nn.Module):
    """A discriminator whose logits are set by hand: features = the input's mean per image."""

    def __init__(self, cond_logit, uncond_logit):
        super().__init__()
        self.COND_DNET = cond_logit
        self.UNCOND_DNET = uncond_logit

    def forward(self, x):
        return x.mean((1, 2, 3))


def test_d_loss_terms_by_hand():
    real, fake = torch.full((3, 3, 4, 4), 1.0), torch.full((3, 3, 4, 4), -1.0)
    sentence = torch.tensor([[0.0], [1.0], [2.0]])
    D = ScriptedD(lambda h, s: h + s[:, 0], lambda h: 2 * h)   # cond logit = feature + sentence; uncond = 2 feature
    wrong = torch.tensor([1.0, 0.0])                            # pair (1, 2) shares a caption: not a mismatch
    loss, parts = d_stage_loss(D, real, fake, sentence, wrong)
    sp = lambda x: math.log1p(math.exp(x))                      # noqa: E731  -log(1 - sigmoid(x)) = softplus(x)
    cond_real = sum(sp(-(1 + s)) for s in (0, 1, 2)) / 3
    cond_fake = sum(sp(-1 + s) for s in (0, 1, 2)) / 3
    cond_wrong = sp(1 + 1)                                      # real image 0 with sentence 1, only
    uncond_real, uncond_fake = sp(-2), sp(-2)
    expected = (uncond_real + cond_real) / 2 + (uncond_fake + cond_fake + cond_wrong) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert parts["cond_wrong"].item() == pytest.approx(cond_wrong, rel=1e-5)
    g = g_stage_loss(D, fake, sentence)
    assert g.item() == pytest.approx(sp(2) + sum(sp(1 - s) for s in (0, 1, 2)) / 3, rel=1e-5)
    # --d_hard_negatives: real image k with its own caption's swapped copy joins the mismatches where one exists
    hard = (torch.tensor([[5.0], [-1.0], [9.0]]), torch.tensor([True, True, False]))
    loss, parts = d_stage_loss(D, real, fake, sentence, wrong, hard)
    cond_wrong = (sp(1 + 1) + sp(1 + 5) + sp(1 - 1)) / 3
    expected = (uncond_real + cond_real) / 2 + (uncond_fake + cond_fake + cond_wrong) / 3
    assert parts["cond_wrong"].item() == pytest.approx(cond_wrong, rel=1e-5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_train_attngan_cli(attngan_run):
    for name in ("fakes-000032.png", "stages-000032.png", "attention-000032.png", "reals.png"):
        assert (attngan_run / name).is_file(), name
    from PIL import Image

    stages = Image.open(attngan_run / "stages-000032.png")
    assert stages.height == 2 * 16                              # a row per stage, each at the last stage's side
    meta = json.loads((attngan_run / "snapshot-000032" / "config.json").read_text())
    assert meta["family"] == "attngan" and meta["net"]["resolutions"] == [8, 16] and "circle" in meta["vocab"]
    assert "stages 8/16" in (attngan_run / "log.txt").read_text()


def test_generate_and_attention(attngan_run, tmp_path, capsys):
    from t2i.models import load_pipeline

    pipe = load_pipeline(attngan_run)
    a = pipe(["a red circle", "a blue square"], [3, 4])
    b = pipe(["a blue square"], [4])
    assert a.dtype == torch.uint8 and a.shape == (2, 3, 16, 16)
    assert torch.equal(a[1], b[0])                              # per-image seeds, independent of the batch
    assert not torch.equal(pipe(["a red circle"], [5]), a[:1])
    cli("generate", "a red circle", "--model", attngan_run, "--n", 2, "--out", tmp_path / "g.png",
        "--attention", tmp_path / "att.png")
    assert "the attention maps" in capsys.readouterr().out
    from PIL import Image

    assert Image.open(tmp_path / "att.png").height > Image.open(tmp_path / "g.png").height


def test_prompts_without_known_words_and_attention_of_other_families(attngan_run, lafite_run, cli_error, tmp_path):
    assert "no word the model knows" in cli_error("generate", "zebra xylophone", "--model", attngan_run,
                                                  "--out", tmp_path / "x.png")
    assert "only AttnGAN" in cli_error("generate", "a red circle", "--model", lafite_run, "--attention",
                                       tmp_path / "a.png", "--out", tmp_path / "y.png")


def test_exact_resume(attngan_run, damsm_run, shapes16, copy_run, tmp_path, one_thread):
    from safetensors.torch import load_file

    common = ["--data", shapes16, "--damsm", damsm_run, "--preset", "test"]
    run = copy_run(attngan_run)
    cli("train", "attngan", *common, "--kimg", 0.048, "--resume", run, "--outdir", run.parent)
    assert "resuming" in (run / "log.txt").read_text()
    cli("train", "attngan", *common, "--kimg", 0.048, "--outdir", tmp_path / "straight")
    (straight,) = (tmp_path / "straight").glob("*-attngan-test")
    a, b = (load_file(r / "snapshot-000048" / "model.safetensors") for r in (run, straight))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_attngan_options_are_checked(cli_error, shapes16, damsm_run, lafite_run, tmp_path):
    assert "--damsm" in cli_error("train", "attngan", "--data", shapes16, "--outdir", tmp_path)
    assert "holds no DAMSM" in cli_error("train", "attngan", "--data", shapes16, "--damsm", lafite_run,
                                         "--outdir", tmp_path)
    assert "--g_lr" in cli_error("train", "attngan", "--data", shapes16, "--damsm", damsm_run, "--g_lr", 0,
                                 "--outdir", tmp_path)
    assert "--damsm_stages" in cli_error("train", "attngan", "--data", shapes16, "--damsm", damsm_run,
                                         "--damsm_stages", "first", "--outdir", tmp_path)


def test_mode_seeking_term_reaches_the_generators_latent_path(shapes16, damsm_run):
    """--ms_weight: G's loss gains MSGAN's term on the last stage (same CA noise, a second z), and its gradient
    reaches the initial stage, the only layer that reads z; the other terms are those of a run without it."""
    from types import SimpleNamespace

    from t2i.models.attngan.trainer import AttnGanTrainConfig, build

    device = SimpleNamespace(device=torch.device("cpu"))
    losses = {}
    for w in (0.0, 2.0):
        torch.manual_seed(0)
        fam = build(AttnGanTrainConfig(data=str(shapes16), damsm=str(damsm_run), preset="test", ms_weight=w), None,
                    device, lambda _: None)
        batch = fam.data.fetch(torch.arange(8), torch.Generator().manual_seed(0), fam.damsm.vocab, fam.damsm.words)
        g_phase = fam.phases()[1]
        torch.manual_seed(1)
        total, stats = fam.loss(g_phase, batch)
        total.backward()
        losses[w] = (total, stats, fam.G.h_net1.fc[0].weight.grad)
    (base, plain, grad0), (total, stats, grad) = losses[0.0], losses[2.0]
    assert "Loss/G_ms" not in plain and stats["Loss/G_ms"] > 0
    assert torch.equal(stats["Loss/G_adv"], plain["Loss/G_adv"])      # same weights, same draws
    assert total.item() == pytest.approx(base.item() + 2.0 * stats["Loss/G_ms"].item(), rel=1e-5)
    assert (grad - grad0).abs().sum() > 0                               # the term's own gradient reaches z's layer


def test_r_precision_damsm(attngan_run, lafite_run, damsm_run, shapes16, tmp_path, cli_error):
    cli("eval", attngan_run, "--data", shapes16, "--metrics", "r_precision_damsm", "--n", 16, "--out", tmp_path)
    result = json.loads((tmp_path / "metric-r_precision_damsm.jsonl").read_text())["results"]
    assert result["n"] == 16 and 0 <= result["r_precision_damsm"] <= 1 and result["damsm"] == "damsm:the model's own"
    assert "--damsm" in cli_error("eval", lafite_run, "--data", shapes16, "--metrics", "r_precision_damsm", "--n", 4,
                                  "--out", tmp_path)
    cli("eval", lafite_run, "--data", shapes16, "--metrics", "r_precision_damsm", "--n", 8, "--damsm", damsm_run,
        "--out", tmp_path / "l")
    assert json.loads((tmp_path / "l" / "metric-r_precision_damsm.jsonl").read_text())["results"]["n"] == 8


def g_phase(shapes16, damsm_run, n: int = 8, **options):
    """A fresh test-preset AttnGAN (weights drawn under seed 0) and one G-phase loss on the first n images (draws
    under seed 1): (family, batch, stats)."""
    from types import SimpleNamespace

    from t2i.models.attngan.trainer import AttnGanTrainConfig, build

    torch.manual_seed(0)
    fam = build(AttnGanTrainConfig(data=str(shapes16), damsm=str(damsm_run), preset="test", **options), None,
                SimpleNamespace(device=torch.device("cpu")), lambda _: None)
    batch = fam.data.fetch(torch.arange(n), torch.Generator().manual_seed(0), fam.damsm.vocab, fam.damsm.words)
    torch.manual_seed(1)
    return fam, batch, fam.loss(next(ph for ph in fam.phases() if ph.name == "G"), batch)[1]


def test_damsm_term_on_every_stage(shapes16, damsm_run):
    """--damsm_stages all: L_DAMSM is the sum over stages, the earlier stages' images upsampled to the last one's
    side (checked against the term recomputed by hand from the same draws); the adversarial term is unchanged."""
    import torch.nn.functional as F

    from t2i.models.attngan.objective import batch_negatives, damsm_loss

    _, _, last = g_phase(shapes16, damsm_run, damsm_stages="last")
    fam, batch, every = g_phase(shapes16, damsm_run, damsm_stages="all")
    assert torch.equal(every["Loss/G_adv"], last["Loss/G_adv"])
    cond = fam.condition(batch["ids"], batch["lengths"])
    torch.manual_seed(1)
    z = torch.randn(8, fam.net.z_dim)
    out = fam.G(z, cond, torch.randn(8, fam.net.c_dim))
    masked = batch_negatives(batch["ids"], batch.get("class_id"))
    first = F.interpolate(out.images[0], size=out.images[-1].shape[-2:], mode="bilinear", align_corners=False)
    extra = damsm_loss(cond.words, cond.sentence, cond.lengths, *fam.damsm.image_encoder(first), fam.cfg, masked)[0]
    assert len(out.images) == 2
    assert every["Loss/G_damsm"].item() == pytest.approx(last["Loss/G_damsm"].item() + extra.item(), rel=1e-5)


def test_hard_negatives_in_the_generators_damsm_term(shapes16, damsm_run):
    """--hard_negatives 1: the same batch and draws, and L_DAMSM also ranks each fake against its caption with two
    words swapped, so the term can only grow; the adversarial term is unchanged."""
    _, _, plain = g_phase(shapes16, damsm_run, 16)
    _, batch, hard = g_phase(shapes16, damsm_run, 16, hard_negatives=True)
    assert batch["neg_valid"].any() and "Damsm/fake_beats_hard_negative" in hard
    assert torch.equal(hard["Loss/G_adv"], plain["Loss/G_adv"])
    assert hard["Loss/G_damsm"] > plain["Loss/G_damsm"]


def test_hard_negatives_for_the_discriminators_only(shapes16, damsm_run):
    """--d_hard_negatives 1: D's mismatched pairs also hold each real image with its caption's word-swapped copy
    (so its wrong term changes), while G's step is exactly the plain one (its DAMSM term ranks no negatives); G's
    step logs how spread its word attention is."""
    _, _, plain = g_phase(shapes16, damsm_run, 16)
    fam, batch, with_d = g_phase(shapes16, damsm_run, 16, d_hard_negatives=True)
    assert batch["neg_valid"].any() and "Damsm/fake_beats_hard_negative" not in with_d
    assert all(torch.equal(plain[k], with_d[k]) for k in plain)
    assert 0.0 < plain["G/attention_entropy"].item() <= 1.0
    d_phase = fam.phases()[0]
    torch.manual_seed(2)
    hard = fam.loss(d_phase, batch)[1]
    fam.cfg.d_hard_negatives = False
    torch.manual_seed(2)
    easy = fam.loss(d_phase, batch)[1]
    assert torch.equal(hard["D0/cond_fake"], easy["D0/cond_fake"])
    assert not torch.equal(hard["D0/cond_wrong"], easy["D0/cond_wrong"])


def test_joint_batch_discriminator_normalises_reals_and_fakes_together():
    """--d_joint_batch 1: D's codes of reals and fakes come from one batch (its batch norms see both), so a fake's
    code depends on the reals beside it; apart (AttnGAN's), the codes are those of two separate batches."""
    from t2i.models.attngan.objective import d_features

    torch.manual_seed(0)
    D = Discriminators(PRESETS["test"]).stages[1]
    real, fake = torch.rand(4, 3, 16, 16) * 2 - 1, torch.rand(4, 3, 16, 16) * 0.2
    apart, joint = d_features(D, real, fake, False), d_features(D, real, fake, True)
    assert torch.equal(apart[1], D(fake)) and torch.allclose(joint[1], D(torch.cat([real, fake]))[4:])
    assert not torch.allclose(apart[1], joint[1])
    other = d_features(D, -real, fake, True)[1]
    assert not torch.allclose(other, joint[1])
    sentence = torch.randn(4, PRESETS["test"].embed_dim)
    towards_real = sum(F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
                       for logit in (D.UNCOND_DNET(joint[1]), D.COND_DNET(joint[1], sentence)))
    assert torch.allclose(g_stage_loss(D, fake, sentence, real), towards_real)


def test_contrastive_discriminator_term_by_hand():
    """--d_contrastive: InfoNCE between each image's pooled projection-D features and its projected sentence,
    recomputed by hand (both directions, temperature, a duplicate caption counted as a positive), on the reals in
    D's loss and on the fakes in G's; a concat D has no such features and says which option to give."""
    torch.manual_seed(0)
    cfg = replace(PRESETS["test"], d_condition="projection")
    D = Discriminators(cfg).stages[1]
    real, fake = torch.rand(3, 3, 16, 16) * 2 - 1, torch.rand(3, 3, 16, 16) * 2 - 1
    sentence = torch.randn(3, cfg.embed_dim)
    wrong = torch.ones(2)
    dup = torch.eye(3, dtype=torch.bool)
    dup[0, 2] = dup[2, 0] = True                                 # captions 0 and 2 are the same text

    def by_hand(x):
        img = D(x).sum((2, 3))
        img = img / img.norm(dim=1, keepdim=True)
        txt = D.COND_DNET.embed(sentence)
        txt = txt / txt.norm(dim=1, keepdim=True)
        logits = img @ txt.t() / 0.5
        # each row (image) and column (caption): minus the mean log-probability of its positives
        rows = [-(logits[i][dup[i]] - torch.logsumexp(logits[i], 0)).mean() for i in range(3)]
        cols = [-(logits[:, j][dup[:, j]] - torch.logsumexp(logits[:, j], 0)).mean() for j in range(3)]
        return 2.0 * 0.5 * (sum(rows) / 3 + sum(cols) / 3)

    term = Contrastive(2.0, 0.5, dup)
    plain, _ = d_stage_loss(D, real, fake, sentence, wrong)
    with_term, parts = d_stage_loss(D, real, fake, sentence, wrong, contrastive=term)
    assert parts["contrastive"].item() == pytest.approx(by_hand(real).item(), rel=1e-4)
    assert (with_term - plain).item() == pytest.approx(by_hand(real).item(), rel=1e-4)
    g_plain, g_term = g_stage_loss(D, fake, sentence), g_stage_loss(D, fake, sentence, contrastive=term)
    assert (g_term - g_plain).item() == pytest.approx(by_hand(fake).item(), rel=1e-4)
    concat = Discriminators(PRESETS["test"]).stages[1]
    with pytest.raises(T2IError, match="--d_condition projection"):
        g_stage_loss(concat, fake, sentence, contrastive=term)


def test_r1_penalty_by_hand():
    """R1: the squared norm of d(uncond + cond logit)/d(real image), batch mean. With D's features the image's
    mean h, uncond = h^2 and cond = h + sentence, the gradient is (2h + 1) / N at each of the N pixels."""
    D = ScriptedD(lambda h, s: h + s[:, 0], lambda h: h ** 2)
    real = torch.stack([torch.full((3, 4, 4), 0.5), torch.full((3, 4, 4), -1.0)])
    penalty = r1_penalty(D, real, torch.tensor([[3.0], [-2.0]]))
    n = 3 * 4 * 4
    assert penalty.item() == pytest.approx(((2 * 0.5 + 1) ** 2 / n + (2 * -1.0 + 1) ** 2 / n) / 2, rel=1e-6)


def test_contrastive_and_r1_options_in_training(shapes16, damsm_run):
    """--d_contrastive and --d_r1 in the family: D's step logs each stage's contrastive term (near log B for a fresh
    D), G's adversarial term carries it, a lazy R1 phase shares D's optimizer and scales the penalty by its
    interval; --d_contrastive with AttnGAN's concat D is refused with the fix."""
    _, _, plain = g_phase(shapes16, damsm_run, 8, d_condition="projection")
    fam, batch, with_term = g_phase(shapes16, damsm_run, 8, d_condition="projection", d_contrastive=1.0, d_r1=0.5,
                                    d_reg_interval=3)
    assert not torch.equal(with_term["Loss/G_adv"], plain["Loss/G_adv"])
    d_phase, reg, g = fam.phases()
    assert (reg.name, reg.interval, reg.opt, reg.module) == ("D_reg", 3, d_phase.opt, fam.D) and g.name == "G"
    stats = fam.loss(d_phase, batch)[1]
    assert all(0.5 * math.log(8) < stats[f"D{k}/contrastive"].item() < 2 * math.log(8) for k in range(2))
    loss, stats = fam.loss(reg, batch)
    assert loss.item() == pytest.approx(stats["Loss/D_r1"].item() * 0.5 / 2 * 3, rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in fam.D.stages[0].img_code_s16.parameters())
    with pytest.raises(T2IError, match="--d_condition projection"):
        g_phase(shapes16, damsm_run, 8, d_condition="concat", d_contrastive=1.0)

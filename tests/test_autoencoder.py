"""The KL autoencoder first stage (t2i.models.first_stage): presets and config round trip, the KL term
against the closed form and in the shared objective, posterior sampling, round-trip shapes, the latent
cache, `t2i train autoencoder` end to end (dry run, snapshots, measured scale factor, exact resume) and
the errors users meet."""

import json
import math

import pytest
import torch

from t2i.data.dataset import ImageTextDataset
from t2i.data.loader import load_images
from t2i.data.transforms import to_model
from t2i.errors import T2IError
from t2i.models.first_stage.autoencoder_kl import PRESETS, KLAutoencoder, KLConfig
from t2i.models.first_stage.autoencoder_trainer import load_autoencoder_snapshot, posteriors, sample_stats
from t2i.models.first_stage.cache import load_or_encode_latents
from t2i.models.first_stage.discriminator import PatchDiscriminator
from t2i.models.first_stage.objective import KLLoss, KLLossWeights, gaussian_kl, sample_posterior
from t2i.training.snapshot import load_snapshot

from conftest import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def test_presets_and_config_round_trip():
    for cfg in PRESETS.values():
        back = KLConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert back == cfg and isinstance(back.block_out_channels, tuple)
    tiny, paper = PRESETS["tiny"], PRESETS["paper256"]
    assert (tiny.factor, tiny.latent_side, tiny.latent_channels) == (4, 16, 4) and tiny.measure_scale
    assert (paper.factor, paper.latent_side, paper.latent_channels) == (8, 32, 4)     # LDM KL-f8: 32x32x4
    assert paper.block_out_channels == (128, 256, 512, 512) and paper.layers_per_block == 2
    assert paper.scale_factor == 0.18215 and not paper.measure_scale
    assert tiny.resolutions(128) == [32, 64, 128] and PRESETS["test"].resolutions(32) == [16, 32]


def test_kl_term_is_the_closed_form():
    mean = torch.full((2, 4, 3, 3), 0.5)
    logvar = torch.full((2, 4, 3, 3), math.log(0.25))
    per_element = 0.5 * (0.25 + 0.25 - 1 - math.log(0.25))       # 0.5 (mu^2 + sigma^2 - 1 - log sigma^2)
    assert torch.allclose(gaussian_kl(mean, logvar), torch.full((2,), 36 * per_element))
    assert torch.equal(gaussian_kl(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)), torch.zeros(1))
    torch.manual_seed(0)
    mean, logvar = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    q, p = torch.distributions.Normal(mean, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    assert torch.allclose(gaussian_kl(mean, logvar), torch.distributions.kl_divergence(q, p).sum((1, 2, 3)),
                          atol=1e-5)


def test_posterior_samples_have_the_posterior_moments():
    torch.manual_seed(0)
    mean, logvar = torch.full((4000, 1, 1, 1), 2.0), torch.full((4000, 1, 1, 1), math.log(0.09))
    z = sample_posterior(mean, logvar)
    assert z.mean().item() == pytest.approx(2.0, abs=0.02) and z.std().item() == pytest.approx(0.3, abs=0.01)
    # The closed-form statistics of such samples (the measured scale factor's std) agree with them.
    z_mean, z_std = sample_stats(mean, logvar)
    assert (z_mean, z_std) == (pytest.approx(2.0), pytest.approx(0.3))
    spread = torch.linspace(-1, 1, 4000).view(-1, 1, 1, 1)
    z = sample_posterior(spread, logvar)
    assert sample_stats(spread, logvar)[1] == pytest.approx(z.std().item(), rel=0.02)   # sqrt(var(mean) + 0.09)
    logvar.requires_grad_(True)
    mean.requires_grad_(True)
    sample_posterior(mean, logvar).sum().backward()                 # reparameterised: both moments get gradients
    assert mean.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0


def test_g_loss_is_reconstruction_plus_weighted_kl_per_pixel():
    torch.manual_seed(0)
    cfg = PRESETS["test"]
    model, D = KLAutoencoder(cfg), PatchDiscriminator(cfg)
    w = KLLossWeights(kl_weight=0.5, disc_start_kimg=0.016)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    torch.manual_seed(1)
    loss, stats = KLLoss(model, D, None, w).g_main(x, nimg=0)
    # LDM: sum|x - x_rec| + w_kl sum KL per image; here divided by the 3 x 16 x 16 pixel elements.
    assert loss.item() == pytest.approx((stats["Loss/G/rec"] + 0.5 * stats["Loss/G/kl"] / 768).item(), rel=1e-5)
    mean, logvar = model.moments(x)
    assert stats["Loss/G/kl"].item() == pytest.approx(gaussian_kl(mean, logvar).mean().item(), rel=1e-5)
    assert "Loss/G/adv" not in stats
    loss.backward()
    assert model.vae.encoder.conv_in.weight.grad.abs().sum() > 0 and model.last_layer().grad.abs().sum() > 0
    _, stats = KLLoss(model, D, None, w).g_main(x, nimg=16)         # the shared patch-GAN part, from disc_start
    assert stats["Loss/G/adaptive_weight"] > 0 and "Loss/G/adv" in stats
    d_loss, d_stats = KLLoss(model, D, None, w).d_main(x, nimg=16)
    assert d_loss.item() > 0 and "Loss/D/adv" in d_stats
    assert KLLossWeights().kl_weight == 1e-6 and KLLossWeights().disc_weight == 0.5   # LDM's kl-f8 config


def test_round_trip_shapes_and_parameter_count():
    torch.manual_seed(0)
    for name, side, latent in (("test", 16, 8), ("tiny", 64, 16)):
        model = KLAutoencoder(PRESETS[name]).eval()
        x = torch.rand(2, 3, side, side) * 2 - 1
        mean, logvar = model.moments(x)
        assert mean.shape == logvar.shape == (2, 4, latent, latent)
        assert model.decode(mean).shape == (2, 3, side, side) and model.reconstruct(x).shape == x.shape
        assert torch.equal(model.encode(x), mean)
    with torch.device("meta"):
        paper = KLAutoencoder(PRESETS["paper256"])
    assert sum(p.numel() for p in paper.parameters()) == 83_653_863       # Stable Diffusion's VAE


def test_latent_cache_is_reused_and_invalidated_by_the_weights(shapes16):
    torch.manual_seed(0)
    model = KLAutoencoder(PRESETS["test"]).eval()
    dataset = ImageTextDataset(shapes16)
    folder = shapes16.parent / (shapes16.name + ".features")
    before = set(folder.glob("latents-*.safetensors"))   # other tests' session runs may have cached theirs
    logged = []
    mean, logvar = load_or_encode_latents(dataset, model, log=logged.append)
    assert mean.shape == logvar.shape == (64, 1, 4, 8, 8) and len(logged) == 1
    m3, lv3 = model.moments(to_model(dataset[3]["image"][None]))
    assert torch.allclose(mean[3, 0], m3[0], atol=1e-6) and torch.allclose(logvar[3, 0], lv3[0], atol=1e-6)
    again, _ = load_or_encode_latents(dataset, model, log=logged.append)
    assert len(logged) == 1 and torch.equal(again, mean)                          # read from the cache
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.vae.decoder.conv_out.bias.add_(1.0)     # a decoder change: the latents are the same, the key is not
    load_or_encode_latents(dataset, model, log=logged.append)
    assert len(logged) == 2 and len(set(folder.glob("latents-*.safetensors")) - before) == 2
    model.load_state_dict(original)
    load_or_encode_latents(dataset, model, log=logged.append)
    assert len(logged) == 2                                                       # the original weights' file


def dry_run(capsys, *argv) -> dict:
    capsys.readouterr()
    cli("train", "autoencoder", *argv, "--dry-run")
    return json.loads(capsys.readouterr().out)


def stats_lines(run):
    return [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]


def test_cli_trains_measures_the_scale_and_resumes_exactly(shapes16, tmp_path, capsys):
    common = ["--data", shapes16, "--preset", "test", "--disc_start_kimg", 0.016]
    r = dry_run(capsys, *common, "--outdir", tmp_path / "a")
    assert r["family"] == "autoencoder" and r["start"] == "new run" and not (tmp_path / "a").exists()
    assert r["config"]["kl_weight"] == 1e-6 and r["loop"]["batch"] == 8 and r["loop"]["kimg"] == 0.032
    cli("train", "autoencoder", *common, "--metrics", "psnr", "--outdir", tmp_path / "a")
    (run,) = (tmp_path / "a").glob("*-autoencoder-test")
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "log.txt", "reals.png", "fakes-000016.png", "fakes-000032.png", "snapshot-000016",
            "snapshot-000032", "metric-psnr.jsonl"} <= names
    lines = stats_lines(run)
    assert [line["kimg"] for line in lines] == [0.016, 0.032]
    assert all({"Loss/G/rec", "Loss/G/kl", "Latent/posterior_std"} <= line.keys() for line in lines)
    assert "Loss/D/adv" not in lines[0] and "Loss/D/adv" in lines[1] and "Loss/G/adaptive_weight" in lines[1]
    # The scale factor is measured from the snapshot's weights: 1 / std of the training latents.
    meta = load_snapshot(run).meta
    model = load_autoencoder_snapshot(run)
    _, std = sample_stats(*posteriors(model, load_images(ImageTextDataset(shapes16)), "cpu")[:2])
    assert meta["family"] == "autoencoder" and meta["net"]["scale_factor"] == pytest.approx(1 / std, rel=1e-4)
    assert model.cfg.scale_factor == meta["net"]["scale_factor"] != 1.0
    psnr = json.loads((run / "metric-psnr.jsonl").read_text().splitlines()[-1])["results"]
    assert 0 < psnr["psnr_db"] < 60 and psnr["n"] == 64 and psnr["latent_std"] == pytest.approx(std, rel=1e-4)
    # --resume with the same options continues the run; the result equals an uninterrupted run bit for bit.
    assert dry_run(capsys, *common, "--kimg", 0.048, "--resume", run)["start"] == "exact resume"
    cli("train", "autoencoder", *common, "--kimg", 0.048, "--resume", run, "--outdir", tmp_path / "a")
    assert (run / "snapshot-000048").is_dir() and len(stats_lines(run)) == 3
    assert "resuming" in (run / "log.txt").read_text()
    cli("train", "autoencoder", *common, "--kimg", 0.048, "--outdir", tmp_path / "b")
    (straight,) = (tmp_path / "b").glob("*-autoencoder-test")
    resumed, direct = (load_snapshot(r / "snapshot-000048").tensors for r in (run, straight))
    assert resumed.keys() == direct.keys() and all(torch.equal(resumed[k], direct[k]) for k in resumed)


def test_shapes_recon_accuracy_of_an_untrained_autoencoder_is_low():
    from t2i.metrics.oracle_trainer import load_oracle
    from t2i.models.first_stage.trainer import shapes_recon_accuracy

    torch.manual_seed(0)
    result = shapes_recon_accuracy(KLAutoencoder(PRESETS["tiny"]).eval(), n=8, oracle=load_oracle())
    assert {"seen_all", "heldout_all", "seen_colour"} <= result.keys() and result["n"] == 8
    assert result["seen_all"] <= 0.25


def test_errors_name_the_value_and_the_fix(shapes16, vqgan_run, tmp_path, cli_error):
    msg = cli_error("train", "autoencoder", "--data", shapes16, "--preset", "tiny", "--outdir", tmp_path)
    assert "is 16x16; KL autoencoder preset 'tiny' builds square powers of two from 32 up" in msg
    assert "t2i data pack --width 32 --height 32" in msg and not any(tmp_path.iterdir())   # no run left behind
    msg = cli_error("train", "autoencoder", "--data", shapes16, "--preset", "test", "--resume", vqgan_run,
                    "--outdir", tmp_path)
    assert "is a 'vqgan' snapshot, not 'autoencoder'; give a `t2i train autoencoder` run or snapshot" in msg
    msg = cli_error("train", "autoencoder", "--data", tmp_path / "missing", "--preset", "test", "--outdir", tmp_path)
    assert "missing does not exist; create one with `t2i data pack" in msg
    assert "--kl_weight -1.0 must be >= 0" in cli_error("train", "autoencoder", "--data", shapes16, "--kl_weight", -1)
    with pytest.raises(T2IError, match="is a 'vqgan' snapshot, but a 'autoencoder' model is needed here: give a "
                                       "`t2i train autoencoder` run or snapshot"):
        load_autoencoder_snapshot(vqgan_run)
    with pytest.raises(T2IError, match="does not exist; give a run directory"):
        load_autoencoder_snapshot(tmp_path / "nope")

"""Resolution follows the data (issue 13): LAFITE and the VQGAN build at a 32px dataset's size with a
16px preset, record it in the run's config, resume exactly; DALL-E takes its size from the VQGAN; sizes
a family cannot build are refused with the sizes that work."""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli, single_thread
from t2i.data.dataset import DatasetWriter
from t2i.errors import T2IError
from t2i.models import load_pipeline
from t2i.training.distributed import Dist
from t2i.training.snapshot import load_snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


def make_dataset(path, n: int, size: tuple[int, int]):
    """n random images of (width, height) `size`, one caption each."""
    rng = np.random.default_rng(0)
    with DatasetWriter(path, path.name, size) as w:
        for i in range(n):
            w.add(Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)), [f"caption {i}"])
    return path


def dry_run(capsys, family: str, *argv) -> dict:
    capsys.readouterr()
    cli("train", family, *argv, "--dry-run")
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def shapes32(tmp_path_factory):
    """32 shapes images at 32px: twice the side of the `test` presets."""
    root = tmp_path_factory.mktemp("shapes32")
    cli("data", "shapes", "--out", root / "shapes32", "--n", 32, "--size", 32, "--seed", 0)
    return root / "shapes32"


@pytest.fixture(scope="module")
def runs32(tmp_path_factory):
    return tmp_path_factory.mktemp("runs32")


@pytest.fixture(scope="module")
def lafite32(shapes32, clip_run, runs32):
    """`t2i train lafite --preset test` (16px preset) on 32px data: 2 steps of 8, one snapshot."""
    with single_thread():
        cli("train", "lafite", "--data", shapes32, "--clip", clip_run, "--preset", "test", "--kimg", 0.016,
            "--outdir", runs32)
    (run,) = runs32.glob("*-lafite-test")
    return run


@pytest.fixture(scope="module")
def vqgan32(shapes32, runs32):
    """`t2i train vqgan --preset test` (16px preset) on 32px data: 2 steps of 8, one snapshot."""
    with single_thread():
        cli("train", "vqgan", "--data", shapes32, "--preset", "test", "--kimg", 0.016, "--outdir", runs32)
    (run,) = runs32.glob("*-vqgan-test")
    return run


# ----------------------------------------------------------------------------------------------
# The networks at other sizes

@pytest.mark.parametrize("preset", ["test", "tiny"])
def test_lafite_networks_build_and_run_at_every_listed_size(preset):
    from t2i.models.lafite.networks import PRESETS, Discriminator, Generator

    assert PRESETS["test"].resolutions() == [16, 32, 64, 128]   # channel_base 128: one channel at 128px
    for r in (16, 32, 128):
        net = copy.deepcopy(PRESETS[preset])
        net.resolution = r
        G, D = Generator(net), Discriminator(net)
        c = torch.randn(2, net.c_dim)
        x = G(torch.randn(2, net.z_dim), c)
        logit, _ = D(x, c)
        logit.sum().backward()
        assert x.shape == (2, 3, r, r) and logit.shape == (2,)
        assert all(p.grad is not None for p in G.parameters() if p.requires_grad and p.dim() > 1)
    net = copy.deepcopy(PRESETS[preset])
    net.resolution = 48                    # log2 would have rounded it to a 32px G
    with pytest.raises(ValueError, match="resolution 48 is not one of"):
        Generator(net)


def test_vqgan_sizes_and_attention_that_follows_the_feature_map_sides():
    from t2i.models.first_stage.discriminator import PatchDiscriminator
    from t2i.models.first_stage.taming import attention_levels
    from t2i.models.first_stage.vqgan import PRESETS, VQGAN

    assert PRESETS["test"].resolutions(128) == [16, 32, 64, 128]   # f2: 8x8 tokens, D: 12 px at least
    assert PRESETS["tiny"].resolutions(128) == [32, 64, 128]       # f4, D: 24 px at least
    assert PRESETS["paper"].resolutions(512) == [64, 128, 256, 512]  # f16: 4x4 tokens at least
    net = copy.deepcopy(PRESETS["test"])
    net.resolution = 32
    model = VQGAN(net)
    rec, _, ids, _ = model(torch.randn(2, 3, 32, 32))
    assert rec.shape == (2, 3, 32, 32) and ids.shape == (2, 16, 16)
    assert PatchDiscriminator(net)(rec).shape[-1] >= 1
    # attn_resolutions (8,) are feature-map sides: at 32px no level is 8 wide, so no level attention;
    # the middle blocks keep theirs.
    keys = model.state_dict().keys()
    assert attention_levels(keys) == set() and attention_levels(VQGAN(PRESETS["test"]).state_dict()) == {1}
    assert any(k.startswith("decoder.mid.attn_1.") for k in keys)


# ----------------------------------------------------------------------------------------------
# LAFITE

def test_lafite_builds_at_the_data_resolution_and_records_it(lafite32):
    config = json.loads((lafite32 / "config.json").read_text())
    assert config["config"]["resolution"] == 32
    snap = load_snapshot(lafite32)
    assert snap.meta["net"]["resolution"] == 32 and snap.meta["config"]["resolution"] == 32
    assert "LAFITE test at 32x32" in (lafite32 / "log.txt").read_text()
    images = load_pipeline(lafite32)(["a large red circle", "a small blue square"], [0, 1])
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8
    assert Image.open(lafite32 / "fakes-000016.png").size == (8 * 32, 8 * 32)   # 8 prompts x 8 seeds


def test_lafite_resume_with_the_same_command_line_is_exact(lafite32, shapes32, clip_run, copy_run, capsys):
    common = ["--data", shapes32, "--clip", clip_run, "--preset", "test"]
    r = dry_run(capsys, "lafite", *common, "--resume", lafite32, "--kimg", 0.032)
    assert r["start"] == "exact resume" and r["config"]["resolution"] == 32
    assert dry_run(capsys, "lafite", *common)["config"]["resolution"] == 0   # a new run: the data's
    run = copy_run(lafite32)
    cli("train", "lafite", *common, "--resume", run, "--kimg", 0.032, "--outdir", run.parent)
    assert "resuming" in (run / "log.txt").read_text() and (run / "snapshot-000032").is_dir()
    assert load_snapshot(run).meta["net"]["resolution"] == 32
    assert json.loads((run / "config.json").read_text())["config"]["resolution"] == 32


def test_a_run_from_before_the_option_still_resumes_exactly(lafite_run, shapes16, clip_run, copy_run, capsys):
    """A snapshot whose config predates --resolution (no key) resumes exactly: a missing option counts as
    unchanged at its default."""
    run = copy_run(lafite_run)
    for cfg_file in [run / "config.json", *run.glob("snapshot-*/config.json")]:
        meta = json.loads(cfg_file.read_text())
        meta["config"].pop("resolution", None)
        cfg_file.write_text(json.dumps(meta))
    r = dry_run(capsys, "lafite", "--data", shapes16, "--clip", clip_run, "--preset", "test", "--resume", run,
                "--kimg", 0.064)
    assert r["start"] == "exact resume"


def test_a_refused_start_leaves_no_run_directory(tmp_path, clip_run, cli_error):
    data = make_dataset(tmp_path / "d24", 4, (24, 24))
    cli_error("train", "lafite", "--data", data, "--clip", clip_run, "--preset", "test", "--outdir", tmp_path / "runs")
    assert not any((tmp_path / "runs").iterdir())


def test_lafite_shards_follow_the_same_rule(shapes32, clip_run, tmp_path):
    from t2i.models.lafite.trainer import LafiteConfig, LafiteFamily

    cli("data", "shards", shapes32, tmp_path / "s32", "--shard_size", 16)
    cfg = LafiteConfig(data=str(tmp_path / "s32"), clip=str(clip_run), preset="test", workers=0)
    family = LafiteFamily(cfg, Dist(), log=lambda m: None)
    assert family.net.resolution == cfg.resolution == 32 and family.G.cfg.resolution == 32
    assert family.sample_images().shape[-2:] == (32, 32)
    cli("data", "shards", make_dataset(tmp_path / "d24", 4, (24, 24)), tmp_path / "s24", "--shard_size", 4)
    cfg = LafiteConfig(data=str(tmp_path / "s24"), clip=str(clip_run), preset="test", workers=0)
    with pytest.raises(T2IError, match=r"is 24x24; LAFITE preset 'test' builds square powers of two from 16 "
                                       r"to 128 \(16, 32, 64, 128\): repack the data with `t2i data pack "
                                       r"--width 32 --height 32`"):
        LafiteFamily(cfg, Dist(), log=lambda m: None)


def test_lafite_fine_tune_keeps_the_snapshot_resolution():
    from t2i.models.lafite.networks import PRESETS
    from t2i.models.lafite.trainer import LafiteConfig, fit_resolution

    net = copy.deepcopy(PRESETS["test"])
    net.resolution = 32
    cfg = LafiteConfig(data="d", preset="test")             # a snapshot from before the option: resolution 0
    assert fit_resolution((32, 32), net, cfg, from_snapshot=True) == 32
    with pytest.raises(T2IError, match="'d' is 16x16 but the snapshot resumed from works at 32x32"):
        fit_resolution((16, 16), net, cfg, from_snapshot=True)
    with pytest.raises(T2IError, match="--resolution 64, but the snapshot's networks are 32x32"):
        fit_resolution((32, 32), net, LafiteConfig(data="d", preset="test", resolution=64), from_snapshot=True)


def test_unbuildable_sizes_are_refused_with_the_sizes_that_work(shapes32, clip_run, tmp_path, cli_error):
    out = ["--outdir", tmp_path / "runs"]
    lafite = ["train", "lafite", "--clip", clip_run, "--preset", "test", *out]
    vqgan = ["train", "vqgan", "--preset", "test", *out]
    for size, near in (((24, 24), 32), ((8, 8), 16), ((32, 16), 32)):
        data = make_dataset(tmp_path / f"d{size[0]}x{size[1]}", 4, size)
        msg = cli_error(*lafite, "--data", data)
        assert msg.count("\n") == 1 and f"is {size[0]}x{size[1]}; LAFITE preset 'test' builds square powers of " \
            f"two from 16 to 128 (16, 32, 64, 128): repack the data with `t2i data pack --width {near} " \
            f"--height {near}`" in msg
        msg = cli_error(*vqgan, "--data", data)
        assert msg.count("\n") == 1 and f"is {size[0]}x{size[1]}; VQGAN preset 'test' builds square powers of " \
            f"two from 16 up (16, 32, 64, ...): repack the data with `t2i data pack --width {near}" in msg
    # --resolution states the size; it must be buildable, and the data must have it (never resized).
    assert "--resolution 48: LAFITE preset 'test' builds square powers of two from 16 to 128" in cli_error(
        *lafite, "--data", shapes32, "--resolution", 48)
    assert "--resolution 256: LAFITE preset 'test' builds" in cli_error(*lafite, "--data", shapes32,
                                                                        "--resolution", 256)
    assert "--resolution 8: VQGAN preset 'test' builds square powers of two from 16 up" in cli_error(
        *vqgan, "--data", shapes32, "--resolution", 8)
    msg = cli_error(*lafite, "--data", shapes32, "--resolution", 64)
    assert "--resolution 64 but dataset" in msg and "is 32x32; images are never resized" in msg
    assert "--resolution 16 but dataset" in cli_error(*vqgan, "--data", shapes32, "--resolution", 16)
    cli("train", "lafite", "--data", shapes32, "--clip", clip_run, "--preset", "test", "--resolution", 32,
        "--kimg", 0.008, *out)   # stating the data's own size is fine


# ----------------------------------------------------------------------------------------------
# VQGAN and DALL-E

def test_vqgan_builds_at_the_data_resolution_and_resumes_exactly(vqgan32, shapes32, capsys):
    assert json.loads((vqgan32 / "config.json").read_text())["config"]["resolution"] == 32
    snap = load_snapshot(vqgan32)
    assert snap.meta["net"]["resolution"] == 32 and snap.meta["config"]["resolution"] == 32
    assert "at 32px -> 16x16 tokens" in (vqgan32 / "log.txt").read_text()
    r = dry_run(capsys, "vqgan", "--data", shapes32, "--preset", "test", "--resume", vqgan32, "--kimg", 0.032)
    assert r["start"] == "exact resume" and r["config"]["resolution"] == 32


def test_vqgan_crop_below_what_the_discriminator_scores(shapes32, tmp_path, cli_error):
    common = ["train", "vqgan", "--data", shapes32, "--preset", "test", "--crop", 8, "--outdir", tmp_path]
    msg = cli_error(*common, "--disc_start_kimg", 0, "--kimg", 0.008)
    assert "--crop 8 is smaller than the 12 px the patch discriminator scores" in msg and "at least 12" in msg
    cli(*common, "--kimg", 0.008)   # the discriminator starts at 50 kimg, after this run


def test_dalle_takes_the_resolution_of_its_vqgan(vqgan32, shapes32, runs32, tmp_path, cli_error):
    cli("train", "dalle", "--data", shapes32, "--vqgan", vqgan32, "--preset", "test", "--bpe_vocab", 300,
        "--kimg", 0.016, "--outdir", tmp_path)
    (run,) = tmp_path.glob("*-dalle-test")
    meta = load_snapshot(run).meta
    assert meta["net"]["image_len"] == 16 * 16 and meta["vqgan"]["resolution"] == 32
    cli("generate", "a large red circle", "--model", run, "--n", 2, "--guidance", 1, "--out", tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").size == (2 * 32, 32)
    small = make_dataset(tmp_path / "d16", 4, (16, 16))
    msg = cli_error("train", "dalle", "--data", small, "--vqgan", vqgan32, "--preset", "test", "--outdir", tmp_path)
    assert "is 16x16, smaller than the 32x32 images of the VQGAN" in msg and "never enlarged" in msg
    assert f"t2i train vqgan --data {small}" in msg

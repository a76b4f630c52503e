"""Training from shards (streamed, exact resume, per-batch CLIP features) and from image-only data."""

import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli
from t2i.data.dataset import DatasetWriter, ImageTextDataset
from t2i.data.features import compute_features
from t2i.data.loader import stream_batches
from t2i.data.shards import MANIFEST, ShardStream, open_shard_set, write_shards
from t2i.errors import T2IError
from t2i.training.distributed import Dist
from t2i.training.snapshot import load_snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


def make_dataset(path, n, size=8, seed=0):
    """n random images with one caption each, and attributes {"id": seed * 1000 + i}."""
    rng = np.random.default_rng(seed)
    with DatasetWriter(path, path.name, (size, size)) as w:
        for i in range(n):
            w.add(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), [f"caption {seed} {i}"],
                  {"id": seed * 1000 + i})
    return path


def stats_lines(run):
    return [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------
# The stream itself

def test_stream_is_the_epochs_in_order_and_resumes_at_any_step_for_any_workers(tmp_path):
    write_shards(make_dataset(tmp_path / "a", 10), tmp_path / "a-shards", 3, progress=False)  # 3 + 3 + 3 + 1
    write_shards(make_dataset(tmp_path / "b", 6, seed=1), tmp_path / "b-shards", 4, progress=False)  # 4 + 2
    spec = f"{tmp_path / 'a-shards' / MANIFEST},{tmp_path / 'b-shards'}"  # a split of two shard lists
    shards = open_shard_set(spec)
    assert shards.samples == 16 and len(shards.shards) == 6 and shards.resolution == (8, 8)
    pixels = {}  # first pixel -> sample id, to name streamed images
    for name, seed in (("a", 0), ("b", 1)):
        for i, item in enumerate(ImageTextDataset(tmp_path / name)):
            pixels[tuple(item["image"][:, 0, 0].tolist())] = seed * 1000 + i

    def ids(batches):
        return [pixels[tuple(image[:, 0, 0].tolist())] for b in batches for image in b["image"]]

    def stream(start, rank, world, workers, steps):
        return list(itertools.islice(stream_batches(spec, lambda item, g: item, start, 3, 7, rank, world, (8, 8),
                                                    workers), steps))

    epochs = {}
    for world in (1, 2):
        for rank in range(world):
            full = stream(0, rank, world, 0, 12)  # 36 samples: several epochs, batches straddling them
            expected = []
            for epoch in range(6):
                epochs[world, rank, epoch] = [a["id"] for _, _, a in ShardStream(spec.split(","), rank, world, 7,
                                                                                 epoch)]
                expected += epochs[world, rank, epoch]
            assert ids(full) == expected[:36]  # step k = samples [3k, 3k + 3) of the epochs in a row
            for start in (1, 5, 9):  # step 5 and 9 begin inside later epochs
                assert ids(stream(start, rank, world, 0, 3)) == ids(full[start:start + 3])
    for epoch in range(6):  # each epoch reads every sample once, over the ranks together
        assert sorted(epochs[1, 0, epoch]) == sorted(epochs[2, 0, epoch] + epochs[2, 1, epoch]) == sorted(pixels.values())
    assert epochs[1, 0, 0] != epochs[1, 0, 1]
    # Workers decode in turns but the batches are the same, resumed or not.
    with_workers = stream(5, 1, 2, 2, 4)
    assert ids(with_workers) == ids(stream(5, 1, 2, 0, 4))
    assert with_workers[0]["captions"] == [[f"caption {i // 1000} {i % 1000}"] for i in ids(with_workers[:1])]


def test_shard_lists_are_checked_before_training(tmp_path):
    write_shards(make_dataset(tmp_path / "a", 4), tmp_path / "a-shards", 2, progress=False)
    write_shards(make_dataset(tmp_path / "big", 2, size=16), tmp_path / "big-shards", 2, progress=False)
    with pytest.raises(T2IError, match=r"mixes resolutions .*8x8.*16x16"):
        open_shard_set(f"{tmp_path / 'a-shards'},{tmp_path / 'big-shards'}")
    with pytest.raises(T2IError, match="shard-000000.tar is not a shard list; .*shards.json"):
        open_shard_set(str(tmp_path / "a-shards" / "shard-000000.tar"))
    manifest = json.loads((tmp_path / "a-shards" / MANIFEST).read_text())
    del manifest["resolution"]  # a hand-written list: the first image tells the resolution
    (tmp_path / "a-shards" / MANIFEST).write_text(json.dumps(manifest))
    assert open_shard_set(str(tmp_path / "a-shards")).resolution == (8, 8)
    (tmp_path / "a-shards" / "shard-000001.tar").write_bytes(b"")  # damaged after listing
    with pytest.raises(T2IError, match="shard-000001.tar is damaged"):  # a worker's error, with its own message
        list(itertools.islice(stream_batches(str(tmp_path / "a-shards"), lambda item, g: item, 0, 2, 0, 0, 1,
                                             (8, 8), workers=1), 3))


# ----------------------------------------------------------------------------------------------
# `t2i train vqgan` and `t2i train lafite` from shards

@pytest.fixture(scope="module")
def shapes_shards(shapes16, tmp_path_factory):
    """shapes16 as 7 shards (6 x 10 + 4): an epoch is 8 steps of batch 8, and ranks of 2 would get unequal halves."""
    out = tmp_path_factory.mktemp("stream") / "shards"
    cli("data", "shards", shapes16, out, "--shard_size", 10)
    return out


def test_vqgan_streams_shards_with_crops_and_resumes_exactly(shapes16, shapes_shards, tmp_path, cli_error):
    common = ["--data", shapes_shards, "--preset", "test", "--batch", 8, "--mirror", 1, "--crop", 8,
              "--restart_patience", 2]
    cli("train", "vqgan", *common, "--kimg", 0.032, "--metrics", "psnr", "--outdir", tmp_path / "a")
    (run,) = (tmp_path / "a").glob("00000-shards-vqgan-test")
    assert {"reals.png", "fakes-000032.png", "snapshot-000016", "snapshot-000032"} <= {p.name for p in run.iterdir()}
    assert [line["kimg"] for line in stats_lines(run)] == [0.016, 0.032]
    assert "64 images streamed from 7 shards" in (run / "log.txt").read_text()
    assert json.loads((run / "metric-psnr.jsonl").read_text().splitlines()[-1])["results"]["n"] == 64
    # Reals: the first 64 samples in shard order, i.e. the dataset's images.
    reals = torch.from_numpy(np.array(Image.open(run / "reals.png"))).permute(2, 0, 1)
    assert torch.equal(reals[:, :16, 16:32], ImageTextDataset(shapes16)[1]["image"])
    # Resumed past an epoch boundary (step 8) with another number of workers: still an exact resume,
    # equal bit for bit to an uninterrupted run.
    cli("train", "vqgan", *common, "--kimg", 0.08, "--workers", 0, "--resume", run, "--outdir", tmp_path / "a")
    assert "resuming" in (run / "log.txt").read_text() and (run / "snapshot-000080").is_dir()
    cli("train", "vqgan", *common, "--kimg", 0.08, "--workers", 1, "--outdir", tmp_path / "b")
    (straight,) = (tmp_path / "b").glob("*-vqgan-test")
    resumed = load_snapshot(run / "snapshot-000080").tensors
    direct = load_snapshot(straight / "snapshot-000080").tensors
    assert resumed.keys() == direct.keys() and all(torch.equal(resumed[k], direct[k]) for k in resumed)
    msg = cli_error("train", "vqgan", "--data", shapes_shards, "--preset", "tiny", "--outdir", tmp_path)
    assert "is 16x16; VQGAN preset 'tiny' builds square powers of two from 32 up" in msg   # tiny's D: 24 px at least
    assert "t2i data pack --width 32 --height 32" in msg


def test_lafite_stream_encodes_each_batch_as_the_feature_cache_does(shapes16, shapes_shards, clip_run):
    from t2i.models.lafite.trainer import LafiteConfig, LafiteFamily

    torch.manual_seed(0)
    cfg = LafiteConfig(data=str(shapes_shards), clip=str(clip_run), preset="test", mixing_prob=0.5, workers=0)
    family = LafiteFamily(cfg, Dist(), log=lambda m: None)
    batch = next(family.batches(3, 8, 0, 1, 0))
    dataset = ImageTextDataset(shapes16)
    index = {dataset[i]["image"].numpy().tobytes(): i for i in range(len(dataset))}
    feats = compute_features(dataset, family.clip)
    for image, img_fts, txt_fts in zip(batch["image"], batch["img_fts"], batch["txt_fts"]):
        i = index[image.numpy().tobytes()]
        assert torch.allclose(img_fts, feats.image[i], atol=1e-5)
        captions = feats.text[feats.offsets[i]:feats.offsets[i + 1]]  # one of the image's own captions
        assert (captions - txt_fts).abs().amax(1).min() < 1e-5


def test_lafite_trains_from_shards(shapes_shards, clip_run, tmp_path, cli_error):
    common = ["--data", shapes_shards, "--clip", clip_run, "--preset", "test", "--outdir", tmp_path]
    cli("train", "lafite", *common, "--mixing_prob", 0.5, "--kimg", 0.032)
    (run,) = tmp_path.glob("*-shards-lafite-test")
    lines = stats_lines(run)
    assert [line["kimg"] for line in lines] == [0.016, 0.032]
    assert all({"Loss/G/adv", "Loss/G/itc", "Loss/D/itd"} <= line.keys() for line in lines)
    assert {"snapshot-000032", "fakes-000032.png"} <= {p.name for p in run.iterdir()}
    assert "CLIP features per batch" in (run / "log.txt").read_text()
    assert not shapes_shards.with_name("shards.features").exists()  # nothing precomputed for shards
    assert "evaluate the snapshots afterwards with `t2i eval" in cli_error("train", "lafite", *common,
                                                                            "--metrics", "fid")
    assert "write its shards (`t2i data pack --subset N" in cli_error("train", "lafite", *common, "--subset", 8)


def test_in_memory_trainers_refuse_shards_with_the_fix(shapes_shards, tmp_path, cli_error):
    for argv in (["train", "dalle", "--vqgan", tmp_path], ["train", "clip"], ["train", "bpe"]):
        msg = cli_error(*argv, "--data", shapes_shards, "--outdir", tmp_path)
        assert msg.startswith(f"--data {shapes_shards} names shards, but t2i {' '.join(argv[:2])} reads a canonical")
        assert "give the dataset folder or zip the shards were written from" in msg and msg.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# Image-only (language-free) data

def test_image_only_data_packs_shards_and_trains_language_free_lafite_only(shapes16, clip_run, tmp_path,
                                                                            cli_error):
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(8):
        ImageTextDataset(shapes16).read_image(i).save(src / f"img{i}.png")
    size = ["--width", 16, "--height", 16, "--transform", "none"]
    msg = cli_error("data", "pack", src, tmp_path / "x", *size)
    assert "no usable image and caption pairs" in msg and "or pass --no_captions for an image-only dataset" in msg
    (src / "img0.txt").write_text("ignored with --no_captions\n")
    cli("data", "pack", src, tmp_path / "free", *size, "--no_captions")
    free = ImageTextDataset(tmp_path / "free")
    assert free.image_only and len(free) == 8 and all(r["captions"] == [] for r in free.records)
    assert free[0]["captions"] == [] and json.loads((tmp_path / "free" / "report.json").read_text())["image_only"]
    cli("data", "shards", tmp_path / "free", tmp_path / "free-shards", "--shard_size", 4)
    assert json.loads((tmp_path / "free-shards" / MANIFEST).read_text())["image_only"] is True
    assert [caps for _, caps, _ in ShardStream(tmp_path / "free-shards")] == [[]] * 8

    for data in (tmp_path / "free", tmp_path / "free-shards"):  # in memory, and streamed
        cli("train", "lafite", "--data", data, "--clip", clip_run, "--preset", "test", "--mixing_prob", 1,
            "--kimg", 0.008, "--outdir", tmp_path / "runs")
        (run,) = (tmp_path / "runs").glob(f"*-{data.name}-lafite-test")
        assert (run / "snapshot-000008").is_dir() and (run / "fakes-000008.png").is_file()
        assert "none, the data has no captions: CLIP image features" in (run / "log.txt").read_text()
        msg = cli_error("train", "lafite", "--data", data, "--clip", clip_run, "--preset", "test",
                        "--mixing_prob", 0.5, "--outdir", tmp_path / "runs")
        assert "image-only data (no captions), but --mixing_prob 0.5" in msg and "--mixing_prob 1" in msg
        assert str(data) in msg
    for argv in (["train", "clip"], ["train", "bpe"], ["train", "dalle", "--vqgan", tmp_path]):
        msg = cli_error(*argv, "--data", tmp_path / "free", "--outdir", tmp_path / "runs")
        assert f"'{tmp_path / 'free'}' is image-only (no captions), but t2i train {argv[1]} needs captions" in msg


def test_a_dataset_is_captioned_or_image_only_never_a_mix(tmp_path):
    image = Image.new("RGB", (4, 4))
    with DatasetWriter(tmp_path / "free", "free", (4, 4), image_only=True) as w:
        w.add(image, [])
        with pytest.raises(T2IError, match="image-only dataset takes no captions"):
            w.add(image, ["a caption"])
    with DatasetWriter(tmp_path / "captioned", "captioned", (4, 4)) as w:
        with pytest.raises(T2IError, match="--no_captions"):
            w.add(image, [])
        w.add(image, ["a caption"])
        w.add(image, ["another"])
    assert "image_only" not in json.loads((tmp_path / "captioned" / "dataset.json").read_text())

    def edit(folder, change):
        meta = json.loads((folder / "dataset.json").read_text())
        change(meta)
        (folder / "dataset.json").write_text(json.dumps(meta))

    edit(tmp_path / "captioned", lambda m: m["images"][1].update(captions=[]))
    with pytest.raises(T2IError, match=r"entry 1 .*has no 'captions'.*--no_captions"):
        ImageTextDataset(tmp_path / "captioned")
    edit(tmp_path / "free", lambda m: m["images"][0].update(captions_ko=["캡션"]))
    with pytest.raises(T2IError, match="entry 0 .*has captions, but dataset.json marks the dataset image_only"):
        ImageTextDataset(tmp_path / "free")

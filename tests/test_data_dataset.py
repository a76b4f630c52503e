"""Tests for t2i.data.dataset: writing and reading the canonical format, atomicity, errors."""

import json
import os
import pickle
import stat
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.data.dataset import DatasetWriter, ImageTextDataset, collate
from t2i.data.transforms import center_crop
from t2i.errors import T2IError


def _image(seed: int, size=(8, 6)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _write(dest, n=3, **kwargs):
    with DatasetWriter(dest, "tiny", (8, 6), **kwargs) as writer:
        for i in range(n):
            name = writer.add(_image(i), [f"caption {i}", f"other {i}"], {"i": i},
                              {"ko": [f"캡션 {i}"]})
            assert name == f"{i:08d}.png"
    return dest


@pytest.fixture(params=["folder", "zip"])
def dest(request, tmp_path):
    return tmp_path / ("data.zip" if request.param == "zip" else "data")


def test_round_trip(dest):
    ds = ImageTextDataset(_write(dest))
    assert len(ds) == 3 and ds.name == "tiny" and ds.resolution == (8, 6)
    assert ds.is_zip == (dest.suffix == ".zip")
    for i in range(3):
        item = ds[i]
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 6, 8)
        assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), np.asarray(_image(i)))
        assert item["captions"] == [f"caption {i}", f"other {i}"]
        assert item["index"] == i and item["attributes"] == {"i": i}
        assert np.array_equal(np.asarray(ds.read_image(i)), np.asarray(_image(i)))
    assert ds.records[1]["captions_ko"] == ["캡션 1"]
    assert ImageTextDataset(dest, caption_lang="ko")[2]["captions"] == ["캡션 2"]
    batch = collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 6, 8) and batch["index"].tolist() == [0, 1]
    assert batch["captions"][1] == ["caption 1", "other 1"]


def test_zip_is_uncompressed_and_leaves_no_temporaries(tmp_path):
    dest = _write(tmp_path / "d.zip")
    with zipfile.ZipFile(dest) as zf:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
        assert sorted(zf.namelist()) == ["00000000.png", "00000001.png", "00000002.png", "dataset.json"]
        meta = json.loads(zf.read("dataset.json"))
    assert meta["format"] == "t2i-dataset" and meta["version"] == 1 and meta["resolution"] == [8, 6]
    assert [p.name for p in tmp_path.iterdir()] == ["d.zip"]


def test_transform_is_applied(dest):
    ds = ImageTextDataset(_write(dest), transform=lambda im: center_crop(im, 4, 4))
    assert ds[0]["image"].shape == (3, 4, 4)


def test_fingerprint_stable_and_sensitive(tmp_path):
    a = ImageTextDataset(_write(tmp_path / "a"))
    b = ImageTextDataset(_write(tmp_path / "b"))
    assert a.fingerprint() == b.fingerprint() == a.fingerprint()
    assert len(a.fingerprint()) == 64
    _image(99).save(tmp_path / "b" / "00000001.png")  # same size, other pixels
    assert ImageTextDataset(tmp_path / "b").fingerprint() != a.fingerprint()
    za = ImageTextDataset(_write(tmp_path / "a.zip"))
    assert za.fingerprint() == ImageTextDataset(_write(tmp_path / "b.zip")).fingerprint()
    with DatasetWriter(tmp_path / "c.zip", "tiny", (8, 6)) as writer:
        for i in range(3):
            writer.add(_image(i + (i == 2)), [f"caption {i}", f"other {i}"], {"i": i}, {"ko": [f"캡션 {i}"]})
    assert ImageTextDataset(tmp_path / "c.zip").fingerprint() != za.fingerprint()
    meta = json.loads((tmp_path / "a" / "dataset.json").read_text())
    meta["images"][0]["captions"] = ["changed"]
    (tmp_path / "a" / "dataset.json").write_text(json.dumps(meta))
    assert ImageTextDataset(tmp_path / "a").fingerprint() != b.fingerprint()


@pytest.mark.parametrize("existing", [False, True])
def test_exception_mid_write_leaves_nothing(dest, existing):
    if existing:
        _write(dest, n=1)
    before = sorted(p.name for p in dest.parent.iterdir())
    with pytest.raises(RuntimeError, match="boom"):
        with DatasetWriter(dest, "tiny", (8, 6), overwrite=True) as writer:
            writer.add(_image(0), ["a"])
            raise RuntimeError("boom")
    assert sorted(p.name for p in dest.parent.iterdir()) == before
    if existing:
        assert len(ImageTextDataset(dest)) == 1


def test_refuses_to_overwrite_unless_asked(dest):
    _write(dest, n=1)
    with pytest.raises(T2IError, match="--overwrite") as e:
        DatasetWriter(dest, "tiny", (8, 6))
    assert str(dest) in str(e.value)
    _write(dest, n=2, overwrite=True)
    assert len(ImageTextDataset(dest)) == 2
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]


def test_empty_existing_folder_is_fine(tmp_path):
    (tmp_path / "d").mkdir()
    assert len(ImageTextDataset(_write(tmp_path / "d"))) == 3


def test_writer_rejects_bad_images_and_captions(tmp_path):
    with DatasetWriter(tmp_path / "d", "tiny", (8, 6)) as writer:
        with pytest.raises(T2IError, match="9x6 differs from the dataset resolution 8x6"):
            writer.add(_image(0, (9, 6)), ["a"])
        with pytest.raises(T2IError, match="not RGB"):
            writer.add(_image(0).convert("L"), ["a"])
        for bad in ([], [""], "a string"):
            with pytest.raises(T2IError, match="non-empty list"):
                writer.add(_image(0), bad)
        writer.add(_image(0), ["fine"])
    assert len(ImageTextDataset(tmp_path / "d")) == 1


def _edit_meta(folder, edit):
    meta = json.loads((folder / "dataset.json").read_text())
    edit(meta)
    (folder / "dataset.json").write_text(json.dumps(meta))


def test_reader_errors(tmp_path):
    with pytest.raises(T2IError, match="does not exist"):
        ImageTextDataset(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(T2IError, match="no dataset.json.*t2i data pack"):
        ImageTextDataset(tmp_path / "plain")
    bad = _write(tmp_path / "bad")
    (bad / "dataset.json").write_text('{"format": "t2i-dataset", "version": 1, ')
    with pytest.raises(T2IError, match="not valid JSON"):
        ImageTextDataset(bad)
    folder = _write(tmp_path / "d")
    _edit_meta(folder, lambda m: m["images"][1].update(captions=[]))
    with pytest.raises(T2IError, match=r"entry 1 \(00000001.png\) has no 'captions'"):
        ImageTextDataset(folder)
    with pytest.raises(T2IError, match="'captions_fr'.*languages it has: \\['en', 'ko'\\]"):
        ImageTextDataset(_write(tmp_path / "e"), caption_lang="fr")
    folder = _write(tmp_path / "f")
    (folder / "00000002.png").unlink()
    with pytest.raises(T2IError, match="image 00000002.png listed in dataset.json .* is missing"):
        ImageTextDataset(folder)
    folder = _write(tmp_path / "g")
    _image(0, (6, 6)).save(folder / "00000001.png")
    ds = ImageTextDataset(folder)
    ds[0]
    with pytest.raises(T2IError, match="00000001.png is 6x6 but the dataset resolution is 8x6"):
        ds[1]
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(T2IError, match="not a valid zip"):
        ImageTextDataset(tmp_path / "junk.zip")


def test_zip_dataset_pickles_and_works_in_dataloader_workers(tmp_path):
    ds = ImageTextDataset(_write(tmp_path / "d.zip", n=6))
    ds[0]  # opens the handle in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[3]["image"], ds[3]["image"])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    indices = [i for batch in loader for i in batch["index"].tolist()]
    assert indices == list(range(6))


def test_written_files_get_ordinary_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        folder, archive = _write(tmp_path / "d"), _write(tmp_path / "d.zip")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE(archive.stat().st_mode) == 0o644

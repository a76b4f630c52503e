"""Output paths that cannot be written (a parent that is a file, permission denied, a read-only file system,
too long a name) end every command in one `t2i: error:` line naming the path, never in a traceback."""

import errno
import os
from pathlib import Path

import pytest

import t2i.cli.generate
from t2i.cli import main
from t2i.errors import T2IError
from t2i.io import os_error_message, prepare_output


@pytest.fixture
def a_file(tmp_path) -> Path:
    """A plain file, where commands will be asked to create folders (as /dev/null/x does)."""
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


def test_prepare_output_creates_folders_and_leaves_nothing_else(tmp_path):
    assert prepare_output(tmp_path / "a" / "b" / "grid.png", "the grid") == tmp_path / "a" / "b" / "grid.png"
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == []  # the probe is gone
    prepare_output(tmp_path / "c" / "d", "the folder", directory=True)
    assert (tmp_path / "c" / "d").is_dir() and not any((tmp_path / "c" / "d").iterdir())


def test_prepare_output_errors_name_the_path_and_the_fix(tmp_path, a_file, monkeypatch):
    with pytest.raises(T2IError, match=rf"cannot write the grid '{a_file}/x.png': '{a_file}' is a file, not a folder"):
        prepare_output(a_file / "x.png", "the grid")
    with pytest.raises(T2IError, match=rf"'{a_file}/deeper/x.png': '{a_file}' is a file"):
        prepare_output(a_file / "deeper" / "x.png", "the grid")
    with pytest.raises(T2IError, match=rf"the folder '{a_file}': '{a_file}' is a file, not a folder"):
        prepare_output(a_file, "the folder", directory=True)
    with pytest.raises(T2IError, match="is a folder; give a file path, e.g. "):
        prepare_output(tmp_path, "the grid")
    with pytest.raises(T2IError, match="File name too long; shorten the file or folder name"):
        prepare_output(tmp_path / ("x" * 300 + ".png"), "the grid")

    def refuse(code):
        def mkstemp(*args, **kwargs):
            raise OSError(code, os.strerror(code), kwargs["dir"] / (kwargs["prefix"] + "probe.tmp"))
        return mkstemp

    monkeypatch.setattr("tempfile.mkstemp", refuse(errno.EACCES))  # root ignores chmod: simulate it
    with pytest.raises(T2IError) as e:
        prepare_output(tmp_path / "g.png", "the grid")
    assert str(e.value) == (f"cannot write the grid '{tmp_path / 'g.png'}': Permission denied; choose a folder you "
                            "may write to, or change its permissions")  # the path asked for, not the probe's
    monkeypatch.setattr("tempfile.mkstemp", refuse(errno.EROFS))
    with pytest.raises(T2IError, match="Read-only file system; the file system is read-only; choose a folder on a"):
        prepare_output(tmp_path / "g.png", "the grid")


def test_os_error_message():
    assert os_error_message(OSError(errno.ENOSPC, "No space left on device", "/data/x.png")) == \
        "No space left on device: '/data/x.png'; free some space, or choose a folder on another disk"
    assert os_error_message(OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")) == \
        "Invalid cross-device link: '/a' -> '/b'; check the path"
    assert os_error_message(OSError("no errno at all")) == "no errno at all; check the path"


def bad_outputs(a_file: Path, shapes16: Path, tmp_path: Path) -> dict[str, list]:
    """Each command with an output path inside a file."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes((shapes16 / "00000000.png").read_bytes())
    (src / "a.txt").write_text("a red circle\n")
    bad = a_file / "x"
    return {
        "generate --out": ["generate", "a red circle", "--out", f"{bad}.png"],
        "generate --outdir": ["generate", "a red circle", "--outdir", bad],
        "eval --out": ["eval", "--out", bad, "--n", 1],
        "data shapes": ["data", "shapes", "--out", bad, "--n", 2, "--size", 16],
        "data pack": ["data", "pack", src, bad, "--width", 16, "--height", 16, "--transform", "none"],
        "data shards": ["data", "shards", shapes16, bad, "--shard_size", 32],
        "train bpe": ["train", "bpe", "--data", shapes16, "--vocab", 300, "--outdir", bad],
        "train clip": ["train", "clip", "--data", shapes16, "--preset", "tiny", "--kimg", 0.01, "--outdir", bad],
    }


@pytest.mark.parametrize("command", ["generate --out", "generate --outdir", "eval --out", "data shapes",
                                     "data pack", "data shards", "train bpe", "train clip"])
def test_every_command_gives_one_line_for_an_output_inside_a_file(command, a_file, shapes16, tmp_path, cli_error):
    argv = bad_outputs(a_file, shapes16, tmp_path)[command]
    err = cli_error(*argv)
    assert f"'{a_file}' is a file, not a folder" in err and err.count("\n") == 1
    assert a_file.read_text() == "not a folder"


def test_an_oserror_escaping_a_command_is_one_line(monkeypatch, cli_error):
    def full_disk(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/images/00012.png")

    monkeypatch.setattr(t2i.cli.generate, "run", full_disk)
    assert cli_error("generate", "a red circle") == \
        "No space left on device: '/data/images/00012.png'; free some space, or choose a folder on another disk\n"


@pytest.mark.skipif(not Path("/dev/null").exists() or Path("/dev/null").is_dir(), reason="needs /dev/null")
def test_dev_null_as_a_folder(cli_error, tmp_path):
    """The issue's case: `t2i generate --out /dev/null/x.png`."""
    assert cli_error("generate", "a red circle", "--out", "/dev/null/x.png") == (
        "cannot write the grid --out '/dev/null/x.png': '/dev/null' is a file, not a folder, so nothing can be "
        "written inside it; choose another path\n")
    assert main(["data", "shapes", "--out", "/dev/null/x", "--n", "1", "--size", "16"]) == 2

"""File-system helpers shared by every part of t2i: atomic writes, output paths checked before long
work (with one-line errors), and content hashes.

Everything a user could interrupt (snapshots, datasets, feature caches, FID statistics, reports) is
written into a hidden temporary sibling and moved into place with `os.replace`, so a process killed
at any moment leaves the previous file or folder, or the complete new one, never a half-written one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from t2i.errors import T2IError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_sibling(dest: str | os.PathLike, directory: bool = False) -> Path:
    """A new hidden temporary file or folder beside dest (`.<name>.XXXX.tmp`), so os.replace onto
    dest stays on one filesystem; permissions as a plain open()/mkdir() would give them (tempfile's
    0600/0700 would make a shared dataset unreadable)."""
    dest = Path(dest)
    kw = {"dir": dest.parent, "prefix": f".{dest.name}.", "suffix": ".tmp"}
    if directory:
        tmp = Path(tempfile.mkdtemp(**kw))
        os.chmod(tmp, 0o777 & ~_umask())
    else:
        fd, name = tempfile.mkstemp(**kw)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_umask())
    return tmp


def remove(path: Path) -> None:
    """Delete a file or folder if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _aside(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.old")


def replace_atomic(tmp: Path, dest: Path) -> None:
    """Move tmp onto dest. An existing folder (which os.replace cannot overwrite) is first set aside
    as `.<name>.old` and deleted after; a crash between the two renames is undone by
    `recover_replaced`, so dest is never lost."""
    dest = Path(dest)
    if (dest.is_dir() and not dest.is_symlink()) or (tmp.is_dir() and dest.exists()):
        old = _aside(dest)
        remove(old)
        os.replace(dest, old)
        os.replace(tmp, dest)
        remove(old)
    else:
        os.replace(tmp, dest)


def recover_replaced(dest: str | os.PathLike) -> bool:
    """Put back a dest that `replace_atomic` had set aside when the process died; True if it did."""
    dest = Path(dest)
    old = _aside(dest)
    if old.exists() and not dest.exists():
        os.replace(old, dest)
        return True
    return False


@contextmanager
def atomic_path(dest: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """`with atomic_path(dest) as tmp:` write tmp (a file, or a folder with directory=True); on a clean
    exit it replaces dest, on an exception it is deleted and dest is untouched."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(dest, directory)
    try:
        yield tmp
        replace_atomic(tmp, dest)
    finally:
        if tmp.exists():
            remove(tmp)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Write obj as UTF-8 JSON to path, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


# What to do about the errors an output path meets (the OSError's own strerror says what went wrong).
_FIXES = {
    errno.EACCES: "choose a folder you may write to, or change its permissions",
    errno.EPERM: "choose a folder you may write to, or change its permissions",
    errno.EROFS: "the file system is read-only; choose a folder on a writable disk",
    errno.ENAMETOOLONG: "shorten the file or folder name",
    errno.ENOSPC: "free some space, or choose a folder on another disk",
    errno.EDQUOT: "free some space, or choose a folder on another disk",
    errno.EISDIR: "give a file name, not a folder",
    errno.ENOENT: "check that the path exists",
}


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of path (or path itself) when it is not a folder, else None."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def os_error_message(e: OSError, named: str | os.PathLike | None = None) -> str:
    """One line for an OSError: what went wrong, the path(s) it names (but `named`, which the caller's
    message already gives), and what to do about it."""
    names = [os.fsdecode(f) for f in (e.filename, e.filename2) if f is not None]
    shown = [] if named is not None and names == [os.fspath(named)] else names
    where = "".join(f": {n!r}" if i == 0 else f" -> {n!r}" for i, n in enumerate(shown))
    if e.errno in (errno.EEXIST, errno.ENOTDIR) and names:
        # mkdir through a file: "File exists: '/dev/null'" from pathlib, "Not a directory" from open()
        in_the_way = _file_in_the_way(Path(names[0]))
        if in_the_way is not None:
            return (f"{str(in_the_way)!r} is a file, not a folder, so nothing can be written inside it; "
                    "choose another path")
    fix = _FIXES.get(e.errno, "check the path")
    return f"{e.strerror or e}{where}; {fix}"


def prepare_output(path: str | os.PathLike, what: str, directory: bool = False) -> Path:
    """Check before any long work that `what` can be written at path: create the folder it goes in (path
    itself with directory=True) and a temporary file there, then delete it. Any OSError (a parent that is
    a file, permission denied, a read-only file system, too long a name) becomes a T2IError naming path."""
    path = Path(path)
    try:
        if not directory and path.is_dir():
            raise T2IError(f"{what} {str(path)!r} is a folder; give a file path, e.g. {str(path / 'out.png')!r}")
        (path if directory else path.parent).mkdir(parents=True, exist_ok=True)
        try:
            remove(temp_sibling(path / ".probe" if directory else path))
        except OSError as e:  # name the path asked for, not the probe
            e.filename, e.filename2 = str(path), None
            raise
    except OSError as e:
        raise T2IError(f"cannot write {what} {str(path)!r}: {os_error_message(e, path)}") from None
    return path


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB weights never sit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()

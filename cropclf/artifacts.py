"""Atomic artefact writing: a file or folder appears whole under its name, or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def write_text(path, text: str) -> Path:
    """Writes ``text`` to a temporary sibling, fsyncs it, then renames it over ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_plain) + "\n")


def write_bytes(path, data: bytes) -> Path:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename makes it visible
    return Path(path)


@contextlib.contextmanager
def atomic_file(path, suffix: str = ""):
    """Yields a temporary path beside ``path``; on success it is renamed to ``path``.

    For writers that want a file name (``model.save``, ``savefig``). ``suffix`` keeps the extension
    some writers insist on (Keras wants ``.keras``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix or path.suffix}", dir=path.parent)
    os.close(fd)
    with _renamed_into_place(tmp, path):
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)


@contextlib.contextmanager
def _renamed_into_place(tmp, path):
    """Renames ``tmp`` over ``path`` when the block succeeds; removes ``tmp`` when it fails (Ctrl-C too)."""
    try:
        yield
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def publish_copy(source, path) -> Path:
    """Makes ``path`` a copy of the file ``source`` atomically: a hard link (or a copy where the file
    system has none) under a temporary name, renamed over ``path``.

    Artefacts are never changed in place once renamed into place, so sharing an inode is safe.
    """
    source, path = Path(source), Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    remove(tmp)  # left by a killed process of the same id; it may share an inode with a checkpoint
    with _renamed_into_place(tmp, path):
        try:
            os.link(source, tmp)
        except OSError:  # no hard links here (some network and FAT file systems)
            shutil.copyfile(source, tmp)
            os.chmod(tmp, _FILE_MODE)
    return path


def remove(path) -> None:
    """Removes a file if it is there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def remove_temporaries(folder) -> list[Path]:
    """Removes the temporary files that writes killed half-way left in ``folder`` (not below it)."""
    folder = Path(folder)
    found = [p for p in folder.glob(".*.tmp*") if p.is_file()] if folder.is_dir() else []
    for p in found:
        remove(p)
    return found


@contextlib.contextmanager
def atomic_dir(path):
    """Yields a temporary folder beside ``path``; on success it replaces ``path`` whole.

    If anything fails (a full disk, Ctrl-C) the previous ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
_FILE_MODE = 0o666 & ~_UMASK  # mkstemp makes 0600 files; artefacts get the usual permissions


def _plain(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Not JSON serialisable: {type(obj).__name__}")

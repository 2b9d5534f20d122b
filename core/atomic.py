"""Atomic writes: a file or a directory appears whole under its final name, or not at all.

Everything is written under a temporary sibling name, fsynced, then renamed into place (``os.replace``), so a
crash or a full disk at any moment leaves the previous version (or nothing), never a half-written one. The one
home of this for fw: the model directory, checkpoints, run files, the retrieval index cache, the plugin cache.
Standard library only, so the light CLI verbs can use it.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def fsync_tree(path: Path) -> None:
    for item in sorted(Path(path).rglob("*")):
        if item.is_file():
            with open(item, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(path)


@contextlib.contextmanager
def atomic_directory(final: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory to fill; on success it becomes ``final`` in one rename. An existing
    ``final`` is replaced (moved aside first, deleted after), or with ``replace=False`` kept, and the new one
    discarded (another process built it meanwhile). On an exception the temporary directory is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield temporary
        fsync_tree(temporary)
        if not replace:
            _rename_unless_present(temporary, final)
            return
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(temporary, final)
        fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _rename_unless_present(temporary: Path, final: Path) -> None:
    try:
        os.replace(temporary, final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(temporary, ignore_errors=True)
    else:
        fsync_dir(final.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a fsynced temporary file and one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.",
                                     suffix=".tmp", delete=False) as handle:
        try:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            handle.close()
            os.unlink(handle.name)
            raise
    try:
        os.replace(handle.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))

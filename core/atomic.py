"""Atomic writes: a file or a directory appears whole under its final name, or not at all.

Everything is written under a temporary sibling name (``.<name>.tmp-…``), fsynced, then renamed into place
(``os.replace``), so a crash or a full disk at any moment leaves the previous version (or nothing), never a
half-written one. The one home of this for fw: the model directory, checkpoints, run files, predictions, the
retrieval index cache, the plugin cache. Standard library only, so the light CLI verbs can use it.

A write that fails for lack of space (``ENOSPC`` / ``EDQUOT``, also as safetensors and tokenizers report it from
Rust) is raised as :class:`DiskFull`: one line naming what was being written, the space left there and what was
kept. A process killed outright (``kill -9``) can leave a temporary sibling behind: its name starts with a dot,
nothing reads it as a model, and :func:`remove_leftovers` clears them.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fw.errors import FwError

#: errno values that mean "no space left" (a full disk, or a quota)
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFull(FwError, OSError):
    """A write failed for lack of space. Still an ``OSError`` (errno ``ENOSPC``) for code that handles those;
    :meth:`adding` appends what the caller knows was kept (a checkpoint to resume from …)."""

    def __init__(self, message: str, path: Path):
        super().__init__(errno.ENOSPC, message, str(path))

    def __str__(self) -> str:
        return self.strerror

    def adding(self, hint: str) -> DiskFull:
        return DiskFull(f"{self.strerror} {hint}", Path(self.filename))


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL_ERRNOS
    text = str(exc)  # Rust writers (safetensors, tokenizers) wrap the OS error in their own exception types
    return any(f"(os error {number})" in text for number in DISK_FULL_ERRNOS)


def free_space(path: Path) -> int | None:
    """Bytes free on the file system of ``path`` (its nearest existing parent), or None when unknown."""
    path = Path(path).absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            with contextlib.suppress(OSError):
                return shutil.disk_usage(candidate).free
            return None
    return None


def human_size(count: int | None) -> str:
    if count is None:
        return "unknown space"
    size = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def disk_full(final: Path, existed: bool) -> DiskFull:
    kept = f"the previous {final.name} is unchanged" if existed else "nothing of it was written"
    return DiskFull(f"no space left on the device writing {final} ({human_size(free_space(final))} free there); "
                    f"{kept}.", final)


@contextlib.contextmanager
def _translated_disk_full(final: Path, existed: bool) -> Iterator[None]:
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:  # noqa: BLE001 - any writer's way of saying "disk full" becomes DiskFull
        if is_disk_full(exc):
            raise disk_full(final, existed) from exc
        raise


# -- syncing -----------------------------------------------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_tree(path: Path) -> None:
    for item in sorted(Path(path).rglob("*")):
        if item.is_file():
            fsync_file(item)
    fsync_dir(path)


# -- directories -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_directory(final: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory to fill; on success it becomes ``final`` in one rename. An existing
    ``final`` is replaced (moved aside first, deleted after), or with ``replace=False`` kept, and the new one
    discarded (another process built it meanwhile). On an exception the temporary directory is removed; a full
    disk is raised as :class:`DiskFull`."""
    final = Path(final)
    existed = final.exists()
    with _translated_disk_full(final, existed):
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        temporary.chmod(0o777 & ~current_umask())  # mkdtemp makes it 0700; the result is a normal directory
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


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _rename_unless_present(temporary: Path, final: Path) -> None:
    try:
        os.replace(temporary, final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(temporary, ignore_errors=True)
    else:
        fsync_dir(final.parent)


# -- files -------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_file(path: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling path to write (with any library: ``to_parquet``, ``save_file`` …); on success it
    becomes ``path`` in one rename. With ``replace=False`` an existing ``path`` is never replaced: the new file is
    linked into place, and ``FileExistsError`` says another writer got there first. On an exception the temporary
    file is removed; a full disk is raised as :class:`DiskFull`."""
    path = Path(path)
    existed = path.exists()
    with _translated_disk_full(path, existed):
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
        os.close(descriptor)
        temporary = Path(name)
        try:
            yield temporary
            fsync_file(temporary)
            if replace:
                os.replace(temporary, path)
            else:
                os.link(temporary, path)
                temporary.unlink()
            fsync_dir(path.parent)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise


def write_text_atomic(path: Path, text: str, replace: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a fsynced temporary file and one rename."""
    with atomic_file(path, replace=replace) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, data: Any, replace: bool = True) -> None:
    write_text_atomic(path, json.dumps(data, indent=2), replace=replace)


# -- leftovers ---------------------------------------------------------------------------------------------------
def remove_leftovers(directory: Path) -> list[Path]:
    """Clear what killed writers left in ``directory``: temporary ``.<name>.tmp-*`` siblings are deleted, and a
    ``.<name>.old-*`` whose ``<name>`` is missing (killed between the two renames of a replace) is put back.
    Only call it while no other process writes there (fw holds the run lock). Returns what it removed."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for path in sorted(directory.glob(".*.old-*")):
        final = directory / path.name[1:].rsplit(".old-", 1)[0]
        if not final.exists():
            os.replace(path, final)
        else:
            _remove(path)
            removed.append(path)
    for path in sorted(directory.glob(".*.tmp-*")):
        _remove(path)
        removed.append(path)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()

"""A cache of the ``fw`` entry points, so the light CLI verbs skip scanning every installed distribution.

The cache is keyed on the modification times of the directories on ``sys.path``: installing or removing any
package changes its site-packages directory, which invalidates the cache. ``FW_NO_PLUGIN_CACHE=1`` disables it.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fw.atomic import write_text_atomic
from fw.plugin.lazy import resolve

CACHE_VERSION = 1


@dataclass(frozen=True)
class CachedEntryPoint:
    """The parts of an importlib.metadata.EntryPoint the registry uses."""

    name: str
    value: str
    dist_name: str
    dist_version: str

    def load(self) -> Any:
        module, _, attribute = self.value.partition(":")
        return resolve(f"{module}:{attribute}") if attribute else __import__(module, fromlist=["_"])


def cache_dir() -> Path:
    if os.environ.get("FW_CACHE_DIR"):
        return Path(os.environ["FW_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fw"


def _path_key() -> str:
    stamps = []
    for entry in sys.path:
        try:
            stamps.append([entry, os.stat(entry or ".").st_mtime_ns])
        except OSError:
            stamps.append([entry, None])
    payload = json.dumps([CACHE_VERSION, sys.version, stamps])
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _scan(group: str) -> list[CachedEntryPoint]:
    import importlib.metadata
    found = []
    for entry_point in importlib.metadata.entry_points(group=group):
        dist = getattr(entry_point, "dist", None)
        name, version = (dist.metadata["Name"] or dist.name, dist.version) if dist else ("unknown", "?")
        found.append(CachedEntryPoint(entry_point.name, entry_point.value, name, version))
    return found


def entry_points(group: str) -> list[CachedEntryPoint]:
    if os.environ.get("FW_NO_PLUGIN_CACHE"):
        return _scan(group)
    path = cache_dir() / f"entry-points-{group}-{_path_key()}.json"
    try:
        return [CachedEntryPoint(**record) for record in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        pass
    found = _scan(group)
    try:
        write_text_atomic(path, json.dumps([vars(e) for e in found]))
    except OSError:  # a read-only home only costs speed
        pass
    return found

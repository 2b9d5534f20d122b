"""Startup timestamps, for bench/startup.py: with ``FW_STARTUP_TRACE=<file>`` in the environment, :func:`mark`
appends ``{"phase": name, "time": time.time(), "cpu": time.process_time()}`` to that file the first time each
phase is reached; without it, :func:`mark` does nothing but read the environment."""
from __future__ import annotations

import json
import os
import time

_reached: set[tuple[str, str]] = set()


def mark(phase: str) -> None:
    """Record that ``phase`` ended now (the first call per phase and trace file only)."""
    path = os.environ.get("FW_STARTUP_TRACE")
    if not path or (path, phase) in _reached:
        return
    _reached.add((path, phase))
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"phase": phase, "time": time.time(), "cpu": time.process_time()}) + "\n")

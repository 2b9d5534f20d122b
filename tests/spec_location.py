"""Where the spec's snippets are: ``$FW_SPEC_DIR``, else ``shared/spec`` beside or inside the checkout.

Tests that read them skip with this location in the reason when none is found (never pass vacuously).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from repo_root import REPO

CANDIDATES = [Path(os.environ["FW_SPEC_DIR"])] if os.environ.get("FW_SPEC_DIR") else []
CANDIDATES += [REPO.parent / "shared" / "spec", REPO / "shared" / "spec"]
SPEC = next((path for path in CANDIDATES if (path / "snippets").is_dir()), CANDIDATES[0])
SNIPPETS = SPEC / "snippets"
FOUND = SNIPPETS.is_dir()
needs_snippets = pytest.mark.skipif(
    not FOUND, reason=f"the spec's snippets are not at {' or '.join(map(str, CANDIDATES))} (set FW_SPEC_DIR)")

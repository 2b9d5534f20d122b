"""Every config snippet of the spec behaves as shared/spec/snippets/EXPECTED.md says."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import fw

from spec_location import SNIPPETS, needs_snippets

pytestmark = needs_snippets


def expected_rejections() -> dict[str, list[str]]:
    """``- file.yaml: rejected, naming r, alpha`` lines of EXPECTED.md -> {file: [keys]}."""
    text = (SNIPPETS / "EXPECTED.md").read_text() if SNIPPETS.is_dir() else ""
    found = re.findall(r"^- (\S+\.yaml): rejected, naming (.+)$", text, flags=re.M)
    return {name: [key.strip() for key in keys.split(",")] for name, keys in found}


REJECTED = expected_rejections()
FILES = sorted(p.name for p in SNIPPETS.glob("*.yaml")) if SNIPPETS.is_dir() else []


def test_expected_md_was_understood():
    assert REJECTED and set(REJECTED) <= set(FILES)


@pytest.mark.parametrize("name", [f for f in FILES if f not in REJECTED])
def test_snippet_is_valid(name):
    report = fw.validate_config(SNIPPETS / name)
    assert report.ok, [str(i) for i in report.issues]


@pytest.mark.parametrize("name", [f for f in FILES if f in REJECTED])
def test_snippet_is_rejected_naming_the_keys_and_the_fix(name):
    report = fw.validate_config(SNIPPETS / name)
    assert not report.ok
    for key in REJECTED[name]:
        (issue,) = [i for i in report.issues if i.path.split(".")[-1] == key]
        assert "use" in issue.message, f"{issue} does not say what to use instead"

"""docs/config-reference.md is generated from the schemas and kept current."""
from pathlib import Path

from fw.config.reference import render


def test_committed_reference_matches_the_schemas():
    path = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"
    assert path.read_text() == render(), "regenerate: python -m fw.config.reference > docs/config-reference.md"

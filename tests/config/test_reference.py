"""docs/config-reference.md is generated from the schemas and kept current."""

from fw.config.reference import render

from repo_root import REPO


def test_committed_reference_matches_the_schemas():
    path = REPO / "docs" / "config-reference.md"
    assert path.read_text() == render(), "regenerate: python -m fw.config.reference > docs/config-reference.md"

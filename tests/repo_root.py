"""The checkout's root, for tests that read its files (README, docs, examples, bench scripts) from any subfolder."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

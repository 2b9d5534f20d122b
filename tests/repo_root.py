"""The checkout's root, for tests in any subfolder that read its files (README, docs, examples, bench)."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

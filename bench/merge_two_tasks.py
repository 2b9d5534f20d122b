"""Merging two task adapters: held-out loss of each source and of the merge, for every combination type.

task_a is trained to spell digits, then task_b to name fruit colours (task_a loaded frozen from the first run),
on the tiny random-init Llama (LoRA r=8 on every linear layer and lm_head, 6 epochs of 40 rows, seed 1); the
merges are built from the two saved adapters as ``fw predict --config`` builds them (``trainer.type: none``,
``pretrained_adapter_weights``). Prints the mean answer loss on 10 held-out rows of each task and on both.

    python bench/merge_two_tasks.py                          # docs/benchmarks.md: every type, dropout 0.05
    python bench/merge_two_tasks.py --dropout 0 --seeds 1 2 3 4 --types linear     # the seed sweep
    python bench/merge_two_tasks.py --weights 1 1 --types linear cat

CPU only (about a minute per seed on 2 cores). The tasks and config are those of
``tests/model/test_multi_adapter.py``, whose fast check asserts the ordering this measures.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_multi_adapter import DENSITY_TYPES, MERGE_TYPES, TARGETS, config, fruit_colors, spell_digits  # noqa: E402

DENSITY = 0.7
HELD_OUT = {"digits": spell_digits(10, offset=3), "fruit colours": fruit_colors(10, offset=5)}


def train_sources(base: str, root: Path, seed: int, dropout: float) -> Path:
    """The saved model directory holding task_a (trained first, then frozen) and task_b."""
    from fw import pipeline

    adapter = {"type": "lora", "r": 8, "dropout": dropout, "target_modules": TARGETS}
    trainer = {"type": "finetune", "epochs": 6, "batch_size": 4, "learning_rate": 0.01, "seed": seed,
               "optimizer": {"type": "adamw"}, "gradient_clipping": {"clipglobalnorm": 1.0},
               "learning_rate_scheduler": {"decay": "cosine", "t_0": 60, "warmup_fraction": 0.03}}  # one cosine
    first = config(base, adapters={"task_a": adapter, "task_b": adapter}, trainer=trainer)
    run_a = pipeline.train(first, training_set=spell_digits(40), output_directory=root, model_name="a",
                           show_progress=False, adapter="task_a")
    second = copy.deepcopy(first)
    second["adapters"]["adapters"]["task_a"]["pretrained_adapter_weights"] = str(run_a.model_dir)
    return pipeline.train(second, training_set=fruit_colors(40), output_directory=root, model_name="b",
                          show_progress=False, adapter="task_b").model_dir


def held_out_loss(base: str, saved: Path, root: Path, adapter: str, merge: dict | None = None) -> dict:
    """{task: mean answer loss} of ``adapter`` (a source, or the merge built per ``merge``)."""
    from fw import pipeline

    sources = {name: {"type": "lora", "r": 8, "target_modules": TARGETS, "pretrained_adapter_weights": str(saved)}
               for name in ("task_a", "task_b")}
    deployed = config(base, adapters=sources, merge=merge, trainer={"type": "none", "batch_size": 4},
                      generation={"max_new_tokens": 1, "do_sample": False})
    return {task: pipeline.evaluate(config=deployed, dataset=rows, adapter=adapter, output_directory=root / "eval",
                                    show_progress=False).statistics["answer"]["loss"]
            for task, rows in HELD_OUT.items()}


def merge_section(combination_type: str, weights: list[float]) -> dict:
    merge = {"name": "merged", "sources": ["task_a", "task_b"], "weights": weights,
             "combination_type": combination_type}
    return {**merge, "density": DENSITY} if combination_type in DENSITY_TYPES else merge


def measure(base: str, seed: int, dropout: float, types: list[str], weights: list[float]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        saved = train_sources(base, root, seed, dropout)
        rows = {name: held_out_loss(base, saved, root, name) for name in ("task_a", "task_b")}
        for kind in types:
            label = f"merged, {kind} {' / '.join(f'{w:g}' for w in weights)}" + \
                (f", density {DENSITY:g}" if kind in DENSITY_TYPES else "")
            rows[label] = held_out_loss(base, saved, root, "merged", merge_section(kind, weights))
    return {name: {**loss, "both (mean)": sum(loss.values()) / len(loss)} for name, loss in rows.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout of both sources (default 0.05)")
    parser.add_argument("--types", nargs="+", default=MERGE_TYPES, choices=MERGE_TYPES)
    parser.add_argument("--weights", type=float, nargs=2, default=[0.5, 0.5])
    args = parser.parse_args()

    from fw.model.tiny import build_tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        base = str(build_tiny_llama(Path(tmp) / "tiny-llama"))
        results = {seed: measure(base, seed, args.dropout, args.types, args.weights) for seed in args.seeds}
    for seed, rows in results.items():
        print(f"\nseed {seed}, LoRA dropout {args.dropout:g}: mean answer loss on 10 held-out rows of each task\n")
        print("| adapter | digits | fruit colours | both (mean) |\n|---|---|---|---|")
        for name, loss in rows.items():
            print(f"| {name} | " + " | ".join(f"{value:.3f}" for value in loss.values()) + " |")
    print(json.dumps({"dropout": args.dropout, "weights": args.weights, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

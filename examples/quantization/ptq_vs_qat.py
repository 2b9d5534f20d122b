"""PTQ vs QAT on the demo task (CPU, offline, a few minutes): the figures in
docs/benchmarks.md.

The demo task (examples/demo: name the majority category of three words) on its tiny random-init Llama. For
full fine-tuning and for LoRA, three models are scored on the held-out test rows:

- ``fp32``: trained and evaluated without quantization;
- ``PTQ``: the same trained model, quantized after training (torchao, ``qat: false`` at evaluation);
- ``QAT``: trained with ``quantization: {backend: torchao, mode: MODE, qat: true}`` (fake quantization during
  training, real quantized weights at save time), evaluated as saved.

Run: ``.venv/bin/python examples/quantization/ptq_vs_qat.py EPOCHS [int4_weight_only|int8_weight_only ...]``
(figures are means over seeds 1, 2, 3)
(the demo trains 6 epochs, after which every setup answers every test row right, with perplexity ~1.02;
fewer epochs leave the models uncertain enough for quantization to show).
"""
from __future__ import annotations

import copy
import csv
import math
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"
WORK = ROOT / "results" / "ptq_vs_qat"
sys.path.insert(0, str(DEMO))

from make_assets import build_base_model, write_dataset  # noqa: E402


def quantization(mode: str, qat: bool) -> dict:
    return {"backend": "torchao", "mode": mode, "qat": qat}


def scores(result) -> dict:
    statistics = result.statistics["category"]
    return {key: statistics[key] for key in ("perplexity", "loss", "exact_match")}


def evaluate(**kwargs) -> dict:
    from fw import pipeline

    return scores(pipeline.evaluate(dataset=str(DEMO / "categories.csv"), split="test", show_progress=False,
                                    output_directory=WORK / "evaluations", **kwargs))


def train(config: dict, name: str):
    from fw import pipeline

    return pipeline.train(config, dataset=str(DEMO / "categories.csv"), output_directory=WORK / "runs",
                          experiment_name=name, show_progress=False)


def compare(config: dict, name: str, mode: str) -> dict:
    """fp32 / PTQ / QAT scores of one training setup (``config`` with or without an adapter)."""
    plain = train(config, f"{name}_fp32")
    figures = {"fp32": evaluate(model_path=plain.model_dir)}
    if config.get("adapter"):  # the fp32 adapter on the quantized base
        ptq = {**copy.deepcopy(plain.config), "quantization": quantization(mode, False)}
        figures["PTQ"] = evaluate(model_path=plain.model_dir, config=ptq)
    else:  # the fp32 full model, quantized as it loads
        ptq = {**copy.deepcopy(plain.config), "base_model": str(plain.model_dir), "adapter": None,
               "trainer": {"type": "none", "seed": config["trainer"]["seed"]}, "quantization": quantization(mode, False)}
        figures["PTQ"] = evaluate(config=ptq)
    qat = train({**copy.deepcopy(config), "quantization": quantization(mode, True)}, f"{name}_qat")
    figures["QAT"] = evaluate(model_path=qat.model_dir)
    return figures


def averaged(config: dict, name: str, mode: str, seeds: list[int]) -> dict:
    """Mean perplexity and exact match of each setup over ``seeds`` (1-epoch runs differ by seed)."""
    runs = []
    for seed in seeds:
        seeded = copy.deepcopy(config)
        seeded["trainer"]["seed"] = seed
        runs.append(compare(seeded, f"{name}_{seed}", mode))
    return {setup: {key: sum(run[setup][key] for run in runs) / len(runs) for key in ("perplexity", "exact_match")}
            for setup in ("fp32", "PTQ", "QAT")}


def cosine_steps(trainer: dict, epochs: int) -> int:
    """The demo's one cosine decay over the steps after warmup, for ``epochs`` epochs of its training rows."""
    with open(DEMO / "categories.csv", newline="") as handle:
        rows = sum(row["split"] == "train" for row in csv.DictReader(handle))
    steps = epochs * math.ceil(rows / trainer["batch_size"])
    return steps - math.ceil(trainer["learning_rate_scheduler"]["warmup_fraction"] * steps)


def main(modes: list[str], epochs: int, seeds: list[int]) -> None:
    started = time.perf_counter()
    shutil.rmtree(WORK, ignore_errors=True)
    base = build_base_model(WORK / "base_model")
    if not (DEMO / "categories.csv").exists():
        write_dataset(DEMO / "categories.csv")
    lora = yaml.safe_load((DEMO / "config.yaml").read_text())
    lora["base_model"] = str(base)
    lora["trainer"]["epochs"] = epochs
    lora["trainer"]["learning_rate_scheduler"]["t_0"] = cosine_steps(lora["trainer"], epochs)
    full = {key: value for key, value in copy.deepcopy(lora).items() if key != "adapter"}
    full["trainer"] = {**full["trainer"], "learning_rate": 0.0005}
    print(f"{epochs} epoch(s), mean over seeds {seeds}")
    print("| setup | mode | fp32 perplexity | PTQ perplexity | QAT perplexity | exact match fp32 / PTQ / QAT |")
    print("|---|---|---|---|---|---|")
    for mode in modes:
        for name, config in (("full fine-tune", full), ("LoRA", lora)):
            figures = averaged(config, f"{name.split()[0].lower()}_{mode}", mode, seeds)
            matches = " / ".join(f"{figures[key]['exact_match']:.1%}" for key in ("fp32", "PTQ", "QAT"))
            print(f"| {name} | {mode} | {figures['fp32']['perplexity']:.3f} | {figures['PTQ']['perplexity']:.3f} "
                  f"| {figures['QAT']['perplexity']:.3f} | {matches} |", flush=True)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main(sys.argv[2:] or ["int4_weight_only"], int(sys.argv[1]) if len(sys.argv) > 1 else 1, seeds=[1, 2, 3])

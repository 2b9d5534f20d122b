"""Predictions per second of fw's batched, length-sorted generation on the tiny Llama, for batch sizes 1 / 8 / 32.

Greedy decoding of up to 8 new tokens for 64 prompts of mixed length (a random-init model rarely stops early, so
this is close to the worst case per row), plus label scoring (3 labels) for comparison. Prints one line per
setting, and writes them as JSON to bench/results/predict_speed-<device>-<date>.json (--smoke: 8 prompts, one timed
repeat, JSON under bench/results/smoke/; it checks the code path on CPU and measures nothing).

    .venv/bin/python bench/predict_speed.py --device cuda
    .venv/bin/python bench/predict_speed.py --smoke
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import tempfile
import time
from pathlib import Path

ROWS = 64
BATCH_SIZES = (1, 8, 32)
RESULTS = Path(__file__).resolve().parent / "results"


def config(base: str, batch_size: int, label_scoring: bool = False) -> dict:
    from fw.config.load import load_config

    output = {"name": "label", "type": "category", "preprocessing": {"fallback_label": "neutral"},
              "decoder": {"type": "category_extractor", "label_scoring": label_scoring,
                          "match": {label: {"type": "contains", "value": label}
                                    for label in ("positive", "negative", "neutral")}}}
    return load_config({"base_model": base, "input_features": [{"name": "review"}], "output_features": [output],
                        "prompt": {"template": "Review: {review}\nSentiment:"},
                        "trainer": {"type": "none", "batch_size": batch_size},
                        "generation": {"max_new_tokens": 8, "do_sample": False}}).data


def prompts(tokenizer, rows: int = ROWS) -> list[list[int]]:
    words = "the movie was wonderful and moving but the food was cold and the service slow".split()
    return [tokenizer(f"Review: {' '.join(words[: 3 + i % 12])}\nSentiment:").input_ids for i in range(rows)]


def timed(function, repeats: int = 3) -> float:
    function()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="8 prompts, one timed repeat: checks the code path")
    parser.add_argument("--output-dir", type=Path, help="where the JSON goes (default bench/results[/smoke])")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse(argv)
    rows, repeats = (8, 1) if args.smoke else (ROWS, 3)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fw.infer.generation import generate
    from fw.infer.label_scoring import score_labels
    from fw.model.tiny import build_tiny_llama

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as directory:
        build_tiny_llama(directory)
        model = AutoModelForCausalLM.from_pretrained(directory).to(args.device).eval()
        tokenizer = AutoTokenizer.from_pretrained(directory)
    ids = prompts(tokenizer, rows)
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    print(f"tiny Llama (hidden 64, 2 layers), {rows} prompts, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    results = []
    for batch_size in BATCH_SIZES:
        seconds = timed(lambda: generate(model, tokenizer, ids, config(directory, batch_size)), repeats)
        scoring = timed(lambda: score_labels(model, tokenizer, ids, config(directory, batch_size, True)), repeats)
        results.append({"batch_size": batch_size, "generate_per_second": rows / seconds,
                        "label_scoring_per_second": rows / scoring})
        print(f"batch {batch_size:>2}: generate (greedy, <= 8 tokens) {rows / seconds:8.1f} predictions/s   "
              f"label scoring (3 labels) {rows / scoring:8.1f} predictions/s")
    report = {"benchmark": "predict_speed", "date": datetime.date.today().isoformat(), "device": device,
              "smoke": args.smoke, "prompts": rows, "max_new_tokens": 8, "torch": torch.__version__,
              "results": results}
    directory = args.output_dir or (RESULTS / "smoke" if args.smoke else RESULTS)
    directory.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    path = directory / f"predict_speed-{slug}-{report['date']}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

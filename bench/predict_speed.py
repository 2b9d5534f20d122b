"""Predictions per second of fw's batched, length-sorted generation on the tiny Llama, for batch sizes 1 / 8 / 32.

Greedy decoding of up to 8 new tokens for 64 prompts of mixed length (a random-init model rarely stops early, so
this is close to the worst case per row), plus label scoring (3 labels) for comparison. Prints one line per
setting. Run: .venv/bin/python bench/predict_speed.py [--device cuda]
"""
from __future__ import annotations

import argparse
import tempfile
import time

ROWS = 64
BATCH_SIZES = (1, 8, 32)


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


def prompts(tokenizer) -> list[list[int]]:
    words = "the movie was wonderful and moving but the food was cold and the service slow".split()
    return [tokenizer(f"Review: {' '.join(words[: 3 + i % 12])}\nSentiment:").input_ids for i in range(ROWS)]


def timed(function, repeats: int = 3) -> float:
    function()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

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
    ids = prompts(tokenizer)
    print(f"tiny Llama (hidden 64, 2 layers), {ROWS} prompts, device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    for batch_size in BATCH_SIZES:
        seconds = timed(lambda: generate(model, tokenizer, ids, config(directory, batch_size)))
        scoring = timed(lambda: score_labels(model, tokenizer, ids, config(directory, batch_size, True)))
        print(f"batch {batch_size:>2}: generate (greedy, <= 8 tokens) {ROWS / seconds:8.1f} predictions/s   "
              f"label scoring (3 labels) {ROWS / scoring:8.1f} predictions/s")


if __name__ == "__main__":
    main()

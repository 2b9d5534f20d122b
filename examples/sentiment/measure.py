"""The real-model figures of docs/benchmarks.md: SmolLM2-135M-Instruct on the 60 held-out tweets of
tweets.csv, zero-shot and few-shot, with and without its chat template, for each way of turning the model's
output into a label; and the LoRA-fine-tuned model of `make demo-real` when it is there.

    .venv/bin/python examples/sentiment/measure.py          # a markdown table (CPU: about half an hour)

Each variant is the config of examples/sentiment/config.yaml with trainer.type none and a category output (the label
the answer names first; "none" when it names none), run through fw's own pipeline functions on one loaded model.
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
DATASET = HERE / "tweets.csv"
TUNED = HERE.parents[1] / "results" / "demo-real" / "runs" / "sentiment_run" / "model"
LABELS = ("positive", "negative", "neutral")
FEW_SHOT = {"type": "random", "k": 4}
FEW_SHOT_TEMPLATE = ("Is the sentiment of a tweet positive, negative or neutral? Labelled examples:\n{__context__}\n\n"
                     "Answer with one word.\n\nTweet: {text}")
DECODERS = {"generate": {}, "constrained": {"constrain_to_vocabulary": True}, "label scoring": {"label_scoring": True}}


def variant(base: dict, chat: bool, few_shot: str | None, decoder: str) -> dict:
    config = copy.deepcopy(base)
    config["prompt"]["chat_template"] = chat
    if few_shot == "default":  # Ludwig's default few-shot template (prompt.task, no template)
        task = "Is the sentiment of the tweet positive, negative or neutral? Answer with one word."
        config["prompt"] = {**config["prompt"], "template": None, "retrieval": FEW_SHOT, "task": task}
    elif few_shot == "custom":
        config["prompt"] = {**config["prompt"], "template": FEW_SHOT_TEMPLATE, "retrieval": FEW_SHOT}
    config["trainer"] = {"type": "none", "seed": 42, "eval_batch_size": 8}
    config["output_features"] = [{"name": "sentiment", "type": "category", "preprocessing": {"fallback_label": "none"},
                                  "decoder": {"type": "category_extractor", **DECODERS[decoder],
                                              "match": {label: {"type": "contains", "value": label}
                                                        for label in LABELS}}}]
    return config


def score(config: dict, model, tokenizer, frame) -> tuple[float, float]:
    from fw import pipeline
    from fw.config.load import load_config
    from fw.data import retrieval

    data = load_config(config).data
    retriever = retrieval.for_inference(data, None, str(DATASET))
    prompts = pipeline.prompts_of(frame, data, tokenizer, retriever)
    _, outputs = pipeline.generate_for(prompts, data, model, tokenizer, False)
    truth = frame["sentiment"].tolist()
    accuracy = sum(guess == label for guess, label in zip(outputs.values, truth)) / len(truth)
    return accuracy, sum(not matched for matched in outputs.matched) / len(truth)


#: (prompt, few-shot template, chat template, decoders) measured on the base model
BASE_VARIANTS = [("zero-shot", None, chat, tuple(DECODERS)) for chat in (False, True)] + \
    [("few-shot, Ludwig's default template", "default", chat, ("generate",)) for chat in (False, True)] + \
    [("few-shot, own template", "custom", True, ("generate", "label scoring"))]


def main() -> int:
    from fw import pipeline
    from fw.model import smollm2

    if not smollm2.is_ready():
        print(f"error: {smollm2.missing_reason()}", file=sys.stderr)
        return 1
    base = yaml.safe_load((HERE / "config.yaml").read_text())
    base["base_model"] = str(smollm2.model_dir())
    runs = [("SmolLM2-135M-Instruct", None, BASE_VARIANTS)]
    if TUNED.is_dir():
        runs.append(("LoRA fine-tuned (make demo-real)", TUNED, [("zero-shot", None, True, tuple(DECODERS))]))
    print("| model | prompt | chat template | decoding | accuracy | no label named |\n|---|---|---|---|---:|---:|")
    for model_name, model_path, variants in runs:
        data, model, tokenizer = pipeline.model_for_inference(model_path, variant(base, True, None, "generate"))
        frame = pipeline.select_rows(data, str(DATASET), "test")
        for prompt_name, few_shot, chat, decoders in variants:
            for decoder in decoders:
                started = time.perf_counter()
                accuracy, fallback = score(variant(base, chat, few_shot, decoder), model, tokenizer, frame)
                print(f"| {model_name} | {prompt_name} | {'yes' if chat else 'no'} | {decoder} | {accuracy:.3f} | "
                      f"{fallback:.0%} |", flush=True)
                print(f"  ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluation metrics: loss / perplexity (teacher-forced, response tokens only), and on generated outputs
exact match, token-level F1, BLEU (sacrebleu) and ROUGE (rouge_score) when those packages are importable;
accuracy for category outputs.
"""
from __future__ import annotations

import re
from collections import Counter

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def normalize(text) -> str:
    return " ".join(str(text if text is not None else "").strip().split())


def tokens(text) -> list[str]:
    return _TOKEN.findall(normalize(text).lower())


def exact_match(predictions, targets) -> float:
    pairs = list(zip(predictions, targets))
    return sum(normalize(p) == normalize(t) for p, t in pairs) / len(pairs) if pairs else float("nan")


def f1_one(prediction, target) -> float:
    predicted, expected = tokens(prediction), tokens(target)
    if not predicted and not expected:
        return 1.0
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def token_f1(predictions, targets) -> float:
    scores = [f1_one(p, t) for p, t in zip(predictions, targets)]
    return sum(scores) / len(scores) if scores else float("nan")


def bleu(predictions, targets) -> float | None:
    try:
        import sacrebleu
    except ImportError:
        return None
    return float(sacrebleu.corpus_bleu([normalize(p) for p in predictions], [[normalize(t) for t in targets]]).score)


def rouge(predictions, targets) -> dict | None:
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        return None
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    totals = Counter()
    for prediction, target in zip(predictions, targets):
        for name, score in scorer.score(normalize(target), normalize(prediction)).items():
            totals[name] += score.fmeasure
    count = max(1, len(predictions))
    return {f"{name}_f": totals[name] / count for name in ("rouge1", "rouge2", "rougeL")}


def text_metrics(predictions, targets) -> dict:
    """exact_match, token_f1, and bleu / rouge*_f where the libraries are installed."""
    result = {"exact_match": exact_match(predictions, targets), "token_f1": token_f1(predictions, targets)}
    score = bleu(predictions, targets)
    if score is not None:
        result["bleu"] = score
    scores = rouge(predictions, targets)
    if scores is not None:
        result.update(scores)
    return result


def category_metrics(predictions, targets) -> dict:
    pairs = list(zip(predictions, targets))
    accuracy = sum(str(p) == str(t) for p, t in pairs) / len(pairs) if pairs else float("nan")
    return {"accuracy": accuracy}


def output_metrics(predictions, targets, output_type: str) -> dict:
    return category_metrics(predictions, targets) if output_type == "category" else text_metrics(predictions, targets)

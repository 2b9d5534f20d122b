"""Evaluation metrics: loss / perplexity (teacher-forced, response tokens only), and on generated outputs
exact match, token-level F1, BLEU (sacrebleu) and ROUGE (rouge_score) when those packages are importable;
for category outputs accuracy, macro-F1, per-class precision / recall, a confusion matrix and the fallback rate.
Every score is on one scale, 0 to 1 (BLEU too: sacrebleu's 0-100 score divided by 100).
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
    score = sacrebleu.corpus_bleu([normalize(p) for p in predictions], [[normalize(t) for t in targets]]).score
    return float(score) / 100


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


def category_metrics(predictions, targets, matched=None, labels=None) -> dict:
    """accuracy, macro_f1, per_class precision / recall / f1 / support, confusion_matrix (rows: true label,
    columns: predicted label, in ``labels`` order then any other label seen), and fallback_rate (share of rows
    where no match entry matched and fallback_label was used; with ``matched``)."""
    predicted, expected = [str(p) for p in predictions], [str(t) for t in targets]
    order = list(dict.fromkeys([str(label) for label in labels or []] + sorted(set(expected) | set(predicted))))
    index = {label: position for position, label in enumerate(order)}
    matrix = [[0] * len(order) for _ in order]
    for truth, guess in zip(expected, predicted):
        matrix[index[truth]][index[guess]] += 1
    per_class = {label: class_scores(matrix, index[label]) for label in order}
    scored = [scores["f1"] for label, scores in per_class.items() if scores["support"] or
              sum(row[index[label]] for row in matrix)]
    result = {"accuracy": sum(t == g for t, g in zip(expected, predicted)) / len(expected) if expected
              else float("nan"),
              "macro_f1": sum(scored) / len(scored) if scored else float("nan"),
              "per_class": per_class,
              "confusion_matrix": {"labels": order, "matrix": matrix}}
    if matched is not None:
        result["fallback_rate"] = (sum(not m for m in matched) / len(matched)) if matched else float("nan")
    return result


#: a fallback rate from which fw evaluate warns: the accuracy then mostly measures the fallback label
HIGH_FALLBACK_RATE = 0.2


def fallback_warning(scores: dict, fallback_label) -> str | None:
    """One line when many generations named no label (``fallback_rate`` of at least :data:`HIGH_FALLBACK_RATE`)."""
    rate, rows = scores.get("fallback_rate"), sum(scores.get("per_class", {}).get(label, {}).get("support", 0)
                                                 for label in scores.get("per_class", {}))
    if rate is None or rate != rate or rate < HIGH_FALLBACK_RATE:
        return None
    return (f"evaluate: {round(rate * rows)} of {rows} generations ({rate:.0%}) named no label and got the "
            f"fallback_label {fallback_label!r}; look at raw_generation in the predictions, and consider "
            "decoder.constrain_to_vocabulary or decoder.label_scoring (every prediction is then a label).")


def class_scores(matrix: list[list[int]], k: int) -> dict:
    """precision, recall, f1 and support of class ``k`` from a confusion matrix (0 where undefined)."""
    true_positive = matrix[k][k]
    predicted = sum(row[k] for row in matrix)
    support = sum(matrix[k])
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def output_metrics(predictions, targets, output_type: str, matched=None, labels=None,
                   timeouts: dict[str, int] | None = None) -> dict:
    """The scores of ``output_type``; a category output also records ``match_timeouts``: how many matcher
    searches ran out of time (``timeouts``: per label) and counted as no match."""
    if output_type == "category":
        return {**category_metrics(predictions, targets, matched, labels),
                "match_timeouts": sum((timeouts or {}).values())}
    return text_metrics(predictions, targets)


def category_tables(statistics: dict) -> list:
    """Tables of each category output's per-class scores and confusion matrix (for the CLI)."""
    from fw.console import table

    tables = []
    for output, metrics in statistics.items():
        if not isinstance(metrics, dict) or "confusion_matrix" not in metrics:
            continue
        per_class = [[label, *(f"{scores[key]:.4f}" for key in ("precision", "recall", "f1")), scores["support"]]
                     for label, scores in metrics["per_class"].items()]
        labels = metrics["confusion_matrix"]["labels"]
        confusion = [[label, *row] for label, row in zip(labels, metrics["confusion_matrix"]["matrix"])]
        tables += [table(f"{output}: per class", ["label", "precision", "recall", "f1", "support"], per_class),
                   table(f"{output}: confusion matrix (rows: true, columns: predicted)", ["", *labels], confusion)]
    return tables

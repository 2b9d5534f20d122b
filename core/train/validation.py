"""Teacher-forced metrics of encoded rows: what an evaluation during training reports, and what
``trainer.validation_metric`` and ``learning_rate_scheduler.reduce_eval_metric`` choose from.

Computed on the response tokens only (the prompt is never scored), in one forward pass per batch:
``loss`` (mean cross-entropy per response token), ``perplexity`` (its exponential), ``token_accuracy`` (share of
response tokens the model predicts exactly) and ``sequence_accuracy`` (share of rows whose every response token
is predicted exactly). Ludwig's other names for these are aliases (:data:`ALIASES`).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

#: Ludwig's names of the same numbers
ALIASES = {"next_token_softmax_cross_entropy": "loss", "sequence_softmax_cross_entropy": "loss",
           "next_token_perplexity": "perplexity"}
#: what :func:`totals` sums (over batches and processes)
TOTALS = ("loss_sum", "tokens", "correct_tokens", "rows", "correct_rows")


def totals(model, tokenizer, rows, batches: Sequence[list[int]], autocast=contextlib.nullcontext,
           counted: Sequence[bool] | None = None) -> list[float]:
    """The :data:`TOTALS` of ``rows`` (encoded) over ``batches`` (row indices), in this process. ``counted``: per
    batch, whether it counts (a stand-in batch runs only so that every process of a sharded model runs as many
    forward passes)."""
    import torch

    from fw.data.tokens import collate

    was_training = model.training
    model.eval()
    sums = [0.0] * len(TOTALS)
    device = next(model.parameters()).device
    with torch.no_grad():
        for number, indices in enumerate(batches):
            batch = collate([rows[i] for i in indices], tokenizer.pad_token_id)
            batch = {key: value.to(device) for key, value in batch.items()}
            with autocast():
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            if counted is not None and not counted[number]:
                continue
            for index, value in enumerate(_batch_totals(logits, batch["labels"])):
                sums[index] += value
    model.train(was_training)
    return sums


def _batch_totals(logits, labels) -> tuple[float, int, int, int, int]:
    import torch

    logits = logits[:, -labels.shape[1]:]  # prompt-learning adapters put their virtual tokens first
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    scored = labels != -100
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    correct = (logits.argmax(dim=-1) == labels) & scored
    has_tokens = scored.any(dim=1)
    exact = (correct | ~scored).all(dim=1) & has_tokens
    return (float(losses[scored].sum()), int(scored.sum()), int(correct.sum()), int(has_tokens.sum()),
            int(exact.sum()))


def metrics(sums: Sequence[float]) -> dict:
    """loss, perplexity, token_accuracy, sequence_accuracy from :func:`totals` ({} when nothing was scored)."""
    loss_sum, tokens, correct_tokens, rows, correct_rows = sums
    if not tokens:
        return {}
    loss = loss_sum / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "token_accuracy": correct_tokens / tokens,
            "sequence_accuracy": correct_rows / rows if rows else float("nan")}


def value(scores: dict, name: str) -> float | None:
    """The metric ``name`` (or its alias) of ``scores``; None when it was not computed."""
    return scores.get(ALIASES.get(name, name))


def improved(new: float, best: float | None, goal: str) -> bool:
    """Whether ``new`` beats ``best`` for a metric to minimize (``goal`` "min") or maximize ("max"); NaN never does."""
    if new != new:
        return False
    return best is None or (new < best if goal == "min" else new > best)


def evaluate_rows(model, tokenizer, rows, batch_size: int) -> dict:
    """The metrics of ``rows`` (response tokens only), in this process; {} without rows."""
    from fw.data.tokens import length_sorted_batches

    if not rows:
        return {}
    batches = length_sorted_batches([len(row.input_ids) for row in rows], batch_size)
    return metrics(totals(model, tokenizer, rows, batches))

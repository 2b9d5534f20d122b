"""Tokenization: prompt + target token ids, labels that train on the response only, truncation, batches.

A training row is ``input_ids = prompt ids + target ids + EOS`` and ``labels = -100 for every prompt token,
then the target ids + EOS``: the loss is computed on the response only. The prompt is tokenized with the
tokenizer's BOS token when the tokenizer adds one (Llama does, GPT-2 does not); the target never gets BOS.

The spec's three length limits, applied in this order (``null`` = no limit):

1. ``input_features[0].preprocessing.max_sequence_length``: the prompt tokens (BOS included) are cut to this
   many, keeping the beginning (the end is dropped, as Ludwig and transformers' default
   ``truncation_side="right"`` do);
2. ``output_features[0].preprocessing.max_sequence_length``: the response tokens, EOS included: the target is
   cut to N - 1 tokens and EOS is appended, so a response never exceeds N tokens and always ends with EOS;
3. ``preprocessing.global_max_sequence_length`` (training only; null: the ``context_length`` given to
   :func:`encode`, else ``tokenizer.model_max_length`` when that is a real limit): prompt + response are cut to
   this many tokens from the end, the response's tail first, then the prompt's end, always keeping at least
   one response token so that every row contributes to the loss.

With ``prompt.chat_template`` rows go through the chat template instead (:mod:`fw.data.chat`): the template writes
BOS and the end-of-turn token itself, the loss covers every assistant turn, and the limits drop whole earliest
turns before cutting any text.

Only :func:`collate` imports torch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fw.config import view
from fw.errors import FwError

#: the label of a token the loss skips (the ignore_index of torch cross_entropy and of transformers' losses);
#: this is its one home: every module that masks or counts labels imports it from here
IGNORE_INDEX = -100
#: tokenizers without a real limit report a huge ``model_max_length``; below this it is taken as the context
REAL_LIMIT = 10_000_000


@dataclass
class EncodedRow:
    """One tokenized row: ``labels`` is -100 on the prompt tokens (and on every token for inference rows)."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        """Tokens the loss is taken on: labels after the first position (nothing predicts position 0)."""
        return sum(label != IGNORE_INDEX for label in self.labels[1:])

    @property
    def prompt_length(self) -> int:
        """Tokens before the first trained token."""
        return next((i for i, label in enumerate(self.labels) if label != IGNORE_INDEX), len(self.labels))


@dataclass
class Limits:
    """The three limits in tokens (None: no limit)."""

    input: int | None = None
    output: int | None = None
    total: int | None = None

    @classmethod
    def from_config(cls, config, tokenizer=None, context_length: int | None = None) -> Limits:
        total = view.global_max_sequence_length(config) or context_length
        if total is None and tokenizer is not None:
            model_max = getattr(tokenizer, "model_max_length", None)
            total = int(model_max) if isinstance(model_max, (int, float)) and 0 < model_max < REAL_LIMIT else None
        return cls(input=view.input_max_sequence_length(config), output=view.output_max_sequence_length(config),
                   total=total)


@dataclass
class TruncationReport:
    """How many rows were cut by each limit; ``summary()`` is one line for the user."""

    rows: int = 0
    input_truncated: int = 0
    output_truncated: int = 0
    global_truncated: int = 0
    limits: Limits = field(default_factory=Limits)
    #: 0-based positions (in the order given to encode) of the rows cut by any limit
    truncated_rows: list[int] = field(default_factory=list)
    #: conversations (chat template) that lost whole earliest exchanges, and how many exchanges in all
    rows_with_turns_dropped: int = 0
    turns_dropped: int = 0

    def summary(self) -> str:
        sides = [("input", self.input_truncated, self.limits.input, "max_sequence_length"),
                 ("output", self.output_truncated, self.limits.output, "max_sequence_length"),
                 ("global", self.global_truncated, self.limits.total, "global_max_sequence_length")]
        parts = ", ".join(f"{side} {count} ({f'max {limit} tokens' if limit else 'no limit'})"
                          for side, count, limit, _ in sides)
        turns = (f"; earliest exchanges dropped in {self.rows_with_turns_dropped} conversation(s) "
                 f"({self.turns_dropped} in all)" if self.turns_dropped else "")
        return f"truncation: {len(self.truncated_rows)} of {self.rows} rows truncated; {parts}{turns}"


def _token_ids(texts: Sequence[str], tokenizer, with_bos: bool) -> list[list[int]]:
    texts = [str(text) for text in texts]
    if not texts:
        return []
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if with_bos and _adds_bos(tokenizer):
        return [[bos] + list(row) for row in ids]
    return [list(row) for row in ids]


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of a text when asked for special tokens."""
    if tokenizer.bos_token_id is None:
        return False
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(probe) and probe[0] == tokenizer.bos_token_id


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise FwError("the tokenizer has no EOS token, so fw cannot mark where a response ends; use a tokenizer "
                      "with an eos_token (set one with tokenizer.add_special_tokens).")
    return tokenizer.eos_token_id


def encode(prompts: Sequence[str], targets: Sequence[str], tokenizer, config,
           context_length: int | None = None) -> tuple[list[EncodedRow], TruncationReport]:
    """Training/evaluation rows: prompt and target ids with labels on the response only, limits applied."""
    if len(prompts) != len(targets):
        raise ValueError(f"encode: {len(prompts)} prompts but {len(targets)} targets")
    limits = Limits.from_config(config, tokenizer, context_length)
    report = TruncationReport(rows=len(prompts), limits=limits)
    from fw.data import chat

    if chat.uses_chat_template(config):
        return chat.encode(prompts, targets, tokenizer, config, limits, report), report
    eos = _eos_id(tokenizer)
    rows = []
    prompt_ids, target_ids = _token_ids(prompts, tokenizer, True), _token_ids(targets, tokenizer, False)
    for position, (prompt, target) in enumerate(zip(prompt_ids, target_ids)):
        rows.append(_encode_one(prompt, target, eos, limits, report, position))
    return rows, report


def _encode_one(prompt: list[int], target: list[int], eos: int, limits: Limits, report: TruncationReport,
                position: int) -> EncodedRow:
    cut = False
    if limits.input is not None and len(prompt) > limits.input:
        prompt, cut = prompt[:limits.input], True
        report.input_truncated += 1
    if limits.output is not None and len(target) + 1 > limits.output:
        target, cut = target[:limits.output - 1], True
        report.output_truncated += 1
    response = target + [eos]
    if limits.total is not None and len(prompt) + len(response) > limits.total:
        response = response[:max(1, limits.total - len(prompt))]
        prompt, cut = prompt[:limits.total - len(response)], True
        report.global_truncated += 1
    if cut:
        report.truncated_rows.append(position)
    return EncodedRow(input_ids=prompt + response, labels=[IGNORE_INDEX] * len(prompt) + response)


def encode_prompts(prompts: Sequence[str], tokenizer, config) -> tuple[list[EncodedRow], TruncationReport]:
    """Inference rows: the prompt ids only (input limit applied; labels all -100), for generation."""
    limits = Limits(input=Limits.from_config(config).input)
    report = TruncationReport(rows=len(prompts), limits=limits)
    from fw.data import chat

    if chat.uses_chat_template(config):
        return chat.encode(prompts, None, tokenizer, config, limits, report), report
    rows = []
    for position, ids in enumerate(_token_ids(prompts, tokenizer, True)):
        if limits.input is not None and len(ids) > limits.input:
            ids = ids[:limits.input]
            report.input_truncated += 1
            report.truncated_rows.append(position)
        rows.append(EncodedRow(input_ids=ids, labels=[IGNORE_INDEX] * len(ids)))
    return rows, report


# -- batches ----------------------------------------------------------------------------------------
def collate(rows: Sequence[EncodedRow], pad_token_id: int, padding_side: str = "right") -> dict:
    """Pad ``rows`` to the longest: ``input_ids`` (pad id), ``attention_mask`` (0 on padding), ``labels`` (-100
    on padding), as torch ``long`` tensors. Left padding is for generation."""
    import torch

    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if pad_token_id is None:
        raise ValueError("collate needs a pad_token_id (fw.model.loading sets one when the tokenizer has none)")
    longest = max((len(row.input_ids) for row in rows), default=0)
    batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for row in rows:
        padding = longest - len(row.input_ids)
        for key, values, fill in (("input_ids", row.input_ids, pad_token_id),
                                  ("attention_mask", [1] * len(row.input_ids), 0),
                                  ("labels", row.labels, IGNORE_INDEX)):
            pad = [fill] * padding
            batch[key].append(list(values) + pad if padding_side == "right" else pad + list(values))
    return {key: torch.tensor(values, dtype=torch.long) for key, values in batch.items()}


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of ``batch_size``, longest rows first (ties keep their order), so each
    batch pads little and memory trouble shows in the first batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]

"""Padding-free packing (``trainer.packing``): rows laid end to end in fixed token budgets.

A packed micro-batch is ONE sequence of at most ``budget`` tokens (shape ``[1, tokens]``) built by
transformers' ``DataCollatorWithFlattening``: the rows' ``input_ids`` concatenated, ``position_ids`` restarting
at 0 for every row, and the label of every row's first token set to -100 (so no row learns to predict the
next row's first token; in an unpacked batch that label is never used either). No attention mask is passed:
transformers 5 then derives the row boundaries from ``position_ids`` — SDPA / eager / flex attention get a
block-diagonal causal mask (``masking_utils.find_packed_sequence_indices``), flash attention gets the varlen
``cu_seqlens`` (``prepare_fa_kwargs_from_position_ids``) — so attention never crosses rows and no compute is
spent on padding. Trap: transformers skips that detection when a KV cache is passed, and ``use_cache``
defaults to the model config's ``True``; packed forwards therefore always pass ``use_cache=False``, and
:func:`check_rows_separated` verifies once per run, on two real rows, that the rows stay apart.

The budget is ``trainer.max_tokens_per_batch``, or ``batch_size`` x the mean row length of the training split
(so a packed micro-batch holds about as many tokens as an unpacked one, and the step count stays close), never
less than the longest row (a row is never split). Rows go into budgets best-fit decreasing (deterministic).

Only :func:`collate_packed`, :func:`choose_attention` and :func:`check_rows_separated` import torch.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from fw.data.tokens import IGNORE_INDEX
from fw.train.loss import transformers_model

#: per-row loss difference (packed vs unpacked) above which the architecture is taken to mix packed rows
SEPARATION_TOLERANCE = {"float32": 1e-3, "other": 5e-2}


def token_budget(lengths: Sequence[int], trainer: dict) -> int:
    """Tokens per packed micro-batch: ``max_tokens_per_batch`` or batch_size x mean length; >= longest row."""
    if not lengths:
        return 1
    wanted = trainer.get("max_tokens_per_batch") or trainer["batch_size"] * math.ceil(sum(lengths) / len(lengths))
    return max(int(wanted), max(lengths))


def pack(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Row indices grouped so each group's total length is <= ``budget`` (a longer row gets a group of its
    own). Best-fit decreasing: longest rows first, each into the fullest group it still fits; ties keep order."""
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, bin index), sorted
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        length = lengths[index]
        spot = bisect.bisect_left(free, (length, -1))
        if spot < len(free):
            room, target = free.pop(spot)
        else:
            room, target = budget, len(bins)
            bins.append([])
        bins[target].append(index)
        if room - length > 0:
            bisect.insort(free, (room - length, target))
    return bins


def packed_batches(rows, trainer: dict) -> list[list[int]]:
    lengths = [len(row.input_ids) for row in rows]
    return pack(lengths, token_budget(lengths, trainer))


def collate_packed(rows, flash_kwargs: bool = False) -> dict:
    """``{input_ids, labels, position_ids}`` of shape ``[1, tokens]`` (plus ``cu_seq_lens_*`` / ``max_length_*``
    for flash attention when ``flash_kwargs``), by transformers' ``DataCollatorWithFlattening``."""
    from transformers import DataCollatorWithFlattening

    collator = DataCollatorWithFlattening(return_flash_attn_kwargs=flash_kwargs, return_tensors="pt")
    return collator([{"input_ids": list(row.input_ids), "labels": list(row.labels)} for row in rows])


# -- attention -------------------------------------------------------------------------------------------------
def choose_attention(model) -> str:
    """The attention kernel packed batches run with. On a CUDA GPU: varlen flash attention when ``flash_attn``
    is installed, else flex attention (torch's, with a document mask); on CPU the loaded one (SDPA with the
    block-diagonal mask transformers builds from ``position_ids``). Returns the implementation in use."""
    import importlib.util

    import torch

    base = transformers_model(model)
    current = base.config._attn_implementation
    if not torch.cuda.is_available() or next(base.parameters()).device.type != "cuda":
        return current
    wanted = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "flex_attention"
    if wanted != current:
        try:
            base.set_attn_implementation(wanted)
        except (ValueError, ImportError) as exc:  # the architecture has no such kernel: keep SDPA, say so
            from fw import console

            console.warn(f"trainer.packing: {wanted} is not available for {type(base).__name__} ({exc}); "
                         f"packed batches use {current} with a block-diagonal mask.")
    return base.config._attn_implementation


def uses_flash_kwargs(model) -> bool:
    return "flash" in str(transformers_model(model).config._attn_implementation)


def check_rows_separated(model, rows) -> None:
    """Raise :class:`FwError` when the architecture lets packed rows attend to each other: the per-row loss of
    two short rows packed must equal their loss run one by one (eval mode, no gradient; a few tokens)."""
    import torch

    from fw.errors import FwError

    probe = [row for row in rows if row.trained_tokens][:2]
    if len(probe) < 2:
        return
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            separate = [_row_loss(model, {k: v.to(device) for k, v in collate_packed([row]).items()}) for row in probe]
            batch = {k: v.to(device) if hasattr(v, "to") else v
                     for k, v in collate_packed(probe, uses_flash_kwargs(model)).items()}
            together = _per_row_losses(model, batch, [len(row.input_ids) for row in probe])
    finally:
        model.train(was_training)
    dtype = next(model.parameters()).dtype
    tolerance = SEPARATION_TOLERANCE["float32" if dtype == torch.float32 else "other"]
    if max(abs(a - b) for a, b in zip(separate, together)) > tolerance * max(1.0, *map(abs, separate)):
        raise FwError(f"trainer.packing: {type(transformers_model(model)).__name__} does not keep packed rows "
                      "apart (its attention ignores the per-row position_ids); set trainer.packing: false.")


def _row_loss(model, batch: dict) -> float:
    return _per_row_losses(model, batch, [batch["input_ids"].shape[1]])[0]


def _per_row_losses(model, batch: dict, lengths: list[int]) -> list[float]:
    """Mean response-token loss of each packed row (labels already shifted per row by the collator)."""
    import torch

    labels = batch["labels"]
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits.float()
    token_losses = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], reduction="none")
    mask = labels[0, 1:] != IGNORE_INDEX
    losses, start = [], 0
    for length in lengths:
        # row tokens [start, start+length): their predictions sit at [start-1, start+length-1) of the shift
        lo, hi = max(start - 1, 0), start + length - 1
        count = int(mask[lo:hi].sum())
        losses.append(float((token_losses[lo:hi] * mask[lo:hi]).sum()) / max(count, 1))
        start += length
    return losses

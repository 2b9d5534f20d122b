"""Batch sizes as Ludwig defines them: ``batch_size``, ``gradient_accumulation_steps`` and
``effective_batch_size`` (each a number or ``auto``), and ``eval_batch_size``.

- ``effective_batch_size = batch_size x gradient_accumulation_steps x processes`` (Ludwig's rule; ``batch_size``
  is per process). With ``batch_size: auto`` and the two others numbers, ``batch_size`` follows from them;
  otherwise ``batch_size: auto`` is searched and then ``gradient_accumulation_steps: auto`` is
  ``effective_batch_size / (batch_size x processes)`` (1 when that is auto too).
- The search (:func:`search`): on a GPU, real steps on the longest rows with batch sizes 1, 2, 4, ... until one
  runs out of memory or reaches the cap (``max_batch_size``, ``effective_batch_size``, 20 % of the rows, as in
  Ludwig): the last that fit. On CPU there is no memory to probe: :data:`CPU_BATCH_SIZE` rows, under the same caps.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

AUTO = "auto"
#: ``auto`` on CPU: rows per batch (throughput gains stop early without a GPU; memory is not probed)
CPU_BATCH_SIZE = 8
#: Ludwig's cap: a batch holds at most this share of the rows it is searched on
MAX_SHARE_OF_ROWS = 0.2


@dataclass(frozen=True)
class Batching:
    batch_size: int
    accumulation: int
    #: how an ``auto`` was decided (one line for the user), or None when nothing was auto
    note: str | None = None


def cap(rows: int, max_batch_size: int, effective: int | str = AUTO) -> int:
    """The largest batch the search may pick."""
    limit = min(max_batch_size, max(1, int(MAX_SHARE_OF_ROWS * rows)))
    return min(limit, effective) if effective != AUTO else limit


def search(limit: int, fits: Callable[[int], bool] | None, what: str) -> tuple[int, str]:
    """(batch size, the sentence saying how): the largest power of two up to ``limit`` for which ``fits(size)``
    holds (``fits`` None: the CPU rule)."""
    if fits is None:
        size = min(CPU_BATCH_SIZE, limit)
        return size, f"{what} auto: {size} (CPU: {CPU_BATCH_SIZE} rows, at most {limit} here; memory is not probed)"
    size, best, failed = 1, None, None
    while size <= limit:
        if not fits(size):
            failed = size
            break
        best, size = size, size * 2
    if best is None:
        raise_no_fit(what)
    stop = f"{failed} ran out of memory" if failed else f"the cap is {limit}"
    return best, f"{what} auto: {best} (the largest power of two that fit the GPU; {stop})"


def raise_no_fit(what: str) -> None:
    from fw.errors import FwError

    raise FwError(f"{what} auto: even one row runs out of GPU memory. Lower the sequence lengths "
                  "(preprocessing.global_max_sequence_length), quantize the model, or use gradient checkpointing.")


def training_batching(settings: dict, rows: int, fits: Callable[[int], bool] | None, processes: int = 1) -> Batching:
    """``trainer.batch_size`` (per process) and ``gradient_accumulation_steps`` as numbers (Ludwig's rules)."""
    batch, steps, effective = (settings[k] for k in ("batch_size", "gradient_accumulation_steps",
                                                     "effective_batch_size"))
    note = None
    across = f" / {processes} processes" if processes > 1 else ""
    if batch == AUTO:
        if effective != AUTO and steps != AUTO:
            batch = max(effective // (steps * processes), 1)
            note = (f"trainer.batch_size auto: {batch} (effective_batch_size {effective} / "
                    f"gradient_accumulation_steps {steps}{across})")
        else:
            limit = cap(rows, settings["max_batch_size"], effective if effective == AUTO else
                        max(effective // processes, 1))
            batch, note = search(limit, fits, "trainer.batch_size")
    if steps == AUTO:
        steps = max(effective // (batch * processes), 1) if effective != AUTO else 1
    return Batching(batch, steps, note)


def evaluation_batch_size(settings: dict, rows: int, fits: Callable[[int], bool] | None,
                          training_batch_size: int | None = None) -> tuple[int, str | None]:
    """``trainer.eval_batch_size`` as a number: null or 0 means batch_size; auto is searched (forward passes only)."""
    value = settings.get("eval_batch_size")
    limit = max(1, min(settings.get("max_batch_size") or rows, rows))
    if value == AUTO:
        return search(limit, fits, "trainer.eval_batch_size")
    if not value:
        value = training_batch_size or settings.get("batch_size")
        if value == AUTO or value is None:
            return search(limit, fits, "trainer.eval_batch_size (null: batch_size)")
    return int(value), None


def cuda_fits(step: Callable[[int], None]) -> Callable[[int], bool]:
    """``fits(size)``: whether ``step(size)`` runs without a CUDA out-of-memory error (memory freed after)."""
    import torch

    def fits(size: int) -> bool:
        try:
            step(size)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()
    return fits


def inference_batch_size(data: dict, model, lengths: list[int], new_tokens: int = 0) -> int:
    """Rows per batch in prediction and evaluation (``trainer.eval_batch_size``; null: batch_size). ``auto`` on a
    GPU: forward passes over the longest rows (``new_tokens`` longer for generation) until one runs out of memory;
    on CPU the rule of :func:`search`. Says what it chose, once."""
    from fw import console
    from fw.config import view

    settings = {key: view.setting(data, "trainer", key) for key in ("eval_batch_size", "batch_size", "max_batch_size")}
    rows = max(1, len(lengths))
    fits = None
    if model is not None and next(model.parameters()).device.type == "cuda":
        longest = max(lengths, default=1) + new_tokens
        fits = cuda_fits(lambda size: forward_pass(model, size, longest))
    size, note = evaluation_batch_size(settings, rows, fits)
    if note:
        console.info(note)
    return size


def forward_pass(model, rows: int, length: int) -> None:
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        model(input_ids=torch.zeros((rows, length), dtype=torch.long, device=device))


def configured(data: dict, rows: int | None = None) -> Batching:
    """The batching a config asks for without a model at hand (``fw plan``): ``auto`` by the CPU rule, over ``rows``
    training rows (None: not known, so the 20 % cap does not apply)."""
    from fw.config import view

    keys = ("batch_size", "gradient_accumulation_steps", "effective_batch_size", "max_batch_size")
    settings = {key: view.setting(data, "trainer", key) for key in keys}
    return training_batching(settings, rows if rows is not None else settings["max_batch_size"], None)

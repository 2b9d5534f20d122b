"""The processes of one job: who this process is, and the few collective steps fw needs.

A job is started by a standard launcher (``torchrun``, ``accelerate launch``, or ``fw ... --num_processes N``, which
starts torchrun); the launcher sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR``. The process group
is accelerate's :class:`~accelerate.PartialState` over torch.distributed (gloo on CPU, nccl on GPUs, chosen by
accelerate): fw has no communication code of its own.

Without a launcher (``WORLD_SIZE`` unset or 1) every function here is the single-process answer and imports
nothing heavy: ``rank()`` is 0, ``split`` returns everything, ``gather`` returns ``[value]``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

Item = TypeVar("Item")


def world_size() -> int:
    """Processes in this job (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    """Whether this process is one of several started by a launcher."""
    return world_size() > 1


def rank() -> int:
    """This process's index in the job (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's index on its machine (the GPU it uses)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Whether this process writes the job's files and shows its progress and messages (rank 0)."""
    return rank() == 0


def state():
    """accelerate's process state, starting the process group on first use (only when launched): nccl when this
    machine has a GPU, gloo otherwise."""
    import torch
    from accelerate import PartialState

    if torch.cuda.is_available():
        return PartialState()
    return PartialState(cpu=True, backend="gloo")


def barrier() -> None:
    """Wait until every process of the job gets here."""
    if launched():
        state().wait_for_everyone()


def split(items: Sequence[Item]) -> list[Item]:
    """This process's contiguous share of ``items``: the first ``len % world`` processes take one more, so the
    shares, concatenated in rank order, are ``items`` in order."""
    size, index = world_size(), rank()
    share, extra = divmod(len(items), size)
    start = index * share + min(index, extra)
    return list(items[start:start + share + (1 if index < extra else 0)])


def gather(value: Any) -> list[Any]:
    """Every process's ``value`` (any picklable object), in rank order, on every process."""
    if not launched():
        return [value]
    from accelerate.utils import gather_object

    state()
    return gather_object([value])

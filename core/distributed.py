"""The processes of one job: who this process is, and the few collective steps fw needs.

A job is started by a standard launcher (``torchrun``, ``accelerate launch``, or ``fw ... --num_processes N``, which
starts torchrun); the launcher sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR``. The process group
is accelerate's :class:`~accelerate.PartialState` over torch.distributed (gloo on CPU, nccl on GPUs, chosen by
accelerate): fw has no communication code of its own.

Without a launcher (``WORLD_SIZE`` unset or 1) every function here is the single-process answer and imports
nothing heavy: ``rank()`` is 0, ``split`` returns everything, ``gather`` returns ``[value]``, ``broadcast`` returns
``value``, ``reduce_sum`` returns the values.

A lost peer never hangs a job forever: every collective of the process group gives up after :func:`timeout`
(``FW_DISTRIBUTED_TIMEOUT`` seconds, default 30 minutes, torch's own default for gloo: long enough for rank 0 to
save a large model while the others wait). A peer that *fails* ends the job much sooner: the launcher (torchrun)
stops every other process when one exits with an error.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any, TypeVar

Item = TypeVar("Item")
#: seconds a collective waits for the other processes before it fails (``FW_DISTRIBUTED_TIMEOUT`` overrides)
DEFAULT_TIMEOUT_SECONDS = 1800


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
        return PartialState(timeout=timeout())
    return PartialState(cpu=True, backend="gloo", timeout=timeout())


def timeout() -> datetime.timedelta:
    """How long a collective waits for the other processes (``FW_DISTRIBUTED_TIMEOUT`` seconds, else 30 minutes)."""
    seconds = os.environ.get("FW_DISTRIBUTED_TIMEOUT", "")
    return datetime.timedelta(seconds=float(seconds) if seconds.strip() else DEFAULT_TIMEOUT_SECONDS)


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


def broadcast(value: Any) -> Any:
    """The main process's ``value`` (any picklable object), on every process (the others' ``value`` is ignored)."""
    if not launched():
        return value
    from accelerate.utils import broadcast_object_list

    state()
    return broadcast_object_list([value])[0]


def reduce_sum(values: Sequence[float]) -> list[float]:
    """Each of ``values`` summed over the processes (float64; exact for counts below 2**53)."""
    if not launched():
        return [float(value) for value in values]
    import torch
    from accelerate.utils import reduce

    device = state().device
    summed = reduce(torch.tensor([float(value) for value in values], dtype=torch.float64, device=device), "sum")
    return summed.tolist()

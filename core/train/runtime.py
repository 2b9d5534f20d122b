"""Where this process stands in a training job: the four things a distributed run changes, in one place.

The :class:`~fw.train.trainer.Trainer` asks its runtime, and nothing else, about

(a) the model — :meth:`Runtime.prepare_model` wraps or places it (DDP, FSDP2's ``fully_shard`` …);
(b) the data — :meth:`Runtime.shard` keeps this process's share of a list of micro-batches;
(c) metrics — :meth:`Runtime.reduce_sum` adds numbers up across processes (loss numerators, token counts);
(d) output — :attr:`Runtime.is_main_process`: only the main process writes checkpoints and TensorBoard events
    and shows progress.

:class:`Runtime` itself is one process doing all the work: every seam is the identity. A distributed runtime
(torch.distributed / accelerate) overrides these and leaves the training loop alone.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

Item = TypeVar("Item")


class Runtime:
    """A single process: it trains the whole model on every micro-batch and is the one that writes."""

    #: whether this process writes files (checkpoints, TensorBoard) and shows progress
    is_main_process: bool = True

    def prepare_model(self, model):
        """The model the training steps run through (a distributed runtime wraps or shards it here)."""
        return model

    def shard(self, items: Sequence[Item]) -> list[Item]:
        """This process's share of ``items`` (micro-batches, in order)."""
        return list(items)

    def reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Each of ``values`` summed over the processes of the job."""
        return list(values)

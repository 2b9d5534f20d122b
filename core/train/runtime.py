"""Where this process stands in a training job: everything a distributed run changes, in one place.

The :class:`~fw.train.trainer.Trainer` asks its runtime, and nothing else, about

(a) the model — :meth:`Runtime.prepare_model` wraps or shards it (DDP, FSDP2's ``fully_shard``), and every pass
    over it goes through what it returns: :meth:`Runtime.loss` for training, :meth:`Runtime.forward_model` for the
    rest;
(b) the data — :meth:`Runtime.shard` keeps this process's rows of a micro-batch planned for the whole job;
(c) metrics — :meth:`Runtime.reduce_sum` adds numbers up across processes (loss numerators, token counts);
(d) output — :attr:`Runtime.is_main_process`: only the main process writes files and shows progress;
(e) state — checkpoints, the best weights and the model to save (:meth:`Runtime.save_checkpoint`,
    :meth:`Runtime.trainable_state`, :meth:`Runtime.model_to_save` …): sharded under FSDP, written once under DDP.

:class:`Runtime` itself is one process doing all the work: every seam is the identity, and the files are the ones
fw.train.checkpoint writes. The distributed runtimes live in :mod:`fw.train.parallel`; :func:`for_job` picks one.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from fw import console, distributed
from fw.atomic import DiskFull
from fw.config import strategy
from fw.train import checkpoint as ckpt

Item = TypeVar("Item")


class Runtime:
    """A single process: it trains the whole model on every micro-batch and is the one that writes."""

    #: whether this process writes files (checkpoints, TensorBoard) and shows progress
    is_main_process: bool = True
    #: processes in the job; the gradient of a step is averaged over them (DDP, FSDP)
    processes: int = 1
    #: the autocast of the training passes: bf16 / fp16 / no, or None (``trainer.use_mixed_precision`` decides)
    mixed_precision: str | None = None
    #: where the base model is loaded (None: the best device); FSDP loads on the CPU and shards onto the GPUs
    load_device: str | None = None
    #: whether this process reads the base model's weights (FSDP's CPU-efficient loading: only the main process;
    #: the others build it on the meta device and receive the weights when it is sharded)
    loads_weights: bool = True
    #: whether the model's weights are sharded over the processes (FSDP: a quantized base is then loaded in a
    #: storage that can be split, fw.config.strategy.section_for_sharding)
    shards_weights: bool = False
    #: recompute activations in the backward pass (FSDP's ``activation_checkpointing``; also
    #: ``trainer.enable_gradient_checkpointing``)
    activation_checkpointing: bool = False

    # -- the model ---------------------------------------------------------------------------------------------
    def prepare_model(self, model):
        """The module the training steps run through (a distributed runtime wraps or shards ``model`` here)."""
        return model

    def prepare_optimizer(self, step_model, optimizer, batch_size: int, accumulation: int, clipping: dict | None):
        """(step model, optimizer) once both exist and the batch size is known (DeepSpeed wraps them together,
        with fw's ``batch_size`` per process, ``accumulation`` and ``trainer.gradient_clipping``)."""
        return step_model, optimizer

    def backward(self, loss) -> None:
        """The backward pass of a micro-batch's loss (DeepSpeed: its engine's, which also steps at the step's end)."""
        loss.backward()

    def loss(self, step_model, loss_sum: Callable, batch: dict):
        """(sum of the token losses, token count) of ``batch`` through ``step_model`` with ``loss_sum``
        (fw.train.loss)."""
        return loss_sum(step_model, batch)

    def forward_model(self, model, step_model):
        """What evaluation passes run through: the model itself in one process."""
        return model

    def synchronizing(self, step_model, sync: bool):
        """Context of one micro-batch's forward and backward; ``sync`` False while gradients accumulate (a
        distributed runtime then skips averaging them until the last micro-batch of the step)."""
        return contextlib.nullcontext()

    # -- data and metrics --------------------------------------------------------------------------------------
    def shard(self, items: Sequence[Item]) -> list[Item]:
        """This process's share of ``items`` (the rows of a micro-batch planned for the whole job)."""
        return list(items)

    def reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Each of ``values`` summed over the processes of the job."""
        return list(values)

    def run_once(self, work: Callable[[], Item]) -> Item:
        """``work()`` done by the main process first (filling caches), then by the others, which find its results
        there (one process: just ``work()``)."""
        return work()

    def decided_by_main(self, decide: Callable[[], Item]) -> Item:
        """``decide()`` (a probe of the model: the loss path, packing's row separation) as the main process finds
        it, in every process: the others may not hold the weights yet (one process: just ``decide()``)."""
        return decide()

    # -- stopping ----------------------------------------------------------------------------------------------
    def stop_signals(self):
        """Context of the training loop; Ctrl-C and SIGTERM interrupt one process where they land."""
        return contextlib.nullcontext()

    def stop_vote(self) -> float:
        """1 when this process was asked to stop since the last step (summed over processes each step)."""
        return 0.0

    def agree_to_stop(self, votes: float) -> None:
        """Stop every process after this step when ``votes`` (summed :meth:`stop_vote`) says one was asked to."""

    def may_checkpoint_after(self, exc: BaseException) -> bool:
        """Whether training may write a checkpoint after ``exc`` stopped it (a full disk would fail it too)."""
        return not isinstance(exc, DiskFull)

    # -- state -------------------------------------------------------------------------------------------------
    def save_checkpoint(self, checkpoints: Path, step: int, model, optimizer, scheduler, position: dict,
                        history: dict) -> Path | None:
        if not self.is_main_process:
            return None
        return ckpt.save_checkpoint(checkpoints, step, model, optimizer, scheduler, position, history)

    def load_checkpoint(self, path: Path, model, optimizer, scheduler) -> dict:
        return ckpt.load_checkpoint(path, model, optimizer, scheduler)

    def save_best(self, checkpoints: Path, model, metrics: dict) -> None:
        if self.is_main_process:
            ckpt.save_best(checkpoints, model, metrics)

    def restore_best(self, checkpoints: Path, model) -> None:
        ckpt.restore_best(checkpoints, model)

    def model_to_save(self, model):
        """The whole trained model, in the main process, ready for ``save_pretrained`` (one process: ``model``)."""
        return model

    def barrier(self) -> None:
        """Wait for every process of the job."""


def for_job(data: dict) -> Runtime:
    """The runtime of this process: :class:`Runtime` when it runs alone (a strategy set in the config then gets
    one info line), else the distributed runtime of ``backend.trainer.strategy`` (fw.train.parallel)."""
    if not distributed.launched():
        if strategy.configured(data) is not None:
            console.info(f"{strategy.CONFIG_PATH}: one process runs, so there is nothing to share or shard; "
                         "training as usual (start several with torchrun or fw train --num_processes).")
        return Runtime()
    from fw.train import parallel

    return parallel.runtime_for(strategy.of_config(data), data)

"""Adapters that reallocate their rank during training (PEFT AdaLoRA): the schedule length defaults to the
run's planned optimizer steps, and the tuner's ``update_and_allocate(global_step)`` runs after every optimizer
step, while the gradients it scores importance with still exist.

Neither part names an adapter type: a section whose ``total_step`` is null gets the planned step count, and a
wrapped model whose PEFT tuner has ``update_and_allocate`` gets the per-step call.
"""
from __future__ import annotations

from collections.abc import Callable

from fw.errors import FwError


def with_total_step(section: dict, training=None) -> dict:
    """``section`` with ``total_step: null`` replaced by the planned number of optimizer steps."""
    if "total_step" not in section or section["total_step"] is not None:
        return section
    planned = getattr(training, "planned_steps", None)
    if not planned:  # no training plan: the adapter plugin keeps its own fallback
        return section
    tinit, tfinal = section.get("tinit", 0), section.get("tfinal", 0)
    if tinit >= planned - tfinal:
        raise FwError(f"adapter.tinit: the run has {planned} optimizer steps, so tinit ({tinit}) must be smaller than "
                      f"{planned} - tfinal ({tfinal}) to leave a rank budgeting phase; lower tinit / tfinal, or "
                      "train for more steps (trainer.epochs).")
    return {**section, "total_step": planned}


def step_callbacks(model) -> list[Callable[[int], None]]:
    """Callbacks ``callback(global_step)`` to run after each optimizer step, before ``zero_grad``."""
    tuner = getattr(model, "base_model", None)
    allocate = getattr(tuner, "update_and_allocate", None) if tuner is not model else None
    return [allocate] if callable(allocate) else []

"""The optimizer and the learning-rate schedule of ``trainer.type: finetune``, as Ludwig defines them.

Every optimizer is a maintained implementation, picked by Ludwig's name (:data:`fw.config.optimizers.OPTIMIZERS`).
The schedule is built from torch's schedulers: linear warmup from 0 over ``max(warmup_fraction x steps,
warmup_evaluations x steps between evaluations)`` steps, then the decay (:func:`build_scheduler`), and on top of
it Ludwig's capped reduce-on-plateau (:class:`PlateauReducer`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from fw.config.optimizers import OPTIMIZERS


def optimizer_class(kind: str):
    """The optimizer class; a missing package is one error naming it."""
    import importlib

    from fw.errors import FwError, shown

    module, name, package = OPTIMIZERS[kind]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise FwError(f"trainer.optimizer.type: {shown(kind)} needs the {package} package, which is not installed "
                      f"(pip install {package}; bitsandbytes' optimizers need a CUDA GPU). ({exc})") from None


def build_optimizer(model, config: dict):
    """The optimizer over the trainable parameters, grouped as the adapter asks (LoRA+: faster B matrices)."""
    from fw.errors import FwError
    from fw.model.adapters import optimizer_parameter_groups

    trainer = config["trainer"]
    settings = dict(trainer["optimizer"])
    kind = settings.pop("type")
    groups = optimizer_parameter_groups(model, config, trainer["learning_rate"], settings.get("weight_decay", 0.0))
    if not groups:
        raise FwError("the model has no trainable parameter (check adapter.target_modules and "
                      "trainer.layers_to_freeze_regex).")
    if kind == "adafactor":  # its own `lr` (null with relative_step) replaces trainer.learning_rate
        for group in groups:
            group["lr"] = settings["lr"]
    if "betas" in settings:
        settings["betas"] = tuple(settings["betas"])
    cls = optimizer_class(kind)
    return cls(groups, **settings) if kind == "adafactor" else cls(groups, lr=trainer["learning_rate"], **settings)


# -- the schedule --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Steps:
    """The step counts a schedule depends on."""

    total: int
    #: optimizer steps between two evaluations (Ludwig's steps_per_checkpoint once resolved)
    per_evaluation: int

    def warmup(self, scheduler: dict) -> int:
        """Ludwig's warmup length: the larger of its two settings."""
        steps = 0.0
        if scheduler["warmup_fraction"] > 0:
            steps = max(steps, scheduler["warmup_fraction"] * self.total)
        if scheduler["warmup_evaluations"] > 0:
            steps = max(steps, scheduler["warmup_evaluations"] * self.per_evaluation)
        return int(math.ceil(steps)) if steps else 0


def build_scheduler(optimizer, scheduler: dict, steps: Steps):
    """The per-step schedule of ``trainer.learning_rate_scheduler``: warmup then decay (torch schedulers), or None
    when the optimizer sets its own rate (Adafactor with relative_step)."""
    import torch

    if any(group.get("lr") is None for group in optimizer.param_groups):
        return None
    decay = scheduler["decay"]
    if decay == "one_cycle":  # its own warmup (pct_start)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=scheduler["max_lr"] or [group["lr"] for group in optimizer.param_groups],
            total_steps=max(1, steps.total), pct_start=scheduler["pct_start"], div_factor=scheduler["div_factor"],
            final_div_factor=scheduler["final_div_factor"], anneal_strategy="cos", cycle_momentum=False)
    warmup = 0 if decay == "wsd" else steps.warmup(scheduler)  # wsd warms up itself
    after = _decay(optimizer, scheduler, steps, warmup)
    if not warmup:
        return after
    ramp = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: step / warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, after], milestones=[warmup])


def _decay(optimizer, scheduler: dict, steps: Steps, warmup: int):
    """The decay after warmup. Every one computes the rate from the peak (no step multiplies the previous rate), so
    :class:`PlateauReducer` can scale it after each step."""
    import torch

    schedulers = torch.optim.lr_scheduler
    decay = scheduler["decay"]
    if decay == "cosine":  # Ludwig's: cosine annealing with warm restarts, every evaluation period by default
        return schedulers.CosineAnnealingWarmRestarts(optimizer, T_0=scheduler["t_0"] or max(1, steps.per_evaluation),
                                                      T_mult=scheduler["t_mult"], eta_min=scheduler["eta_min"])
    return schedulers.LambdaLR(optimizer, _DECAY_FACTORS[decay](scheduler, steps.total, warmup))


def _constant(scheduler: dict, total: int, warmup: int):
    return lambda step: 1.0


def _linear(scheduler: dict, total: int, warmup: int):
    span = max(1, total - warmup)
    return lambda step: max(0.0, (span - step) / span)


def _exponential(scheduler: dict, total: int, warmup: int):
    def factor(step: int) -> float:
        exponent = 1 + step / scheduler["decay_steps"]
        return scheduler["decay_rate"] ** (math.ceil(exponent) if scheduler["staircase"] else exponent)
    return factor


def _inverse_sqrt(scheduler: dict, total: int, warmup: int):
    return lambda step: 1.0 / math.sqrt(max(step, scheduler["inverse_sqrt_warmup_steps"]))


def _polynomial(scheduler: dict, total: int, warmup: int):
    end, power, span = scheduler["polynomial_end_lr"], scheduler["polynomial_power"], max(1, total - warmup)
    return lambda step: (1.0 - end) * (1.0 - min(step / span, 1.0)) ** power + end


def _wsd(scheduler: dict, total: int, warmup: int):
    """Warmup, stable, then cosine decay to 0, by fractions of the total steps."""
    warm_end = scheduler["wsd_warmup_fraction"] * total
    stable_end = warm_end + scheduler["wsd_stable_fraction"] * total

    def factor(step: int) -> float:
        if step < warm_end:
            return step / max(1.0, warm_end)
        if step < stable_end:
            return 1.0
        progress = min((step - stable_end) / max(1.0, total - stable_end), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


#: the decays as factors of the peak rate at each step after warmup (LambdaLR)
_DECAY_FACTORS = {None: _constant, "constant": _constant, "linear": _linear, "exponential": _exponential,
                  "inverse_sqrt": _inverse_sqrt, "polynomial": _polynomial, "wsd": _wsd}


class PlateauReducer:
    """Ludwig's ``reduce_on_plateau``: torch's ReduceLROnPlateau decides when the watched metric stopped improving
    (``reduce_on_plateau_patience`` evaluations); fw counts its reductions, at most ``reduce_on_plateau``, and
    re-applies them (each a factor ``reduce_on_plateau_rate``) after every step of the per-step schedule, which
    sets the rate from the peak again."""

    def __init__(self, optimizer, scheduler: dict, goal: str):
        import torch

        self.optimizer, self.limit = optimizer, scheduler["reduce_on_plateau"]
        self.rate = scheduler["reduce_on_plateau_rate"]
        self.reductions = 0
        self.detector = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=goal, factor=self.rate, patience=scheduler["reduce_on_plateau_patience"], min_lr=0.0,
            eps=0.0)

    def evaluated(self, value: float) -> bool:
        """One evaluation's value of the watched metric; whether the rate was reduced."""
        if self.reductions >= self.limit:
            return False
        before = [group["lr"] for group in self.optimizer.param_groups]
        self.detector.step(value)
        reduced = [group["lr"] for group in self.optimizer.param_groups] != before
        if reduced:
            self.reductions += 1
            for group, rate in zip(self.optimizer.param_groups, before):
                group["lr"] = rate * self.rate
        return reduced

    def apply(self) -> None:
        """Scale the rates the schedule just set by the reductions so far."""
        if self.reductions:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.rate ** self.reductions

    def state_dict(self) -> dict:
        return {"reductions": self.reductions, "detector": self.detector.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.reductions = state["reductions"]
        self.detector.load_state_dict(state["detector"])


class Schedule:
    """The learning rate over a run: the per-step schedule (:func:`build_scheduler`) and Ludwig's reduce-on-plateau
    (:class:`PlateauReducer`) together, stepped and checkpointed as one."""

    def __init__(self, optimizer, scheduler: dict, steps: Steps, goal: str = "min"):
        self.per_step = build_scheduler(optimizer, scheduler, steps)
        self.plateau = PlateauReducer(optimizer, scheduler, goal) if scheduler["reduce_on_plateau"] > 0 else None

    def step(self) -> None:
        """After every optimizer step."""
        if self.per_step is not None:
            self.per_step.step()
        if self.plateau is not None:
            self.plateau.apply()

    def evaluated(self, value: float | None) -> bool:
        """After every evaluation, the value of ``reduce_eval_metric``; whether the rate was reduced."""
        return self.plateau is not None and value is not None and self.plateau.evaluated(value)

    def state_dict(self) -> dict:
        return {"per_step": self.per_step.state_dict() if self.per_step is not None else None,
                "plateau": self.plateau.state_dict() if self.plateau is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.per_step is not None and state.get("per_step") is not None:
            self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None and state.get("plateau") is not None:
            self.plateau.load_state_dict(state["plateau"])

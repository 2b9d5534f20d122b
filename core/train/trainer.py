"""The training loop of ``trainer.type: finetune``: :class:`Trainer`.

Ludwig's trainer options (fw.train.optim: the optimizer and the learning-rate schedule; fw.train.batch_size:
``batch_size`` / ``eval_batch_size`` / ``gradient_accumulation_steps`` / ``effective_batch_size`` and ``auto``),
gradient clipping (``clipglobalnorm``, ``clipnorm``, ``clipvalue``), ``layers_to_freeze_regex``, mixed precision on
a GPU, optional gradient checkpointing and NEFTune noise. Every ``steps_per_checkpoint`` optimizer steps (or
``checkpoints_per_epoch`` times per epoch; default once per epoch) the run is evaluated (fw.train.validation:
loss, perplexity, token and sequence accuracy of the validation split) and checkpointed: the best weights by
``validation_metric`` are kept, ``early_stop`` evaluations without improvement stop the run and
``reduce_on_plateau`` lowers the rate. A rich progress bar (loss, lr, tokens/s) and TensorBoard event files.

Reproducible: micro-batches are length-sorted once, and each epoch visits them in an order drawn from a
generator seeded with ``trainer.seed + epoch`` (``should_shuffle: false``: the same order every epoch); with the
RNG states restored from a checkpoint, a resumed run replays exactly what an uninterrupted run does
(checkpoints are only taken on optimizer-step boundaries).

The loss of an optimizer step is the mean over the trained (response) tokens of all its micro-batches, so it
does not depend on how rows are batched. Speed (see fw.train.packing, fw.train.loss): ``trainer.packing`` packs
rows into padding-free token budgets, ``trainer.chunked_loss`` runs the output head only on response tokens, in
chunks, ``trainer.compile`` torch.compiles the decoder.

Everything that depends on how many processes run goes through the trainer's :class:`fw.train.runtime.Runtime`
(placing the model, this process's rows, summing metrics, checkpoints, who writes). The run is planned for the whole
job (``batch_size`` rows per process in every micro-batch); each process trains on its share of each micro-batch
(a stand-in row with weight 0 when its share is empty), and a step's loss is divided by the trained tokens of the
whole job: N processes with batch b run the steps of one process with batch N·b (fw.train.parallel).
"""
from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from fw import console, trace
from fw.config.view import neftune_noise_alpha
from fw.errors import FwError, shown
from fw.model.adapters import after_step_callbacks
from fw.train import batch_size as batching
from fw.train import checkpoint as ckpt
from fw.train import loss, packing, validation
from fw.train.optim import Schedule, Steps, build_optimizer
from fw.train.runtime import Runtime


@dataclass
class Position:
    """Where training is: ``epoch`` being run, index of the next micro-batch in it, optimizer steps done."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    #: ``batch`` at the last optimizer-step boundary (what an interrupted run can be resumed from)
    committed_batch: int = 0

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step}

    def committed(self) -> dict:
        return {"epoch": self.epoch, "batch": self.committed_batch, "step": self.step}


@dataclass
class History:
    """What ``training_statistics.json`` reports: per optimizer step the loss and learning rate; per evaluation
    the training and validation metrics (and the test metrics when ``reduce_eval_split: test`` needs them)."""

    train_loss_per_step: list = field(default_factory=list)
    learning_rate_per_step: list = field(default_factory=list)
    #: the optimizer step of each evaluation
    evaluation_steps: list = field(default_factory=list)
    training: dict = field(default_factory=lambda: {"loss": []})
    validation: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    best: dict | None = None
    evaluations_without_improvement: int = 0
    learning_rate_reductions: int = 0
    stopped_early: bool = False

    def as_dict(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, data: dict) -> "History":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in (data or {}).items() if key in known})

    def record(self, split: str, scores: dict) -> None:
        for name, score in scores.items():
            getattr(self, split).setdefault(name, []).append(score)


@dataclass
class Plan:
    """How the training rows are cut into micro-batches and optimizer steps (depends on the rows only)."""

    #: micro-batches as lists of row indices (length-sorted, or packed)
    batches: list
    accumulation: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    #: micro-batches are packed rows (fw.train.packing)
    packed: bool = False


def plan(train_rows, trainer: dict, batch_size: int | None = None, accumulation: int | None = None,
         processes: int = 1) -> Plan:
    """The :class:`Plan` of ``train_rows`` under the ``trainer`` section (``batch_size`` / ``accumulation``: the
    resolved numbers when the section says auto), for a job of ``processes``: its micro-batches hold the rows (or
    the packed token budget) of ``batch_size`` rows per process, and each process trains on its share."""
    batch_size = (batch_size or trainer["batch_size"]) * processes
    accumulation = accumulation or trainer["gradient_accumulation_steps"]
    packed = bool(trainer.get("packing"))
    settings = {**trainer, "batch_size": batch_size}
    if trainer.get("max_tokens_per_batch"):
        settings["max_tokens_per_batch"] = trainer["max_tokens_per_batch"] * processes
    batches = packing.packed_batches(train_rows, settings) if packed else micro_batches(train_rows, batch_size)
    steps_per_epoch = math.ceil(len(batches) / accumulation)
    total = steps_per_epoch * trainer["epochs"]
    if trainer.get("train_steps"):
        total = min(total, trainer["train_steps"])
    return Plan(batches, accumulation, steps_per_epoch, total, trainer["epochs"], packed=packed)


def evaluation_period(layout: Plan, trainer: dict) -> int:
    """Optimizer steps between evaluations (and checkpoints), as Ludwig counts them: ``steps_per_checkpoint``,
    else ``steps_per_epoch / checkpoints_per_epoch``, else once per epoch; never more than an epoch or the run."""
    every = trainer.get("steps_per_checkpoint") or 0
    if trainer.get("checkpoints_per_epoch"):
        every = int(layout.steps_per_epoch / trainer["checkpoints_per_epoch"])
    if not every or every > layout.steps_per_epoch:
        every = layout.steps_per_epoch
    return max(1, min(every, layout.total_steps))


# -- batches -----------------------------------------------------------------------------------------------------
def micro_batches(rows, batch_size: int) -> list[list[int]]:
    from fw.data.tokens import length_sorted_batches

    return length_sorted_batches([len(row.input_ids) for row in rows], batch_size)


def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(count, generator=generator).tolist()


def to_device(batch: dict, device) -> dict:
    return {key: value.to(device) if hasattr(value, "to") else value for key, value in batch.items()}


def collate(rows, tokenizer, padding_side: str = "right") -> dict:
    from fw.data.tokens import collate as collate_rows

    return collate_rows(rows, tokenizer.pad_token_id, padding_side=padding_side)


def model_device(model):
    return next(model.parameters()).device


def evaluate_loss(model, tokenizer, rows, batch_size: int) -> dict:
    """Loss, perplexity, token and sequence accuracy of ``rows`` (response tokens only), in this process."""
    return validation.evaluate_rows(model, tokenizer, rows, batch_size)


def freeze_layers(model, pattern: str) -> int:
    """``layers_to_freeze_regex``: stop training every parameter whose name matches; how many matched."""
    regex = re.compile(pattern)
    frozen = 0
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and regex.search(name):
            parameter.requires_grad_(False)
            frozen += 1
    return frozen


def clip_gradients(parameters: list, clipping: dict | None) -> None:
    """Ludwig's gradient clipping, in its order: global norm, norm, value (torch's functions)."""
    clipping = clipping or {}
    for key in ("clipglobalnorm", "clipnorm"):
        if clipping.get(key):
            torch.nn.utils.clip_grad_norm_(parameters, clipping[key])
    if clipping.get("clipvalue"):
        torch.nn.utils.clip_grad_value_(parameters, clipping["clipvalue"])


def mixed_precision(enabled: bool, device, precision: str | None = None) -> tuple:
    """(autocast context factory, gradient scaler or None): torch AMP on a GPU (bfloat16 where supported,
    float16 with a scaler otherwise; ``precision`` bf16 / fp16 picks, no turns it off); nothing on CPU, as in
    Ludwig."""
    enabled = precision in ("bf16", "fp16") if precision is not None else enabled
    if not enabled or getattr(device, "type", "cpu") != "cuda":
        return contextlib.nullcontext, None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision) or \
        (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


# -- extras: NEFTune, gradient checkpointing, torch.compile -------------------------------------------------------
def add_neftune(model, alpha: float):
    """NEFTune with transformers' own forward hook (what its Trainer registers): uniform noise of scale
    alpha / sqrt(length * dim) on the input embeddings, in training mode only. Returns the hook handle."""
    from transformers.integrations.neftune import neftune_post_forward_hook

    embeddings = model.get_input_embeddings()
    embeddings.neftune_noise_alpha = alpha
    return embeddings.register_forward_hook(neftune_post_forward_hook)


def enable_gradient_checkpointing(model) -> None:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False


def compile_model(model) -> None:
    """``torch.compile`` the decoder in place (``nn.Module.compile``: parameter names, hence checkpoints, stay
    as they are); both loss paths run through it."""
    try:
        loss.transformers_model(model).get_decoder().compile()
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds here; the user needs the one line
        raise FwError(f"trainer.compile: torch.compile failed ({type(exc).__name__}: {exc}); "
                      "set trainer.compile: false.") from exc


# -- progress and logging ----------------------------------------------------------------------------------------
class Reporter:
    """Rich progress bar + TensorBoard writer (either may be off)."""

    def __init__(self, total_steps: int, start_step: int, log_dir: Path | None, show_progress: bool):
        self.writer = None
        self.progress = console.ProgressBar("training", total_steps, show_progress, completed=start_step,
                                            status="loss {loss}  lr {lr}  {speed} tok/s").start()
        if log_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: skip event files, say so
                console.warn("tensorboard is not installed; no TensorBoard event files are written "
                             "(pip install tensorboard).")
            else:
                self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=start_step or None)

    def step(self, step: int, loss: float, lr: float, tokens_per_second: float) -> None:
        self.progress.update(step, loss=f"{loss:.4f}", lr=f"{lr:.2e}", speed=f"{tokens_per_second:,.0f}")
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/learning_rate", lr, step)
            self.writer.add_scalar("train/tokens_per_second", tokens_per_second, step)

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        self.progress.stop()
        if self.writer is not None:
            self.writer.close()


# -- the trainer -------------------------------------------------------------------------------------------------
class Trainer:
    """One fine-tuning run, its state in one place.

    ``Trainer(config, tokenizer, train_rows, validation_rows)`` plans the run (:attr:`plan`; the adapter may
    read :attr:`planned_steps` before training); :meth:`setup` takes the model ready to train and the run
    directory; :meth:`train` runs (or, with ``resume``, continues) it and returns the training statistics;
    :meth:`evaluate` scores rows. ``config`` is the resolved config (its ``trainer`` section, and the
    ``adapter`` the optimizer groups and per-step callbacks come from). ``test_rows`` are evaluated with the
    validation rows only when ``reduce_eval_split: test`` watches them."""

    def __init__(self, config: dict, tokenizer, train_rows, validation_rows=(), *, test_rows=(),
                 runtime: Runtime | None = None, show_progress: bool = True):
        if not train_rows:
            raise FwError("the training split is empty: give --training_set, or a --dataset with training rows.")
        self.config, self.settings = config, config["trainer"]
        self.tokenizer, self.train_rows, self.validation_rows = tokenizer, train_rows, list(validation_rows)
        self.test_rows = list(test_rows)
        self.runtime = runtime or Runtime()
        self.show_progress = show_progress
        #: ``batch_size: auto`` is searched on the model (setup) when a GPU is there; the CPU rule holds until then
        self.batching = batching.training_batching(self.settings, len(train_rows), None, self.runtime.processes)
        self.plan = self.make_plan()
        self.position, self.history = Position(), History()
        #: ``model``: as given to :meth:`setup` (what checkpoints hold, what is saved); ``step_model``: what the
        #: training steps run through (the runtime's prepared model; the same object in one process)
        self.model = self.step_model = self.optimizer = self.scheduler = self.reporter = None
        self.run_dir: Path | None = None
        self.checkpoints: Path | None = None
        self.after_step: list = []
        self.flash_kwargs = False
        self.loss_sum = loss.standard_loss_sum
        self.autocast, self.scaler = contextlib.nullcontext, None
        self.hooks: list = []
        self.eval_size: int | None = None
        self.steps_since_evaluation: list = []

    def make_plan(self) -> Plan:
        return plan(self.train_rows, self.settings, self.batching.batch_size, self.batching.accumulation,
                    self.runtime.processes)

    @property
    def planned_steps(self) -> int:
        return self.plan.total_steps

    @property
    def eval_batch_size(self) -> int:
        """Rows per evaluation batch: ``eval_batch_size`` (null: batch_size), never below batch_size (as in
        Ludwig); ``auto`` is searched in :meth:`setup`."""
        if self.eval_size is None:
            self.eval_size, note = batching.evaluation_batch_size(self.settings, len(self.validation_rows) or 1, None,
                                                                  self.batching.batch_size)
        return max(self.eval_size, self.batching.batch_size)

    @property
    def evaluates(self) -> bool:
        return not self.settings.get("skip_all_evaluation")

    # -- setup -----------------------------------------------------------------------------------------------
    def setup(self, model, run_dir: Path) -> None:
        """Make ``model`` (adapter applied) ready to train: frozen layers, training mode, gradient checkpointing,
        NEFTune, the runtime's placement, the speed options, mixed precision, ``auto`` batch sizes, the optimizer
        and the schedule. Checkpoints go to ``run_dir/checkpoints``, TensorBoard events to ``run_dir/tensorboard``."""
        self.run_dir, self.checkpoints = Path(run_dir), Path(run_dir) / "checkpoints"
        self.model = model
        self.freeze()
        self.after_step = after_step_callbacks(model, self.config)
        model.train()
        if self.settings["enable_gradient_checkpointing"] or self.runtime.activation_checkpointing:
            enable_gradient_checkpointing(model)
        alpha = neftune_noise_alpha(self.config)
        if alpha:
            self.hooks.append(add_neftune(model, alpha))
        self.prepare_speedups()
        self.step_model = self.runtime.prepare_model(model)
        self.autocast, self.scaler = mixed_precision(self.settings.get("use_mixed_precision", False),
                                                     model_device(model), self.runtime.mixed_precision)
        if self.settings.get("use_mixed_precision") and self.scaler is None and self.autocast is contextlib.nullcontext \
                and model_device(model).type != "cuda":
            console.info("trainer.use_mixed_precision: no effect on CPU (as in Ludwig).")
        self.optimizer = build_optimizer(model, self.config)
        self.resolve_batch_sizes()
        self.step_model, self.optimizer = self.runtime.prepare_optimizer(
            self.step_model, self.optimizer, self.batching.batch_size, self.plan.accumulation,
            self.settings.get("gradient_clipping"))
        if hasattr(self.optimizer, "train"):  # schedule-free optimizers keep two iterates
            self.optimizer.train()
        self.scheduler = Schedule(self.optimizer, self.settings["learning_rate_scheduler"],
                                  Steps(self.plan.total_steps, evaluation_period(self.plan, self.settings)),
                                  self.metric_goal(self.settings["learning_rate_scheduler"]["reduce_eval_metric"]))

    def freeze(self) -> None:
        pattern = self.settings.get("layers_to_freeze_regex")
        if not pattern:
            return
        frozen = freeze_layers(self.model, pattern)
        if frozen:
            console.info(f"trainer.layers_to_freeze_regex: froze {frozen} parameter tensor(s).")
        else:
            console.warn(f"trainer.layers_to_freeze_regex: {shown(pattern)} matches no trainable parameter; "
                         "nothing frozen.")

    def prepare_speedups(self) -> None:
        """Attention kernel and row-separation check for packing, torch.compile, the loss path (fw.train.loss); on
        the model itself, before the runtime wraps or shards it (every process runs the same checks)."""
        if self.plan.packed:
            packing.choose_attention(self.model)
            self.flash_kwargs = packing.uses_flash_kwargs(self.model)
        if self.settings.get("compile"):
            compile_model(self.model)
        self.loss_sum = self.runtime.decided_by_main(self.probe_loss_path)

    def probe_loss_path(self):
        """Packing's row-separation check and the loss path, probed with the model's weights."""
        if self.plan.packed:
            packing.check_rows_separated(self.model, self.train_rows)
        first = self.load_batch(self.plan.batches[0])
        return loss.choose(self.model, first, self.settings.get("chunked_loss", True))

    # -- auto batch sizes ------------------------------------------------------------------------------------
    def resolve_batch_sizes(self) -> None:
        """``batch_size`` / ``eval_batch_size`` auto on a GPU: probed with real steps on the longest rows (the
        optimizer state they allocate included), then the run re-planned; one line says what was chosen."""
        on_gpu = model_device(self.model).type == "cuda"
        if self.settings["batch_size"] == batching.AUTO and on_gpu:
            self.batching = batching.training_batching(self.settings, len(self.train_rows),
                                                       self.everywhere(batching.cuda_fits(self.probe_training_step)),
                                                       self.runtime.processes)
            self.optimizer.state.clear()
            self.optimizer.zero_grad(set_to_none=True)
            self.plan = self.make_plan()
        if self.batching.note:
            console.info(self.batching.note)
        if self.settings.get("eval_batch_size") == batching.AUTO and (self.validation_rows or self.test_rows):
            rows = self.validation_rows or self.test_rows
            fits = self.everywhere(batching.cuda_fits(lambda size: self.probe_evaluation(rows, size))) \
                if on_gpu else None
            self.eval_size, note = batching.evaluation_batch_size(self.settings, len(rows), fits,
                                                                  self.batching.batch_size)
            console.info(note)

    def everywhere(self, fits):
        """``fits(size)`` true in every process (each probes its own memory, without the others: the unwrapped
        model, no collectives; a sharded model cannot be probed that way)."""
        if self.runtime.processes > 1 and self.runtime.forward_model(self.model, self.step_model) is not self.model:
            raise FwError("trainer.batch_size / eval_batch_size auto: the GPU memory of a sharded model (fsdp) "
                          "cannot be probed one process at a time; set the batch sizes to numbers.")
        return lambda size: self.runtime.reduce_sum([0.0 if fits(size) else 1.0])[0] == 0

    def probe_training_step(self, size: int) -> None:
        """One training step on the ``size`` longest rows at learning rate 0 (the weights do not move)."""
        longest = sorted(range(len(self.train_rows)), key=lambda i: len(self.train_rows[i].input_ids))[-size:]
        rates = [group["lr"] for group in self.optimizer.param_groups]
        try:
            with self.autocast():
                loss_sum, _ = self.loss_sum(self.model, self.load_batch(longest))
            loss_sum.backward()
            for group in self.optimizer.param_groups:
                group["lr"] = 0.0
            self.optimizer.step()
        finally:
            for group, rate in zip(self.optimizer.param_groups, rates):
                group["lr"] = rate
            self.optimizer.zero_grad(set_to_none=True)

    def probe_evaluation(self, rows, size: int) -> None:
        longest = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))[-size:]
        validation.totals(self.model, self.tokenizer, rows, [longest], self.autocast)

    # -- batches ---------------------------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The micro-batches (row indices, planned for the whole job) of ``epoch``, in order (``should_shuffle``: a
        seeded new order every epoch; else length-sorted, the same every epoch)."""
        count = len(self.plan.batches)
        order = epoch_order(count, self.settings["seed"], epoch) if self.settings.get("should_shuffle", True) \
            else range(count)
        return [self.plan.batches[index] for index in order]

    def load_batch(self, indices: list[int]) -> dict:
        """The micro-batch of training rows ``indices``, collated and on the model's device."""
        rows = [self.train_rows[i] for i in indices]
        batch = packing.collate_packed(rows, self.flash_kwargs) if self.plan.packed else collate(rows, self.tokenizer)
        return to_device(batch, model_device(self.model))

    def trained_tokens(self, shares: Sequence[list[int]]) -> int:
        """Trained tokens in this process's ``shares`` of micro-batches, summed over all processes: the loss of an
        optimizer step is the mean over these, the same however the rows are batched, packed or shared out."""
        local = sum(self.train_rows[i].trained_tokens for indices in shares for i in indices)
        return self.runtime.reduce_sum([local])[0]

    # -- training --------------------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> dict:
        """Fine-tune the model in place (with ``resume``: from the latest checkpoint); returns the training
        statistics. On any interruption the work done so far is saved as a checkpoint first."""
        if resume:
            self.resume()
        self.reporter = self.make_reporter()
        try:
            with self.runtime.stop_signals():
                self.run_epochs()
        except BaseException as exc:
            self.reporter.close()
            if self.runtime.may_checkpoint_after(exc):
                self.save_interrupted()
            raise
        finally:
            self.reporter.close()
            for hook in self.hooks:
                hook.remove()
        if hasattr(self.optimizer, "eval"):  # schedule-free: the averaged weights are the trained ones
            self.optimizer.eval()
        if self.history.best is not None:
            self.runtime.restore_best(self.checkpoints, self.model)
        self.model.eval()
        return {**self.history.as_dict(), "steps": self.position.step, "total_steps": self.plan.total_steps,
                "batch_size": self.batching.batch_size, "gradient_accumulation_steps": self.batching.accumulation}

    def make_reporter(self) -> Reporter:
        main = self.runtime.is_main_process
        return Reporter(self.plan.total_steps, self.position.step, self.run_dir / "tensorboard" if main else None,
                        self.show_progress and main)

    def run_epochs(self) -> None:
        position, history = self.position, self.history
        while position.epoch < self.plan.epochs and position.step < self.plan.total_steps \
                and not history.stopped_early:
            finished = self.run_epoch()
            if finished:
                position.epoch, position.batch, position.committed_batch = position.epoch + 1, 0, 0
            self.save_checkpoint()
            if not finished:
                break

    def run_epoch(self) -> bool:
        """Micro-batches from ``position.batch`` to the end of the epoch (or until the step budget is spent or
        early stopping); whether the epoch was finished."""
        position, accumulation = self.position, self.plan.accumulation
        batches = self.epoch_batches(position.epoch)
        shares = [self.runtime.shard(batch) for batch in batches]
        count = len(batches)
        group_loss, seen_tokens, started, targets = 0.0, 0, time.perf_counter(), None
        while position.batch < count and position.step < self.plan.total_steps and not self.history.stopped_early:
            group_start = (position.batch // accumulation) * accumulation
            group_size = min(accumulation, count - group_start)
            if targets is None or position.batch == group_start:
                targets = max(1, self.trained_tokens(shares[group_start:group_start + group_size]))
            share = shares[position.batch]
            # an empty share still runs a forward and backward (the other processes' collectives wait for it)
            batch = self.load_batch(share or batches[position.batch][:1])
            last = position.batch + 1 - group_start == group_size
            with self.runtime.synchronizing(self.step_model, last):
                with self.autocast():
                    loss_sum, _ = self.runtime.loss(self.step_model, self.loss_sum, batch)
                # the processes' gradients are averaged: times processes, over the whole job's tokens
                scaled = loss_sum * (self.runtime.processes / targets if share else 0.0)
                self.runtime.backward(self.scaler.scale(scaled) if self.scaler is not None else scaled)
            if share:
                group_loss += float(loss_sum.detach()) / targets
                seen_tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch \
                    else batch["input_ids"].numel()
            position.batch += 1
            if position.batch - group_start < group_size:
                continue
            self.optimizer_step(group_loss, seen_tokens, time.perf_counter() - started)
            group_loss, seen_tokens, started = 0.0, 0, time.perf_counter()
            if self.at_evaluation():
                self.evaluation_point(position.batch < count)
        return position.batch >= count

    def optimizer_step(self, group_loss: float, seen_tokens: int, elapsed: float) -> None:
        """Clip, step the optimizer and the schedule, run the adapter's callbacks, record and report the step."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip_gradients([p for p in self.model.parameters() if p.requires_grad], self.settings.get("gradient_clipping"))
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        for callback in self.after_step:
            callback(self.position.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.position.step += 1
        self.position.committed_batch = self.position.batch
        group_loss, seen_tokens, stop_votes = self.runtime.reduce_sum([group_loss, seen_tokens,
                                                                       self.runtime.stop_vote()])
        self.history.train_loss_per_step.append(group_loss)
        self.history.learning_rate_per_step.append(lr)
        self.steps_since_evaluation.append(group_loss)
        trace.mark("first_step")
        self.reporter.step(self.position.step, group_loss, lr, seen_tokens / max(elapsed, 1e-9))
        self.runtime.agree_to_stop(stop_votes)

    # -- evaluation points -----------------------------------------------------------------------------------
    def at_evaluation(self) -> bool:
        """Every evaluation period (Ludwig's checkpoint steps), and at the last step of the run."""
        step = self.position.step
        return step % evaluation_period(self.plan, self.settings) == 0 or step == self.plan.total_steps

    def evaluation_point(self, mid_epoch: bool) -> None:
        """Evaluate (unless ``skip_all_evaluation``), keep the best weights, stop early, reduce the rate on a
        plateau; then a resumable checkpoint (the end of an epoch writes its own)."""
        if self.evaluates:
            self.evaluate_and_decide()
        self.steps_since_evaluation = []
        if mid_epoch:
            self.save_checkpoint()

    def evaluate_and_decide(self) -> None:
        history, position = self.history, self.position
        training = self.evaluate(self.train_rows) if self.settings.get("evaluate_training_set") else \
            ({"loss": sum(self.steps_since_evaluation) / len(self.steps_since_evaluation)}
             if self.steps_since_evaluation else {})
        scheduler = self.settings["learning_rate_scheduler"]
        test = self.evaluate(self.test_rows) if scheduler["reduce_eval_split"] == "test" else {}
        validation_scores = self.evaluate(self.validation_rows)
        history.evaluation_steps.append(position.step)
        for split, scores in (("training", training), ("validation", validation_scores), ("test", test)):
            history.record(split, scores)
            self.reporter.scalars(split, scores, position.step)
        watched = {"training": training, "validation": validation_scores, "test": test}[scheduler["reduce_eval_split"]]
        if self.scheduler.evaluated(validation.value(watched, scheduler["reduce_eval_metric"])):
            history.learning_rate_reductions += 1
            console.info(f"step {position.step}: {scheduler['reduce_eval_split']} {scheduler['reduce_eval_metric']} "
                        f"stopped improving; learning rate reduced (reduce_on_plateau).")
        if validation_scores:
            self.track_best(validation_scores)

    def track_best(self, scores: dict) -> None:
        """Best weights and early stopping by ``validation_metric`` of the validation split."""
        history, name = self.history, self.settings["validation_metric"]
        current = validation.value(scores, name)
        best = history.best.get("value") if history.best else None
        if current is not None and validation.improved(current, best, self.metric_goal(name)):
            history.best = {**scores, "metric": name, "value": current, "epoch": self.position.epoch + 1,
                            "step": self.position.step}
            history.evaluations_without_improvement = 0
            self.runtime.save_best(self.checkpoints, self.model, history.best)
            return
        history.evaluations_without_improvement += 1
        patience = self.settings["early_stop"]
        if patience is not None and patience >= 0 and history.evaluations_without_improvement >= max(patience, 1):
            history.stopped_early = True

    @staticmethod
    def metric_goal(name: str) -> str:
        """min or max: how ``name`` improves (the core schema's metric table for text outputs)."""
        from fw.config.derive import trainer_schema

        table = trainer_schema()["properties"]["validation_metric"]["x-fw-validation-metrics"]["text"]
        return table.get(name, "min")

    # -- evaluation ------------------------------------------------------------------------------------------
    def evaluate(self, rows) -> dict:
        """Loss, perplexity, token and sequence accuracy of ``rows`` (response tokens only), over all processes,
        on at most ``eval_steps`` batches; {} without rows."""
        if not rows:
            return {}
        batches = micro_batches(rows, self.eval_batch_size * self.runtime.processes)
        if self.settings.get("eval_steps"):
            batches = batches[:self.settings["eval_steps"]]
        shares = [self.runtime.shard(batch) for batch in batches]
        model = self.runtime.forward_model(self.model, self.step_model)
        sums = validation.totals(model, self.tokenizer, rows, [share or batch[:1] for share, batch in zip(shares, batches)],
                                 self.autocast, counted=[bool(share) for share in shares])
        return validation.metrics(self.runtime.reduce_sum(sums))

    # -- checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self, position: dict | None = None) -> Path | None:
        """Write a resumable checkpoint at ``position`` (default: where training is), as the runtime does (the main
        process writes; FSDP's processes write their shards). Its path in the main process."""
        position = {**(position or self.position.as_dict()), "processes": self.runtime.processes}
        return self.runtime.save_checkpoint(self.checkpoints, self.position.step, self.model, self.optimizer,
                                            self.scheduler, position, self.history.as_dict())

    def save_interrupted(self) -> None:
        """Ctrl-C, SIGTERM, out of memory, a crash: keep the work done so far as a checkpoint at the last optimizer step
        (the weights and optimizer are exactly there; a half-accumulated gradient is simply redone on resume)."""
        if self.position.step == 0:
            return
        try:
            path = self.save_checkpoint(self.position.committed())
        except Exception as exc:  # the original error matters more; say why nothing was saved
            console.warn(f"training stopped at step {self.position.step}; could not write a checkpoint: {exc}")
            return
        if path is not None:
            console.warn(f"training stopped at step {self.position.step}; checkpoint saved in {path}. "
                        "Run the same fw train command with --resume to continue.")

    def resume(self) -> None:
        """Restore the latest checkpoint of the run directory: weights, optimizer, schedule, RNG, position and
        history (a run directory without one trains from the start, with a warning)."""
        latest = ckpt.latest_checkpoint(self.checkpoints)
        main = self.runtime.is_main_process
        if latest is None:
            if main:
                console.warn(f"--resume: no checkpoint in {self.checkpoints}; training from the start.")
            return
        state = self.runtime.load_checkpoint(latest, self.model, self.optimizer, self.scheduler)
        saved = dict(state["position"])
        processes = saved.pop("processes", 1)
        if main:
            console.info(f"resuming from {latest} (epoch {saved['epoch'] + 1}, step {saved['step']})")
        if processes != self.runtime.processes:
            saved["batch"] = self.batch_after_steps(saved)
            if main:
                console.warn(f"--resume: the checkpoint was written by {processes} process(es), this job has "
                             f"{self.runtime.processes}: the rest of epoch {saved['epoch'] + 1} is planned anew for "
                             "them, so its rows can differ from those an uninterrupted run would see.")
        self.position = Position(**saved)
        self.position.committed_batch = self.position.batch
        self.history = History.from_dict(state["history"])

    def batch_after_steps(self, position: dict) -> int:
        """The micro-batch of this job's plan where ``position``'s epoch continues: after as many optimizer steps
        of the epoch as were done (``processes`` changed, so the saved micro-batch index means other rows)."""
        done_in_epoch = position["step"] - position["epoch"] * self.plan.steps_per_epoch
        return min(max(done_in_epoch, 0) * self.plan.accumulation, len(self.plan.batches))

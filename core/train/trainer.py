"""The training loop of ``trainer.type: finetune``: :class:`Trainer`.

AdamW (parameter groups from the adapter, e.g. LoRA+'s faster B matrices), linear warmup then cosine / linear /
constant decay, gradient accumulation, global-norm clipping, optional gradient checkpointing and NEFTune noise,
evaluation on the validation split after every epoch (loss, perplexity) with the best weights kept and optional
early stopping, a rich progress bar (loss, lr, tokens/s) and TensorBoard event files.

Reproducible: micro-batches are length-sorted once, and each epoch visits them in an order drawn from a
generator seeded with ``trainer.seed + epoch``; with the RNG states restored from a checkpoint, a resumed run
replays exactly what an uninterrupted run does (checkpoints are only taken on optimizer-step boundaries).

The loss of an optimizer step is the mean over the trained (response) tokens of all its micro-batches, so it
does not depend on how rows are batched. Speed (see fw.train.packing, fw.train.loss): ``trainer.packing`` packs
rows into padding-free token budgets, ``trainer.chunked_loss`` runs the output head only on response tokens, in
chunks, ``trainer.compile`` torch.compiles the decoder.

Everything that depends on how many processes run goes through the trainer's :class:`fw.train.runtime.Runtime`
(placing the model, this process's micro-batches, summing metrics, who writes); the loop itself does not know.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fw import console, trace
from fw.config.view import eval_batch_size, neftune_noise_alpha
from fw.errors import FwError
from fw.model.adapters import after_step_callbacks, optimizer_parameter_groups
from fw.train import checkpoint as ckpt
from fw.train import loss, packing
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
    """What ``training_statistics.json`` reports."""

    train_loss_per_step: list = field(default_factory=list)
    learning_rate_per_step: list = field(default_factory=list)
    training: dict = field(default_factory=lambda: {"loss": []})
    validation: dict = field(default_factory=lambda: {"loss": [], "perplexity": []})
    best: dict | None = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False

    def as_dict(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, data: dict) -> "History":
        return cls(**data) if data else cls()


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


def plan(train_rows, trainer: dict) -> Plan:
    """The :class:`Plan` of ``train_rows`` under the ``trainer`` section."""
    packed = bool(trainer.get("packing"))
    batches = packing.packed_batches(train_rows, trainer) if packed else micro_batches(train_rows,
                                                                                         trainer["batch_size"])
    accumulation = trainer["gradient_accumulation_steps"]
    steps_per_epoch = math.ceil(len(batches) / accumulation)
    total = steps_per_epoch * trainer["epochs"]
    if trainer.get("train_steps"):
        total = min(total, trainer["train_steps"])
    return Plan(batches, accumulation, steps_per_epoch, total, trainer["epochs"], packed=packed)


# -- schedule and optimizer --------------------------------------------------------------------------------------
def lr_factor(step: int, total: int, warmup: int, decay: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if decay == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if decay == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model, config: dict):
    """AdamW over the trainable parameters, grouped as the adapter asks (fw.model.adapters)."""
    trainer = config["trainer"]
    groups = optimizer_parameter_groups(model, config, trainer["learning_rate"], trainer["optimizer"]["weight_decay"])
    if not groups:
        raise FwError("the model has no trainable parameter (check adapter.target_modules).")
    opt = trainer["optimizer"]
    return torch.optim.AdamW(groups, betas=tuple(opt["betas"]), eps=opt["eps"])


def build_scheduler(optimizer, total_steps: int, trainer: dict):
    sched = trainer["learning_rate_scheduler"]
    warmup = int(round(sched["warmup_fraction"] * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, sched["decay"]))


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


def loss_totals(model, tokenizer, rows, batches: Sequence[list[int]]) -> tuple[float, int]:
    """(sum of the response-token losses, response tokens) of ``rows`` over ``batches`` (row indices)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for indices in batches:
            batch = to_device(collate([rows[i] for i in indices], tokenizer), model_device(model))
            tokens = loss.response_tokens(batch["labels"])
            if tokens:
                total += float(model(**batch).loss) * tokens
                count += tokens
    model.train(was_training)
    return total, count


def loss_metrics(total: float, count: int) -> dict:
    """Mean loss and perplexity from :func:`loss_totals`."""
    loss_value = total / count if count else float("nan")
    return {"loss": loss_value, "perplexity": math.exp(min(loss_value, 50.0)) if count else float("nan")}


def evaluate_loss(model, tokenizer, rows, batch_size: int) -> dict:
    """Token-weighted mean loss over ``rows`` (response tokens only) and its perplexity, in this process."""
    if not rows:
        return {}
    return loss_metrics(*loss_totals(model, tokenizer, rows, micro_batches(rows, batch_size)))


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
    ``adapter`` the optimizer groups and per-step callbacks come from)."""

    def __init__(self, config: dict, tokenizer, train_rows, validation_rows=(), *, runtime: Runtime | None = None,
                 show_progress: bool = True):
        if not train_rows:
            raise FwError("the training split is empty: give --training_set, or a --dataset with training rows.")
        self.config, self.settings = config, config["trainer"]
        self.tokenizer, self.train_rows, self.validation_rows = tokenizer, train_rows, list(validation_rows)
        self.runtime = runtime or Runtime()
        self.show_progress = show_progress
        self.plan = plan(train_rows, self.settings)
        self.position, self.history = Position(), History()
        #: ``model``: as given to :meth:`setup` (what checkpoints hold, what is saved); ``step_model``: what the
        #: training steps run through (the runtime's prepared model; the same object in one process)
        self.model = self.step_model = self.optimizer = self.scheduler = self.reporter = None
        self.run_dir: Path | None = None
        self.checkpoints: Path | None = None
        self.after_step: list = []
        self.flash_kwargs = False
        self.loss_sum = loss.standard_loss_sum
        self.hooks: list = []

    @property
    def planned_steps(self) -> int:
        return self.plan.total_steps

    # -- setup -----------------------------------------------------------------------------------------------
    def setup(self, model, run_dir: Path) -> None:
        """Make ``model`` (adapter applied) ready to train: training mode, gradient checkpointing, NEFTune, the
        runtime's placement, the speed options, the optimizer and the schedule. Checkpoints go to
        ``run_dir/checkpoints``, TensorBoard events to ``run_dir/tensorboard``."""
        self.run_dir, self.checkpoints = Path(run_dir), Path(run_dir) / "checkpoints"
        self.model = model
        self.after_step = after_step_callbacks(model, self.config)
        model.train()
        if self.settings["enable_gradient_checkpointing"]:
            enable_gradient_checkpointing(model)
        alpha = neftune_noise_alpha(self.config)
        if alpha:
            self.hooks.append(add_neftune(model, alpha))
        self.step_model = self.runtime.prepare_model(model)
        self.prepare_speedups()
        self.optimizer = build_optimizer(model, self.config)
        self.scheduler = build_scheduler(self.optimizer, self.plan.total_steps, self.settings)

    def prepare_speedups(self) -> None:
        """Attention kernel and row-separation check for packing, torch.compile, the loss path (fw.train.loss)."""
        if self.plan.packed:
            packing.choose_attention(self.model)
            self.flash_kwargs = packing.uses_flash_kwargs(self.model)
            packing.check_rows_separated(self.model, self.train_rows)
        if self.settings.get("compile"):
            compile_model(self.model)
        first = self.load_batch(self.plan.batches[0])
        self.loss_sum = loss.choose(self.step_model, first, self.settings.get("chunked_loss", True))

    # -- batches ---------------------------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The micro-batches (row indices) this process runs in ``epoch``, in order."""
        order = epoch_order(len(self.plan.batches), self.settings["seed"], epoch)
        return self.runtime.shard([self.plan.batches[index] for index in order])

    def load_batch(self, indices: list[int]) -> dict:
        """The micro-batch of training rows ``indices``, collated and on the model's device."""
        rows = [self.train_rows[i] for i in indices]
        batch = packing.collate_packed(rows, self.flash_kwargs) if self.plan.packed else collate(rows, self.tokenizer)
        return to_device(batch, model_device(self.model))

    def trained_tokens(self, batches: Sequence[list[int]]) -> int:
        """Trained tokens in ``batches`` over all processes: the loss of an optimizer step is the mean over
        these, the same however the rows are batched or packed."""
        local = sum(self.train_rows[i].trained_tokens for indices in batches for i in indices)
        return self.runtime.reduce_sum([local])[0]

    # -- training --------------------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> dict:
        """Fine-tune the model in place (with ``resume``: from the latest checkpoint); returns the training
        statistics. On any interruption the work done so far is saved as a checkpoint first."""
        if resume:
            self.resume()
        self.reporter = self.make_reporter()
        try:
            self.run_epochs()
        except BaseException:
            self.reporter.close()
            self.save_interrupted()
            raise
        finally:
            self.reporter.close()
            for hook in self.hooks:
                hook.remove()
        if self.history.best is not None:
            ckpt.restore_best(self.checkpoints, self.model)
        self.model.eval()
        return {**self.history.as_dict(), "steps": self.position.step, "total_steps": self.plan.total_steps}

    def make_reporter(self) -> Reporter:
        main = self.runtime.is_main_process
        return Reporter(self.plan.total_steps, self.position.step, self.run_dir / "tensorboard" if main else None,
                        self.show_progress and main)

    def run_epochs(self) -> None:
        position, history = self.position, self.history
        while position.epoch < self.plan.epochs and position.step < self.plan.total_steps \
                and not history.stopped_early:
            finished = self.run_epoch()
            epoch_losses = history.train_loss_per_step[position.epoch * self.plan.steps_per_epoch:]
            if epoch_losses:
                history.training["loss"].append(sum(epoch_losses) / len(epoch_losses))
            self.end_of_epoch()
            if finished:
                position.epoch, position.batch, position.committed_batch = position.epoch + 1, 0, 0
            self.save_checkpoint()
            if not finished:
                break

    def run_epoch(self) -> bool:
        """Micro-batches from ``position.batch`` to the end of the epoch (or until the step budget is spent);
        whether the epoch was finished."""
        position, accumulation = self.position, self.plan.accumulation
        batches = self.epoch_batches(position.epoch)
        count = len(batches)
        group_loss, seen_tokens, started, targets = 0.0, 0, time.perf_counter(), None
        while position.batch < count and position.step < self.plan.total_steps:
            group_start = (position.batch // accumulation) * accumulation
            group_size = min(accumulation, count - group_start)
            if targets is None or position.batch == group_start:
                targets = max(1, self.trained_tokens(batches[group_start:group_start + group_size]))
            batch = self.load_batch(batches[position.batch])
            loss_sum, _ = self.loss_sum(self.step_model, batch)
            (loss_sum / targets).backward()
            group_loss += float(loss_sum.detach()) / targets
            seen_tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
            position.batch += 1
            if position.batch - group_start < group_size:
                continue
            self.optimizer_step(group_loss, seen_tokens, time.perf_counter() - started)
            group_loss, seen_tokens, started = 0.0, 0, time.perf_counter()
            every = self.settings["steps_per_checkpoint"]
            if every and position.step % every == 0 and position.batch < count:
                self.save_checkpoint()
        return position.batch >= count

    def optimizer_step(self, group_loss: float, seen_tokens: int, elapsed: float) -> None:
        """Clip, step the optimizer and the schedule, run the adapter's callbacks, record and report the step."""
        clip = self.settings["gradient_clipping"]["clipglobalnorm"]
        if clip:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        for callback in self.after_step:
            callback(self.position.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.position.step += 1
        self.position.committed_batch = self.position.batch
        group_loss, seen_tokens = self.runtime.reduce_sum([group_loss, seen_tokens])
        self.history.train_loss_per_step.append(group_loss)
        self.history.learning_rate_per_step.append(lr)
        trace.mark("first_step")
        self.reporter.step(self.position.step, group_loss, lr, seen_tokens / max(elapsed, 1e-9))

    def end_of_epoch(self) -> None:
        """Validation loss/perplexity, best weights, early stopping."""
        if not self.validation_rows:
            return
        position, history = self.position, self.history
        metrics = self.evaluate(self.validation_rows)
        history.validation["loss"].append(metrics["loss"])
        history.validation["perplexity"].append(metrics["perplexity"])
        self.reporter.scalars("validation", metrics, position.step)
        if history.best is None or metrics["loss"] < history.best["loss"]:
            history.best = {**metrics, "epoch": position.epoch + 1, "step": position.step}
            history.epochs_without_improvement = 0
            if self.runtime.is_main_process:
                ckpt.save_best(self.checkpoints, self.model, history.best)
        else:
            history.epochs_without_improvement += 1
            patience = self.settings["early_stop"]
            if patience is not None and patience >= 0 and history.epochs_without_improvement >= max(patience, 1):
                history.stopped_early = True

    # -- evaluation ------------------------------------------------------------------------------------------
    def evaluate(self, rows) -> dict:
        """Token-weighted mean loss over ``rows`` (response tokens only) and its perplexity, over all processes;
        {} without rows."""
        if not rows:
            return {}
        batches = self.runtime.shard(micro_batches(rows, eval_batch_size(self.config)))
        total, count = self.runtime.reduce_sum(loss_totals(self.model, self.tokenizer, rows, batches))
        return loss_metrics(total, count)

    # -- checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self, position: dict | None = None) -> Path | None:
        """Write a resumable checkpoint at ``position`` (default: where training is); main process only."""
        if not self.runtime.is_main_process:
            return None
        return ckpt.save_checkpoint(self.checkpoints, self.position.step, self.model, self.optimizer, self.scheduler,
                                    position or self.position.as_dict(), self.history.as_dict())

    def save_interrupted(self) -> None:
        """Ctrl-C, out of memory, a crash: keep the work done so far as a checkpoint at the last optimizer step
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
        state = ckpt.load_checkpoint(latest, self.model, self.optimizer, self.scheduler)
        if main:
            console.info(f"resuming from {latest} (epoch {state['position']['epoch'] + 1}, "
                        f"step {state['position']['step']})")
        self.position = Position(**state["position"])
        self.position.committed_batch = self.position.batch
        self.history = History.from_dict(state["history"])

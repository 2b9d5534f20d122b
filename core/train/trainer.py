"""The training loop of ``trainer.type: finetune``.

AdamW (LoRA+: the B matrices at ``learning_rate * loraplus_lr_ratio``), linear warmup then cosine / linear /
constant decay, gradient accumulation, global-norm clipping, optional gradient checkpointing and NEFTune noise,
evaluation on the validation split after every epoch (loss, perplexity) with the best weights kept and optional
early stopping, a rich progress bar (loss, lr, tokens/s) and TensorBoard event files.

Reproducible: micro-batches are length-sorted once, and each epoch visits them in an order drawn from a
generator seeded with ``trainer.seed + epoch``; with the RNG states restored from a checkpoint, a resumed run
replays exactly what an uninterrupted run does (checkpoints are only taken on optimizer-step boundaries).

The loss of an optimizer step is the mean over the trained (response) tokens of all its micro-batches, so it
does not depend on how rows are batched. Speed (see fw.train.packing, fw.train.loss): ``trainer.packing`` packs rows into
padding-free token budgets, ``trainer.chunked_loss`` runs the output head only on response tokens, in chunks,
``trainer.compile`` torch.compiles the decoder.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from fw.config.view import eval_batch_size, neftune_noise_alpha
from fw.train import checkpoint as ckpt
from fw.train.loss import response_tokens


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
    import torch

    from fw.model.adapters import optimizer_parameter_groups

    trainer = config["trainer"]
    groups = optimizer_parameter_groups(model, config, trainer["learning_rate"], trainer["optimizer"]["weight_decay"])
    if not groups:
        from fw.errors import FwError

        raise FwError("the model has no trainable parameter (check adapter.target_modules).")
    opt = trainer["optimizer"]
    return torch.optim.AdamW(groups, betas=tuple(opt["betas"]), eps=opt["eps"])


def build_scheduler(optimizer, total_steps: int, trainer: dict):
    import torch

    sched = trainer["learning_rate_scheduler"]
    warmup = int(round(sched["warmup_fraction"] * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, sched["decay"]))


# -- batches -----------------------------------------------------------------------------------------------------
def micro_batches(rows, batch_size: int) -> list[list[int]]:
    from fw.data.tokens import length_sorted_batches

    return length_sorted_batches([len(row.input_ids) for row in rows], batch_size)


def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    import torch

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
    """Token-weighted mean loss over ``rows`` (response tokens only) and its perplexity."""
    import torch

    if not rows:
        return {}
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for indices in micro_batches(rows, batch_size):
            batch = to_device(collate([rows[i] for i in indices], tokenizer), model_device(model))
            tokens = response_tokens(batch["labels"])
            if tokens:
                total += float(model(**batch).loss) * tokens
                count += tokens
    model.train(was_training)
    loss = total / count if count else float("nan")
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)) if count else float("nan")}


# -- extras: NEFTune, gradient checkpointing ----------------------------------------------------------------------
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


# -- progress and logging ----------------------------------------------------------------------------------------
class Reporter:
    """Rich progress bar + TensorBoard writer (either may be off)."""

    def __init__(self, total_steps: int, start_step: int, log_dir: Path | None, show_progress: bool):
        from fw.console import ProgressBar

        self.writer = None
        self.progress = ProgressBar("training", total_steps, show_progress, completed=start_step,
                                    status="loss {loss}  lr {lr}  {speed} tok/s").start()
        if log_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: skip event files, say so
                from fw import console

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


# -- the loop ----------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    batches: list
    accumulation: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    #: ``callback(global_step)`` run after every optimizer step, before the gradients are cleared (AdaLoRA)
    after_step: list = field(default_factory=list)
    #: micro-batches are packed rows (fw.train.packing); ``flash_kwargs``: with flash attention's cu_seqlens
    packed: bool = False
    flash_kwargs: bool = False
    #: ``loss_sum(model, batch) -> (sum of token losses, tokens)`` (fw.train.loss)
    loss_sum: object = None

    def batch(self, rows, tokenizer) -> dict:
        from fw.train.packing import collate_packed

        return collate_packed(rows, self.flash_kwargs) if self.packed else collate(rows, tokenizer)


def plan(train_rows, trainer: dict) -> Plan:
    from fw.train.packing import packed_batches

    packed = bool(trainer.get("packing"))
    batches = packed_batches(train_rows, trainer) if packed else micro_batches(train_rows, trainer["batch_size"])
    accumulation = trainer["gradient_accumulation_steps"]
    steps_per_epoch = math.ceil(len(batches) / accumulation)
    total = steps_per_epoch * trainer["epochs"]
    if trainer.get("train_steps"):
        total = min(total, trainer["train_steps"])
    return Plan(batches, accumulation, steps_per_epoch, total, trainer["epochs"], packed=packed)


def prepare_speedups(model, tokenizer, train_rows, trainer: dict, layout: Plan) -> None:
    """Attention kernel and row-separation check for packing, torch.compile, the loss path (fw.train.loss)."""
    from fw.train import loss, packing

    if layout.packed:
        packing.choose_attention(model)
        layout.flash_kwargs = packing.uses_flash_kwargs(model)
        packing.check_rows_separated(model, train_rows)
    if trainer.get("compile"):
        compile_model(model)
    first = to_device(layout.batch([train_rows[i] for i in layout.batches[0]], tokenizer), model_device(model))
    layout.loss_sum = loss.choose(model, first, trainer.get("chunked_loss", True))


def compile_model(model) -> None:
    """``torch.compile`` the decoder in place (``nn.Module.compile``: parameter names, hence checkpoints, stay
    as they are); both loss paths run through it."""
    from fw.errors import FwError
    from fw.train.loss import transformers_model

    try:
        transformers_model(model).get_decoder().compile()
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds here; the user needs the one line
        raise FwError(f"trainer.compile: torch.compile failed ({type(exc).__name__}: {exc}); "
                      "set trainer.compile: false.") from exc


def group_tokens(train_rows, layout: Plan, order: list[int], start: int, size: int) -> int:
    """Trained tokens in the micro-batches ``order[start:start + size]``: the loss of an optimizer step is the
    mean over these, the same however the rows are batched or packed."""
    return sum(train_rows[i].trained_tokens for index in order[start:start + size] for i in layout.batches[index])


def train(model, tokenizer, train_rows, validation_rows, config: dict, run_dir: Path, resume: bool = False,
          show_progress: bool = True) -> dict:
    """Fine-tune ``model`` in place; returns the training statistics. ``run_dir/checkpoints`` holds the
    checkpoints, ``run_dir/tensorboard`` the event files. With ``resume`` the latest checkpoint is restored."""
    from fw.errors import FwError

    if not train_rows:
        raise FwError("the training split is empty: give --training_set, or a --dataset with training rows.")
    trainer = config["trainer"]
    checkpoints = Path(run_dir) / "checkpoints"
    layout = plan(train_rows, trainer)
    from fw.model.adapters import after_step_callbacks

    layout.after_step = after_step_callbacks(model, config)
    model.train()
    if trainer["enable_gradient_checkpointing"]:
        enable_gradient_checkpointing(model)
    alpha = neftune_noise_alpha(config)
    hook = add_neftune(model, alpha) if alpha else None
    prepare_speedups(model, tokenizer, train_rows, trainer, layout)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, layout.total_steps, trainer)
    position, history = Position(), History()
    if resume:
        position, history = restore(checkpoints, model, optimizer, scheduler)
    reporter = Reporter(layout.total_steps, position.step, Path(run_dir) / "tensorboard", show_progress)
    try:
        run_epochs(model, tokenizer, train_rows, validation_rows, config, layout, optimizer, scheduler,
                   position, history, checkpoints, reporter)
    except BaseException:
        reporter.close()
        save_interrupted(checkpoints, model, optimizer, scheduler, position, history)
        raise
    finally:
        reporter.close()
        if hook is not None:
            hook.remove()
    if history.best is not None:
        ckpt.restore_best(checkpoints, model)
    model.eval()
    return {**history.as_dict(), "steps": position.step, "total_steps": layout.total_steps}


def save_interrupted(checkpoints: Path, model, optimizer, scheduler, position: Position, history: History) -> None:
    """Ctrl-C, out of memory, a crash: keep the work done so far as a checkpoint at the last optimizer step
    (the weights and optimizer are exactly there; a half-accumulated gradient is simply redone on resume)."""
    from fw import console

    if position.step == 0:
        return
    try:
        path = ckpt.save_checkpoint(checkpoints, position.step, model, optimizer, scheduler, position.committed(),
                                    history.as_dict())
    except Exception as exc:  # the original error matters more; say why nothing was saved
        console.warn(f"training stopped at step {position.step}; could not write a checkpoint: {exc}")
        return
    console.warn(f"training stopped at step {position.step}; checkpoint saved in {path}. "
                 "Run the same fw train command with --resume to continue.")


def restore(checkpoints: Path, model, optimizer, scheduler) -> tuple[Position, History]:
    from fw import console

    latest = ckpt.latest_checkpoint(checkpoints)
    if latest is None:
        console.warn(f"--resume: no checkpoint in {checkpoints}; training from the start.")
        return Position(), History()
    state = ckpt.load_checkpoint(latest, model, optimizer, scheduler)
    console.info(f"resuming from {latest} (epoch {state['position']['epoch'] + 1}, "
                 f"step {state['position']['step']})")
    position = Position(**state["position"])
    position.committed_batch = position.batch
    return position, History.from_dict(state["history"])


def run_epochs(model, tokenizer, train_rows, validation_rows, config, layout: Plan, optimizer, scheduler,
               position: Position, history: History, checkpoints: Path, reporter: Reporter) -> None:
    trainer = config["trainer"]
    every = trainer["steps_per_checkpoint"]
    while position.epoch < layout.epochs and position.step < layout.total_steps and not history.stopped_early:
        run_one_epoch(model, tokenizer, train_rows, trainer, layout, optimizer, scheduler, position, history,
                      checkpoints, reporter, every)
        finished_epoch = position.batch >= len(layout.batches)
        epoch_losses = history.train_loss_per_step[position.epoch * layout.steps_per_epoch:]
        if epoch_losses:
            history.training["loss"].append(sum(epoch_losses) / len(epoch_losses))
        end_of_epoch(model, tokenizer, validation_rows, trainer, position, history, checkpoints, reporter)
        if finished_epoch:
            position.epoch, position.batch, position.committed_batch = position.epoch + 1, 0, 0
        ckpt.save_checkpoint(checkpoints, position.step, model, optimizer, scheduler, position.as_dict(),
                             history.as_dict())
        if not finished_epoch:
            break


def run_one_epoch(model, tokenizer, train_rows, trainer, layout: Plan, optimizer, scheduler, position: Position,
                  history: History, checkpoints: Path, reporter: Reporter, every: int) -> None:
    """Micro-batches from ``position.batch`` to the end of the epoch (or until the step budget is spent)."""
    import torch

    order = epoch_order(len(layout.batches), trainer["seed"], position.epoch)
    device = model_device(model)
    clip = trainer["gradient_clipping"]["clipglobalnorm"]
    group_loss, seen_tokens, started = 0.0, 0, time.perf_counter()
    count = len(order)
    while position.batch < count and position.step < layout.total_steps:
        index = position.batch
        group_start = (index // layout.accumulation) * layout.accumulation
        group_size = min(layout.accumulation, count - group_start)
        targets = max(1, group_tokens(train_rows, layout, order, group_start, group_size))
        batch = to_device(layout.batch([train_rows[i] for i in layout.batches[order[index]]], tokenizer), device)
        loss_sum, _ = layout.loss_sum(model, batch)
        (loss_sum / targets).backward()
        group_loss += float(loss_sum.detach()) / targets
        seen_tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        position.batch += 1
        if position.batch - group_start < group_size:
            continue
        if clip:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        for callback in layout.after_step:
            callback(position.step)
        optimizer.zero_grad(set_to_none=True)
        position.step += 1
        position.committed_batch = position.batch
        history.train_loss_per_step.append(group_loss)
        history.learning_rate_per_step.append(lr)
        elapsed = max(time.perf_counter() - started, 1e-9)
        reporter.step(position.step, group_loss, lr, seen_tokens / elapsed)
        group_loss, seen_tokens, started = 0.0, 0, time.perf_counter()
        if every and position.step % every == 0 and position.batch < count:
            ckpt.save_checkpoint(checkpoints, position.step, model, optimizer, scheduler, position.as_dict(),
                                 history.as_dict())


def end_of_epoch(model, tokenizer, validation_rows, trainer, position: Position, history: History,
                 checkpoints: Path, reporter: Reporter) -> None:
    """Validation loss/perplexity, best weights, early stopping."""
    if not validation_rows:
        return
    metrics = evaluate_loss(model, tokenizer, validation_rows, eval_batch_size({"trainer": trainer}))
    history.validation["loss"].append(metrics["loss"])
    history.validation["perplexity"].append(metrics["perplexity"])
    reporter.scalars("validation", metrics, position.step)
    if history.best is None or metrics["loss"] < history.best["loss"]:
        history.best = {**metrics, "epoch": position.epoch + 1, "step": position.step}
        history.epochs_without_improvement = 0
        ckpt.save_best(checkpoints, model, history.best)
    else:
        history.epochs_without_improvement += 1
        patience = trainer["early_stop"]
        if patience is not None and patience >= 0 and history.epochs_without_improvement >= max(patience, 1):
            history.stopped_early = True

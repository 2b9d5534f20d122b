"""Training speed: fw's trainer against plain ``transformers.Trainer`` + PEFT, side by side (issue 6).

Run on a CUDA machine (one command; the report is a table plus raw JSON under bench/results/):

    .venv/bin/python bench/train_speed.py                 # 1.24B Llama, variable- and fixed-length workloads
    .venv/bin/python bench/train_speed.py --model 8b      # Llama-3-8B shape, fixed-length 8 x 1024
    .venv/bin/python bench/train_speed.py --smoke         # tiny model on CPU: every code path, in seconds
    .venv/bin/python bench/train_speed.py --quick         # 1.24B, 15 steps, no torch.compile (make gpu-check)

What is compared (the same on both sides):

- model: a Llama-architecture causal LM built from its config with random weights (seeded, so both sides start
  from the same weights; no hub access), bf16 on a GPU, SDPA attention; the reference without gradient
  checkpointing, fw with its own defaults;
- data: synthetic SFT rows of token ids (seeded). ``variable``: lengths follow an Alpaca-like long tail
  (lognormal, median 256, clipped to 32..1024); ``fixed``: every row 1024 tokens. Each row is a prompt followed
  by a response; the loss is on the response only. Tokens come from a Zipf-like unigram distribution where half
  of the tokens follow their predecessor by a fixed random map, so there is something to learn and the two
  sides' losses can be compared. The pad id is a token the data never uses, so padding is never counted;
- LoRA r=16, alpha=32, dropout 0 on q,k,v,o,gate,up,down; AdamW, constant peak lr then cosine decay, no warmup,
  gradient clipping at 1.0; 8 rows per optimizer step; one pass over ``steps * 8`` rows, so both sides see
  exactly the same rows (the same real tokens); the first ``--warmup-steps`` steps are not timed.

The reference is ``transformers.Trainer`` with a minimal collator that pads each batch to its longest row. The
fw side is fw's own :class:`fw.train.trainer.Trainer` on rows of :class:`fw.data.tokens.EncodedRow`, with the
fast trainer options of the config switched on where the installed fw has them (``trainer.packing``,
``trainer.compile``, ...; read from ``schemas/core.json``), else its defaults.

Each (side, workload) runs in its own subprocess, so peak GPU memory (``torch.cuda.max_memory_allocated``) is
clean and an out-of-memory reference is reported as OOM instead of ending the benchmark.

Reported per workload and side: real (non-padding) tokens/s over the timed steps, fw/reference ratio, MFU
(4 * N FLOPs per real token, N = the base model's parameter count, LoRA: forward + input gradients, no weight
gradients of the frozen base) against ``--peak-tflops`` (989: dense bf16 of an H100 SXM), peak memory, and
the loss after the run: the mean training loss of the last 5 steps and the loss on held-out rows before and
after training (the same rows, the same function on both sides), which must agree within ``--loss-tolerance``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SIDES = ("reference", "fw")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
#: issue 6 targets: fw / reference real tokens/s per workload, and peak memory fw / reference
SPEEDUP_TARGETS = {"variable": 10.0, "fixed": 1.8}
MEMORY_TARGET = 0.5
#: boolean ``trainer`` options of fw that make training faster (switched on when the schema has them)
FAST_OPTIONS = ("packing", "chunked_loss", "compile", "kernels", "fused_kernels", "fused_optimizer")
#: for an option that is an enum rather than a boolean: the first of these it offers
FAST_CHOICES = ("liger", "auto", "fused")
#: what the result JSON of a side holds (tests/bench/test_bench_smoke.py checks these)
SIDE_FIELDS = ("status", "tokens_per_second", "mfu", "peak_memory_gib", "timed_steps", "timed_tokens",
               "timed_seconds", "total_steps", "real_tokens", "computed_tokens", "tokens_counted",
               "eval_loss_initial", "eval_loss_final", "train_loss_final", "train_loss_per_step",
               "wall_seconds", "options", "error")
WORKLOAD_FIELDS = ("reference", "fw", "speedup", "memory_ratio", "loss_difference", "loss_agrees", "targets")

MODELS = {
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0),
    "smoke": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=512, tie_word_embeddings=True, rope_theta=10000.0),
}


@dataclass
class Settings:
    """Everything a worker needs; written to JSON by the parent, read back by each subprocess."""

    model: str = "1b"
    workloads: list = field(default_factory=lambda: ["variable", "fixed"])
    steps: int = 45
    warmup_steps: int = 5
    batch_rows: int = 8
    learning_rate: float = 2e-4
    seed: int = 0
    median_length: int = 256
    sigma: float = 0.7
    min_length: int = 32
    max_length: int = 1024
    fixed_length: int = 1024
    heldout_rows: int = 16
    peak_tflops: float = 989.0
    loss_tolerance: float = 0.02
    smoke: bool = False
    #: shortened GPU run (make gpu-check): few steps, no torch.compile; its figures check the path, not the speed
    quick: bool = False

    @property
    def shape(self) -> dict:
        return MODELS[self.model]

    @property
    def pad_id(self) -> int:
        """The last vocabulary id: never drawn by the data generator, so it only ever marks padding."""
        return self.shape["vocab_size"] - 1


# == data ========================================================================================================
def row_lengths(settings: Settings, workload: str, count: int, rng) -> list[int]:
    import numpy

    if workload == "fixed":
        return [settings.fixed_length] * count
    lengths = rng.lognormal(math.log(settings.median_length), settings.sigma, count)
    return numpy.clip(numpy.round(lengths), settings.min_length, settings.max_length).astype(int).tolist()


def token_sampler(vocab: int, rng):
    """(unigram probabilities over the usable ids, successor map): Zipf-Mandelbrot ranks on a random id order."""
    import numpy

    usable = vocab - 1
    ranks = numpy.arange(usable)
    weights = 1.0 / (ranks + 2.7) ** 1.1
    probabilities = numpy.zeros(usable)
    probabilities[rng.permutation(usable)] = weights / weights.sum()
    return probabilities, rng.permutation(usable)


def row_tokens(length: int, probabilities, successor, rng) -> list[int]:
    tokens = rng.choice(len(probabilities), size=length, p=probabilities)
    follow = rng.random(length) < 0.5
    for position in range(1, length):
        if follow[position]:
            tokens[position] = successor[tokens[position - 1]]
    return tokens.tolist()


def make_rows(settings: Settings, workload: str, count: int, seed: int) -> list[tuple[list[int], int]]:
    """``count`` rows of (token ids, prompt length); the response (the rest) is what the loss is on."""
    import numpy

    rng = numpy.random.default_rng(seed)
    probabilities, successor = token_sampler(settings.shape["vocab_size"], numpy.random.default_rng(settings.seed))
    rows = []
    for length in row_lengths(settings, workload, count, rng):
        prompt = int(numpy.clip(round(length * rng.uniform(0.25, 0.6)), 1, length - 1))
        rows.append((row_tokens(length, probabilities, successor, rng), prompt))
    return rows


def datasets(settings: Settings, workload: str):
    """(training rows: exactly one pass of ``steps * batch_rows`` rows, held-out rows)."""
    seed = settings.seed + (1 if workload == "variable" else 2) * 1000
    train = make_rows(settings, workload, settings.steps * settings.batch_rows, seed)
    heldout = make_rows(settings, workload, settings.heldout_rows, seed + 1)
    return train, heldout


def labels_of(tokens: list[int], prompt: int) -> list[int]:
    return [-100] * prompt + tokens[prompt:]


def pad_batch(rows: list[dict], pad_id: int) -> dict:
    """The reference's collator: pad to the longest row of the batch (input pad id, mask 0, label -100)."""
    import torch

    longest = max(len(row["input_ids"]) for row in rows)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for row in rows:
        padding = longest - len(row["input_ids"])
        batch["input_ids"].append(row["input_ids"] + [pad_id] * padding)
        batch["attention_mask"].append([1] * len(row["input_ids"]) + [0] * padding)
        batch["labels"].append(row["labels"] + [-100] * padding)
    return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


# == model =======================================================================================================
def parameter_count(shape: dict) -> int:
    """Parameters of the base model (embeddings included, the head once when tied), without building it."""
    hidden, inner, vocab = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    kv = hidden // shape["num_attention_heads"] * shape["num_key_value_heads"]
    layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inner + 2 * hidden
    head = 0 if shape["tie_word_embeddings"] else vocab * hidden
    return shape["num_hidden_layers"] * layer + vocab * hidden + head + hidden


def device_and_dtype(settings: Settings):
    import torch

    if torch.cuda.is_available() and not settings.smoke:
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def build_model(settings: Settings):
    """The random-init Llama (seeded: both sides get the same weights), on the device, SDPA attention."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    device, dtype = device_and_dtype(settings)
    config = LlamaConfig(**settings.shape, max_position_embeddings=max(settings.max_length, 2048),
                         pad_token_id=settings.pad_id, bos_token_id=None, eos_token_id=None, use_cache=False)
    torch.manual_seed(settings.seed)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=dtype)
    torch.manual_seed(settings.seed + 1)  # the LoRA A matrices drawn next are the same on both sides
    return model


def heldout_loss(model, rows, settings: Settings) -> float:
    """Response-token-weighted loss on the held-out rows; the same function (and batches) on both sides."""
    import torch

    device, dtype = device_and_dtype(settings)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
        for start in range(0, len(rows), 4):
            batch = pad_batch([{"input_ids": t, "labels": labels_of(t, p)} for t, p in rows[start:start + 4]],
                              settings.pad_id)
            batch = {key: value.to(device) for key, value in batch.items()}
            tokens = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss.float()) * tokens
            count += tokens
    model.train(was_training)
    return total / count


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepClock:
    """Real tokens per optimizer step and a synchronized timestamp at the end of every step."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.pending = 0
        self.computed = 0
        self.step_tokens: list[int] = []
        self.stamps: list[float] = []

    def add_tokens(self, real, computed) -> None:
        """``real`` tokens of a micro-batch (padding excluded), ``computed``: what the model ran on."""
        self.pending = self.pending + real
        self.computed = self.computed + computed

    def step_done(self) -> None:
        synchronize()
        self.stamps.append(time.perf_counter())
        self.step_tokens.append(int(self.pending))
        self.pending = 0

    def summary(self, total_real_tokens: int) -> dict:
        steps = len(self.stamps)
        timed = max(0, steps - self.warmup)
        counted = sum(self.step_tokens)
        if counted:  # measured per step
            tokens, how = sum(self.step_tokens[self.warmup:]), "measured"
        else:  # rows reached the model some other way: share of the run's real tokens by steps
            tokens, how = round(total_real_tokens * timed / max(steps, 1)), "estimated"
        seconds = self.stamps[-1] - self.stamps[self.warmup - 1] if timed else None
        return {"total_steps": steps, "timed_steps": timed, "timed_tokens": tokens, "timed_seconds": seconds,
                "tokens_counted": how, "counted_real_tokens": counted, "computed_tokens": int(self.computed),
                "tokens_per_second": tokens / seconds if seconds and seconds > 0 else None}


# == the reference: transformers.Trainer + PEFT ==================================================================
def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")


def train_reference(model, rows, settings: Settings, clock: StepClock, run_dir: Path) -> dict:
    """Plain Trainer: shuffled batches of 8 padded to the longest row, bf16 autocast, no checkpointing."""
    from peft import get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = get_peft_model(model, lora_config())
    device, _ = device_and_dtype(settings)
    arguments = TrainingArguments(
        output_dir=str(run_dir), per_device_train_batch_size=settings.batch_rows, gradient_accumulation_steps=1,
        num_train_epochs=1, max_steps=settings.steps, learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999,
        adam_epsilon=1e-8, max_grad_norm=1.0, bf16=device.type == "cuda", use_cpu=device.type != "cuda",
        gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False, seed=settings.seed)
    dataset = [{"input_ids": tokens, "labels": labels_of(tokens, prompt)} for tokens, prompt in rows]

    class CountingTrainer(Trainer):  # counts the real tokens of each micro-batch; the training step is Trainer's
        def training_step(self, model, inputs, *args, **kwargs):
            clock.add_tokens(inputs["attention_mask"].sum(), inputs["attention_mask"].numel())
            return super().training_step(model, inputs, *args, **kwargs)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.step_done()

    trainer = CountingTrainer(model=model, args=arguments, train_dataset=dataset,
                              data_collator=lambda batch: pad_batch(batch, settings.pad_id), callbacks=[Clock()])
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    options = {"optim": str(arguments.optim), "bf16": arguments.bf16, "attention": "sdpa",
               "padding": "longest row in the batch", "gradient_checkpointing": False}
    return {"model": trainer.model, "losses": losses, "options": options}


# == fw ==========================================================================================================
def fast_trainer_options(settings: Settings) -> dict:
    """The speed options of ``trainer`` that this fw has (read from its schema), switched on; absent ones are
    left out, so the script runs against an fw without them. The packed token budget stays at fw's default
    (``batch_size`` x the mean row length: the same real tokens per step as 8 rows). ``--smoke`` and ``--quick`` do not
    compile: torch.compile on CPU takes minutes and measures nothing there."""
    schema = json.loads((ROOT / "schemas" / "core.json").read_text())
    trainer = schema.get("$defs", {}).get("trainer", {}).get("properties", {})
    options = {}
    for name in FAST_OPTIONS:
        spec = trainer.get(name, {})
        if spec.get("type") == "boolean":
            options[name] = True
        elif any(choice in spec.get("enum", []) for choice in FAST_CHOICES):
            options[name] = next(choice for choice in FAST_CHOICES if choice in spec["enum"])
    if (settings.smoke or settings.quick) and "compile" in options:
        options["compile"] = False
    return options


def fw_config(settings: Settings) -> dict:
    """A validated fw config (every default filled) with the benchmark's LoRA and trainer settings."""
    from fw.config.load import load_config

    device, _ = device_and_dtype(settings)
    trainer = {"type": "finetune", "batch_size": settings.batch_rows, "epochs": 1,
               "learning_rate": settings.learning_rate,
               "learning_rate_scheduler": {"decay": "cosine", "warmup_fraction": 0.0},
               "optimizer": {"type": "adamw", "weight_decay": 0.0}, "gradient_clipping": {"clipglobalnorm": 1.0},
               "seed": settings.seed,
               "precision": "bf16" if device.type == "cuda" else "fp32"}
    raw = {"base_model": "bench/llama-random-init",
           "input_features": [{"name": "prompt", "type": "text"}],
           "output_features": [{"name": "response", "type": "text"}],
           "adapter": {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": LORA_TARGETS},
           "trainer": {**trainer, **fast_trainer_options(settings)}}
    return load_config(raw).data


def train_fw(model, rows, settings: Settings, clock: StepClock, run_dir: Path) -> dict:
    """fw's :class:`fw.train.trainer.Trainer` on :class:`fw.data.tokens.EncodedRow` rows, subclassed to measure,
    not changed: ``load_batch`` (every micro-batch passes it on its way to the model: its non-pad tokens are
    counted) and ``optimizer_step`` (its end stamps the end of every optimizer step). The batch fw loads once
    before training (to pick its loss path) is counted in the first step, which is never timed."""
    from types import SimpleNamespace

    from fw.data.tokens import EncodedRow
    from fw.model.loading import apply_adapter
    from fw.train.trainer import Trainer

    class TimedTrainer(Trainer):
        def load_batch(self, indices):
            batch = super().load_batch(indices)
            ids = batch["input_ids"]
            clock.add_tokens(int((ids != settings.pad_id).sum()), ids.numel())
            return batch

        def optimizer_step(self, *args, **kwargs):
            super().optimizer_step(*args, **kwargs)
            clock.step_done()

    config = fw_config(settings)
    model = apply_adapter(model, config)
    encoded = [EncodedRow(tokens, labels_of(tokens, prompt)) for tokens, prompt in rows]
    tokenizer = SimpleNamespace(pad_token_id=settings.pad_id, eos_token_id=None, bos_token_id=None,
                                padding_side="right")
    trainer = TimedTrainer(config, tokenizer, encoded, show_progress=False)
    trainer.setup(model, run_dir)
    statistics = trainer.train()
    return {"model": model, "losses": statistics["train_loss_per_step"], "options": config["trainer"]}


# == worker ======================================================================================================
def run_side(side: str, workload: str, settings: Settings) -> dict:
    """Train one side on one workload in this process; the measurements as a JSON-able dict."""
    import torch

    from fw.model.loading import quiet_libraries

    quiet_libraries()
    started = time.perf_counter()
    rows, heldout = datasets(settings, workload)
    real_tokens = sum(len(tokens) for tokens, _ in rows)
    model = build_model(settings)
    initial = heldout_loss(model, heldout, settings)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    clock = StepClock(settings.warmup_steps)
    with tempfile.TemporaryDirectory(prefix=f"train-speed-{side}-") as run_dir:
        trained = (train_fw if side == "fw" else train_reference)(model, rows, settings, clock, Path(run_dir))
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    final = heldout_loss(trained["model"], heldout, settings)
    losses = [float(loss) for loss in trained["losses"]]
    return {"status": "ok", **clock.summary(real_tokens), "peak_memory_gib": peak, "real_tokens": real_tokens,
            "eval_loss_initial": initial, "eval_loss_final": final,
            "train_loss_final": sum(losses[-5:]) / len(losses[-5:]) if losses else None,
            "train_loss_per_step": losses, "wall_seconds": time.perf_counter() - started,
            "options": trained["options"], "error": None, "device": device_name()}


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def worker(side: str, workloads: list[str], settings_path: Path, result_path: Path) -> int:
    """Subprocess entry: run ``side`` on each workload, write {workload: result} (OOM and errors included)."""
    settings = Settings(**json.loads(Path(settings_path).read_text()))
    results = {}
    for workload in workloads:
        try:
            results[workload] = run_side(side, workload, settings)
        except Exception as exc:  # OOM is a result, not a crash; anything else is reported with its traceback
            results[workload] = failure(exc)
        Path(result_path).write_text(json.dumps(results, indent=1))
        release_memory()
    return 0


def failure(exc: BaseException) -> dict:
    import torch

    oom = isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return {"status": "oom" if oom else "error", "peak_memory_gib": peak,
            "error": f"{type(exc).__name__}: {str(exc)[:500]}",
            "traceback": None if oom else traceback.format_exc()[-4000:], "device": device_name()}


def release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# == parent: run the subprocesses, compare, report ===============================================================
def run_worker(side: str, workloads: list[str], settings_path: Path, timeout: int) -> dict:
    result_path = settings_path.with_name(f"result-{side}-{'-'.join(workloads)}.json")
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--workloads", ",".join(workloads),
               "--settings", str(settings_path), "--result", str(result_path)]
    print(f"running {side} on {', '.join(workloads)} ...", file=sys.stderr, flush=True)
    try:
        process = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        outcome, tail = ("crashed" if process.returncode else None), process.stderr[-3000:]
    except subprocess.TimeoutExpired as exc:
        outcome, tail = "timeout", (exc.stderr or b"")[-3000:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
    results = json.loads(result_path.read_text()) if result_path.exists() else {}
    for workload in workloads:
        if workload not in results:
            results[workload] = {"status": outcome or "crashed", "error": tail or "no result written"}
    return results


def complete(result: dict, parameters: int, peak_tflops: float) -> dict:
    """Every field of SIDE_FIELDS present (None when the run did not produce it), MFU computed."""
    result = {name: result.get(name) for name in SIDE_FIELDS} | result
    speed = result.get("tokens_per_second")
    result["mfu"] = 4 * parameters * speed / (peak_tflops * 1e12) if speed else None
    return result


def compare(reference: dict, fw: dict, workload: str, tolerance: float) -> dict:
    both = reference["status"] == fw["status"] == "ok"
    speedup = fw["tokens_per_second"] / reference["tokens_per_second"] if both and reference[
        "tokens_per_second"] and fw["tokens_per_second"] else None
    memory = (fw["peak_memory_gib"] / reference["peak_memory_gib"]
              if both and fw["peak_memory_gib"] and reference["peak_memory_gib"] else None)
    difference = fw["eval_loss_final"] - reference["eval_loss_final"] if both else None
    agrees = abs(difference) <= tolerance * abs(reference["eval_loss_final"]) if difference is not None else None
    targets = {"speedup": SPEEDUP_TARGETS.get(workload), "memory_ratio": MEMORY_TARGET,
               "speedup_met": speedup >= SPEEDUP_TARGETS[workload] if speedup and workload in SPEEDUP_TARGETS
               else None,
               "memory_met": memory <= MEMORY_TARGET if memory else None}
    if reference["status"] == "oom" and fw["status"] == "ok":
        targets["memory_met"] = True  # fw fits where the reference does not
    return {"reference": reference, "fw": fw, "speedup": speedup, "memory_ratio": memory,
            "loss_difference": difference, "loss_agrees": agrees, "targets": targets}


def fmt(value, pattern: str = "{:,.0f}", missing: str = "-") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    peak = report["settings"]["peak_tflops"]
    table = Table(title=f"Training speed: {report['model']['name']} ({report['model']['parameters'] / 1e9:.2f}B "
                        f"params) on {report['device']}; MFU = 4·N FLOPs/token vs {peak:g} TFLOP/s")
    for column in ("workload", "side", "status", "real tok/s", "ratio", "MFU", "peak mem GiB", "mem ratio",
                   "held-out loss (start→end)", "train loss (last 5)"):
        table.add_column(column, justify="left" if column in ("workload", "side", "status") else "right")
    for workload, entry in report["workloads"].items():
        for side in SIDES:
            result = entry[side]
            mine = side == "fw"
            table.add_row(workload if side == "reference" else "", side, result["status"],
                          fmt(result.get("tokens_per_second")),
                          fmt(entry["speedup"], "{:.2f}x") if mine else "",
                          fmt(result.get("mfu"), "{:.1%}"), fmt(result.get("peak_memory_gib"), "{:.2f}"),
                          fmt(entry["memory_ratio"], "{:.2f}x") if mine else "",
                          f"{fmt(result.get('eval_loss_initial'), '{:.4f}')}→"
                          f"{fmt(result.get('eval_loss_final'), '{:.4f}')}",
                          fmt(result.get("train_loss_final"), "{:.4f}"))
    console = Console(width=max(Console().width, 150))
    console.print(table)
    if report.get("smoke"):
        console.print("--smoke: a tiny model on CPU; these figures check the code paths and measure nothing.")
    if report.get("quick"):
        console.print(f"--quick: {report['settings']['steps']} steps without torch.compile; these figures check the "
                      "GPU path, they are not the benchmark's (run without --quick for those).")
    for workload, entry in report["workloads"].items():
        targets = entry["targets"]
        console.print(f"{workload}: speedup target {fmt(targets['speedup'], '{:g}x')} met: "
                      f"{fmt(targets['speedup_met'], '{}')}; memory ≤ {MEMORY_TARGET}x met: "
                      f"{fmt(targets['memory_met'], '{}')}; losses agree within "
                      f"{report['settings']['loss_tolerance']:.0%}: {fmt(entry['loss_agrees'], '{}')}")
        for side in SIDES:
            if entry[side].get("error"):
                console.print(f"  {side}: {entry[side]['status']}: {entry[side]['error'].splitlines()[-1]}")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def output_path(report: dict, directory: Path | None, smoke: bool) -> Path:
    directory = directory or (RESULTS / "smoke" if smoke else RESULTS)
    directory.mkdir(parents=True, exist_ok=True)
    model = "" if report["model"]["name"] == "1b" else f"-{report['model']['name']}"
    quick = "-quick" if report.get("quick") else ""
    return directory / f"train_speed{model}{quick}-{slug(report['device'])}-{report['date']}.json"


def versions() -> dict:
    from importlib.metadata import version

    found = {}
    for package in ("torch", "transformers", "peft", "fw", "liger-kernel", "flash-attn"):
        try:
            found[package] = version(package)
        except Exception:
            found[package] = None
    try:
        found["fw_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True).stdout.strip() or None
    except OSError:
        found["fw_commit"] = None
    return found


def run_benchmark(settings: Settings, sides: list[str], timeout: int, output_dir: Path | None) -> Path:
    """Every (side, workload) in its own subprocess (smoke: one per side), then the table and the JSON."""
    results: dict = {workload: {} for workload in settings.workloads}
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        settings_path = Path(tmp) / "settings.json"
        settings_path.write_text(json.dumps(asdict(settings)))
        groups = [settings.workloads] if settings.smoke else [[workload] for workload in settings.workloads]
        for side in sides:
            for group in groups:
                for workload, result in run_worker(side, group, settings_path, timeout).items():
                    results[workload][side] = result
    parameters = parameter_count(settings.shape)
    device = next((r["device"] for w in results.values() for r in w.values() if r.get("device")), "unknown")
    report = {"benchmark": "train_speed", "date": datetime.date.today().isoformat(), "device": device,
              "smoke": settings.smoke, "quick": settings.quick, "versions": versions(),
              "model": {"name": settings.model, "parameters": parameters, **settings.shape},
              "settings": asdict(settings), "workloads": {}}
    for workload, sides_done in results.items():
        done = {side: complete(sides_done.get(side, {"status": "skipped"}), parameters, settings.peak_tflops)
                for side in SIDES}
        report["workloads"][workload] = compare(done["reference"], done["fw"], workload, settings.loss_tolerance)
    print_table(report)
    path = output_path(report, output_dir, settings.smoke)
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")
    return path


# == command line ================================================================================================
def settings_from(args) -> Settings:
    if args.smoke:
        return Settings(model="smoke", workloads=args.workloads or ["variable", "fixed"], steps=args.steps or 4,
                        warmup_steps=1 if args.warmup_steps is None else args.warmup_steps, batch_rows=4,
                        learning_rate=args.lr, seed=args.seed, median_length=48, min_length=8, max_length=128,
                        fixed_length=128, heldout_rows=4, peak_tflops=args.peak_tflops,
                        loss_tolerance=args.loss_tolerance, smoke=True)
    workloads = args.workloads or (["fixed"] if args.model == "8b" else ["variable", "fixed"])
    steps, warmup = (15, 3) if args.quick else (45, 5)
    return Settings(model=args.model, workloads=workloads, steps=args.steps or steps,
                    warmup_steps=warmup if args.warmup_steps is None else args.warmup_steps, learning_rate=args.lr,
                    seed=args.seed, peak_tflops=args.peak_tflops, loss_tolerance=args.loss_tolerance,
                    quick=args.quick)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["1b", "8b"], default="1b", help="1b: 1.24B Llama; 8b: Llama-3-8B shape")
    parser.add_argument("--workloads", type=lambda text: [w for w in text.split(",") if w],
                        help="comma-separated: variable,fixed (default: both; 8b: fixed)")
    parser.add_argument("--sides", default="reference,fw", help="comma-separated: reference,fw")
    parser.add_argument("--steps", type=int, help="optimizer steps per run, untimed ones included (default 45)")
    parser.add_argument("--warmup-steps", type=int, help="untimed first steps (default 5)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the accelerator's dense bf16 peak for MFU (H100 SXM: 989)")
    parser.add_argument("--loss-tolerance", type=float, default=0.02,
                        help="relative difference of the final held-out losses still called agreement")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per subprocess")
    parser.add_argument("--output-dir", type=Path, help="where the JSON goes (default bench/results[/smoke])")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, few steps: checks every code path")
    parser.add_argument("--quick", action="store_true",
                        help="on the GPU, shortened (make gpu-check): 15 steps (3 untimed), no torch.compile; the JSON "
                             "is named train_speed-quick-<device>-<date>.json")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--settings", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.worker:
        return worker(args.worker, args.workloads, args.settings, args.result)
    settings = settings_from(args)
    unknown = [w for w in settings.workloads if w not in ("variable", "fixed")]
    if unknown:
        sys.exit(f"--workloads: unknown {', '.join(unknown)} (choose from variable, fixed)")
    if not 1 <= settings.warmup_steps < settings.steps:
        sys.exit(f"--warmup-steps must be at least 1 (the first step compiles and warms up) and below --steps "
                 f"({settings.steps}); got {settings.warmup_steps}")
    preflight()
    if not settings.smoke and not cuda_available():
        sys.exit("train_speed.py measures GPU training: no CUDA GPU here. Run with --smoke to check it on CPU.")
    run_benchmark(settings, [s for s in args.sides.split(",") if s], args.timeout, args.output_dir)
    return 0


def preflight() -> None:
    """Stop with one line when a package the workers import is missing (e.g. on a GPU image: jsonschema, or
    fw itself not installed), instead of two failed subprocesses."""
    import importlib.util

    missing = [name for name in ("torch", "transformers", "peft", "accelerate", "jsonschema", "pluggy", "yaml",
                                 "rich", "fw") if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(f"train_speed.py: missing Python packages: {', '.join(missing)}. Install them (fw itself: "
                 "`pip install --no-deps --no-build-isolation -e .` from the repository root).")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

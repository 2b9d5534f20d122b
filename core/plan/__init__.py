"""``fw plan``: the memory a training run needs per device, worked out before anything is launched.

The model is built from its config on the meta device with the configured adapter (:mod:`fw.plan.footprint`):
the parameter counts are exact and no weight is read. Per device, under the chosen strategy:

- weights: every parameter at the training dtype (``trainer.precision``; ``auto`` is bf16 on a CUDA GPU, fp32 on
  CPU), the layers a quantizer replaces at their quantized size;
- gradients: one per trainable parameter, in its dtype;
- optimizer state: per ``trainer.optimizer.type`` (:data:`OPTIMIZER_STATES`: Adam keeps 2 values per trainable
  parameter, SGD with momentum 1, bitsandbytes' 8-bit variants 1 byte per value);
- activations: the peak of one forward and backward pass of the largest micro-batch (``batch_size`` rows of the
  longest length: the configured maximum, or the longest rows of ``--dataset`` as fw tokenizes them), run on fake
  tensors through fw's own loss path, gradient checkpointing as configured;
- the optimizer step's temporaries (torch's multi-tensor Adam on CUDA copies the second moments once).

The peak is weights + optimizer state + the larger of (activations + the gradients alive at that moment) and (all
gradients + the optimizer step's temporaries): gradients are freed before each forward pass. DDP adds its gradient
buckets (a second copy of the gradients, torch's default); FSDP (full shard) divides weights, gradients and
optimizer state by the number of processes and gathers one layer (and prefetches the next) at a time. A GPU is
planned with 90% of its memory less 1 GiB (CUDA context, allocator fragmentation); N processes on CPU share the
machine's RAM.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

from fw import pipeline
from fw.config import view
from fw.config.load import load_config
from fw.config.sockets import ADAPTER
from fw.data import retrieval
from fw.data.tokens import Limits, length_sorted_batches
from fw.errors import FwError, UsageError
from fw.model.loading import choose_dtype, load_tokenizer
from fw.model.quantization import quantizer_of, section_for_loading
from fw.plan import footprint
from fw.plugin import quiet_libraries, resolve
from fw.train import batch_size as batching
from fw.train.packing import packed_batches

GIB = 2**30
USABLE_FRACTION = 0.9
CUDA_RESERVE = 1 * GIB
STRATEGIES = ("ddp", "fsdp")
#: optimizer type -> (values kept per trainable parameter, bytes per value or None: the parameter's dtype). Names
#: are Ludwig's (trainer.optimizer.type). bitsandbytes' 8-bit optimizers keep 32-bit state for tensors under
#: 4096 values; its paged variants can page their state out to CPU memory under pressure.
OPTIMIZER_STATES = {
    "adam": (2, None), "adamw": (2, None), "nadam": (2, None), "radam": (2, None), "adamax": (2, None),
    "adadelta": (2, None), "adagrad": (1, None), "schedule_free_adamw": (2, None),
    "paged_adam": (2, 4), "paged_adamw": (2, 4), "lamb": (2, 4), "lars": (1, 4), "lion": (1, 4),
    "paged_lion": (1, 4),
    "adam_8bit": (2, 1), "adamw_8bit": (2, 1), "paged_adam_8bit": (2, 1), "paged_adamw_8bit": (2, 1),
    "lamb_8bit": (2, 1), "lars_8bit": (1, 1), "lion_8bit": (1, 1), "paged_lion_8bit": (1, 1),
    "adagrad_8bit": (1, 1), "rmsprop_8bit": (1, 1), "sgd_8bit": (1, 1),
}
BNB_MIN_8BIT_SIZE = 4096
#: torch optimizers whose multi-tensor (foreach) step on CUDA holds a copy of the second moments
FOREACH_COPY = ("adam", "adamw", "nadam", "radam", "adamax")


@dataclass
class Target:
    """Where the run is planned: ``kind`` cuda or cpu, a name for the user, memory per device and usable part."""

    kind: str
    name: str
    memory: int
    usable: int
    this_machine: bool


@dataclass
class Workload:
    """The largest micro-batch: ``rows`` x ``length`` tokens, ``labelled`` of them trained on."""

    rows: int
    length: int
    labelled: int
    source: str


@dataclass
class Memory:
    """Bytes per device."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    #: the gradients alive at the activations' peak
    gradients_during_pass: float
    step: float
    #: DDP's gradient buckets, or FSDP's gathered layers (weights and gradients)
    strategy_extra: float = 0.0
    strategy_note: str = ""

    @property
    def peak(self) -> float:
        during_pass = self.activations + self.gradients_during_pass
        return self.weights + self.optimizer + self.strategy_extra + max(during_pass, self.gradients + self.step)


@dataclass
class Option:
    """One change that would make the run fit (or not): what to set, and the peak it gives."""

    change: str
    peak: float
    fits: bool


@dataclass
class Plan:
    model: str
    architecture: str
    total_parameters: int
    base_parameters: int
    trainable_parameters: int
    quantized_parameters: int
    adapter: str
    dtype: str
    optimizer: str
    checkpointing: bool
    workload: Workload
    strategy: str
    processes: int
    target: Target
    memory: Memory
    options: list[Option] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def needed(self) -> float:
        """Bytes the run needs on one device (on CPU: every process together, they share the RAM)."""
        shared = self.processes if self.target.kind == "cpu" else 1
        return self.memory.peak * shared

    @property
    def fits(self) -> bool:
        return self.needed <= self.target.usable


@dataclass
class Request:
    """What ``fw plan`` is asked: the config and the run around it."""

    config: object
    num_processes: int = 1
    strategy: str | None = None
    device: str | None = None
    device_memory: int | None = None
    dataset: str | None = None


# -- the plan ----------------------------------------------------------------------------------------------------
def make_plan(request: Request) -> Plan:
    quiet_libraries()
    written = pipeline.resolve_config(request.config)
    data = pipeline.localize_base_model(written)
    if view.trainer_type(data) == "none":
        raise FwError("trainer.type is none: nothing is trained, so there is no training memory to plan.")
    strategy = check_strategy(request, data)
    target = target_of(request)
    dtype = training_dtype(data, target)
    model_config = footprint.base_model_config(data)
    workload = workload_of(data, model_config, request.dataset)
    estimate = Estimator(model_config, dtype, target, strategy, request.num_processes)
    memory = estimate.memory(data, workload)
    counted = estimate.inventory(data)
    plan = Plan(model=view.base_model(written), architecture=model_config.architectures[0]
                if getattr(model_config, "architectures", None) else model_config.model_type,
                total_parameters=counted.total, base_parameters=counted.base,
                trainable_parameters=counted.trainable,
                quantized_parameters=counted.quantized, adapter=adapter_label(data), dtype=dtype_name(dtype),
                optimizer=optimizer_type(data), checkpointing=view.gradient_checkpointing(data),
                workload=workload, strategy=strategy, processes=request.num_processes, target=target, memory=memory,
                notes=notes_of(data, target))
    if not plan.fits:
        plan.options = options(plan, data, workload, estimate)
    return plan


def check_strategy(request: Request, data: dict | None = None) -> str:
    """single, ddp or fsdp: ``--strategy``, else the config's ``backend.trainer.strategy`` (DeepSpeed's ZeRO
    sharding is planned as fsdp), else ddp."""
    if request.num_processes < 1:
        raise UsageError(f"--num_processes must be at least 1, got {request.num_processes}.")
    if request.strategy is not None and request.strategy not in STRATEGIES:
        raise UsageError(f"--strategy: '{request.strategy}' is not one of {', '.join(STRATEGIES)}.")
    if request.num_processes == 1:
        return "single"
    if request.strategy is not None or data is None:
        return request.strategy or "ddp"
    from fw.config.strategy import of_config

    configured = of_config(data).name
    return configured if configured in STRATEGIES else "fsdp"


class Estimator:
    """The memory of one config variant after another; meta models and simulated steps are cached, since a
    simulated step of a large model takes seconds."""

    def __init__(self, model_config, dtype, target: Target, strategy: str, processes: int):
        self.model_config, self.dtype, self.target = model_config, dtype, target
        self.strategy, self.processes = strategy, processes
        self.cache: dict = {}

    def model(self, data: dict):
        """(the meta model with the adapter of ``data``, :class:`footprint.BaseModel` of its base)"""
        base = footprint.meta_model(self.model_config, self.dtype)
        before = footprint.BaseModel.of(base)
        return footprint.with_adapter(base, data), before

    def inventory(self, data: dict):
        key = ("inventory", adapter_key(data), str(view.quantization(data)))
        if key not in self.cache:
            model, base = self.model(data)
            self.cache[key] = footprint.inventory(model, quantized_bytes(data), base)
        return self.cache[key]

    def step(self, data: dict, workload: Workload):
        key = ("step", adapter_key(data), workload.rows, workload.length, workload.labelled,
               view.gradient_checkpointing(data), chunked_loss(data))
        if key not in self.cache:
            self.cache[key] = footprint.simulate_step(self.model(data)[0], workload.rows, workload.length,
                                                      workload.labelled, chunked_loss(data),
                                                      view.gradient_checkpointing(data))
        return self.cache[key]

    def memory(self, data: dict, workload: Workload, processes: int | None = None, strategy: str | None = None,
               activation_scale: float = 1.0) -> Memory:
        counted = self.inventory(data)
        step = self.step(data, workload)
        optimizer = optimizer_bytes(data, counted.trainable_shapes)
        temporaries = step_temporaries(data, counted, self.target)
        memory = Memory(weights=counted.weight_bytes, gradients=counted.trainable_bytes, optimizer=optimizer,
                        activations=step.activations * activation_scale,
                        gradients_during_pass=step.gradients_at_peak, step=temporaries)
        return with_strategy(memory, counted, strategy or self.strategy, processes or self.processes)


def with_strategy(memory: Memory, counted, strategy: str, processes: int) -> Memory:
    """``memory`` of one process under ``strategy``."""
    if strategy == "ddp":
        return replace(memory, strategy_extra=memory.gradients,
                       strategy_note="DDP gradient buckets")
    if strategy == "fsdp":
        share = 1 / processes
        gathered = 2 * counted.largest_unit_bytes * (1 - share) + counted.largest_unit_trainable_bytes
        return replace(memory, weights=memory.weights * share, gradients=memory.gradients * share,
                       optimizer=memory.optimizer * share, step=memory.step * share,
                       gradients_during_pass=memory.gradients_during_pass * share, strategy_extra=gathered,
                       strategy_note="FSDP gathered layers")
    return memory


# -- the device --------------------------------------------------------------------------------------------------
def target_of(request: Request) -> Target:
    import torch

    has_cuda = torch.cuda.is_available()
    kind = request.device or ("cuda" if has_cuda or request.device_memory else "cpu")
    if kind not in ("cuda", "cpu"):
        raise UsageError(f"--device: '{kind}' is not one of cuda, cpu.")
    this_machine = request.device_memory is None
    if kind == "cuda":
        if request.device_memory is None and not has_cuda:
            raise UsageError("--device cuda: this machine has no CUDA GPU; give the GPU's memory to plan for one "
                             "(--device_memory 80GB).")
        memory = request.device_memory or torch.cuda.get_device_properties(0).total_memory
        name = torch.cuda.get_device_name(0) if this_machine else "a CUDA GPU"
        usable = int(memory * USABLE_FRACTION - CUDA_RESERVE)
        return Target("cuda", name, memory, max(usable, 0), this_machine)
    memory = request.device_memory or machine_ram()
    name = "this machine's RAM (CPU)" if this_machine else "a CPU machine's RAM"
    return Target("cpu", name, memory, int(memory * USABLE_FRACTION), this_machine)


def machine_ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_size(text: str) -> int:
    """``80GB``, ``80GiB``, ``80G``, ``512MB`` -> bytes (GB and GiB both mean 2**30: GPU makers' '80GB' is
    close to 80 GiB)."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not match:
        raise UsageError(f"--device_memory: '{text}' is not a size; write it like 80GB or 24GiB.")
    number, unit = float(match.group(1)), match.group(2)
    size = int(number * 1024 ** "bkmgt".index(unit or "b"))
    if size <= 0:
        raise UsageError(f"--device_memory: '{text}' must be more than 0.")
    return size


def training_dtype(data: dict, target: Target):
    """The dtype the weights train in on ``target``: fw.model.loading.choose_dtype's rule."""
    import torch

    precision = view.precision(data)
    this_device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision != "auto" or (target.this_machine and target.kind == this_device):
        return choose_dtype(precision)
    return torch.bfloat16 if target.kind == "cuda" else torch.float32


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "").replace("bfloat16", "bf16").replace("float32", "fp32") \
        .replace("float16", "fp16")


# -- the batch ---------------------------------------------------------------------------------------------------
def workload_of(data: dict, model_config, dataset: str | None) -> Workload:
    if dataset is not None:
        return measured_workload(data, dataset)
    return configured_workload(data, model_config)


def configured_workload(data: dict, model_config) -> Workload:
    """The longest rows the config allows: prompt + response limits, the global limit, else the model's context."""
    context = getattr(model_config, "max_position_embeddings", None)
    limits = Limits.from_config(data, context_length=context)
    pair = limits.input + limits.output if limits.input and limits.output else None
    candidates = [(length, source) for length, source in (
        (pair, "input + output max_sequence_length"),
        (view.global_max_sequence_length(data), "preprocessing.global_max_sequence_length"),
        (None if view.global_max_sequence_length(data) else context,
         "the model's context: no max length is configured (give --dataset to measure)")) if length]
    if not candidates:
        raise FwError("fw plan: no sequence length is known: set preprocessing.global_max_sequence_length, or "
                      "give --dataset to measure the rows.")
    length, source = min(candidates)
    labelled = min(limits.output, length) if limits.output else length
    batch = batching.configured(data).batch_size
    if packing(data):
        budget = view.setting(data, "trainer", "max_tokens_per_batch") or batch * length
        return Workload(1, budget, min(budget, batch * labelled), f"packed: {budget} tokens ({source})")
    return Workload(batch, length, batch * labelled, source)


def measured_workload(data: dict, dataset: str) -> Workload:
    """The largest micro-batch of the training split of ``dataset``, tokenized and batched as fw train does."""
    splits = pipeline.load_splits(data, dataset=dataset)
    tokenizer = load_tokenizer(view.base_model(data))
    retriever = retrieval.prepare(data, splits.train)
    rows = pipeline.encode_frame(splits.train, data, tokenizer, "train", retriever)
    if not rows:
        raise FwError(f"--dataset {dataset}: the training split is empty.")
    lengths = [len(row) for row in rows]
    if packing(data):
        batch = max(packed_batches(rows, view.trainer(data)), key=lambda group: sum(lengths[i] for i in group))
        tokens = sum(lengths[i] for i in batch)
        return Workload(1, tokens, sum(rows[i].trained_tokens for i in batch),
                        f"packed: {tokens} tokens, the largest pack of {dataset}")
    batch = max(length_sorted_batches(lengths, batching.configured(data, len(rows)).batch_size),
                key=lambda group: len(group) * max(lengths[i] for i in group))
    longest = max(lengths[i] for i in batch)
    return Workload(len(batch), longest, sum(rows[i].trained_tokens for i in batch),
                    f"the longest rows of {dataset}: {len(rows)} training rows")


def packing(data: dict) -> bool:
    return bool(view.setting(data, "trainer", "packing"))


def chunked_loss(data: dict) -> bool:
    return bool(view.setting(data, "trainer", "chunked_loss"))


# -- optimizer ---------------------------------------------------------------------------------------------------
def optimizer_section(data: dict) -> dict:
    return view.setting(data, "trainer", "optimizer") or {}


def optimizer_type(data: dict) -> str:
    return optimizer_section(data).get("type") or "adamw"


def state_values(section: dict) -> tuple[int, int | None]:
    """(values per trainable parameter, bytes per value or None: the parameter's dtype)."""
    kind = section.get("type") or "adamw"
    if kind == "sgd":
        return (1 if section.get("momentum") else 0), None
    if kind == "rmsprop":
        return 1 + bool(section.get("momentum")) + bool(section.get("centered")), None
    return OPTIMIZER_STATES.get(kind, (2, None))


def optimizer_bytes(data: dict, shapes: list) -> float:
    """Bytes of the optimizer state for trainable parameters of ``shapes`` ((shape, bytes per element) pairs)."""
    section = optimizer_section(data)
    if section.get("type") == "adafactor":  # transformers' Adafactor computes (and keeps its state) in float32
        return sum(adafactor_values(shape, section) * 4 for shape, _ in shapes)
    count, size = state_values(section)
    total = 0.0
    for shape, element in shapes:
        values = math.prod(shape)
        per_value = element if size is None else (4 if size == 1 and values < BNB_MIN_8BIT_SIZE else size)
        total += count * values * per_value
    return total


def adafactor_values(shape: tuple, section: dict) -> int:
    """Adafactor (transformers'): a row and a column second moment for a matrix, a full one otherwise; a first
    moment when ``beta1`` is set."""
    values = math.prod(shape)
    second = (math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]) if len(shape) >= 2 else values
    return second + (values if section.get("beta1") else 0)


def step_temporaries(data: dict, counted, target: Target) -> float:
    """Bytes the optimizer step allocates for itself: torch's multi-tensor Adam on CUDA copies the second
    moments once (``_foreach_sqrt``); elsewhere one parameter's worth at a time."""
    if not counted.trainable_shapes:
        return 0.0
    if target.kind == "cuda" and optimizer_type(data) in FOREACH_COPY:
        return counted.trainable_bytes
    return max(math.prod(shape) * element for shape, element in counted.trainable_shapes)


# -- what to change ------------------------------------------------------------------------------------------------
def options(plan: Plan, data: dict, workload: Workload, estimate: Estimator) -> list[Option]:
    """Changes that would make the run fit, each with the peak it gives: one change at a time, then (when none of
    them is enough) each together with gradient checkpointing."""
    found = single_changes(plan, data, workload, estimate)
    if any(option.fits for option in found) or view.gradient_checkpointing(data):
        return found
    checkpointed = with_trainer(data, enable_gradient_checkpointing=True)
    return found + single_changes(plan, checkpointed, workload, estimate, " + gradient checkpointing")


def single_changes(plan: Plan, data: dict, workload: Workload, estimate: Estimator, also: str = "") -> list[Option]:
    shared = plan.processes if plan.target.kind == "cpu" else 1
    found: list[Option] = []

    def consider(change: str, memory: Memory, processes: int = plan.processes) -> None:
        needed = memory.peak * (processes if plan.target.kind == "cpu" else 1)
        found.append(Option(change + also, memory.peak, needed <= plan.target.usable))

    if not view.gradient_checkpointing(data):
        consider("trainer.enable_gradient_checkpointing: true",
                 estimate.memory(with_trainer(data, enable_gradient_checkpointing=True), workload))
    for rows in range(workload.rows - 1, 0, -1):  # activations scale with the rows of the micro-batch
        memory = estimate.memory(data, workload, activation_scale=rows / workload.rows)
        if memory.peak * shared <= plan.target.usable or rows == 1:
            steps = batching.configured(data).accumulation
            accumulation = steps * math.ceil(workload.rows / rows)
            consider(f"trainer.batch_size: {rows}, gradient_accumulation_steps: {accumulation} (the same effective "
                     "batch)", memory)
            break
    if plan.target.kind == "cuda" and plan.strategy != "fsdp":
        for processes in (2, 4, 8):
            memory = estimate.memory(data, workload, processes=processes, strategy="fsdp")
            if memory.peak <= plan.target.usable or processes == 8:
                consider(f"FSDP over {processes} GPUs (--num_processes {processes} --strategy fsdp)", memory,
                         processes)
                break
    if plan.target.kind == "cuda" and (view.adapter(data) or view.named_adapters(data)) \
            and not view.quantization(data):
        consider("quantization: {bits: 4} (QLoRA)", estimate.memory({**data, "quantization": {"bits": 4}}, workload))
    if not view.adapter(data) and not view.named_adapters(data):
        consider(f"adapter: {{type: {ADAPTER.default}}} instead of a full fine-tune",
                 estimate.memory(with_default_adapter(data), workload))
    return found


def with_trainer(data: dict, **changes) -> dict:
    return {**data, "trainer": {**(data.get("trainer") or {}), **changes}}


def with_default_adapter(data: dict) -> dict:
    """``data`` with the config language's default adapter (LoRA), the schema's defaults filled in."""
    return {**data, "adapter": load_config({**data, "adapter": {"type": ADAPTER.default}}).data["adapter"]}


# -- labels and notes ----------------------------------------------------------------------------------------------
def adapter_key(data: dict) -> str:
    return str(data.get("adapter")) + str(data.get("adapters"))


def quantized_bytes(data: dict):
    """``bytes_of(shape, element_size, replaced)`` of the configured quantizer plugin (its ``training_bytes``, for
    the section as it is loaded for training), or None."""
    from functools import partial

    section = section_for_loading(view.quantization(data), for_training=True)
    if not section:
        return None
    descriptor = quantizer_of(section)
    return partial(resolve(descriptor.training_bytes), section) if descriptor.training_bytes else None


def adapter_label(data: dict) -> str:
    section = view.adapter(data)
    if section:
        rank = f" r={section['r']}" if "r" in section else ""
        return f"{section['type']}{rank}"
    named = view.named_adapters(data)
    if named:
        return f"{len(named.get('adapters') or {})} named adapters"
    return "none: full fine-tune"


def notes_of(data: dict, target: Target) -> list[str]:
    notes = []
    if view.quantization(data):
        notes.append("quantized layers are counted at their quantized size; the simulated pass runs them at the "
                     "compute dtype")
    if not target.this_machine and view.precision(data) == "auto" and target.kind == "cuda":
        notes.append("trainer.precision auto: planned as bf16 (a GPU that supports it)")
    return notes

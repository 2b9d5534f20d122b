"""Training in several processes: the runtimes of DDP and FSDP2 (fw.train.runtime's seams, on torch.distributed).

Started by a launcher (torchrun, accelerate launch, ``fw train --num_processes``), every process runs the same
``fw train``; :func:`fw.train.runtime.for_job` gives each a :class:`DDPRuntime` or :class:`FSDPRuntime`
(``backend.trainer.strategy``: fw.config.strategy). The process group is fw.distributed's (accelerate's
``PartialState``: gloo on CPU, nccl on GPUs). The engines are torch's own — ``DistributedDataParallel``,
``fully_shard``, ``torch.distributed.checkpoint`` — and fw adds no communication of its own.

The same run on more processes (decisions):

- **Batches.** The trainer plans micro-batches for the whole job (``batch_size`` rows per process, so
  ``processes x batch_size`` rows per planned micro-batch, packed or not) identically in every process, and each
  process takes its contiguous share of the rows (:meth:`DistributedRuntime.shard`): every row is seen once per
  epoch, and N processes with batch b train on exactly the rows one process with batch N·b would.
- **Loss.** A step's loss is divided by the trained tokens of the whole job (reduced over processes), times the
  number of processes: DDP and FSDP average the gradients over processes, so the step's gradient is the one of a
  single process over all its rows. A process whose share of a micro-batch is empty runs a stand-in row with weight
  0, because every process must run every forward and backward (DDP's and FSDP's collectives are in them).
- **The step module.** DDP and FSDP act through a module's ``forward``; fw's loss (the chunked head included) is
  computed inside :class:`StepModule.forward`, so every training pass goes through the wrapper.
- **One copy of the start.** The main process's weights are everyone's: DDP broadcasts them when it wraps the model,
  FSDP loads the main process's full state into every shard. Under FSDP (``cpu_ram_efficient_loading``, the
  default) the others do not even read the weights: they build the model on the meta device, and probes that need
  weights before sharding (the loss path, packing's check) are decided by the main process
  (:meth:`DistributedRuntime.decided_by_main`). Data passes that fill caches (the retrieval index) run
  on the main process first; EVA / CorDA calibrate there only (fw.model.initialization).
- **State.** Under DDP the main process writes checkpoints, the best weights and ``model/`` as one process does
  (with every process's random states). Under FSDP checkpoints are sharded (fw.train.checkpoint), the best weights
  are gathered into the main process, and before ``model/`` is written the whole model is gathered there and put in
  place of its shards (:meth:`FSDPRuntime.model_to_save`), so saving, merging and the model card work unchanged.
- **Stopping.** Ctrl-C / SIGTERM reach every process; each asks for a stop, the request travels with the next
  step's reduced loss, and all stop after the same optimizer step and write one checkpoint together
  (:meth:`DistributedRuntime.stop_signals`). A process that fails exits; the launcher then stops the others, and a
  peer that is lost without exiting trips the process group's timeout (fw.distributed).
"""
from __future__ import annotations

import contextlib
import json
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from fw import console, distributed
from fw.atomic import atomic_directory
from fw.config.strategy import CONFIG_PATH, Strategy
from fw.errors import FwError, Terminated
from fw.train import checkpoint as ckpt
from fw.train.loss import transformers_model
from fw.train.runtime import Item, Runtime


class StepModule(torch.nn.Module):
    """The model, with the loss of a batch as a forward (``loss_of``): DDP and FSDP hook a module's forward, so the
    training loss — chunked head included — is computed inside one. Without ``loss_of`` it is the model's forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args, loss_of: Callable | None = None, **kwargs):
        if loss_of is not None:
            return loss_of(self.model, kwargs)
        return self.model(*args, **kwargs)


class Stopped(KeyboardInterrupt):
    """Every process stops after the same optimizer step because one of them got Ctrl-C or SIGTERM."""


class DistributedRuntime(Runtime):
    """What every distributed strategy shares: the process group, shares of the rows, sums, agreed stops."""

    def __init__(self, strategy: Strategy):
        self.strategy = strategy
        distributed.state()  # the process group starts here
        self.is_main_process = distributed.is_main_process()
        self.processes = distributed.world_size()
        self.rank = distributed.rank()
        self.mixed_precision = strategy.mixed_precision
        #: the signal this process got and has not acted on yet (Ctrl-C, SIGTERM)
        self.stop_requested: int | None = None
        #: every process stops after the same step (then, and only then, they can checkpoint together)
        self.stopping = False

    def loss(self, step_model, loss_sum: Callable, batch: dict):
        return step_model(**batch, loss_of=loss_sum)

    def shard(self, items: Sequence[Item]) -> list[Item]:
        return distributed.split(items)

    def reduce_sum(self, values: Sequence[float]) -> list[float]:
        return distributed.reduce_sum(values)

    def decided_by_main(self, decide: Callable[[], Item]) -> Item:
        """The main process decides; its answer, or its error, reaches every process."""
        outcome = None
        if self.is_main_process:
            try:
                outcome = (True, decide())
            except FwError as exc:
                outcome = (False, str(exc))
        decided, value = distributed.broadcast(outcome)
        if not decided:
            raise FwError(value)
        return value

    def run_once(self, work: Callable[[], Item]) -> Item:
        """The main process does ``work`` first (filling caches), then the others (reading them)."""
        result = work() if self.is_main_process else None
        distributed.barrier()
        return result if self.is_main_process else work()

    def barrier(self) -> None:
        distributed.barrier()

    def restore_best(self, checkpoints: Path, model) -> None:
        distributed.barrier()  # the main process wrote them
        super().restore_best(checkpoints, model)

    # -- stopping together ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def stop_signals(self):
        """While training: Ctrl-C and SIGTERM only ask for a stop (:meth:`agree_to_stop` acts on it at the next step,
        in every process at once); a second one stops this process on the spot."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def ask(signum, frame):
            if self.stop_requested is not None:
                raise KeyboardInterrupt
            self.stop_requested = signum

        previous = {number: signal.signal(number, ask) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def stop_vote(self) -> float:
        return 0.0 if self.stop_requested is None else 1.0

    def agree_to_stop(self, votes: float) -> None:
        """Raise :class:`Stopped` in every process when any asked to stop (``votes``: the reduced requests)."""
        if votes:
            self.stopping = True
            if self.stop_requested == signal.SIGTERM:
                raise Terminated(f"signal {signal.SIGTERM}")
            raise Stopped

    def may_checkpoint_after(self, exc: BaseException) -> bool:
        """Only after an agreed stop: a failure in one process leaves the others waiting in a collective (the
        launcher stops them), so nothing can be written together; the last checkpoint is kept."""
        return self.stopping

    def random_states(self) -> list:
        """Every process's random states, in rank order (collective)."""
        return distributed.gather(ckpt.rng_state())


class DDPRuntime(DistributedRuntime):
    """Every process holds the whole model; ``DistributedDataParallel`` averages the gradients."""

    def prepare_model(self, model):
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        return DistributedDataParallel(StepModule(model), device_ids=[device.index] if device.type == "cuda" else None)

    def synchronizing(self, step_model, sync: bool):
        return contextlib.nullcontext() if sync else step_model.no_sync()

    def save_checkpoint(self, checkpoints, step, model, optimizer, scheduler, position, history):
        rngs = self.random_states()
        if not self.is_main_process:
            return None
        return ckpt.save_checkpoint(checkpoints, step, model, optimizer, scheduler, position, history, rngs)

    def load_checkpoint(self, path, model, optimizer, scheduler) -> dict:
        return ckpt.load_checkpoint(path, model, optimizer, scheduler, rank=self.rank)


class FSDPRuntime(DistributedRuntime):
    """FSDP2: every layer and the rest of the model sharded over the processes with ``fully_shard``."""

    load_device = "cpu"
    shards_weights = True

    def __init__(self, strategy: Strategy, quantized: bool = False):
        super().__init__(strategy)
        self.mixed_precision = "no" if strategy.mixed_precision == "bf16" else strategy.mixed_precision
        self.activation_checkpointing = bool(strategy.fsdp.get("activation_checkpointing"))
        # CPU-efficient loading (accelerate's name): the main process reads the weights, the others build the
        # model on the meta device; a quantized model is loaded by every process (its loader quantizes as it reads)
        self.rank0_loads = not quantized and strategy.fsdp.get("cpu_ram_efficient_loading", True)
        self.loads_weights = self.is_main_process or not self.rank0_loads

    def prepare_model(self, model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        device = self.device_of(model)
        full_state = model.state_dict() if self.is_main_process else {}
        self.receive_unsaved_buffers(model, full_state, device)
        settings = self.shard_settings(init_device_mesh(device.type, (self.processes,)))
        for layer in self.layers(model):
            fully_shard(layer, **settings)
        step_model = fully_shard(StepModule(model), **settings)
        set_model_state_dict(model, full_state, options=StateDictOptions(full_state_dict=True,
                                                                           broadcast_from_rank0=True))
        return step_model

    @staticmethod
    def device_of(model) -> torch.device:
        """Where the model trains: its parameters' device, or this process's own for a model on the meta device."""
        device = next(model.parameters()).device
        if device.type != "meta":
            return device
        return torch.device("cuda", distributed.local_rank()) if torch.cuda.is_available() else torch.device("cpu")

    def receive_unsaved_buffers(self, model, full_state: dict, device: torch.device) -> None:
        """The buffers no state dict carries (RoPE's ``inv_freq``: computed at construction, empty on the meta
        device), sent by the main process to the processes that did not load the weights (collective; small)."""
        if not self.rank0_loads:
            return
        unsaved = distributed.broadcast({name: buffer for name, buffer in model.named_buffers()
                                         if name not in full_state} if self.is_main_process else None)
        if self.is_main_process:
            return
        for name, buffer in unsaved.items():
            owner, _, attribute = name.rpartition(".")
            model.get_submodule(owner)._buffers[attribute] = buffer.to(device)

    def shard_settings(self, mesh) -> dict:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

        options = self.strategy.fsdp
        settings = {"mesh": mesh, "reshard_after_forward": options.get("reshard_after_forward", True)}
        if self.strategy.mixed_precision == "bf16":
            settings["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if options.get("cpu_offload"):
            settings["offload_policy"] = CPUOffloadPolicy()
        return settings

    def layers(self, model) -> list:
        """The modules sharded one by one: ``transformer_cls_names_to_wrap``, else the model's ``_no_split_modules``."""
        wanted = self.strategy.fsdp.get("transformer_cls_names_to_wrap") or \
            list(getattr(transformers_model(model), "_no_split_modules", None) or [])
        found = [module for module in model.modules() if type(module).__name__ in wanted]
        if not found:
            classes = sorted({type(module).__name__ for module in model.modules()})
            raise FwError(f"{CONFIG_PATH}.fsdp_config.transformer_cls_names_to_wrap: no module of the model is a "
                          f"{' or '.join(wanted) or '(no class named)'}; name its repeated layer class, one of: "
                          f"{', '.join(classes[:12])}.")
        return found

    def forward_model(self, model, step_model):
        return step_model  # every pass must go through the sharded root, in every process

    def synchronizing(self, step_model, sync: bool):
        step_model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    # -- state -------------------------------------------------------------------------------------------------
    def save_checkpoint(self, checkpoints, step, model, optimizer, scheduler, position, history):
        """Every process writes its shards into the main process's temporary directory, which the main process
        completes (schedule, position, random states) and renames into place."""
        rngs = self.random_states()
        final = ckpt.checkpoint_directory(checkpoints, step)
        if not self.is_main_process:
            ckpt.write_shards(Path(distributed.broadcast(None)), model, optimizer)
            distributed.barrier()
            return None
        with atomic_directory(final) as directory:
            distributed.broadcast(str(directory))
            rest = ckpt.write_shards(directory, model, optimizer)
            (directory / "optimizer.json").write_text(json.dumps(rest))
            ckpt.write_state(directory, step, scheduler, position, history, rngs)
        path = ckpt.point_latest(checkpoints, final, step)
        distributed.barrier()
        return path

    def load_checkpoint(self, path, model, optimizer, scheduler) -> dict:
        return ckpt.load_sharded_checkpoint(path, model, optimizer, scheduler, self.rank)

    def full_state(self, model, trainable_only: bool) -> dict:
        """The whole (or only the trainable) state of ``model`` on the CPU of the main process; {} elsewhere."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                    ignore_frozen_params=trainable_only))

    def save_best(self, checkpoints, model, metrics) -> None:
        from safetensors.torch import save_file

        state = self.full_state(model, trainable_only=True)
        if self.is_main_process:
            with atomic_directory(Path(checkpoints) / ckpt.BEST) as directory:
                save_file({name: value.contiguous() for name, value in state.items()},
                          str(directory / "weights.safetensors"))
                (directory / "metrics.json").write_text(json.dumps(metrics))

    def restore_best(self, checkpoints, model) -> None:
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        distributed.barrier()
        weights = Path(checkpoints) / ckpt.BEST / "weights.safetensors"
        if not weights.is_file():
            return
        state = load_file(str(weights)) if self.is_main_process else {}
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                    strict=False))

    def model_to_save(self, model):
        """Gather the whole model into the main process and put the full tensors in place of its shards (tied
        parameters stay tied): ``save_pretrained``, merging and quantization's last step then see a plain model.
        The main process's model is for saving only from then on (collective; the others keep their shards)."""
        state = self.full_state(model, trainable_only=False)
        if not self.is_main_process:
            return model
        replaced: dict[int, torch.nn.Parameter] = {}
        for module_name, module in model.named_modules():
            for name, parameter in list(module.named_parameters(recurse=False)):
                key = f"{module_name}.{name}" if module_name else name
                if id(parameter) not in replaced:
                    replaced[id(parameter)] = torch.nn.Parameter(state[key], requires_grad=parameter.requires_grad)
                module._parameters[name] = replaced[id(parameter)]
        return model


#: the folder of a checkpoint directory DeepSpeed's engine writes its state into
DEEPSPEED_TAG = "deepspeed"


class DeepSpeedRuntime(DistributedRuntime):
    """DeepSpeed ZeRO-2 / ZeRO-3 through accelerate (``Accelerator(deepspeed_plugin=...)``): its engine owns the
    backward pass, the optimizer step (clipping included) and the checkpoints. Written against accelerate 1.15 and
    deepspeed 0.19; never run: ZeRO needs CUDA GPUs (the ``gpu``-marked test covers it)."""

    def __init__(self, strategy: Strategy):
        super().__init__(strategy)
        self.accelerator = None
        #: whether the micro-batch being run ends an optimizer step (:meth:`synchronizing`)
        self.step_ends = True

    def prepare_model(self, model):
        return StepModule(model)  # wrapped with its optimizer in prepare_optimizer

    def prepare_optimizer(self, step_model, optimizer, batch_size: int, accumulation: int, clipping: dict | None):
        from accelerate import Accelerator

        plugin = deepspeed_plugin(self.strategy, batch_size, accumulation, clipping, self.processes)
        self.accelerator = Accelerator(deepspeed_plugin=plugin)
        return self.accelerator.prepare(step_model, optimizer)

    def synchronizing(self, step_model, sync: bool):
        self.step_ends = sync
        return contextlib.nullcontext()

    def backward(self, loss) -> None:
        # fw's loss is already a share of the whole step: no division by the accumulation steps
        self.accelerator.deepspeed_engine_wrapped.backward(loss, sync_gradients=self.step_ends, scale_wrt_gas=False)

    def forward_model(self, model, step_model):
        return step_model

    def save_checkpoint(self, checkpoints, step, model, optimizer, scheduler, position, history):
        """DeepSpeed's own checkpoint (every process writes its partitions with ``engine.save_checkpoint``) in the
        main process's temporary directory, completed by the main process (schedule, position, random states)."""
        rngs = self.random_states()
        final = ckpt.checkpoint_directory(checkpoints, step)
        engine = self.accelerator.deepspeed_engine_wrapped.engine
        if not self.is_main_process:
            engine.save_checkpoint(distributed.broadcast(None), tag=DEEPSPEED_TAG)
            distributed.barrier()
            return None
        with atomic_directory(final) as directory:
            distributed.broadcast(str(directory))
            engine.save_checkpoint(str(directory), tag=DEEPSPEED_TAG)
            ckpt.write_state(directory, step, scheduler, position, history, rngs)
        path = ckpt.point_latest(checkpoints, final, step)
        distributed.barrier()
        return path

    def load_checkpoint(self, path, model, optimizer, scheduler) -> dict:
        self.accelerator.deepspeed_engine_wrapped.engine.load_checkpoint(str(path), tag=DEEPSPEED_TAG)
        return ckpt.read_state(path, scheduler, self.rank)

    def model_to_save(self, model):
        """The whole model gathered into the main process (ZeRO-3 partitions it; collective)."""
        state = self.accelerator.get_state_dict(self.accelerator._models[0])
        if not self.is_main_process:
            return model
        model.load_state_dict({name.removeprefix("model."): value for name, value in state.items()}, strict=False)
        return model


def deepspeed_plugin(strategy: Strategy, batch_size: int, accumulation: int, clipping: dict | None, processes: int):
    """accelerate's ``DeepSpeedPlugin`` for the strategy's DeepSpeed config, with fw's batch size, accumulation and
    clipping written where the config says ``auto`` or nothing (as accelerate fills its ``auto`` values); a value
    the config sets otherwise is an error naming both."""
    import copy

    from accelerate.utils import DeepSpeedPlugin

    from fw.config.strategy import deepspeed_settings

    settings = copy.deepcopy(deepspeed_settings(strategy.deepspeed))
    values = {"train_micro_batch_size_per_gpu": batch_size, "gradient_accumulation_steps": accumulation,
              "train_batch_size": batch_size * accumulation * processes,
              "gradient_clipping": float((clipping or {}).get("clipglobalnorm") or (clipping or {}).get("clipnorm")
                                         or 0.0)}
    for key in values:
        settings.setdefault(key, "auto")
    if strategy.mixed_precision in ("bf16", "fp16"):
        settings.setdefault(strategy.mixed_precision, {"enabled": True})
    plugin = DeepSpeedPlugin(hf_ds_config=settings)
    try:
        plugin.deepspeed_config_process(must_match=True, **values)
    except ValueError as exc:  # accelerate lists each mismatch on a line "- ds KEY=… vs arg KEY=…"
        mismatches = [line.removeprefix("- ") for line in str(exc).splitlines() if line.startswith("- ")]
        raise FwError(f"{CONFIG_PATH}.deepspeed_config: differs from the trainer section "
                      f"({'; '.join(mismatches) or exc}); set these keys to auto.") from None
    return plugin


def check_deepspeed_runnable() -> None:
    """DeepSpeed needs its package and CUDA GPUs (ZeRO's kernels and nccl); one line for what is missing."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise FwError(f"{CONFIG_PATH}: deepspeed needs the deepspeed package: pip install 'fw[deepspeed]' (or use "
                      "fsdp, which shards like ZeRO-3 with torch alone).")
    if not torch.cuda.is_available():
        raise FwError(f"{CONFIG_PATH}: DeepSpeed ZeRO runs on CUDA GPUs and this machine has none; on CPU use fsdp "
                      "(parameters, gradients and optimizer state sharded as ZeRO-3 does) or ddp.")


def runtime_for(strategy: Strategy, data: dict) -> DistributedRuntime:
    """The runtime of ``strategy`` in this process of a launched job (the process group starts here)."""
    if strategy.name == "deepspeed":
        check_deepspeed_runnable()
    if strategy.fsdp.get("cpu_offload") and not torch.cuda.is_available():
        raise FwError(f"{CONFIG_PATH}.fsdp_config.cpu_offload: moves GPU state to the CPU, and this machine has no "
                      "GPU; set it to false.")
    if strategy.mixed_precision in ("bf16", "fp16") and not torch.cuda.is_available() and strategy.name == "ddp":
        console.info(f"{CONFIG_PATH}.mixed_precision: no effect on CPU (as trainer.use_mixed_precision).")
    if strategy.name == "fsdp":
        return FSDPRuntime(strategy, quantized=bool(data.get("quantization")))
    if strategy.name == "deepspeed":
        return DeepSpeedRuntime(strategy)
    return DDPRuntime(strategy)

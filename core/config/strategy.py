"""``backend.trainer.strategy``: how the processes of a job train together, read from the config (no torch here).

The config takes Ludwig's shape: a name (``ddp``, ``fsdp``, ``deepspeed``, ``accelerate``) or a mapping
``{type, mixed_precision, fsdp_config, deepspeed_config}``. In Ludwig every name runs through accelerate, and
``accelerate`` means DDP unless ``fsdp_config`` or ``deepspeed_config`` is given; fw reads it the same way:

- ``ddp``: every process holds the whole model and trains on its share of each batch; torch's
  ``DistributedDataParallel`` averages the gradients. The default whenever several processes run.
- ``fsdp``: FSDP2 (torch's ``fully_shard``): every decoder layer (``transformer_cls_names_to_wrap``) and the rest of
  the model are sharded across the processes, so are gradients and optimizer state; a layer is gathered only
  while it runs. Full fine-tune and adapters; ``mixed_precision: bf16`` is FSDP2's ``MixedPrecisionPolicy``;
  ``cpu_ram_efficient_loading`` (default true): only the main process reads the weights (fw.train.parallel).
- ``deepspeed``: DeepSpeed ZeRO stage 2 or 3 through accelerate's ``DeepSpeedPlugin`` (``deepspeed_config``: a JSON
  file or a mapping; fw's batch size, accumulation and clipping fill its ``auto`` values); needs the ``deepspeed``
  package (``fw[deepspeed]``) and CUDA GPUs. Its engine owns the backward pass, the optimizer step and the
  checkpoints (fw.train.parallel.DeepSpeedRuntime). Not run yet: no GPU was available where it was written.

Decisions: the strategy is only read when more than one process runs (one process: an info line when one was set,
nothing to share); DDP and FSDP use torch directly (``DistributedDataParallel``, ``fully_shard``: the least code,
and both run on CPU with gloo, where the tests run them); FSDP1 is not offered (``fsdp_version: 2`` only); FSDP's
mixed precision is bf16 only (fp16 would need a sharded gradient scaler); FSDP over a quantized base model takes
the quantizer's ``for_sharding`` (bitsandbytes 4-bit: its packed weights stored in the compute dtype, which FSDP can
split; 8-bit and backends without it are refused: :func:`section_for_sharding`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fw.errors import FwError

NAMES = ("ddp", "fsdp", "deepspeed")
CONFIG_PATH = "backend.trainer.strategy"


@dataclass(frozen=True)
class Strategy:
    """A strategy as the config states it (``name``: ddp, fsdp or deepspeed)."""

    name: str
    #: ``no``, ``bf16``, ``fp16``, or None (``trainer.use_mixed_precision`` decides)
    mixed_precision: str | None = None
    fsdp: dict = field(default_factory=dict)
    #: a path or a mapping (DeepSpeed's own config)
    deepspeed: str | dict | None = None


def configured(data: dict) -> dict | str | None:
    """``backend.trainer.strategy`` as written (None when absent)."""
    backend = data.get("backend") or {}
    return (backend.get("trainer") or {}).get("strategy")


def of_config(data: dict) -> Strategy:
    """The strategy of a validated config: its ``backend.trainer.strategy``, DDP when none is set."""
    value = configured(data)
    if value is None:
        return Strategy("ddp")
    if isinstance(value, str):
        return Strategy(value if value != "accelerate" else "ddp")
    kind = value.get("type", "accelerate")
    if kind == "accelerate":
        kind = "fsdp" if value.get("fsdp_config") is not None else \
            "deepspeed" if value.get("deepspeed_config") is not None else "ddp"
    return Strategy(kind, value.get("mixed_precision"), dict(value.get("fsdp_config") or {}),
                    value.get("deepspeed_config"))


# -- what the config can say wrong (fw.config.rules runs these; no torch) ------------------------------------------
def problems(data: dict) -> list[tuple[str, str]]:
    """(config path, message) of every strategy setting that cannot work, whatever machine runs it."""
    value = configured(data)
    if value is None:
        return []
    found = mapping_problems(value) if isinstance(value, dict) else []
    strategy = of_config(data)
    if strategy.name == "fsdp" and strategy.mixed_precision == "fp16":
        found.append((f"{CONFIG_PATH}.mixed_precision", "fp16 is not offered with fsdp (it needs a sharded "
                                                        "gradient scaler); use bf16."))
    if strategy.name == "deepspeed":
        found += deepspeed_config_problems(strategy.deepspeed)
    return found


def section_for_sharding(section: dict) -> dict:
    """The ``quantization`` section as loaded for a model FSDP shards: its quantizer's ``for_sharding`` (a storage
    FSDP can split); :class:`FwError` when the quantizer has none or refuses this section."""
    from fw.config.sockets import QUANTIZER
    from fw.plugin import get_registry, resolve

    descriptor = get_registry().get("quantizer", section.get(QUANTIZER.selector) or QUANTIZER.default)
    if not descriptor.for_sharding:
        raise FwError(f"quantization.backend: {descriptor.name} weights cannot be sharded by fsdp; use "
                      f"{CONFIG_PATH}: ddp (the quantized base on every GPU).")
    return resolve(descriptor.for_sharding)(section)


def mapping_problems(value: dict) -> list[tuple[str, str]]:
    """A ``{type, fsdp_config, deepspeed_config}`` whose parts do not go together."""
    found = []
    kind = value.get("type", "accelerate")
    if value.get("fsdp_config") is not None and value.get("deepspeed_config") is not None:
        found.append((f"{CONFIG_PATH}.deepspeed_config", "is set together with fsdp_config: a run is sharded by "
                                                         "FSDP or by DeepSpeed, not both. Keep one of them."))
    for key, owner in (("fsdp_config", "fsdp"), ("deepspeed_config", "deepspeed")):
        if value.get(key) is not None and kind not in (owner, "accelerate"):
            found.append((f"{CONFIG_PATH}.{key}", f"configures {owner}, but type is {kind}. Set type: {owner} "
                                                  f"(or accelerate), or remove {key}."))
    return found


def deepspeed_config_problems(config) -> list[tuple[str, str]]:
    where = f"{CONFIG_PATH}.deepspeed_config"
    if config is None:
        return [(where, "type deepspeed needs a DeepSpeed config: the path of its JSON file or a mapping with "
                        "zero_optimization.stage 2 or 3.")]
    try:
        contents = deepspeed_settings(config)
    except FwError as exc:
        return [(where, str(exc))]
    stage = (contents.get("zero_optimization") or {}).get("stage")
    if stage not in (2, 3):
        return [(where, f"zero_optimization.stage is {stage!r}; fw runs DeepSpeed ZeRO stage 2 or 3.")]
    return []


def deepspeed_settings(config: str | dict) -> dict:
    """The DeepSpeed config as a mapping (read from its JSON file when ``config`` is a path)."""
    if isinstance(config, dict):
        return config
    path = Path(config).expanduser()
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FwError(f"cannot read {path} ({exc.strerror or exc}); give the path of a DeepSpeed JSON config.") \
            from None
    except ValueError as exc:
        raise FwError(f"{path} is not JSON ({exc}).") from None


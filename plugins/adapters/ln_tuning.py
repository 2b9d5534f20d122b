"""LN-Tuning: trains only the layer normalization modules (PEFT LNTuningConfig)."""
from __future__ import annotations

from fw.plugin.hookspecs import hookimpl
from fw.plugin.descriptors import AdapterPlugin

SCHEMA = "fw.schemas:adapters/ln_tuning.json"


@hookimpl
def fw_adapters():
    return [AdapterPlugin(name="ln_tuning", schema=SCHEMA, summary="Layer-norm tuning (LN-Tuning)",
                          build_peft_config=f"{__name__}:build_peft_config")]


def build_peft_config(params: dict):
    from fw.plugin.peft import build_peft_config as build

    return build("LNTuningConfig", params, SCHEMA)


def default_target_modules(model) -> list[str]:
    """Every LayerNorm / RMSNorm-like module (by type), for architectures PEFT has no default for."""
    import torch

    def is_norm(module) -> bool:
        return isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("Norm")

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if name and is_norm(module)})

"""C3A: block-circulant (circular convolution) weight updates (PEFT C3AConfig)."""
from __future__ import annotations

from fw.plugin.hookspecs import hookimpl
from fw.plugin.descriptors import AdapterPlugin

SCHEMA = "fw.schemas:adapters/c3a.json"


@hookimpl
def fw_adapters():
    return [AdapterPlugin(name="c3a", schema=SCHEMA, summary="Circular convolution adaptation (C3A)",
                          build_peft_config=f"{__name__}:build_peft_config",
                          check_model=f"{__name__}:check_model")]


def build_peft_config(params: dict):
    from fw.plugin.peft import build_peft_config as build

    return build("C3AConfig", params, SCHEMA)


def check_model(params: dict, model) -> list[str]:
    """block_size must divide the in and out features of every targeted layer ("block_size: ..." problems)."""
    from fw.model.adapters import divisor_problems, target_layer_shapes
    from fw.plugin.peft import with_defaults

    p = with_defaults(params, SCHEMA)
    return divisor_problems("block_size", p["block_size"], target_layer_shapes(model, p))

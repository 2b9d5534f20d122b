"""VBLoRA: LoRA assembled from a shared vector bank (PEFT VBLoRAConfig)."""
from __future__ import annotations

from fw.plugin.hookspecs import hookimpl
from fw.plugin.descriptors import AdapterPlugin

SCHEMA = "fw.schemas:adapters/vblora.json"


@hookimpl
def fw_adapters():
    return [AdapterPlugin(name="vblora", schema=SCHEMA, summary="Vector-bank LoRA (VBLoRA)",
                          build_peft_config=f"{__name__}:build_peft_config",
                          check_params=f"{__name__}:check_params",
                          check_model=f"{__name__}:check_model")]


def build_peft_config(params: dict):
    from fw.plugin.peft import build_peft_config as build

    return build("VBLoRAConfig", params, SCHEMA)


def check_params(params: dict, explicit_keys: set[str] | None = None) -> list[tuple[str, str]]:
    """topk vectors are picked from the bank, so topk <= num_vectors."""
    from fw.plugin.peft import with_defaults

    p = with_defaults(params, SCHEMA)
    if p["topk"] > p["num_vectors"]:
        return [("topk", f"topk ({p['topk']}) cannot exceed num_vectors ({p['num_vectors']})")]
    return []


def check_model(params: dict, model) -> list[str]:
    """vector_length must divide the in and out features of every targeted layer."""
    from fw.model.adapters import divisor_problems, target_layer_shapes
    from fw.plugin.peft import with_defaults

    p = with_defaults(params, SCHEMA)
    return divisor_problems("vector_length", p["vector_length"], target_layer_shapes(model, p))

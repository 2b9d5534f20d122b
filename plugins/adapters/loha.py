"""LoHa: low-rank Hadamard product adaptation (PEFT LoHaConfig)."""
from __future__ import annotations

from fw.plugin.hookspecs import hookimpl
from fw.plugin.descriptors import AdapterPlugin

SCHEMA = "fw.schemas:adapters/loha.json"


@hookimpl
def fw_adapters():
    return [AdapterPlugin(name="loha", schema=SCHEMA, summary="Low-rank Hadamard product adaptation (LoHa)",
                          build_peft_config=f"{__name__}:build_peft_config")]


def build_peft_config(params: dict):
    from fw.plugin.peft import build_peft_config as build

    return build("LoHaConfig", params, SCHEMA)

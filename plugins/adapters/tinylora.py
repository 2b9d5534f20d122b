"""TinyLoRA: trained tiny vectors projected onto a frozen SVD of each weight (PEFT TinyLoraConfig)."""
from __future__ import annotations

from fw.plugin.hookspecs import hookimpl
from fw.plugin.descriptors import AdapterPlugin

SCHEMA = "fw.schemas:adapters/tinylora.json"


@hookimpl
def fw_adapters():
    return [AdapterPlugin(name="tinylora", schema=SCHEMA,
                          summary="Extreme parameter-efficient SVD projection (TinyLoRA)",
                          build_peft_config=f"{__name__}:build_peft_config")]


def build_peft_config(params: dict):
    from fw.plugin.peft import build_peft_config as build

    return build("TinyLoraConfig", params, SCHEMA)

"""LoKr: low-rank Kronecker product adaptation (PEFT LoKrConfig)."""
from __future__ import annotations

from fw.plugin.hookspecs import hookimpl
from fw.plugin.descriptors import AdapterPlugin

SCHEMA = "fw.schemas:adapters/lokr.json"


@hookimpl
def fw_adapters():
    return [AdapterPlugin(name="lokr", schema=SCHEMA, summary="Low-rank Kronecker product adaptation (LoKr)",
                          build_peft_config=f"{__name__}:build_peft_config")]


def build_peft_config(params: dict):
    from fw.plugin.peft import build_peft_config as build

    return build("LoKrConfig", params, SCHEMA)

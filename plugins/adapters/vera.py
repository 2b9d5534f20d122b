"""VeRA: shared frozen random projections with trained per-layer scaling vectors (PEFT VeraConfig)."""
from __future__ import annotations

from fw.plugin.hookspecs import hookimpl
from fw.plugin.descriptors import AdapterPlugin

SCHEMA = "fw.schemas:adapters/vera.json"


@hookimpl
def fw_adapters():
    return [AdapterPlugin(name="vera", schema=SCHEMA, summary="Vector-based random matrix adaptation (VeRA)",
                          build_peft_config=f"{__name__}:build_peft_config")]


def build_peft_config(params: dict):
    from fw.plugin.peft import build_peft_config as build

    return build("VeraConfig", params, SCHEMA)

"""HRA: Householder reflection adaptation (PEFT HRAConfig)."""
from __future__ import annotations

from fw.plugin.hookspecs import hookimpl
from fw.plugin.descriptors import AdapterPlugin

SCHEMA = "fw.schemas:adapters/hra.json"


@hookimpl
def fw_adapters():
    return [AdapterPlugin(name="hra", schema=SCHEMA, summary="Householder reflection adaptation (HRA)",
                          build_peft_config=f"{__name__}:build_peft_config")]


def build_peft_config(params: dict):
    from fw.plugin.peft import build_peft_config as build

    return build("HRAConfig", params, SCHEMA)

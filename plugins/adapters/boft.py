"""BOFT: butterfly-factorized orthogonal fine-tuning (PEFT BOFTConfig)."""
from __future__ import annotations

from fw.plugin.hookspecs import hookimpl
from fw.plugin.descriptors import AdapterPlugin

SCHEMA = "fw.schemas:adapters/boft.json"


@hookimpl
def fw_adapters():
    return [AdapterPlugin(name="boft", schema=SCHEMA, summary="Butterfly orthogonal fine-tuning (BOFT)",
                          build_peft_config=f"{__name__}:build_peft_config")]


def build_peft_config(params: dict):
    from fw.plugin.peft import build_peft_config as build

    return build("BOFTConfig", params, SCHEMA)

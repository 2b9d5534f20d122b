"""RandLoRA for fw: full-rank updates from shared random bases scaled by small trainable matrices.

A complete third-party fw plugin: one hook, one descriptor, one JSON Schema. Nothing heavy is imported at
module level, so `fw list-plugins` stays fast with it installed.
"""
from fw.plugin.hookspecs import hookimpl
from fw.plugin.descriptors import AdapterPlugin

SCHEMA = "fw_randlora:schema.json"


@hookimpl
def fw_adapters():
    return [AdapterPlugin(name="randlora", schema=SCHEMA,
                          summary="RandLoRA: full-rank update from shared random bases (contrib example)",
                          build_peft_config=f"{__name__}:build_peft_config")]


def build_peft_config(params: dict):
    from fw.plugin.peft import build_peft_config as build
    return build("RandLoraConfig", params, SCHEMA)

"""RandLoRA for fw: full-rank updates from shared random bases scaled by small trainable matrices.

A complete third-party fw plugin: one hook, one descriptor, one JSON Schema whose ``x-peft`` keys name the fields
of PEFT's ``RandLoraConfig``. It imports only ``fw.plugin`` (fw's public plugin API) and nothing heavy, so
`fw list-plugins` stays fast with it installed.
"""
from fw.plugin import AdapterPlugin, hookimpl


@hookimpl
def fw_adapters():
    return [AdapterPlugin(name="randlora", schema="fw_randlora:schema.json",
                          summary="RandLoRA: full-rank update from shared random bases (contrib example)",
                          peft_config_class="RandLoraConfig")]

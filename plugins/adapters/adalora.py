"""AdaLoRA: LoRA with adaptive rank allocation across weight matrices (PEFT AdaLoraConfig)."""
from __future__ import annotations

from fw.hookspecs import hookimpl
from fw.types import AdapterPlugin

SCHEMA = "fw.schemas:adapters/adalora.json"


@hookimpl
def fw_adapters():
    return [AdapterPlugin(name="adalora", schema=SCHEMA, summary="Adaptive-rank LoRA (AdaLoRA)",
                          build_peft_config=f"{__name__}:build_peft_config", lora_family=True,
                          check_params=f"{__name__}:check_params")]


def build_peft_config(params: dict):
    from fw.peft_mapping import build_peft_config as build, with_defaults
    from fw.plugins.adapters.lora import lora_overrides

    return build("AdaLoraConfig", params, SCHEMA, **lora_overrides(with_defaults(params, SCHEMA)))


def check_params(params: dict, explicit_keys: set[str] | None = None) -> list[tuple[str, str]]:
    """AdaLoRA's own cross-field rules (PEFT raises on them), as (key, message) problems. Initializer choices
    (init_lora_weights and its sub-configs) are checked by fw against the initializer plugins."""
    from fw.peft_mapping import with_defaults

    p = with_defaults(params, SCHEMA)
    problems = []
    if p["use_dora"]:
        problems.append(("use_dora", "AdaLoRA does not support DoRA; use `type: lora` with use_dora: true"))
    if p["tinit"] >= p["total_step"] - p["tfinal"]:
        problems.append(("tinit", f"tinit ({p['tinit']}) must be smaller than total_step - tfinal "
                                  f"({p['total_step']} - {p['tfinal']}) to leave AdaLoRA a rank budgeting "
                                  "phase; "
                                  "use a larger total_step or smaller tinit/tfinal"))
    return problems

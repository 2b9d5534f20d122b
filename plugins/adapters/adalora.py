"""AdaLoRA: LoRA with adaptive rank allocation across weight matrices (PEFT AdaLoraConfig)."""
from __future__ import annotations

from fw.plugin.hookspecs import hookimpl
from fw.plugin.descriptors import AdapterPlugin

SCHEMA = "fw.schemas:adapters/adalora.json"
#: the spec's total_step, used when the adapter is wrapped without a training plan (total_step: null)
SPEC_TOTAL_STEP = 10000


@hookimpl
def fw_adapters():
    return [AdapterPlugin(name="adalora", schema=SCHEMA, summary="Adaptive-rank LoRA (AdaLoRA)",
                          build_peft_config=f"{__name__}:build_peft_config", lora_family=True,
                          check_params=f"{__name__}:check_params")]


def build_peft_config(params: dict):
    from fw.plugin.peft import build_peft_config as build, with_defaults
    from fw.plugins.adapters.lora import lora_overrides

    overrides = lora_overrides(with_defaults(params, SCHEMA))
    if params.get("total_step") is None:  # fw train fills in the planned step count before this point
        overrides["total_step"] = SPEC_TOTAL_STEP
    return build("AdaLoraConfig", params, SCHEMA, **overrides)


def check_params(params: dict, explicit_keys: set[str] | None = None) -> list[tuple[str, str]]:
    """AdaLoRA's own cross-field rules (PEFT raises on them), as (key, message) problems. Initializer choices
    (init_lora_weights and its sub-configs) are checked by fw against the initializer plugins."""
    from fw.plugin.peft import with_defaults

    p = with_defaults(params, SCHEMA)
    problems = []
    if p["use_dora"]:
        problems.append(("use_dora", "AdaLoRA does not support DoRA; use `type: lora` with use_dora: true"))
    if p["total_step"] is not None and p["tinit"] >= p["total_step"] - p["tfinal"]:
        problems.append(("tinit", f"tinit ({p['tinit']}) must be smaller than total_step - tfinal "
                                  f"({p['total_step']} - {p['tfinal']}) to leave AdaLoRA a rank budgeting "
                                  "phase; "
                                  "use a larger total_step or smaller tinit/tfinal"))
    return problems

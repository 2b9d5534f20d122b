"""IA3: learned vectors rescaling keys, values and feed-forward activations (PEFT IA3Config)."""
from __future__ import annotations

from fw.plugin.hookspecs import hookimpl
from fw.plugin.descriptors import AdapterPlugin

SCHEMA = "fw.schemas:adapters/ia3.json"


@hookimpl
def fw_adapters():
    return [AdapterPlugin(name="ia3", schema=SCHEMA, summary="Infused adapter rescaling activations ((IA)^3)",
                          build_peft_config=f"{__name__}:build_peft_config",
                          check_params=f"{__name__}:check_params")]


def build_peft_config(params: dict):
    from fw.plugin.peft import build_peft_config as build

    return build("IA3Config", params, SCHEMA)


def check_params(params: dict, explicit_keys: set[str] | None = None) -> list[tuple[str, str]]:
    """feedforward_modules must be a subset of target_modules (when both are lists)."""
    targets, feedforward = params.get("target_modules"), params.get("feedforward_modules")
    if isinstance(targets, list) and isinstance(feedforward, list):
        missing = [name for name in feedforward if name not in targets]
        if missing:
            return [("feedforward_modules", f"must be a subset of target_modules; not targeted: "
                                            f"{', '.join(missing)}")]
    return []

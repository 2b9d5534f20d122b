"""LoRA: low-rank adaptation, with DoRA, rsLoRA, LoRA+ and the LoRA initializers (PEFT LoraConfig)."""
from __future__ import annotations

import re

from fw.plugin.hookspecs import hookimpl
from fw.plugin.descriptors import AdapterPlugin

SCHEMA = "fw.schemas:adapters/lora.json"
#: adapter key -> name of the PEFT dataclass its dict is turned into (all in ``peft.tuners.lora.config``)
SUBCONFIGS = {"eva_config": "EvaConfig", "loftq_config": "LoftQConfig", "corda_config": "CordaConfig"}


@hookimpl
def fw_adapters():
    return [AdapterPlugin(name="lora", schema=SCHEMA,
                          summary="Low-rank adaptation (LoRA, DoRA, rsLoRA, LoRA+)",
                          build_peft_config=f"{__name__}:build_peft_config", lora_family=True)]


def build_peft_config(params: dict):
    from fw.plugin.peft import build_peft_config as build, with_defaults

    return build("LoraConfig", params, SCHEMA, **lora_overrides(with_defaults(params, SCHEMA)))


def lora_overrides(params: dict) -> dict:
    """PEFT values that need converting: init_lora_weights, alpha null (-> 2 * r), initializer sub-configs."""
    overrides = {"init_lora_weights": init_lora_value(params["init_lora_weights"])}
    if params.get("alpha") is None:
        overrides["lora_alpha"] = 2 * params["r"]
    for key, class_name in SUBCONFIGS.items():
        if params.get(key) is not None:
            overrides[key] = subconfig(class_name, params[key])
    for key, field in (("rank_pattern", "rank_pattern"), ("alpha_pattern", "alpha_pattern")):
        if params.get(key):
            overrides[field] = substring_patterns(params[key])
    return overrides


#: a pattern key made only of these characters is a module name (part), not a regular expression
_PLAIN_NAME = re.compile(r"[\w.]+")


def substring_patterns(patterns: dict) -> dict:
    r"""rank_pattern / alpha_pattern keys as the spec defines them, matched by *substring* against module names
    (``q_proj``, ``layers.0``, ``self_attn``). PEFT matches a key as a regex against the end of the dotted name
    (``(.*\.)?(key)$``), so a plain name becomes ``.*<name>.*``; a key that is already a regex is kept as PEFT
    reads it. When several keys match a module, the first one wins (PEFT)."""
    return {(f".*{re.escape(key)}.*" if _PLAIN_NAME.fullmatch(key) else key): value
            for key, value in patterns.items()}


def init_lora_value(value: str | bool) -> str | bool:
    """``init_lora_weights`` as PEFT expects it: 'default' -> True; an initializer plugin's name -> its
    ``peft_value``; anything else (a bool, 'pissa_niter_4') unchanged."""
    if isinstance(value, bool):
        return value
    if value == "default":
        return True
    from fw.plugin.registry import get_registry

    registry = get_registry()
    if registry.has("initializer", value):
        return registry.get("initializer", value).peft_value
    return value


def subconfig(class_name: str, values: dict):
    """``values`` as the PEFT sub-config dataclass; keys PEFT does not know (fw-level, e.g. eva's n_samples,
    read by the initializer plugin) are left out."""
    import dataclasses

    from peft.tuners.lora import config as lora_config

    config_class = getattr(lora_config, class_name)
    fields = {field.name for field in dataclasses.fields(config_class) if field.init}
    return config_class(**{key: value for key, value in values.items() if key in fields})

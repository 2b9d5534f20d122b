"""The LoRA family: LoRA (with DoRA, rsLoRA, LoRA+ and the LoRA initializers) and AdaLoRA (PEFT LoraConfig,
AdaLoraConfig). Both may be trained on a quantized base model and merged with ``add_weighted_adapter``.

What they add to the plain schema mapping:

- conversions to PEFT values: ``init_lora_weights`` (an initializer plugin's name -> its PEFT value), ``alpha: null``
  (-> 2 * r), the initializer sub-configs, rank / alpha patterns matched by substring;
- LoRA+ (``loraplus_lr_ratio``): the B matrices get ``learning_rate * ratio`` (:func:`parameter_groups`);
- AdaLoRA: ``total_step: null`` becomes the run's planned optimizer steps (:func:`with_planned_steps`), and the
  ranks are reallocated after every optimizer step (:func:`reallocate_ranks`);
- the merge-source rules of PEFT's ``add_weighted_adapter`` (:func:`check_merge_source`);
- serving: vLLM loads a LoRA adapter but not DoRA's magnitude vectors (:func:`vllm_problem`); AdaLoRA adapters it
  does not load at all (no ``vllm_problem``).
"""
from __future__ import annotations

import re

from fw.plugin import AdapterPlugin, FwError, build_peft_config, declare, get_registry, with_defaults

LORA_SCHEMA = "fw.schemas:adapters/lora.json"
ADALORA_SCHEMA = "fw.schemas:adapters/adalora.json"
#: adapter key -> name of the PEFT dataclass its dict is turned into (all in ``peft.tuners.lora.config``)
SUBCONFIGS = {"eva_config": "EvaConfig", "loftq_config": "LoftQConfig", "corda_config": "CordaConfig"}
#: the spec's total_step, used when AdaLoRA is wrapped without a training plan (total_step: null)
SPEC_TOTAL_STEP = 10000
#: LoRA+ trains the parameters whose names contain these at ``learning_rate * loraplus_lr_ratio``
LORAPLUS_B_MATRICES = ("lora_B", "lora_embedding_B")

lora = declare(AdapterPlugin(
    name="lora", schema=LORA_SCHEMA, summary="Low-rank adaptation (LoRA, DoRA, rsLoRA, LoRA+)", display_name="LoRA",
    peft_config_class="LoraConfig", build_peft_config=f"{__name__}:build_lora_config", lora_family=True,
    parameter_groups=f"{__name__}:parameter_groups", check_merge_source=f"{__name__}:check_merge_source",
    vllm_problem=f"{__name__}:vllm_problem"))
adalora = declare(AdapterPlugin(
    name="adalora", schema=ADALORA_SCHEMA, summary="Adaptive-rank LoRA (AdaLoRA)", display_name="AdaLoRA",
    peft_config_class="AdaLoraConfig", build_peft_config=f"{__name__}:build_adalora_config", lora_family=True,
    peft_prefix="lora_", check_params=f"{__name__}:check_adalora", parameter_groups=f"{__name__}:parameter_groups",
    with_planned_steps=f"{__name__}:with_planned_steps", after_step=f"{__name__}:reallocate_ranks",
    check_merge_source=f"{__name__}:check_adalora_merge_source"))


# -- PEFT configs --------------------------------------------------------------------------------------------------
def build_lora_config(params: dict):
    return build_peft_config("LoraConfig", params, LORA_SCHEMA, **lora_overrides(with_defaults(params, LORA_SCHEMA)))


def build_adalora_config(params: dict):
    overrides = lora_overrides(with_defaults(params, ADALORA_SCHEMA))
    if params.get("total_step") is None:  # fw train fills in the planned step count before this point
        overrides["total_step"] = SPEC_TOTAL_STEP
    return build_peft_config("AdaLoraConfig", params, ADALORA_SCHEMA, **overrides)


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


# -- training ------------------------------------------------------------------------------------------------------
def parameter_groups(model, params: dict, learning_rate: float, weight_decay: float) -> list[dict]:
    """AdamW parameter groups; with LoRA+ (``loraplus_lr_ratio``) the B matrices get ``learning_rate * ratio``."""
    ratio = params.get("loraplus_lr_ratio")
    base, fast = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            is_b = ratio and any(part in name for part in LORAPLUS_B_MATRICES)
            (fast if is_b else base).append(parameter)
    groups = [{"params": base, "lr": learning_rate, "weight_decay": weight_decay}]
    if fast:
        groups.append({"params": fast, "lr": learning_rate * ratio, "weight_decay": weight_decay})
    return groups


def with_planned_steps(params: dict, planned_steps: int) -> dict:
    """AdaLoRA's ``total_step: null`` becomes the run's planned optimizer steps (the rank schedule's length)."""
    if params.get("total_step") is not None:
        return params
    tinit, tfinal = params.get("tinit", 0), params.get("tfinal", 0)
    if tinit >= planned_steps - tfinal:
        raise FwError(f"adapter.tinit: the run has {planned_steps} optimizer steps, so tinit ({tinit}) must be "
                      f"smaller than {planned_steps} - tfinal ({tfinal}) to leave a rank budgeting phase; lower "
                      "tinit / tfinal, or train for more steps (trainer.epochs).")
    return {**params, "total_step": planned_steps}


def reallocate_ranks(model, global_step: int) -> None:
    """AdaLoRA's ``update_and_allocate`` after an optimizer step, while the gradients it scores with exist."""
    model.base_model.update_and_allocate(global_step)


# -- validation ----------------------------------------------------------------------------------------------------
def check_adalora(params: dict, explicit_keys: set[str] | None = None) -> list[tuple[str, str]]:
    """AdaLoRA's own cross-field rules (PEFT raises on them), as (key, message) problems. Initializer choices
    (init_lora_weights and its sub-configs) are checked by fw against the initializer plugins."""
    p = with_defaults(params, ADALORA_SCHEMA)
    problems = []
    if p["use_dora"]:
        problems.append(("use_dora", "AdaLoRA does not support DoRA; use `type: lora` with use_dora: true"))
    if p["total_step"] is not None and p["tinit"] >= p["total_step"] - p["tfinal"]:
        problems.append(("tinit", f"tinit ({p['tinit']}) must be smaller than total_step - tfinal "
                                  f"({p['total_step']} - {p['tfinal']}) to leave AdaLoRA a rank budgeting "
                                  "phase; use a larger total_step or smaller tinit/tfinal"))
    return problems


def check_merge_source(name: str, params: dict, first: bool) -> list[tuple[str, str, str]]:
    """What PEFT's add_weighted_adapter would silently get wrong with this LoRA adapter as a merge source."""
    problems = []
    if params.get("use_dora"):
        problems.append(("use_dora", f"PEFT's add_weighted_adapter does not merge DoRA magnitude vectors, so merging "
                                     f"{name!r} (use_dora: true) would silently lose them.",
                         "train the merge sources without use_dora"))
    if params.get("use_rslora") and first:
        problems.append(("use_rslora", f"PEFT's add_weighted_adapter copies the first source's config ({name!r}, "
                                       "use_rslora: true) with alpha = r, so the merged adapter would be scaled by "
                                       "sqrt(r) instead of 1.",
                         "train the first merge source without use_rslora, or list another source first"))
    return problems


def check_adalora_merge_source(name: str, params: dict, first: bool) -> list[tuple[str, str, str]]:
    return [("type", f"PEFT's add_weighted_adapter cannot merge AdaLoRA adapters ({name!r} is adalora).",
             "use type: lora for merged adapters")]


# -- serving -------------------------------------------------------------------------------------------------------
def vllm_problem(params: dict) -> str | None:
    """Why vLLM cannot serve this LoRA adapter (None: it can)."""
    if params.get("use_dora"):
        return "vLLM serves LoRA adapters without DoRA's magnitude vectors, and this one has them (use_dora: true)"
    return None

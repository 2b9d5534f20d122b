"""PEFT methods declared as data: each one is its schema (``schemas/adapters/<name>.json``, whose ``x-peft`` keys
name the PEFT fields) mapped onto its PEFT config class, plus the few checks PEFT would only fail on later.

Adding such a method is one declaration here, its schema, and its entry point in pyproject.toml
(``adapter-<name> = "fw.plugins.adapters.peft_methods:<name>"``).
"""
from __future__ import annotations

from fw.plugin import (AdapterPlugin, declare, divisor_problems, size_limit_problems, target_layer_shapes,
                       with_defaults)


def _method(name: str, peft_config_class: str, display_name: str, summary: str, **behaviour) -> AdapterPlugin:
    return AdapterPlugin(name=name, schema=schema(name), summary=summary, peft_config_class=peft_config_class,
                         display_name=display_name, **behaviour)


def schema(name: str) -> str:
    return f"fw.schemas:adapters/{name}.json"


def _own(function: str) -> str:
    return f"{__name__}:{function}"


# -- layer-targeting methods --------------------------------------------------------------------------------------
boft = declare(_method("boft", "BOFTConfig", "BOFT", "Butterfly orthogonal fine-tuning (BOFT)"))
hra = declare(_method("hra", "HRAConfig", "HRA", "Householder reflection adaptation (HRA)"))
loha = declare(_method("loha", "LoHaConfig", "LoHa", "Low-rank Hadamard product adaptation (LoHa)",
                       peft_prefix="hada_"))
lokr = declare(_method("lokr", "LoKrConfig", "LoKr", "Low-rank Kronecker product adaptation (LoKr)"))
vera = declare(_method("vera", "VeraConfig", "VeRA", "Vector-based random matrix adaptation (VeRA)",
                       peft_prefix="vera_lambda_"))
tinylora = declare(_method("tinylora", "TinyLoraConfig", "TinyLoRA",
                           "Extreme parameter-efficient SVD projection (TinyLoRA)"))
ln_tuning = declare(_method("ln_tuning", "LNTuningConfig", "LN-Tuning", "Layer-norm tuning (LN-Tuning)",
                            default_target_modules=_own("norm_layer_names")))
ia3 = declare(_method("ia3", "IA3Config", "IA³", "Infused adapter rescaling activations ((IA)^3)",
                      check_params=_own("check_ia3")))
c3a = declare(_method("c3a", "C3AConfig", "C3A", "Circular convolution adaptation (C3A)",
                      check_model=_own("check_c3a")))
fourierft = declare(_method("fourierft", "FourierFTConfig", "FourierFT", "Frequency-domain fine-tuning (FourierFT)",
                            check_model=_own("check_fourierft")))
vblora = declare(_method("vblora", "VBLoRAConfig", "VBLoRA", "Vector-bank LoRA (VBLoRA)",
                         check_params=_own("check_vblora"), check_model=_own("check_vblora_model")))

# -- prompt learning: virtual tokens instead of adapted layers (no target_modules in the schema) -------------------
prompt_tuning = declare(_method("prompt_tuning", "PromptTuningConfig", "prompt-tuning",
                                "Prompt tuning: trained virtual token embeddings before the input", mergeable=False))


# -- the checks they reference ------------------------------------------------------------------------------------
def norm_layer_names(model) -> list[str]:
    """Every LayerNorm / RMSNorm-like module (by type), for architectures PEFT has no LN-Tuning default for."""
    import torch

    def is_norm(module) -> bool:
        return isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("Norm")

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if name and is_norm(module)})


def check_ia3(params: dict, explicit_keys: set[str] | None = None) -> list[tuple[str, str]]:
    """feedforward_modules must be a subset of target_modules (when both are lists)."""
    targets, feedforward = params.get("target_modules"), params.get("feedforward_modules")
    if isinstance(targets, list) and isinstance(feedforward, list):
        missing = [name for name in feedforward if name not in targets]
        if missing:
            return [("feedforward_modules", f"must be a subset of target_modules; not targeted: "
                                            f"{', '.join(missing)}")]
    return []


def check_c3a(params: dict, model) -> list[str]:
    """block_size must divide the in and out features of every targeted layer."""
    p = with_defaults(params, schema("c3a"))
    return divisor_problems("block_size", p["block_size"], target_layer_shapes(model, p))


def check_fourierft(params: dict, model) -> list[str]:
    """n_frequency may not exceed in_features * out_features of any targeted layer."""
    p = with_defaults(params, schema("fourierft"))
    return size_limit_problems("n_frequency", p["n_frequency"], target_layer_shapes(model, p))


def check_vblora(params: dict, explicit_keys: set[str] | None = None) -> list[tuple[str, str]]:
    """topk vectors are picked from the bank, so topk <= num_vectors."""
    p = with_defaults(params, schema("vblora"))
    if p["topk"] > p["num_vectors"]:
        return [("topk", f"topk ({p['topk']}) cannot exceed num_vectors ({p['num_vectors']})")]
    return []


def check_vblora_model(params: dict, model) -> list[str]:
    """vector_length must divide the in and out features of every targeted layer."""
    p = with_defaults(params, schema("vblora"))
    return divisor_problems("vector_length", p["vector_length"], target_layer_shapes(model, p))

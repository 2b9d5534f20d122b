"""LoRA weight initializers (``adapter.init_lora_weights``), one descriptor each.

The value the user writes (``pissa``) maps to PEFT's ``LoraConfig.init_lora_weights``; ``default`` maps to
PEFT's ``True`` (Kaiming-uniform A, zero B). Initializers that need more than the PEFT value declare a ``prepare``
step: a calibration pass over training rows (eva, corda), LoftQ on an already quantized model, and keeping the
initial adapter of those that rewrite the base weights (pissa, olora, corda) so the saved adapter fits the original
base model.

AdaLoRA only tests ``init_lora_weights`` for truthiness (PEFT 0.21.2 ``AdaLoraLayer.update_layer``) and
rejects ``loftq_config``, so only ``default`` is offered for it: any other string would be accepted by PEFT
and silently give AdaLoRA's own initialization.
"""
from fw.plugin import (FwError, InitializerPlugin, hookimpl, inference_mode, is_kbit_model, keep_initial_adapter,
                       model_device, with_defaults)


def _schema(name: str) -> str:
    return f"fw.schemas:initializers/{name}.json"


def _check(name: str) -> str:
    return f"{__name__}:check_{name}"


#: what PEFT's LoraConfig initializes
LORA = ("lora",)


@hookimpl
def fw_initializers():
    return [
        InitializerPlugin(name="default", schema=_schema("default"), peft_value=True,
                          summary="Kaiming-uniform A, zero B: the adapter starts as a no-op",
                          adapters=("lora", "adalora")),
        InitializerPlugin(name="gaussian", schema=_schema("gaussian"), peft_value="gaussian",
                          adapters=LORA, summary="Gaussian A scaled by the rank, zero B"),
        InitializerPlugin(name="pissa", schema=_schema("pissa"), peft_value="pissa",
                          prepare=f"{__name__}:prepare_residual", check_config=_check("unquantized"),
                          adapters=LORA, summary="PiSSA: A and B from the top-r singular vectors of the weight"),
        InitializerPlugin(name="olora", schema=_schema("olora"), peft_value="olora",
                          prepare=f"{__name__}:prepare_residual", check_config=_check("olora"),
                          adapters=LORA, summary="OLoRA: orthonormal A and B from a QR decomposition of the weight"),
        InitializerPlugin(name="orthogonal", schema=_schema("orthogonal"), peft_value="orthogonal",
                          check_config=_check("orthogonal"),
                          adapters=LORA, summary="Orthogonal initialization of A and B"),
        InitializerPlugin(name="eva", schema=_schema("eva"), peft_value="eva", config_key="eva_config",
                          needs_data=True, prepare=f"{__name__}:prepare_eva",
                          adapters=LORA, summary="EVA: data-driven init from the SVD of layer input activations"),
        InitializerPlugin(name="corda", schema=_schema("corda"), peft_value="corda",
                          config_key="corda_config", check_config=_check("unquantized"),
                          needs_data=True, prepare=f"{__name__}:prepare_corda",
                          adapters=LORA, summary="CorDA: context-oriented decomposition from activation covariance"),
        InitializerPlugin(name="loftq", schema=_schema("loftq"), peft_value="loftq",
                          config_key="loftq_config", check_config=_check("loftq"),
                          prepare=f"{__name__}:prepare_loftq",
                          adapters=LORA,
                          summary="LoftQ: quantize the base weights and initialize LoRA to cancel the error"),
    ]


# -- validation: combinations PEFT cannot initialize ---------------------------------------------------------------
def check_unquantized(section: dict, config: dict) -> list[tuple[str, str]]:
    """PiSSA / OLoRA / CorDA decompose the pretrained weight, which PEFT only does on float weights."""
    if not config.get("quantization"):
        return []
    name = section.get("init_lora_weights")
    return [("init_lora_weights", f"'{name}' decomposes the pretrained weights, which PEFT can only do on "
                                  "unquantized (float) weights, but a quantization section is set. Remove "
                                  "quantization, or use init_lora_weights: loftq (quantization-aware) or default")]


def check_olora(section: dict, config: dict) -> list[tuple[str, str]]:
    """OLoRA dequantizes and re-quantizes bitsandbytes weights itself (PEFT ``olora_init``); torchao's
    quantized tensors it cannot decompose."""
    if _quantization_backend(config) in (None, "bitsandbytes"):
        return []
    return [("init_lora_weights", f"'olora' decomposes the pretrained weights, which PEFT can do on float or "
                                  f"bitsandbytes weights but not on {_quantization_backend(config)!r} quantized ones. "
                                  "Use quantization backend bitsandbytes, remove quantization, or use "
                                  "init_lora_weights: default")]


def check_orthogonal(section: dict, config: dict) -> list[tuple[str, str]]:
    """PEFT's orthogonal init splits the rank in two halves (even rank only) and casts to the base dtype."""
    problems = []
    r = section.get("r")
    if isinstance(r, int) and r % 2:
        problems.append(("r", f"init_lora_weights: orthogonal needs an even rank, got {r}; use r: {r + 1} or "
                              f"{max(r - 1, 2)}"))
    odd = {key: rank for key, rank in (section.get("rank_pattern") or {}).items() if isinstance(rank, int) and rank % 2}
    if odd:
        listed = ", ".join(f"{key}: {rank}" for key, rank in odd.items())
        problems.append(("rank_pattern", f"init_lora_weights: orthogonal needs even ranks, got {listed}"))
    if _quantization_backend(config) == "bitsandbytes":
        problems.append(("init_lora_weights", "'orthogonal' builds A and B in the dtype of the base weight, which "
                                              "is an integer storage type under bitsandbytes quantization. Use "
                                              "init_lora_weights: default or gaussian with bitsandbytes"))
    return problems


def check_loftq(section: dict, config: dict) -> list[tuple[str, str]]:
    """LoftQ quantizes the float model itself; on an already quantized model only bitsandbytes 4-bit works
    (PEFT ``replace_lora_weights_loftq``)."""
    quantization = config.get("quantization")
    if not quantization:
        return []
    backend, bits = _quantization_backend(config), quantization.get("bits")
    if backend != "bitsandbytes" or bits != 4:
        return [("init_lora_weights", f"'loftq' on a quantized model needs bitsandbytes 4-bit quantization "
                                      f"(PEFT replace_lora_weights_loftq), got backend {backend!r} with bits {bits}. "
                                      "Use quantization: {backend: bitsandbytes, bits: 4}, or remove quantization "
                                      "(LoftQ then quantizes the weights itself)")]
    loftq_bits = with_defaults(section.get("loftq_config") or {}, _schema("loftq"))["loftq_bits"]
    if loftq_bits != 4:
        return [("loftq_config.loftq_bits", f"must be 4 to match the 4-bit quantized model, got {loftq_bits}")]
    return []


def _quantization_backend(config: dict) -> str | None:
    quantization = config.get("quantization")
    if not quantization:
        return None
    return quantization.get("backend") or "bitsandbytes"


# -- prepare steps (run by fw when it wraps the model with the adapter) ---------------------------------------------
def prepare_residual(model, section: dict, calibration, wrap):
    """PiSSA / OLoRA: PEFT initializes while wrapping; keep the initial adapter so the saved one is converted
    to a plain LoRA adapter for the original base model."""
    wrapped = wrap(model)
    keep_initial_adapter(wrapped)
    return wrapped


#: EVA cycles over its calibration batches until every layer's components converge; stop after this many passes
EVA_MAX_PASSES = 50


def prepare_eva(model, section: dict, calibration, wrap):
    """EVA (PEFT ``initialize_lora_eva_weights``): wrap, then an incremental SVD of every target layer's inputs
    over ``eva_config.n_samples`` training rows; A becomes the top right-singular vectors (ranks possibly
    redistributed across layers, ``rho``)."""
    from peft import initialize_lora_eva_weights

    options = with_defaults(section.get("eva_config") or {}, _schema("eva"))
    wrapped = wrap(model)
    batches = calibration.batches(options["n_samples"], model_device(wrapped))
    limit = EVA_MAX_PASSES * len(batches)
    with calibration.progress("EVA calibration", limit) as advance:
        calls = 0

        def forward(target, inputs):
            nonlocal calls
            calls += 1
            if calls > limit:
                raise FwError(_eva_not_converged(section, options, len(batches)))
            advance()
            return target(**inputs)

        # fw calibrates in one process (the others of a job receive the result): nothing to gather
        initialize_lora_eva_weights(wrapped, dataloader=batches, forward_fn=forward, show_progress_bar=False,
                                    adapter_name=wrapped.active_adapter, gather_distributed_inputs=False)
    return wrapped


def _eva_not_converged(section: dict, options: dict, count: int) -> str:
    components = round(section["r"] * options["rho"])
    return (f"adapter.eva_config: EVA's SVD did not converge within {EVA_MAX_PASSES} passes over {count} "
            f"calibration batch(es). Every batch must hold at least r * rho = {components} counted tokens (response "
            "tokens only while use_label_mask is true). Raise eva_config.n_samples or trainer.batch_size, set "
            "eva_config.use_label_mask: false, or lower eva_config.tau / rho.")


def prepare_corda(model, section: dict, calibration, wrap):
    """CorDA (PEFT ``preprocess_corda``): collect the covariance of every target layer's inputs over
    ``corda_config.n_samples`` training rows on the base model, then wrap (PEFT decomposes W @ C)."""
    from peft.tuners.lora.corda import preprocess_corda

    options = with_defaults(section.get("corda_config") or {}, _schema("corda"))
    # PEFT's covariance hook takes one sequence per forward pass (it squeezes the batch dimension)
    batches = calibration.batches(options["n_samples"], model_device(model), batch_size=1)

    def run_model():
        with calibration.progress("CorDA calibration", len(batches)) as advance, inference_mode(model):
            for batch in batches:
                model(**{key: value for key, value in batch.items() if key != "labels"})
                advance()

    preprocess_corda(model, wrap.peft_config(model), run_model=run_model)
    wrapped = wrap(model)
    keep_initial_adapter(wrapped)
    return wrapped


def loftq_missing() -> list[str]:
    """What this machine lacks for PEFT's LoftQ (bitsandbytes quantizes on a CUDA GPU in PEFT 0.21)."""
    import importlib.util

    import torch

    missing = []
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install bitsandbytes)")
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU")
    return missing


def prepare_loftq(model, section: dict, calibration, wrap):
    """LoftQ: on a float model PEFT quantizes each target weight and initializes A / B from the SVD of the
    quantization error while wrapping; on a bitsandbytes 4-bit model (``quantization`` set) the adapter is
    wrapped with default init and PEFT's ``replace_lora_weights_loftq`` then fits A / B to the error of the
    already quantized weights."""
    import peft

    missing = loftq_missing()
    if missing:
        raise FwError(f"adapter.init_lora_weights: loftq needs {' and '.join(missing)}: PEFT {peft.__version__} "
                      "quantizes the weights with bitsandbytes on a CUDA GPU (peft.utils.loftq_utils). Run on a "
                      "CUDA machine with bitsandbytes installed, or use init_lora_weights: pissa on CPU.")
    if not is_kbit_model(model):
        return wrap(model)
    from peft import replace_lora_weights_loftq

    wrapped = wrap(model, init_lora_weights="default", loftq_config=None)
    replace_lora_weights_loftq(wrapped)
    return wrapped

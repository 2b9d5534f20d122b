"""bitsandbytes: 4-bit / 8-bit weights at load time (QLoRA) via transformers' BitsAndBytesConfig.

bitsandbytes >= 0.50 quantizes and trains on CPU as well as on CUDA GPUs; older releases need a CUDA GPU.
PEFT's ``prepare_model_for_kbit_training`` runs before the adapter is applied (fw.model.quantization).
"""
from fw.plugin import FwError, QuantizerPlugin, hookimpl

SCHEMA = "fw.schemas:quantizers/bitsandbytes.json"

#: spec defaults, used for keys a caller left out (validated configs carry them all)
DEFAULTS = {
    "bits": 4,
    "llm_int8_threshold": 6.0,
    "llm_int8_has_fp16_weight": False,
    "bnb_4bit_compute_dtype": "float16",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_quant_type": "nf4",
}


@hookimpl
def fw_quantizers():
    return [QuantizerPlugin(name="bitsandbytes", schema=SCHEMA,
                            summary="4-bit / 8-bit weights at load time with bitsandbytes (QLoRA)",
                            load_kwargs=f"{__name__}:load_kwargs", supports_qat=False,
                            training_bytes=f"{__name__}:training_bytes", for_sharding=f"{__name__}:for_sharding")]


#: the first bitsandbytes release fw has seen quantize and train on CPU (older ones need a CUDA GPU)
CPU_MIN_VERSION = "0.50.0"


def _installed_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        return None


def _version_tuple(version: str) -> tuple[int, ...]:
    import re

    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def _missing_requirements(device) -> list[str]:
    """What this machine lacks for bitsandbytes loading, as user-facing phrases (empty when all is there)."""
    version = _installed_version()
    if version is None:
        return ["the bitsandbytes package is not installed (pip install bitsandbytes, or pip install "
                f"'fw[bitsandbytes]'; bitsandbytes >= {CPU_MIN_VERSION} also runs without a CUDA GPU)"]
    import torch

    on_cuda = torch.cuda.is_available() and str(device or "cuda").split(":")[0] in ("cuda", "auto")
    if not on_cuda and _version_tuple(version) < _version_tuple(CPU_MIN_VERSION):
        return [f"no CUDA GPU is available and bitsandbytes {version} runs only on one (bitsandbytes >= "
                f"{CPU_MIN_VERSION} also runs on CPU: pip install -U bitsandbytes)"]
    return []


def load_kwargs(params: dict, device=None) -> dict:
    """``from_pretrained`` kwargs for a validated ``quantization`` section: ``{"quantization_config": ...,
    "device_map": ...}`` (bitsandbytes quantizes while the weights are placed on the device).

    Raises :class:`fw.plugin.FwError` naming everything that is missing (the package, a CUDA GPU).
    """
    import warnings

    missing = _missing_requirements(device)
    if missing:
        raise FwError("quantization: backend 'bitsandbytes' cannot run here: " + "; ".join(missing) + ".")

    import torch
    from transformers import BitsAndBytesConfig

    # 8-bit matmuls on CPU cast fp32 inputs to fp16, with one warning per call
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    p = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    bits = p["bits"]
    if bits not in (4, 8):
        raise FwError(f"quantization.bits: {bits!r} is not supported by bitsandbytes (use 4 or 8).")
    config = BitsAndBytesConfig(
        load_in_4bit=bits == 4,
        load_in_8bit=bits == 8,
        llm_int8_threshold=float(p["llm_int8_threshold"]),
        llm_int8_has_fp16_weight=bool(p["llm_int8_has_fp16_weight"]),
        bnb_4bit_compute_dtype=getattr(torch, p["bnb_4bit_compute_dtype"]),
        bnb_4bit_use_double_quant=bool(p["bnb_4bit_use_double_quant"]),
        bnb_4bit_quant_type=p["bnb_4bit_quant_type"],
        bnb_4bit_quant_storage=getattr(torch, p.get("bnb_4bit_quant_storage") or "uint8"),
    )
    return {"quantization_config": config, "device_map": {"": device or "cpu"}}


def for_sharding(params: dict) -> dict:
    """The section as loaded under FSDP: 4-bit weights packed into ``bnb_4bit_compute_dtype`` storage (two 4-bit
    values per byte either way; a float storage is one FSDP can split, as accelerate's FSDP-QLoRA does). 8-bit
    weights are stored as int8, which FSDP cannot shard: refused."""
    p = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    if p["bits"] == 8:
        raise FwError("quantization.bits: 8-bit bitsandbytes weights are stored as int8, which fsdp cannot shard; "
                      "use bits: 4 (QLoRA sharded by fsdp) or backend.trainer.strategy: ddp (the 8-bit base on "
                      "every GPU).")
    return {**params, "bnb_4bit_quant_storage": p["bnb_4bit_compute_dtype"]}


#: 4-bit weights are quantized in blocks of 64 values, each with an absmax scale: fp32, or (double quantization)
#: 8-bit with a second fp32 scale per 256 blocks; 8-bit weights have one fp32 scale per row
BLOCK_4BIT, DOUBLE_QUANT_BLOCKS = 64, 256


def training_bytes(params: dict, shape, element_size: int, replaced: bool) -> float:
    """Bytes per element while training (``fw plan``): a quantized Linear weight at its stored size; every other
    parameter in float32, as PEFT's ``prepare_model_for_kbit_training`` (run before the adapter) keeps them."""
    if not replaced:
        return 4
    p = {**DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    if p["bits"] == 8:
        return 1 + 4 / shape[-1]
    if p["bnb_4bit_use_double_quant"]:
        return 0.5 + 1 / BLOCK_4BIT + 4 / (BLOCK_4BIT * DOUBLE_QUANT_BLOCKS)
    return 0.5 + 4 / BLOCK_4BIT

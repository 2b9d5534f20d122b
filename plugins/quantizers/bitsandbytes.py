"""bitsandbytes: 4-bit / 8-bit weights at load time (QLoRA) via transformers' BitsAndBytesConfig."""
from fw.hookspecs import hookimpl
from fw.types import QuantizerPlugin

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
                            load_kwargs=f"{__name__}:load_kwargs", supports_qat=False)]


def _missing_requirements(device) -> list[str]:
    """What this machine lacks for bitsandbytes loading, as user-facing phrases (empty when all is there)."""
    import importlib.util

    missing = []
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package is not installed (pip install bitsandbytes)")
    import torch

    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is available (torch.cuda.is_available() is False)")
    elif device is not None and str(device).split(":")[0] not in ("cuda", "auto"):
        missing.append(f"the model is placed on {str(device)!r}, but bitsandbytes-quantized weights "
                       "need a CUDA device")
    return missing


def load_kwargs(params: dict, device=None) -> dict:
    """``from_pretrained`` kwargs for a validated ``quantization`` section: ``{"quantization_config": ...}``.

    Raises :class:`fw.errors.FwError` naming everything that is missing (the package, a CUDA GPU).
    """
    from fw.errors import FwError

    missing = _missing_requirements(device)
    if missing:
        raise FwError("quantization with backend 'bitsandbytes' cannot run here: " + "; ".join(missing) + ".")

    import torch
    from transformers import BitsAndBytesConfig

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
    )
    return {"quantization_config": config}

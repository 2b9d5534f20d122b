"""torchao: PyTorch-native quantization of the loaded model, with optional quantization-aware training (QAT).

One torchao config per ``mode`` serves both paths, so post-training quantization (PTQ) and QAT end in the
same weight format:

- PTQ (``qat: false``): transformers' ``TorchAoConfig`` quantizes the Linear layers as the model loads (the
  output head stays in full precision). Such a model saves with ``save_pretrained`` and loads back from its
  ``config.json`` alone, and PEFT trains LoRA on top of it (``TorchaoLoraLinear``).
- QAT (``qat: true``, training only): ``QATConfig(step="prepare")`` swaps the Linear layers for fake-quantized
  ones before training; :func:`convert_after_training` (the descriptor's ``after_training``) turns them into real
  quantized weights at save time. A model loaded for inference is simply quantized for real (the PTQ path).
- ``fw export`` of weights saved quantized: :func:`dequantize` (the descriptor's ``dequantize``) turns them back
  into plain tensors, with the precision of the quantized values.

Modes and the torchao configs they use (torchao 0.18):

- ``int4_weight_only``: ``IntxWeightOnlyConfig(int4, groups of 32)``: runs on CPU and GPU (int4 values stored
  unpacked in int8: half the memory of bf16 weights, not a quarter).
- ``int8_weight_only``: ``IntxWeightOnlyConfig(int8, per output channel)``.
- ``int8_dynamic``: ``Int8DynamicActivationIntxWeightConfig(int8 weights per channel)``: activations are
  quantized per token in every forward pass. Quantized activations carry no gradient, so training on an
  int8_dynamic base always runs on fake quantization (:func:`training_params`), inference on the real kernels.
- ``float8``: ``Float8DynamicActivationFloat8WeightConfig``: fp8 weights and fp8 matmuls, which torchao only
  runs on CUDA GPUs of compute capability >= 8.9 (H100, L4, RTX 40xx).
"""
from fw.plugin import FwError, QuantizerPlugin, hookimpl, quiet_libraries

SCHEMA = "fw.schemas:quantizers/torchao.json"
#: weights sharing one scale in int4 mode; divides the width of every common architecture
INT4_GROUP_SIZE = 32
FLOAT8_MIN_CAPABILITY = (8, 9)
#: modes whose quantized kernels have no backward pass (int8 activations carry no gradient): training runs them
#: on fake quantization with the same numerics (as with ``qat: true``), inference on the real kernels
TRAINED_WITH_FAKE_QUANTIZATION = ("int8_dynamic",)


@hookimpl
def fw_quantizers():
    return [QuantizerPlugin(name="torchao", schema=SCHEMA,
                            summary="PyTorch-native int4/int8/float8 quantization after load, with QAT",
                            load_kwargs=f"{__name__}:load_kwargs", transform=f"{__name__}:transform",
                            supports_qat=True, training_params=f"{__name__}:training_params",
                            after_training=f"{__name__}:convert_after_training",
                            dequantize=f"{__name__}:dequantize", training_bytes=f"{__name__}:training_bytes")]


# -- what this machine can run -----------------------------------------------------------------------------------
def require_torchao() -> None:
    import importlib.util

    if importlib.util.find_spec("torchao") is None:
        raise FwError("quantization.backend: torchao is not installed. Install it with `pip install torchao` "
                      "(or `pip install 'fw[train]'`).")
    quiet_libraries()


def float8_problem(device) -> str | None:
    """Why fp8 matmuls cannot run on ``device`` (None when they can)."""
    import torch

    if not torch.cuda.is_available() or str(device or "cuda").split(":")[0] != "cuda":
        return "this machine has no CUDA GPU"
    capability = torch.cuda.get_device_capability()
    if capability < FLOAT8_MIN_CAPABILITY:
        return f"the GPU {torch.cuda.get_device_name()} has compute capability {capability[0]}.{capability[1]}"
    return None


def check_runnable(params: dict, device) -> None:
    require_torchao()
    mode = params.get("mode")
    if mode is None:
        raise FwError("quantization.mode: torchao needs a mode: int4_weight_only, int8_weight_only, int8_dynamic "
                      "or float8.")
    if mode == "float8" and (problem := float8_problem(device)):
        raise FwError(f"quantization.mode: float8 needs a CUDA GPU with compute capability >= 8.9 (H100, L4, "
                      f"RTX 40xx) and {problem}. Use mode int8_weight_only or int4_weight_only here.")


# -- the torchao config of each mode -----------------------------------------------------------------------------
def base_config(mode: str):
    """The torchao post-training config of ``mode`` (QAT derives its fake quantization from the same one)."""
    import torch
    from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, Int8DynamicActivationIntxWeightConfig,
                                      IntxWeightOnlyConfig, PerAxis, PerGroup)

    if mode == "int4_weight_only":
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(INT4_GROUP_SIZE))
    if mode == "int8_weight_only":
        return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))
    if mode == "int8_dynamic":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    if mode == "float8":
        return Float8DynamicActivationFloat8WeightConfig()
    raise FwError(f"quantization.mode: {mode!r} is not a torchao mode (int4_weight_only, int8_weight_only, "
                  "int8_dynamic, float8).")


def training_bytes(params: dict, shape, element_size: int, replaced: bool) -> float:
    """Bytes per element while training (``fw plan``), for the section as loaded for training: a replaced Linear
    weight at its stored size (int values in int8, a scale in the weight's dtype and an int8 zero point per group or
    output channel; float8: one fp32 scale per tensor); QAT trains on the full-precision weights."""
    mode = params.get("mode")
    if not replaced or params.get("qat"):
        return element_size
    if mode == "int4_weight_only":
        return 1 + (element_size + 1) / INT4_GROUP_SIZE
    if mode == "int8_weight_only":
        return 1 + (element_size + 1) / shape[-1]
    if mode == "float8":
        return 1 + 4 / (shape[0] * shape[-1])
    return element_size


def torchao_config(mode: str):
    from transformers import TorchAoConfig

    return TorchAoConfig(quant_type=base_config(mode))


# -- the plugin hooks --------------------------------------------------------------------------------------------
def training_params(params: dict) -> dict:
    """The section as it is loaded for training: modes that cannot backpropagate through their real kernels
    train fake-quantized (``qat: true``)."""
    if params.get("mode") in TRAINED_WITH_FAKE_QUANTIZATION:
        return {**params, "qat": True}
    return params


def load_kwargs(params: dict, device=None) -> dict:
    """PTQ: ``TorchAoConfig`` for ``from_pretrained``. QAT: nothing at load (see :func:`transform`)."""
    check_runnable(params, device)
    if params.get("qat"):
        return {}
    return {"quantization_config": torchao_config(params["mode"]), "device_map": {"": device or "cpu"}}


def transform(model, params: dict):
    """QAT only: fake-quantize every Linear layer but the output head, before the adapter and training."""
    if not params.get("qat"):
        return model
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    output_head = model.get_output_embeddings()

    def body_linear(module, name: str) -> bool:
        import torch

        return isinstance(module, torch.nn.Linear) and module is not output_head

    import torch

    with torch.random.fork_rng(devices=[]):  # the swap builds new Linear modules: keep the adapter's random init
        quantize_(model, QATConfig(base_config(params["mode"]), step="prepare"), filter_fn=body_linear)
    return model


def convert_after_training(model, params: dict):
    """QAT at save time: fake-quantized layers become real quantized weights, marked so that transformers saves
    them (safetensors) and loads them back from ``config.json``. An adapter that was not merged is saved on its
    own: it was trained against the fake-quantized base, which ``fw predict`` loads quantized for real."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    quantize_(model, QATConfig(base_config(params["mode"]), step="convert"))
    mark_quantized(model, torchao_config(params["mode"]))
    return model


def mark_quantized(model, config) -> None:
    """What ``from_pretrained(quantization_config=...)`` leaves on a model, so ``save_pretrained`` serializes the
    torchao weights and writes the ``quantization_config`` that loads them back."""
    from transformers.quantizers import AutoHfQuantizer

    model.hf_quantizer = AutoHfQuantizer.from_config(config, pre_quantized=False)
    model.config.quantization_config = config
    model.is_quantized = True


def dequantize(model):
    """Every torchao-quantized weight replaced by its dequantized tensor (torchao's ``dequantize``), in the
    model's dtype, and the quantization config removed (transformers has no ``dequantize`` for torchao)."""
    import torch
    from torchao.utils import TorchAOBaseTensor

    dtype = model.config.dtype if isinstance(model.config.dtype, torch.dtype) else torch.float32
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, TorchAOBaseTensor):
            module.weight = torch.nn.Parameter(weight.dequantize().to(dtype), requires_grad=False)
    model.hf_quantizer.remove_quantization_config(model)
    return model

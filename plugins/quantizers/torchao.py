"""torchao: PyTorch-native quantization applied after loading, with optional quantization-aware training."""
from fw.hookspecs import hookimpl
from fw.types import QuantizerPlugin

SCHEMA = "fw.schemas:quantizers/torchao.json"


@hookimpl
def fw_quantizers():
    return [QuantizerPlugin(name="torchao", schema=SCHEMA,
                            summary="PyTorch-native int4/int8/float8 quantization after load, with QAT",
                            transform=f"{__name__}:transform", supports_qat=True)]


def transform(model, params: dict):
    """Quantize (or, with ``qat: true``, fake-quantize) a loaded model in place. Not built yet."""
    from fw.errors import NotBuiltYetError

    mode = params.get("mode")
    what = "torchao quantization-aware training" if params.get("qat") else "torchao quantization"
    raise NotBuiltYetError(f"{what} (mode {mode!r})", "issue 'Full PEFT breadth'")

"""LoRA weight initializers (``adapter.init_lora_weights``), one descriptor each.

The value the user writes (``pissa``) maps to PEFT's ``LoraConfig.init_lora_weights``; ``default`` maps to
PEFT's ``True`` (Kaiming-uniform A, zero B). Data-driven initializers (eva, corda) and LoftQ declare a
``prepare`` step; that step is not built yet and says so instead of silently training plain LoRA.

AdaLoRA only tests ``init_lora_weights`` for truthiness (PEFT 0.21.2 ``AdaLoraLayer.update_layer``) and
rejects ``loftq_config``, so only ``default`` is offered for it: any other string would be accepted by PEFT
and silently give AdaLoRA's own initialization.
"""
from fw.hookspecs import hookimpl
from fw.types import InitializerPlugin

_AREA = "issue 'Full PEFT breadth'"


def _schema(name: str) -> str:
    return f"fw.schemas:initializers/{name}.json"


@hookimpl
def fw_initializers():
    return [
        InitializerPlugin(name="default", schema=_schema("default"), peft_value=True,
                          summary="Kaiming-uniform A, zero B: the adapter starts as a no-op",
                          adapters=("lora", "adalora")),
        InitializerPlugin(name="gaussian", schema=_schema("gaussian"), peft_value="gaussian",
                          summary="Gaussian A scaled by the rank, zero B"),
        InitializerPlugin(name="pissa", schema=_schema("pissa"), peft_value="pissa",
                          summary="PiSSA: A and B from the top-r singular vectors of the weight"),
        InitializerPlugin(name="olora", schema=_schema("olora"), peft_value="olora",
                          summary="OLoRA: orthonormal A and B from a QR decomposition of the weight"),
        InitializerPlugin(name="orthogonal", schema=_schema("orthogonal"), peft_value="orthogonal",
                          summary="Orthogonal initialization of A and B"),
        InitializerPlugin(name="eva", schema=_schema("eva"), peft_value="eva", config_key="eva_config",
                          needs_data=True, prepare=f"{__name__}:prepare_eva",
                          summary="EVA: data-driven init from the SVD of layer input activations"),
        InitializerPlugin(name="corda", schema=_schema("corda"), peft_value="corda",
                          config_key="corda_config",
                          needs_data=True, prepare=f"{__name__}:prepare_corda",
                          summary="CorDA: context-oriented decomposition from activation covariance"),
        InitializerPlugin(name="loftq", schema=_schema("loftq"), peft_value="loftq",
                          config_key="loftq_config",
                          prepare=f"{__name__}:prepare_loftq",
                          summary="LoftQ: quantize the base weights and initialize LoRA to cancel the error"),
    ]


def prepare_eva(*args, **kwargs):
    """Run EVA's calibration pass (PEFT ``initialize_lora_eva_weights``). Not built yet."""
    from fw.errors import NotBuiltYetError

    raise NotBuiltYetError("EVA initialization's data pass", _AREA)


def prepare_corda(*args, **kwargs):
    """Run CorDA's covariance pass (PEFT ``preprocess_corda``). Not built yet."""
    from fw.errors import NotBuiltYetError

    raise NotBuiltYetError("CorDA initialization's data pass", _AREA)


def prepare_loftq(*args, **kwargs):
    """Run LoftQ's quantize-and-initialize step. Not built yet."""
    from fw.errors import NotBuiltYetError

    raise NotBuiltYetError("LoftQ initialization's data pass", _AREA)

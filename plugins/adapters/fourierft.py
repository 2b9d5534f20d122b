"""FourierFT: learned sparse spectral coefficients, inverse-DFT'd into the update (PEFT FourierFTConfig)."""
from __future__ import annotations

from fw.plugin.hookspecs import hookimpl
from fw.plugin.descriptors import AdapterPlugin

SCHEMA = "fw.schemas:adapters/fourierft.json"


@hookimpl
def fw_adapters():
    return [AdapterPlugin(name="fourierft", schema=SCHEMA, summary="Frequency-domain fine-tuning (FourierFT)",
                          build_peft_config=f"{__name__}:build_peft_config",
                          check_model=f"{__name__}:check_model")]


def build_peft_config(params: dict):
    from fw.plugin.peft import build_peft_config as build

    return build("FourierFTConfig", params, SCHEMA)


def check_model(params: dict, model) -> list[str]:
    """n_frequency may not exceed in_features * out_features of any targeted layer."""
    from fw.model.adapters import size_limit_problems, target_layer_shapes
    from fw.plugin.peft import with_defaults

    p = with_defaults(params, SCHEMA)
    return size_limit_problems("n_frequency", p["n_frequency"], target_layer_shapes(model, p))

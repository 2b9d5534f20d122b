"""WaveFT: learned sparse wavelet coefficients, inverse-DWT'd into the weight update (PEFT WaveFTConfig).

The spec offers ``wavelet_family: haar``, which PEFT does not list; Haar is the same wavelet as Daubechies-1,
so fw passes it as ``db1``. WaveFT has no ``r``/``alpha`` (see the schema's x-fw-hints).
"""
from __future__ import annotations

from fw.plugin import (AdapterPlugin, build_peft_config, hookimpl, size_limit_problems, target_layer_shapes,
                       with_defaults)

SCHEMA = "fw.schemas:adapters/waveft.json"
WAVELET_ALIASES = {"haar": "db1"}


@hookimpl
def fw_adapters():
    return [AdapterPlugin(name="waveft", schema=SCHEMA, summary="Wavelet-domain fine-tuning (WaveFT)",
                          display_name="WaveFT",
                          peft_config_class="WaveFTConfig", build_peft_config=f"{__name__}:build_waveft_config",
                          check_model=f"{__name__}:check_model")]


def build_waveft_config(params: dict):
    family = with_defaults(params, SCHEMA)["wavelet_family"]
    return build_peft_config("WaveFTConfig", params, SCHEMA, wavelet_family=WAVELET_ALIASES.get(family, family))


def check_model(params: dict, model) -> list[str]:
    """n_frequency may not exceed in_features * out_features of any targeted layer."""
    p = with_defaults(params, SCHEMA)
    return size_limit_problems("n_frequency", p["n_frequency"], target_layer_shapes(model, p))

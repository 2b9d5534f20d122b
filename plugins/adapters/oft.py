"""OFT: orthogonal fine-tuning with block-diagonal orthogonal matrices (PEFT OFTConfig).

PEFT needs exactly one of ``r`` (number of blocks) and ``oft_block_size`` non-zero, while the spec's defaults
are ``r: 0, oft_block_size: 32``. fw's rule:

- ``r: 0`` -> ``oft_block_size`` is used (it must then be > 0); this is the default;
- ``r > 0`` -> ``r`` is used and PEFT gets ``oft_block_size=0``, so ``{r: 8}`` alone works even though the
  default ``oft_block_size: 32`` has been filled in by then;
- ``r > 0`` together with an ``oft_block_size > 0`` the user wrote -> "set either r or oft_block_size, not
  both". ``check_params`` gets the keys the user wrote as ``explicit_keys``; without them (a params dict from
  code) an ``oft_block_size`` equal to the schema default counts as not written.
"""
from __future__ import annotations

from fw.plugin import AdapterPlugin, build_peft_config, hookimpl, schema_defaults, with_defaults

SCHEMA = "fw.schemas:adapters/oft.json"


@hookimpl
def fw_adapters():
    return [AdapterPlugin(name="oft", schema=SCHEMA, summary="Orthogonal fine-tuning (OFT)", display_name="OFT",
                          peft_config_class="OFTConfig", build_peft_config=f"{__name__}:build_oft_config",
                          check_params=f"{__name__}:check_params")]


def build_oft_config(params: dict):
    overrides = {"oft_block_size": 0} if with_defaults(params, SCHEMA)["r"] > 0 else {}
    return build_peft_config("OFTConfig", params, SCHEMA, **overrides)


def check_params(params: dict, explicit_keys: set[str] | None = None) -> list[tuple[str, str]]:
    """The r / oft_block_size rule above, as (key, message) problems."""
    p = with_defaults(params, SCHEMA)
    r, block_size = p["r"], p["oft_block_size"]
    if explicit_keys is None:
        block_size_written = block_size != schema_defaults(SCHEMA)["oft_block_size"]
    else:
        block_size_written = "oft_block_size" in explicit_keys
    if r > 0 and block_size > 0 and block_size_written:
        return [("oft_block_size", f"set either r or oft_block_size, not both (r={r} fixes the number of "
                                   f"blocks, oft_block_size={block_size} their size); use only one of them")]
    if r == 0 and block_size == 0:
        return [("r", "set either r (number of blocks) or oft_block_size (block size) to a positive value; "
                      "use r > 0 or oft_block_size > 0")]
    return []

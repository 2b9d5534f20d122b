"""RoPE scaling (``model_parameters.rope_scaling``) applied the way the installed transformers expects it.

The one place that knows the version difference:

- transformers >= 5 keeps RoPE settings in ``config.rope_parameters`` (``rope_type``, ``factor`` *and*
  ``rope_theta``; nested per layer type for some models). Passing the old ``rope_scaling`` kwarg replaces that
  dict and drops ``rope_theta``, which crashes (5.23: ``NoneType ** Tensor``) or silently changes the base.
- transformers 4.x reads ``config.rope_scaling`` (``rope_type`` / legacy ``type`` + ``factor``), with
  ``rope_theta`` a separate attribute.

So the model's own config is loaded first, the scaling merged into what it already has, and the patched config
passed to ``from_pretrained(config=...)``.
"""
from __future__ import annotations

from typing import Any

from fw.config import view
from fw.errors import FwError


def rope_scaling_of(data: dict) -> dict | None:
    """``{"rope_type", "factor"}`` from the config, or None when RoPE scaling is off."""
    rope = view.rope_scaling(data)
    if not rope.get("rope_type"):
        return None
    return {"rope_type": rope["rope_type"], "factor": float(rope.get("factor") or 1.0)}


def rope_kwargs(location: str, data: dict, token: str | None = None) -> dict[str, Any]:
    """``from_pretrained`` kwargs that apply the configured RoPE scaling: ``{"config": patched}`` or {}."""
    scaling = rope_scaling_of(data)
    if scaling is None:
        return {}
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(location, token=token, trust_remote_code=False)
    apply_rope_scaling(config, scaling)
    return {"config": config}


def apply_rope_scaling(config, scaling: dict) -> None:
    """Merge ``scaling`` into ``config`` in the installed transformers' layout (see the module docstring)."""
    if getattr(config, "rope_parameters", None) is not None or hasattr(type(config), "rope_parameters"):
        parameters = dict(config.rope_parameters or {})
        nested = config.nested_rope_parameter_keys(parameters) if hasattr(config, "nested_rope_parameter_keys") \
            else []
        if nested:
            config.rope_parameters = {key: ({**parameters[key], **scaling} if parameters[key] else parameters[key])
                                      for key in parameters}
        else:
            theta = parameters.get("rope_theta", getattr(config, "rope_theta", None))
            config.rope_parameters = {**parameters, **scaling, **({"rope_theta": theta} if theta else {})}
    elif hasattr(config, "rope_scaling") or hasattr(config, "rope_theta"):
        config.rope_scaling = {**scaling, "type": scaling["rope_type"]}  # 4.x reads either key
    else:
        raise FwError(f"model_parameters.rope_scaling: the base model ({config.model_type}) has no rotary position "
                      "embeddings, so RoPE scaling does not apply; remove rope_scaling.")

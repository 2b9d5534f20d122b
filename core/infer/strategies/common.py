"""Pieces both local strategies share: a full forward pass over a left-padded batch, and growing the mask."""
from __future__ import annotations


def full_forward(model, input_ids, attention_mask, hidden_states: bool = False):
    """Run ``model`` on whole (left-padded) sequences, without a cache; positions count real tokens only."""
    import torch

    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                 use_cache=False, output_hidden_states=hidden_states, return_dict=True)


def mask_of(input_ids, model_kwargs: dict):
    """The attention mask transformers prepared (it drops an all-ones mask), as a tensor."""
    import torch

    mask = model_kwargs.get("attention_mask")
    return torch.ones_like(input_ids) if mask is None else mask


def grow(mask):
    """The mask with one more attended column (the token just appended)."""
    import torch

    return torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)


def pad_id(generation_config) -> int:
    pad = generation_config._pad_token_tensor
    if pad is None:
        pad = generation_config._eos_token_tensor
        pad = pad.flatten()[0] if pad is not None else 0
    return int(pad)


def eos_ids(generation_config) -> set[int]:
    eos = generation_config._eos_token_tensor
    return set() if eos is None else {int(token) for token in eos.flatten().tolist()}

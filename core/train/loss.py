"""The training loss, summed over response tokens (``trainer.chunked_loss``).

Standard path: ``model(**batch).loss`` (transformers' mean over the labelled tokens) times that token count.
Both paths pass ``use_cache=False``: with a KV cache transformers does not derive packed rows' boundaries
from ``position_ids`` (``masking_utils._preprocess_mask_arguments``), and packed rows would see each other.

Chunked path (default): the output head and cross-entropy run only where a label is set, in chunks, so the
``[tokens x vocab]`` logits are never materialised whole. The decoder (``get_decoder()`` of the transformers
model, under a PEFT wrapper too) gives the hidden states; the states that predict a labelled token are gathered;
then the output-head MODULE itself (so a LoRA adapter on ``lm_head`` trains) and a float32 cross-entropy run
over chunks of at most :data:`CHUNK_ELEMENTS` / vocab tokens, each chunk under activation checkpointing when
there is more than one (its logits are recomputed in the backward pass instead of kept). With ``liger_kernel``
installed, on CUDA, and a plain ``nn.Linear`` head, Liger's fused linear cross-entropy does the chunks.

The chunked path is the standard computation reordered, so losses and gradients agree (allclose). Where a model
does more than ``lm_head(decoder(...))`` — logit soft-capping / scaling, prompt-learning PEFT methods, tuners
whose forward adds a term (AdaLoRA's orthogonality penalty) — :func:`unsupported_reason` says so and the
trainer takes the standard path; :func:`matches_standard` checks the rest numerically on one row first.
"""
from __future__ import annotations

from fw.data.tokens import IGNORE_INDEX

#: logits elements per chunk (64 Mi: 256 MB in float32), i.e. 512 tokens of a 128k vocabulary
CHUNK_ELEMENTS = 1 << 26
#: config attributes that mean the logits are not just the head's output
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def response_tokens(labels) -> int:
    """Tokens the loss is averaged over: labels after the first position that are not -100."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def standard_loss_sum(model, batch: dict):
    """(sum of the token losses, token count) through the model's own forward."""
    tokens = response_tokens(batch["labels"])
    loss = model(**batch, use_cache=False).loss  # with a KV cache transformers ignores packed position_ids
    return (loss * tokens if tokens else loss * 0.0), tokens


def chunked_loss_sum(model, batch: dict):
    """(sum of the token losses, token count) computing the head + cross-entropy only at labelled positions."""
    base = transformers_model(model)
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state
    return head_loss_sum(base, hidden, batch["labels"])


def head_loss_sum(base, hidden, labels):
    """(sum of the token losses, token count) of the output head + cross-entropy at the positions of the
    decoder's ``hidden`` states that predict a labelled token."""
    shifted = labels[:, 1:]
    mask = shifted != IGNORE_INDEX
    states, targets = hidden[:, :-1][mask], shifted[mask]
    if not targets.numel():
        return hidden.sum() * 0.0, 0
    head = base.get_output_embeddings()
    fused = liger_loss(head, states)
    if fused is not None:
        return fused(head.weight, states, targets, head.bias), int(targets.numel())
    return chunked_cross_entropy(head, states, targets), int(targets.numel())


def chunked_cross_entropy(head, states, targets):
    """Sum of the cross-entropies of ``head(states)`` against ``targets``, ``CHUNK_ELEMENTS`` logits at a time;
    each chunk under activation checkpointing when there is more than one (its logits are recomputed in backward
    instead of kept)."""
    import torch

    chunk = max(1, CHUNK_ELEMENTS // head.weight.shape[0])
    total = None
    for start in range(0, targets.numel(), chunk):
        part = (states[start:start + chunk], targets[start:start + chunk])
        if targets.numel() > chunk and torch.is_grad_enabled():
            value = torch.utils.checkpoint.checkpoint(head_cross_entropy, head, *part, use_reentrant=False)
        else:
            value = head_cross_entropy(head, *part)
        total = value if total is None else total + value
    return total


def head_cross_entropy(head, states, targets):
    import torch

    return torch.nn.functional.cross_entropy(head(states).float(), targets, reduction="sum")


def liger_loss(head, states):
    """Liger's fused linear cross-entropy (sum) when installed, on CUDA, for a plain ``nn.Linear`` head."""
    import importlib.util

    import torch

    if type(head) is not torch.nn.Linear or states.device.type != "cuda" \
            or importlib.util.find_spec("liger_kernel") is None:
        return None
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    return LigerFusedLinearCrossEntropyLoss(reduction="sum")


# -- when the chunked path applies -----------------------------------------------------------------------------
def transformers_model(model):
    """The transformers ``PreTrainedModel`` inside a PEFT wrapper (or ``model`` itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def unsupported_reason(model) -> str | None:
    """Why the chunked path would not compute what ``model(**batch).loss`` does (None: it would)."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None:
        if peft_config.is_prompt_learning:
            return f"{peft_config.peft_type} adds virtual tokens in the PEFT forward"
        from peft.tuners.tuners_utils import BaseTuner

        tuner = type(model.base_model)
        if tuner.forward is not BaseTuner.forward:
            return f"{tuner.__name__} adds its own term to the loss"
    base = transformers_model(model)
    if not callable(getattr(base, "get_decoder", None)) or base.get_output_embeddings() is None:
        return f"{type(base).__name__} has no separate decoder and output head"
    config = getattr(base, "config", None)
    for name in LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0, False):
            return f"{type(base).__name__} transforms its logits ({name})"
    return None


def matches_standard(model, batch: dict) -> bool:
    """Whether both paths give the same loss on the first row of ``batch`` (eval mode, no gradient). One forward
    pass: the model's own, whose decoder output is kept (forward hook) and put through the head as the chunked
    path does."""
    import torch

    float32 = next(model.parameters()).dtype == torch.float32
    tolerance = 1e-3 if float32 else 2e-2

    row = {key: value[:1] if hasattr(value, "dim") and value.dim() == 2 else value for key, value in batch.items()}
    if "cu_seq_lens_q" in row:  # a packed batch is a single row already
        row = batch
    if not response_tokens(row["labels"]):
        return True
    base = transformers_model(model)
    decoded = []
    hook = base.get_decoder().register_forward_hook(lambda module, args, output: decoded.append(output))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            standard, tokens = standard_loss_sum(model, row)
            if len(decoded) != 1:  # the model's forward does not run its decoder once: the paths differ
                return False
            chunked, _ = head_loss_sum(base, decoded[0].last_hidden_state, row["labels"])
    finally:
        hook.remove()
        model.train(was_training)
    standard, chunked = float(standard) / tokens, float(chunked) / tokens
    return abs(standard - chunked) <= tolerance * max(1.0, abs(standard))


def choose(model, batch: dict, wanted: bool):
    """The loss function the trainer uses: chunked when wanted, supported and verified, else standard."""
    from fw import console

    if not wanted:
        return standard_loss_sum
    reason = unsupported_reason(model)
    if reason is None and not matches_standard(model, batch):
        reason = "its loss differs from the model's own on a probe row"
    if reason is not None:
        console.info(f"trainer.chunked_loss: using the model's own loss ({reason}).")
        return standard_loss_sum
    return chunked_loss_sum

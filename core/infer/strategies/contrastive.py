"""Contrastive search (Su et al. 2022, "A Contrastive Framework for Neural Text Generation").

At each step the ``top_k`` most probable next tokens are candidates; each is scored

    (1 - penalty_alpha) * p(token | context)  -  penalty_alpha * max cosine(h_token, h_context)

where ``h`` are last-layer hidden states, so a token whose representation repeats the context is penalised
(less degeneration than greedy search) while staying deterministic. The chosen candidate's forward pass already
holds the logits and hidden states of the next step, so each step costs one forward of ``batch * top_k`` rows.
"""
from __future__ import annotations

from fw.infer.strategies.common import eos_ids, full_forward, grow, mask_of, pad_id


def contrastive_search(model, input_ids, logits_processor, stopping_criteria, generation_config, **model_kwargs):
    """``custom_generate`` callable: transformers' prepared inputs in, prompt + generated ids out."""
    import torch

    alpha, top_k = float(generation_config.penalty_alpha), int(generation_config.top_k)
    pad, eos = pad_id(generation_config), eos_ids(generation_config)
    mask = mask_of(input_ids, model_kwargs)
    unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    output = full_forward(model, input_ids, mask, hidden_states=True)
    logits, context = output.logits[:, -1, :].float(), output.hidden_states[-1]
    while True:
        scores = logits_processor(input_ids, logits)
        probabilities = scores.softmax(dim=-1)
        top_probabilities, candidates = probabilities.topk(top_k, dim=-1)
        chosen, logits, context = _choose(model, input_ids, mask, context, candidates, top_probabilities, alpha)
        chosen = torch.where(unfinished, chosen, torch.full_like(chosen, pad))
        input_ids = torch.cat([input_ids, chosen[:, None]], dim=-1)
        mask = grow(mask)
        if eos:
            unfinished &= ~torch.isin(chosen, torch.tensor(sorted(eos), device=chosen.device))
        unfinished &= ~stopping_criteria(input_ids, scores)
        if not unfinished.any():
            return input_ids


def _choose(model, input_ids, mask, context, candidates, top_probabilities, alpha: float):
    """(chosen token per row, next-step logits, next-step hidden states) after trying every candidate."""
    import torch

    batch, top_k = candidates.shape
    expanded_ids = torch.cat([input_ids.repeat_interleave(top_k, dim=0), candidates.reshape(-1, 1)], dim=-1)
    expanded_mask = grow(mask.repeat_interleave(top_k, dim=0))
    output = full_forward(model, expanded_ids, expanded_mask, hidden_states=True)
    hidden = output.hidden_states[-1]                                          # (batch*k, len+1, dim)
    penalty = _degeneration_penalty(context.repeat_interleave(top_k, dim=0), hidden[:, -1, :],
                                    mask.repeat_interleave(top_k, dim=0)).view(batch, top_k)
    score = (1.0 - alpha) * top_probabilities - alpha * penalty
    best = score.argmax(dim=-1)                                                 # (batch,)
    rows = torch.arange(batch, device=best.device) * top_k + best
    return candidates[torch.arange(batch), best], output.logits[rows, -1, :].float(), hidden[rows]


def _degeneration_penalty(context, candidate, mask):
    """Max cosine similarity of each candidate's hidden state with the (unpadded) context's."""
    import torch

    context = torch.nn.functional.normalize(context.float(), dim=-1)
    candidate = torch.nn.functional.normalize(candidate.float(), dim=-1)
    similarity = torch.einsum("bld,bd->bl", context, candidate)
    similarity = similarity.masked_fill(mask == 0, -1.0)
    return similarity.max(dim=-1).values

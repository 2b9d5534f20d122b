"""Diverse (group) beam search (Vijayakumar et al. 2016, "Diverse Beam Search").

``num_beams`` beams are split into ``num_beam_groups`` groups of equal size. Each step, groups are advanced in
order, each by ordinary beam search, except that a group's scores are lowered by ``diversity_penalty`` times the
number of times earlier groups already chose the same token at this step (Hamming diversity). Finished
hypotheses are length-normalised (``score / generated_length ** length_penalty``); ``early_stopping`` works as
in transformers' beam search. The best hypothesis over all groups is returned.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fw.infer.strategies.common import eos_ids, full_forward, grow, mask_of, pad_id

NEG = -1e9


@dataclass
class Hypotheses:
    """The best finished sequences of one (row, group), at most ``size`` of them."""

    size: int
    length_penalty: float
    found: list = field(default_factory=list)  # (normalised score, token list)

    def add(self, tokens: list[int], log_probability: float, generated: int) -> None:
        self.found.append((log_probability / max(generated, 1) ** self.length_penalty, tokens))
        self.found.sort(key=lambda item: -item[0])
        del self.found[self.size:]

    def is_done(self, best_running: float, generated: int, early_stopping, max_generated: int) -> bool:
        if len(self.found) < self.size:
            return False
        if early_stopping is True:
            return True
        length = max_generated if (early_stopping == "never" and self.length_penalty > 0) else generated
        return self.found[-1][0] >= best_running / max(length, 1) ** self.length_penalty


def group_beam_search(model, input_ids, logits_processor, stopping_criteria, generation_config, **model_kwargs):
    """``custom_generate`` callable: inputs expanded to ``batch * num_beams`` rows in, best sequence per row out."""
    import torch

    beams, groups = int(generation_config.num_beams), int(generation_config.num_beam_groups)
    size, penalty = beams // groups, float(generation_config.diversity_penalty or 0.0)
    batch, prompt_length = input_ids.shape[0] // beams, input_ids.shape[1]
    max_generated = int(generation_config.max_length) - prompt_length
    state = _State(batch, beams, groups, size, float(generation_config.length_penalty or 1.0), input_ids.device)
    mask, eos = mask_of(input_ids, model_kwargs), eos_ids(generation_config)
    while True:
        log_probs = full_forward(model, input_ids, mask).logits[:, -1, :].float().log_softmax(dim=-1)
        sources, tokens = input_ids.new_zeros(batch * beams), input_ids.new_zeros(batch * beams)
        new_scores = state.scores.clone()
        for group in range(groups):
            rows = state.rows_of(group)
            scores = logits_processor(input_ids[rows], log_probs[rows])
            if group and penalty:
                scores = scores - penalty * _earlier_choices(tokens, state, group, scores.shape[-1])
            scores = scores + state.scores[:, group * size:(group + 1) * size].reshape(-1, 1)
            _advance_group(state, group, scores, input_ids, rows, sources, tokens, new_scores, eos,
                           prompt_length, generation_config.early_stopping, max_generated)
        state.scores = new_scores
        input_ids = torch.cat([input_ids[sources], tokens[:, None]], dim=-1)
        mask = grow(mask[sources])
        if state.done.all() or stopping_criteria(input_ids, None).all():
            return state.best(input_ids, prompt_length, pad_id(generation_config))


class _State:
    def __init__(self, batch, beams, groups, size, length_penalty, device):
        import torch

        self.batch, self.beams, self.groups, self.size = batch, beams, groups, size
        self.scores = torch.full((batch, beams), NEG, device=device)
        self.scores[:, ::size] = 0.0  # one live beam per group at the start: no duplicate hypotheses
        self.done = torch.zeros((batch, groups), dtype=torch.bool)
        self.hypotheses = [[Hypotheses(size, length_penalty) for _ in range(groups)] for _ in range(batch)]

    def rows_of(self, group: int):
        """Row indices (into the ``batch * beams`` rows) of the group's beams, row-major."""
        import torch

        starts = torch.arange(self.batch) * self.beams + group * self.size
        return (starts[:, None] + torch.arange(self.size)[None, :]).reshape(-1)

    def best(self, input_ids, prompt_length: int, pad: int):
        """Best hypothesis per row over all groups (open beams count as finished), right-padded."""
        import torch

        sequences = []
        for row in range(self.batch):
            for group in range(self.groups):
                hypotheses = self.hypotheses[row][group]
                if not self.done[row, group]:
                    for slot in range(self.size):
                        index = row * self.beams + group * self.size + slot
                        hypotheses.add(input_ids[index].tolist(), float(self.scores[row, group * self.size + slot]),
                                       input_ids.shape[1] - prompt_length)
            found = [item for group in self.hypotheses[row] for item in group.found]
            sequences.append(max(found, key=lambda item: item[0])[1])
        width = max(len(sequence) for sequence in sequences)
        return torch.tensor([sequence + [pad] * (width - len(sequence)) for sequence in sequences],
                            dtype=torch.long, device=input_ids.device)


def _earlier_choices(tokens, state: _State, group: int, vocabulary: int):
    """(rows of this group, vocabulary): how often earlier groups of the same row chose each token this step."""
    import torch

    counts = torch.zeros((state.batch, vocabulary), device=tokens.device)
    for earlier in range(group):
        chosen = tokens[state.rows_of(earlier)].view(state.batch, state.size)
        counts.scatter_add_(1, chosen, torch.ones_like(chosen, dtype=counts.dtype))
    return counts.repeat_interleave(state.size, dim=0)


def _advance_group(state: _State, group, scores, input_ids, rows, sources, tokens, new_scores, eos,
                   prompt_length, early_stopping, max_generated) -> None:
    """Beam search for one group: keep the ``size`` best continuations, store finished ones."""
    vocabulary, size = scores.shape[-1], state.size
    top_scores, top_indices = scores.view(state.batch, size * vocabulary).topk(2 * size, dim=-1)
    generated = input_ids.shape[1] + 1 - prompt_length
    for row in range(state.batch):
        slots = [row * state.beams + group * size + slot for slot in range(size)]
        if state.done[row, group]:
            for slot in slots:
                sources[slot], tokens[slot] = slot, 0
            new_scores[row, group * size:(group + 1) * size] = NEG
            continue
        kept = 0
        for rank, (score, index) in enumerate(zip(top_scores[row].tolist(), top_indices[row].tolist())):
            source, token = int(rows[row * size + index // vocabulary]), index % vocabulary
            if token in eos:
                if rank < size:
                    state.hypotheses[row][group].add(input_ids[source].tolist() + [token], score, generated)
                continue
            sources[slots[kept]], tokens[slots[kept]] = source, token
            new_scores[row, group * size + kept] = score
            kept += 1
            if kept == size:
                break
        best_running = float(new_scores[row, group * size])
        state.done[row, group] = state.hypotheses[row][group].is_done(best_running, generated, early_stopping,
                                                                      max_generated)

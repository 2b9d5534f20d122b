"""Small logits processors fw applies itself.

``forced_decoder_ids`` ([[position, token_id], ...]) forced a token at a position of the generation in
transformers 4; transformers 5 kept it only for Whisper. Position 1 is the first generated token (position 0
was the decoder start token of encoder-decoder models; a decoder-only model has none).
"""
from __future__ import annotations


def forced_positions_factory(pairs):
    """``prompt_width -> processor`` forcing ``token_id`` at generated position ``position`` (1-based)."""
    forced = {int(position): int(token) for position, token in pairs}
    return lambda prompt_width: ForcedPositionsLogitsProcessor(forced, prompt_width)


class ForcedPositionsLogitsProcessor:
    def __init__(self, forced: dict[int, int], prompt_width: int):
        self.forced, self.prompt_width = forced, prompt_width

    def __call__(self, input_ids, scores):
        position = input_ids.shape[1] - self.prompt_width + 1
        token = self.forced.get(position)
        if token is None:
            return scores
        forced = scores.new_full(scores.shape, float("-inf"))
        forced[:, token] = 0.0
        return forced

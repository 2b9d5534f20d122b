"""fw's own decoding strategies for the two the spec names that transformers 5 no longer ships.

transformers 5 moved contrastive search (``penalty_alpha`` + ``top_k``) and diverse / group beam search
(``num_beam_groups``) out of the library into Hub repositories (``transformers-community/contrastive-search``,
``transformers-community/group-beam-search``) that ``generate`` downloads and executes with
``trust_remote_code=True``; offline, or without trusting remote code, both raise. ``generate`` also accepts a
*callable* ``custom_generate``: transformers then prepares everything as usual (the config, padding and beam
expansion of the inputs, logits processors, stopping criteria) and calls it in place of its own loop. fw passes
the local, tested implementations of this package that way, so both strategies run offline and deterministically.

Both recompute the whole sequence at each step (no key/value cache): simple and exact, fine for the short
outputs of classification and extraction; slower than greedy / beam search for long generations.
"""
from __future__ import annotations

#: strategy name -> "module:function" of the ``custom_generate`` callable
STRATEGIES = {
    "contrastive_search": "fw.infer.strategies.contrastive:contrastive_search",
    "group_beam_search": "fw.infer.strategies.group_beam:group_beam_search",
}


def strategy_name(section: dict) -> str | None:
    """The fw-implemented strategy a ``generation`` section selects (transformers' own rules), else None."""
    beams = section.get("num_beams") or 1
    if beams > 1 and (section.get("num_beam_groups") or 1) > 1:
        return "group_beam_search"
    if beams == 1 and not section.get("do_sample") and (section.get("penalty_alpha") or 0) > 0 \
            and (section.get("top_k") or 0) > 1:
        return "contrastive_search"
    return None


def custom_generate_for(section: dict):
    """The ``custom_generate`` callable for ``section``, or None when transformers decodes it itself."""
    from fw.plugin.lazy import resolve

    name = strategy_name(section)
    return resolve(STRATEGIES[name]) if name else None

"""The config's ``generation`` section, mapped onto transformers' ``generate``.

Most keys are ``GenerationConfig`` fields of the same name and pass through. The rest:

- ``max_new_tokens: null`` falls back as the spec says: the output feature's ``max_sequence_length``, else
  ``preprocessing.global_max_sequence_length``, else half the model's context length (as Ludwig resolves it; a
  text output's unset max_new_tokens becomes null this way: fw.config.derive), never past the context;
  ``max_length`` (prompt + generation) is overridden by ``max_new_tokens``, as the spec documents.
- ``do_sample: false`` drops the sampling-only knobs (temperature, top_p, typical_p, epsilon / eta cutoffs, and
  top_k unless contrastive search uses it), which transformers would otherwise warn about.
- contrastive search and diverse beam search run fw's local implementations (:mod:`fw.infer.strategies`),
  since transformers 5 only offers them as remote code from the Hub.
- ``forced_decoder_ids`` (dropped by transformers 5 outside Whisper) and ``forced_bos_token_id`` (which
  transformers only forces after an encoder-decoder's start token, never after a decoder-only prompt) are applied
  by fw's :class:`fw.infer.logits_processors.ForcedPositionsLogitsProcessor`: the BOS id as the first generated token.
- ``sequence_bias`` may be written as a mapping ``"12 13": -2.0`` (space or comma separated ids) or as
  transformers' list form ``[[[12, 13], -2.0]]``.
- ``prompt_lookup_num_tokens`` > 0 turns on prompt-lookup (assisted) decoding, which transformers runs one row at
  a time: generation then uses batches of 1. ``0`` means off, as in the spec.
- ``force_words_ids`` is rejected at validation (transformers 5 moved constrained beam search to the Hub).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fw.config import view

SAMPLING_ONLY = ("temperature", "top_p", "typical_p", "epsilon_cutoff", "eta_cutoff")
#: keys fw applies itself instead of handing them to GenerationConfig
FW_APPLIED = ("forced_decoder_ids", "forced_bos_token_id")


@dataclass
class GenerationPlan:
    """Everything one ``model.generate`` call needs besides the inputs."""

    config: Any                      # transformers.GenerationConfig
    custom_generate: Any = None      # fw's local strategy, or None
    processors: list = field(default_factory=list)
    batch_size: int | None = None    # forced batch size (prompt lookup), else None

    def generate_kwargs(self, prompt_width: int) -> dict:
        from transformers import LogitsProcessorList

        kwargs: dict[str, Any] = {"generation_config": self.config}
        processors = [make(prompt_width) for make in self.processors]
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        if self.custom_generate is not None:
            kwargs["custom_generate"] = self.custom_generate
        return kwargs


def model_context_length(model) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def resolve_max_new_tokens(data: dict, model=None, longest_prompt: int = 0) -> int:
    """``generation.max_new_tokens``, or the spec's fallback chain when it is null."""
    explicit = view.generation(data).get("max_new_tokens")
    if explicit is not None:
        return int(explicit)
    output = view.output_max_sequence_length(data)
    global_limit = view.global_max_sequence_length(data)
    context = model_context_length(model) if model is not None else None
    room = max(1, context - longest_prompt) if context else None
    for candidate in (output, global_limit):
        if candidate:
            return min(int(candidate), room) if room else int(candidate)
    if room:  # half the model's context, as Ludwig resolves it (never past the context)
        return min(context // 2, room)
    from fw.errors import FwError

    raise FwError("generation.max_new_tokens is null and neither output_features[0].preprocessing."
                  "max_sequence_length, preprocessing.global_max_sequence_length nor the model's context length is "
                  "known: set generation.max_new_tokens.")


def sequence_bias(value):
    """transformers' list form of ``sequence_bias`` from the list form or a ``"ids": bias`` mapping."""
    if value is None or isinstance(value, list):
        return value
    return [[[int(token) for token in key.replace(",", " ").split()], float(bias)] for key, bias in value.items()]


def transformers_fields(data: dict, tokenizer, max_new_tokens: int) -> dict:
    """The ``GenerationConfig`` keyword arguments of the ``generation`` section."""
    from fw.infer.strategies import strategy_name

    raw = {key: value for key, value in view.generation(data).items() if value is not None}
    section = {key: value for key, value in raw.items() if key not in FW_APPLIED}
    section["max_new_tokens"] = max_new_tokens
    section.pop("max_length", None)
    if not section.get("do_sample", view.schema_default("generation", "do_sample")):
        for key in SAMPLING_ONLY:
            section.pop(key, None)
        if strategy_name(raw) != "contrastive_search":
            section.pop("top_k", None)
    if not section.get("prompt_lookup_num_tokens"):
        section.pop("prompt_lookup_num_tokens", None)
    if "sequence_bias" in section:
        section["sequence_bias"] = sequence_bias(section["sequence_bias"])
    for key in ("pad_token_id", "bos_token_id"):
        section.setdefault(key, getattr(tokenizer, key))
    section.setdefault("eos_token_id", stop_token_ids(data, tokenizer))
    return section


def stop_token_ids(data: dict, tokenizer):
    """What ends a generation: the tokenizer's EOS; with ``prompt.chat_template`` also the template's end-of-turn
    token (a list then)."""
    from fw.data.chat import ChatFormat, uses_chat_template

    if uses_chat_template(data):
        return ChatFormat.of(data, tokenizer).stop_token_ids()
    return tokenizer.eos_token_id


def plan(data: dict, tokenizer, model=None, longest_prompt: int = 0, extra_processors=(),
         max_new_tokens: int | None = None) -> GenerationPlan:
    """The :class:`GenerationPlan` of ``data``'s generation section for prompts up to ``longest_prompt`` tokens.

    ``extra_processors``: factories ``prompt_width -> LogitsProcessor`` (constrained decoding);
    ``max_new_tokens``: an override (constrained decoding needs no more than the longest label + EOS)."""
    from transformers import GenerationConfig

    from fw.infer.strategies import custom_generate_for
    from fw.infer.logits_processors import forced_positions_factory

    section = view.generation(data)
    fields = transformers_fields(data, tokenizer,
                                 max_new_tokens or resolve_max_new_tokens(data, model, longest_prompt))
    processors = list(extra_processors)
    forced = list(section.get("forced_decoder_ids") or [])
    if section.get("forced_bos_token_id") is not None:
        forced = [[1, section["forced_bos_token_id"]]] + [pair for pair in forced if pair[0] != 1]
    if forced:
        processors.append(forced_positions_factory(forced))
    batch_size = 1 if fields.get("prompt_lookup_num_tokens") else None
    return GenerationPlan(GenerationConfig(**fields), custom_generate_for(section), processors, batch_size)

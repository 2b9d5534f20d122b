"""Batched generation with the config's ``generation`` section.

Prompts are sorted by length and batched (``trainer.eval_batch_size``, else ``batch_size``), left-padded so
every row's generation starts right after its own prompt; results come back in the original order. Sampling
is seeded with ``trainer.seed`` so a run is repeatable.
"""
from __future__ import annotations

from dataclasses import dataclass

from fw.config import view


@dataclass(frozen=True)
class Generation:
    """One row's generation: ``raw`` is what the model generated with its special tokens (up to its stop token, no
    padding), ``text`` the decoded output without special tokens, stripped."""

    raw: str
    text: str


def generation_config(data: dict, tokenizer, model=None, longest_prompt: int = 0):
    """``transformers.GenerationConfig`` of the ``generation`` section (see :mod:`fw.infer.settings`), with
    the tokenizer's special token ids where the section has none. Saved next to the model."""
    from fw.errors import FwError
    from fw.infer.settings import plan

    try:
        return plan(data, tokenizer, model, longest_prompt).config
    except FwError:  # max_new_tokens null and nothing to fall back on without the model: leave it to transformers
        from transformers import GenerationConfig

        from fw.infer.settings import transformers_fields

        fields = transformers_fields(data, tokenizer, 1)
        fields.pop("max_new_tokens")
        return GenerationConfig(**fields)


def left_pad(sequences: list[list[int]], pad_id: int):
    import torch

    width = max(len(sequence) for sequence in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if sequence:
            ids[row, width - len(sequence):] = torch.tensor(sequence, dtype=torch.long)
            mask[row, width - len(sequence):] = 1
    return ids, mask


def as_id_lists(encoded) -> list[list[int]]:
    return [list(getattr(item, "input_ids", item)) for item in encoded]


def generate(model, tokenizer, prompt_ids, data: dict, show_progress: bool = False) -> list[Generation]:
    """Generate for every prompt (token id lists), batched by length; results in input order."""
    import torch

    from fw.console import ProgressBar
    from fw.data.tokens import length_sorted_batches
    from fw.infer.settings import plan as generation_plan
    from fw.train.batch_size import inference_batch_size

    sequences = as_id_lists(prompt_ids)
    longest = max((len(sequence) for sequence in sequences), default=0)
    processors, label_tokens = constrained_processors(data, tokenizer)
    settings = generation_plan(data, tokenizer, model, longest, processors,
                               max_new_tokens=label_tokens + 1 if label_tokens else None)
    batch_size = settings.batch_size or inference_batch_size(data, model, [len(s) for s in sequences],
                                                             settings.config.max_new_tokens or 0)
    torch.manual_seed(view.seed(data))
    device = next(model.parameters()).device
    results: list[Generation | None] = [None] * len(sequences)
    batches = length_sorted_batches([len(sequence) for sequence in sequences], batch_size)
    model.eval()
    with ProgressBar("generating", len(sequences), show_progress) as bar, torch.no_grad():
        for indices in batches:
            ids, mask = left_pad([sequences[i] for i in indices], tokenizer.pad_token_id)
            output = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                    **settings.generate_kwargs(ids.shape[1]))
            new_tokens = output[:, ids.shape[1]:]
            for row, index in enumerate(indices):
                tokens = generated_part(new_tokens[row].tolist(), settings.config.eos_token_id)
                results[index] = Generation(raw=tokenizer.decode(tokens, skip_special_tokens=False),
                                            text=tokenizer.decode(tokens, skip_special_tokens=True).strip())
            bar.advance(len(indices))
    return results  # type: ignore[return-value]


def generated_part(tokens: list[int], stop) -> list[int]:
    """A row's new tokens up to and including its first stop token: what follows is padding, which
    ``generate`` adds to rows that finish before the longest one of their batch."""
    stops = set(stop) if isinstance(stop, (list, tuple)) else {stop}
    end = next((position + 1 for position, token in enumerate(tokens) if token in stops), len(tokens))
    return tokens[:end]


def constrained_processors(data: dict, tokenizer) -> tuple[list, int]:
    """([label-trie processor factory], longest label in tokens) when ``constrain_to_vocabulary`` is on, else
    ([], 0). The caller caps the generation at the longest label + EOS: nothing longer can be generated."""
    from fw.infer.constrained import processor_factory

    if not view.constrains_to_labels(data):
        return [], 0
    factory, depth = processor_factory(data, tokenizer)
    return [factory], depth

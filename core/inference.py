"""Batched generation with the config's ``generation`` section, and turning generations into output values.

Prompts are sorted by length and batched (``trainer.eval_batch_size``, else ``batch_size``), left-padded so
every row's generation starts right after its own prompt; results come back in the original order. Sampling
is seeded with ``trainer.seed`` so a run is repeatable.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Generation:
    """One row's generation: ``raw`` keeps special tokens, ``text`` is the decoded, stripped output."""

    raw: str
    text: str


def generation_config(data: dict, tokenizer):
    """``transformers.GenerationConfig`` of the ``generation`` section (nulls left out; ``max_new_tokens``
    wins over ``max_length``), with the tokenizer's special token ids where the section has none."""
    from transformers import GenerationConfig

    section = {key: value for key, value in (data.get("generation") or {}).items() if value is not None}
    if section.get("max_new_tokens") is not None:
        section.pop("max_length", None)
    if not section.get("do_sample", True):
        for key in ("temperature", "top_k", "top_p", "typical_p"):
            section.pop(key, None)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        section.setdefault(key, getattr(tokenizer, key))
    return GenerationConfig(**section)


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

    from fw.encoding import length_sorted_batches

    sequences = as_id_lists(prompt_ids)
    trainer = data.get("trainer") or {}
    batch_size = trainer.get("eval_batch_size") or trainer.get("batch_size") or 1
    config = generation_config(data, tokenizer)
    torch.manual_seed(trainer.get("seed", 42))
    device = next(model.parameters()).device
    results: list[Generation | None] = [None] * len(sequences)
    batches = length_sorted_batches([len(sequence) for sequence in sequences], batch_size)
    model.eval()
    with progress_bar(len(sequences), show_progress) as advance, torch.no_grad():
        for indices in batches:
            ids, mask = left_pad([sequences[i] for i in indices], tokenizer.pad_token_id)
            output = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                    generation_config=config)
            new_tokens = output[:, ids.shape[1]:]
            for row, index in enumerate(indices):
                tokens = new_tokens[row].tolist()
                results[index] = Generation(raw=tokenizer.decode(tokens, skip_special_tokens=False),
                                            text=tokenizer.decode(tokens, skip_special_tokens=True).strip())
            advance(len(indices))
    return results  # type: ignore[return-value]


class progress_bar:
    """``with progress_bar(total, show) as advance: advance(n)`` — a rich bar on stderr, or nothing."""

    def __init__(self, total: int, show: bool):
        self.total, self.show, self.progress = total, show, None

    def __enter__(self):
        if not self.show:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]generating"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True))
        task = self.progress.add_task("generate", total=self.total)
        self.progress.start()
        return lambda n: self.progress.update(task, advance=n)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False


# -- output values -----------------------------------------------------------------------------------------------
def decode_outputs(texts: list[str], data: dict) -> list[str]:
    """Generated texts as output values: as-is for text outputs; for category outputs the first
    ``decoder.match`` label whose matcher accepts the text (config order), else ``fallback_label``."""
    feature = data["output_features"][0]
    if feature.get("type") != "category":
        return list(texts)
    decoder = feature.get("decoder") or {}
    matchers = compile_matchers(decoder.get("match") or {})
    fallback = (feature.get("preprocessing") or {}).get("fallback_label")
    return [next((label for label, matches in matchers if matches(text)), fallback) for text in texts]


def compile_matchers(match: dict) -> list[tuple[str, object]]:
    from fw.lazy import resolve
    from fw.registry import get_registry

    registry = get_registry()
    compiled = []
    for label, entry in match.items():
        descriptor = registry.get("matcher", entry.get("type", "contains"))
        options = {key: value for key, value in entry.items() if key not in ("type", "value")}
        compiled.append((label, resolve(descriptor.compile)(entry.get("value"), options)))
    return compiled

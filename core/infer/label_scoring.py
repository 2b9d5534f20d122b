"""Label scoring (``decoder.label_scoring: true``): rank the labels by likelihood instead of generating.

Each label (a ``decoder.match`` key) is scored as the model would write it right after the prompt: its probability
is the sum over the two ways a model writes a word there, the label as-is and after a space (the tokenizations
constrained decoding allows, :func:`fw.infer.constrained.label_token_variants`), so neither a prompt ending in a
newline (a chat template's assistant header, fw's default templates) nor one ending in ``Answer:`` is scored in a
form the model would never produce. The prompt/label boundary is checked for every prompt: a tokenization that the
tokenizer would not produce after the prompt's last token (the two would merge) is left out for that prompt.

Only the label tokens' log-probabilities are computed: one forward pass over a batch of (left-padded) prompts keeps
the last position's logits and the KV cache (``logits_to_keep=1``), then labels longer than one token continue from
that cache (repeated per such label; the prompt batch shrinks accordingly, so memory stays that of generating),
never a full-vocabulary log-softmax over every prompt position. The label with the highest probability is the
prediction; normalised over the labels, the probabilities give ``<output>_probabilities`` and the winner's
``<output>_probability``. No sampling, no parsing, no fallback: deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass

from fw.config import view
from fw.plugin import DecodedOutputs


@dataclass(frozen=True)
class Candidate:
    """One tokenization of one label."""

    label: int
    ids: tuple[int, ...]


def candidates(tokenizer, labels: list[str]) -> list[Candidate]:
    from fw.infer.constrained import label_token_variants

    return [Candidate(index, tuple(ids)) for index, label in enumerate(labels)
            for ids in label_token_variants(tokenizer, label)]


def written_after(tokenizer, last_token: int, candidate: Candidate, cache: dict) -> bool:
    """Whether the tokenizer writes ``candidate`` as these tokens after ``last_token`` (the boundary does not merge)."""
    key = (last_token, candidate.ids)
    if key not in cache:
        text = tokenizer.decode([last_token, *candidate.ids], skip_special_tokens=False)
        cache[key] = tokenizer.encode(text, add_special_tokens=False) == [last_token, *candidate.ids]
    return cache[key]


def candidate_log_probs(model, prompts: list[list[int]], options: list[Candidate], pad_id: int):
    """(prompts, candidates) tensor of summed candidate-token log-probabilities: one forward pass over the
    (left-padded) prompts keeping only the last position's logits and the KV cache, then one over the remaining
    tokens of the candidates longer than one token, on that cache repeated per candidate."""
    import torch

    from fw.infer.generation import left_pad

    if is_prompt_learning(model):  # virtual tokens go in front of every forward pass: no cache reuse
        return whole_sequence_log_probs(model, prompts, options, pad_id)
    device = next(model.parameters()).device
    ids, mask = (tensor.to(device) for tensor in left_pad(prompts, pad_id))
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    output = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    first = output.logits[:, -1].float().log_softmax(dim=-1)
    scores = first[:, [option.ids[0] for option in options]]
    longer = [index for index, option in enumerate(options) if len(option.ids) > 1]
    if longer:
        scores[:, longer] += continuation_log_probs(model, output.past_key_values, mask, positions,
                                                    [options[index] for index in longer], pad_id)
    return scores.cpu()


def continuation_log_probs(model, cache, mask, positions, options: list[Candidate], pad_id: int):
    """(prompts, options) log-probabilities of each option's tokens after its first, given the prompts' cache."""
    import torch

    prompts, count, longest = mask.shape[0], len(options), max(len(option.ids) for option in options) - 1
    inputs = torch.full((prompts * count, longest), pad_id, dtype=torch.long, device=mask.device)
    targets, present = torch.zeros_like(inputs), torch.zeros_like(inputs)
    for index, option in enumerate(options):
        length = len(option.ids) - 1
        inputs[index::count, :length] = torch.tensor(option.ids[:-1], device=mask.device)
        targets[index::count, :length] = torch.tensor(option.ids[1:], device=mask.device)
        present[index::count, :length] = 1
    cache.batch_repeat_interleave(count)  # row b of the prompts -> rows b * count .. b * count + count - 1
    attention = torch.cat([mask.repeat_interleave(count, dim=0), present], dim=-1)
    steps = positions[:, -1:].repeat_interleave(count, dim=0) + 1 + torch.arange(longest, device=mask.device)
    logits = model(input_ids=inputs, attention_mask=attention, position_ids=steps, past_key_values=cache,
                   use_cache=True).logits
    log_probs = logits.float().log_softmax(dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    return (log_probs * present).sum(dim=-1).view(prompts, count)


def whole_sequence_log_probs(model, prompts: list[list[int]], options: list[Candidate], pad_id: int):
    """The same scores from one forward pass per prompt x candidate row (models whose forward pass cannot take a
    KV cache), still computing logits at the candidate positions only."""
    import torch

    width, longest = max(len(prompt) for prompt in prompts), max(len(option.ids) for option in options)
    pairs = [(prompt, option) for prompt in prompts for option in options]
    ids = torch.full((len(pairs), width + longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (prompt, option) in enumerate(pairs):
        ids[row, width - len(prompt):width] = torch.tensor(prompt)
        ids[row, width:width + len(option.ids)] = torch.tensor(option.ids)
        mask[row, width - len(prompt):width + len(option.ids)] = 1
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=longest + 1).logits[:, :-1]
    log_probs = logits.float().log_softmax(dim=-1).gather(-1, ids[:, width:, None]).squeeze(-1)
    return (log_probs * mask[:, width:]).sum(dim=-1).view(len(prompts), len(options)).cpu()


def is_prompt_learning(model) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def score_prompts(model, tokenizer, prompts: list[list[int]], labels: list[str], options: list[Candidate],
                  cache: dict):
    """(prompts, labels) tensor of log p(label | prompt): log-sum-exp over each label's tokenizations that the
    tokenizer writes after that prompt (all of them when none is)."""
    import torch

    scores = candidate_log_probs(model, prompts, options, tokenizer.pad_token_id)
    for row, prompt in enumerate(prompts):
        kept = [written_after(tokenizer, prompt[-1], option, cache) if prompt else True for option in options]
        for label in range(len(labels)):
            own = [index for index, option in enumerate(options) if option.label == label]
            if any(kept[index] for index in own):
                scores[row, [index for index in own if not kept[index]]] = float("-inf")
    by_label = torch.full((len(prompts), len(labels)), float("-inf"))
    for label in range(len(labels)):
        own = [index for index, option in enumerate(options) if option.label == label]
        by_label[:, label] = scores[:, own].logsumexp(dim=-1)
    return by_label


def score_labels(model, tokenizer, prompt_ids, data: dict, show_progress: bool = False) -> DecodedOutputs:
    """The most likely label of every prompt, with per-label probabilities, in input order."""
    import torch

    from fw.console import ProgressBar
    from fw.data.tokens import length_sorted_batches
    from fw.infer.generation import as_id_lists
    from fw.train.batch_size import inference_batch_size

    labels = view.labels(data)
    options = candidates(tokenizer, labels)
    sequences = as_id_lists(prompt_ids)
    longer = sum(len(option.ids) > 1 for option in options)
    batch_size = inference_batch_size(data, model, [len(sequence) for sequence in sequences])
    batch_size = max(1, batch_size // longer) if longer else batch_size  # the cache is repeated per longer label
    scores, cache = torch.zeros((len(sequences), len(labels))), {}
    model.eval()
    with ProgressBar("scoring labels", len(sequences), show_progress) as bar, torch.no_grad():
        for indices in length_sorted_batches([len(sequence) for sequence in sequences], batch_size):
            scores[indices] = score_prompts(model, tokenizer, [sequences[i] for i in indices], labels, options, cache)
            bar.advance(len(indices))
    probabilities = scores.softmax(dim=-1)
    best = probabilities.argmax(dim=-1).tolist()
    name = view.output_name(data)
    return DecodedOutputs(values=[labels[i] for i in best], matched=[True] * len(best), columns={
        f"{name}_probabilities": [dict(zip(labels, row)) for row in probabilities.tolist()],
        f"{name}_probability": [row[i] for row, i in zip(probabilities.tolist(), best)],
    })


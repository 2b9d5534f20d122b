"""Label scoring (``decoder.label_scoring: true``): rank the labels by likelihood instead of generating.

For every prompt and every label (the ``decoder.match`` keys, tokenized as they would follow the prompt, see
:func:`fw.infer.constrained.continuation_ids`) the model scores ``log p(label tokens | prompt)``, the sum over the
label's tokens, in one teacher-forced forward pass per batch of ``prompts x labels`` rows. The label with the
highest score is the prediction; a softmax over the scores gives per-label probabilities
(``<output>_probabilities``, and the winner's as ``<output>_probability``). No sampling, no parsing, no
fallback: deterministic, and cheaper than generating when labels are short.
"""
from __future__ import annotations

from fw.config import view
from fw.plugin import DecodedOutputs


def label_ids(tokenizer, labels: list[str]) -> list[list[int]]:
    from fw.infer.constrained import continuation_ids

    return [continuation_ids(tokenizer, " " + label) for label in labels]


def score_batch(model, prompts: list[list[int]], labels: list[list[int]], pad_id: int):
    """(prompts, labels) tensor of summed label-token log-probabilities, one forward pass (right padding)."""
    import torch

    rows = [(prompt, label) for prompt in prompts for label in labels]
    width = max(len(prompt) + len(label) for prompt, label in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    target = torch.zeros_like(ids, dtype=torch.bool)
    for row, (prompt, label) in enumerate(rows):
        sequence = prompt + label
        ids[row, :len(sequence)] = torch.tensor(sequence)
        mask[row, :len(sequence)] = 1
        target[row, len(prompt):len(sequence)] = True
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    log_probs = logits[:, :-1].log_softmax(dim=-1).gather(-1, ids[:, 1:, None].to(device)).squeeze(-1)
    scores = (log_probs * target[:, 1:].to(device)).sum(dim=-1)
    return scores.view(len(prompts), len(labels)).cpu()


def score_labels(model, tokenizer, prompt_ids, data: dict, show_progress: bool = False) -> DecodedOutputs:
    """The most likely label of every prompt, with per-label probabilities, in input order."""
    import torch

    from fw.console import ProgressBar
    from fw.data.tokens import length_sorted_batches
    from fw.infer.generation import as_id_lists
    from fw.train.batch_size import inference_batch_size

    labels = view.labels(data)
    candidates = label_ids(tokenizer, labels)
    sequences = as_id_lists(prompt_ids)
    batch_size = inference_batch_size(data, model, [len(sequence) for sequence in sequences])
    scores = torch.zeros((len(sequences), len(labels)))
    model.eval()
    with ProgressBar("scoring labels", len(sequences), show_progress) as bar, torch.no_grad():
        for indices in length_sorted_batches([len(sequence) for sequence in sequences], batch_size):
            scores[indices] = score_batch(model, [sequences[i] for i in indices], candidates,
                                          tokenizer.pad_token_id)
            bar.advance(len(indices))
    probabilities = scores.softmax(dim=-1)
    best = probabilities.argmax(dim=-1).tolist()
    name = view.output_name(data)
    return DecodedOutputs(values=[labels[i] for i in best], matched=[True] * len(best), columns={
        f"{name}_probabilities": [dict(zip(labels, row)) for row in probabilities.tolist()],
        f"{name}_probability": [row[i] for row, i in zip(probabilities.tolist(), best)],
    })


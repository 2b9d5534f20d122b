"""Constrained decoding (``decoder.constrain_to_vocabulary: true``): every generation is exactly one label.

The labels (the ``decoder.match`` keys) are tokenized as they would follow a prompt (see
:func:`label_token_variants`) and put into a prefix trie of token ids. At each step a transformers
``LogitsProcessor`` keeps only the tokens that continue a label prefix the row has generated so far, plus EOS
once that prefix is a complete label; everything else gets ``-inf``. A row's state is read from its own
generated tokens, so the processor works for greedy, sampling and every beam strategy alike. The generation
length is capped at the longest label plus EOS.
"""
from __future__ import annotations

from fw.config import view

#: a prompt-like text the labels are tokenized after, so "positive" gets the token(s) it has mid-sentence
ANCHOR = "Answer:"


def continuation_ids(tokenizer, text: str, anchor: str = ANCHOR) -> list[int]:
    """Token ids of ``text`` where it follows ``anchor`` (the tokens a model generates after a prompt)."""
    before = tokenizer.encode(anchor, add_special_tokens=False)
    joint = tokenizer.encode(anchor + text, add_special_tokens=False)
    if joint[:len(before)] == before and len(joint) > len(before):
        return joint[len(before):]
    return tokenizer.encode(text, add_special_tokens=False)


def label_token_variants(tokenizer, label: str) -> list[list[int]]:
    """The tokenizations a generated label may take: right after the prompt, and after a space."""
    variants = [continuation_ids(tokenizer, label), continuation_ids(tokenizer, " " + label)]
    unique = []
    for ids in variants:
        if ids and ids not in unique:
            unique.append(ids)
    return unique


class LabelTrie:
    """Prefix trie of token id sequences; ``END`` marks a complete label."""

    END = -1

    def __init__(self, sequences: list[list[int]]):
        self.root: dict = {}
        self.depth = 0
        for sequence in sequences:
            node = self.root
            for token in sequence:
                node = node.setdefault(token, {})
            node[self.END] = {}
            self.depth = max(self.depth, len(sequence))

    def node(self, prefix: list[int]) -> dict | None:
        node = self.root
        for token in prefix:
            node = node.get(token)
            if node is None:
                return None
        return node

    def allowed(self, prefix: list[int], eos: list[int]) -> list[int] | None:
        """Tokens that may follow ``prefix`` (EOS once it is a complete label); None once off the trie."""
        node = self.node(prefix)
        if node is None:
            return None
        tokens = [token for token in node if token != self.END]
        return tokens + eos if self.END in node else tokens


def build_trie(tokenizer, labels: list[str]) -> LabelTrie:
    return LabelTrie([ids for label in labels for ids in label_token_variants(tokenizer, label)])


class LabelTrieLogitsProcessor:
    """Masks every token that cannot extend the row's generated prefix into a label (or end a complete one).

    Rows already finished (their prefix left the trie after EOS / padding) may only emit EOS or padding, so
    their scores never become all ``-inf``."""

    def __init__(self, trie: LabelTrie, prompt_width: int, eos: list[int], pad: int | None):
        self.trie, self.prompt_width, self.eos = trie, prompt_width, eos
        self.finished = sorted(set(eos + ([pad] if pad is not None else [])))

    def __call__(self, input_ids, scores):
        import torch

        mask = torch.full_like(scores, float("-inf"))
        for row, sequence in enumerate(input_ids[:, self.prompt_width:].tolist()):
            allowed = self.trie.allowed(sequence, self.eos)
            mask[row, allowed if allowed is not None else self.finished] = 0.0
        return scores + mask


def processor_factory(data: dict, tokenizer):
    """``prompt_width -> LabelTrieLogitsProcessor`` for ``data``'s labels, and the longest label in tokens."""
    from fw.infer.settings import stop_token_ids

    trie = build_trie(tokenizer, view.labels(data))
    eos = stop_token_ids(data, tokenizer)
    eos_ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    return (lambda prompt_width: LabelTrieLogitsProcessor(trie, prompt_width, eos_ids, tokenizer.pad_token_id),
            trie.depth)

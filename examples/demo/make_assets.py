"""Builds the demo's inputs, deterministically and offline: the dataset and the tiny base model.

Task: name the category most of three words belong to ("apple tiger lemon" -> "fruit"). Every row of the
test split is a word triple never seen in training, so a model has to learn the rule, not memorize rows.
"""
from __future__ import annotations

import random
from pathlib import Path

CATEGORIES = {
    "fruit": "apple lemon mango cherry grape peach".split(),
    "animal": "tiger falcon horse rabbit otter whale".split(),
    "instrument": "piano violin guitar flute drum harp".split(),
}
WORDS = [word for words in CATEGORIES.values() for word in words]
SEED = 7


def rows(count: int = 480) -> list[dict]:
    """``count`` distinct rows: three words, two of one category and one of another, in a random order; the
    answer is the category of the majority."""
    rng = random.Random(SEED)
    names = sorted(CATEGORIES)
    seen, result = set(), []
    while len(result) < count:
        major, minor = rng.sample(names, 2)
        words = rng.sample(CATEGORIES[major], 2) + [rng.choice(CATEGORIES[minor])]
        rng.shuffle(words)
        key = " ".join(words)
        if key not in seen:
            seen.add(key)
            result.append({"words": key, "category": major})
    return result


def write_dataset(path: Path, count: int = 480, test_fraction: float = 0.125) -> Path:
    import csv

    data = rows(count)
    test_rows = int(len(data) * test_fraction)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["words", "category", "split"])
        writer.writeheader()
        for index, row in enumerate(data):
            split = "test" if index < test_rows else "validation" if index < test_rows + 30 else "train"
            writer.writerow({**row, "split": split})
    return path


def build_base_model(path: Path, hidden: int = 128, layers: int = 4, heads: int = 4, seed: int = 0) -> Path:
    """A random-init Llama-style model whose tokenizer knows the demo's words as single tokens."""
    from fw.model.loading import quiet_libraries

    quiet_libraries()  # before transformers is imported: it imports torchao, whose import logs on a CPU-only torch
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fw.model.tiny import DEFAULT_CORPUS, build_tokenizer

    corpus = DEFAULT_CORPUS + ([" ".join(WORDS), "\n".join(WORDS + list(CATEGORIES)),
                                "Which kind are most of these words: apple tiger lemon\nAnswer: fruit"] * 8)
    tokenizer = build_tokenizer(path, corpus)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=hidden * 2,
                         max_position_embeddings=256, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    return path

"""Tiny, deterministic, offline models and tokenizers for tests and the demo.

Everything is built in-process (no download): a byte-level BPE tokenizer trained on a small corpus and
randomly initialised Llama / GPT-2 causal LMs (hidden 64, 2 layers, 4 heads) saved as safetensors together
with the tokenizer, so ``AutoModelForCausalLM.from_pretrained(path)`` and
``AutoTokenizer.from_pretrained(path)`` load them. Sizes are chosen so that the block-structured adapters
(BOFT, OFT, C3A, VBLoRA) have divisors to work with: every linear layer dimension is a multiple of 32.
"""
from __future__ import annotations

from pathlib import Path

VOCAB_SIZE = 512
HIDDEN = 64
LAYERS = 2
HEADS = 4
LLAMA_KV_HEADS = 2
INTERMEDIATE = 128
MAX_POSITIONS = 256
SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}

DEFAULT_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Classify the sentiment of the review: the movie was wonderful and moving.",
    "Classify the sentiment of the review: the food was cold and the service slow.",
    "Question: what is the capital of France? Answer: Paris.",
    "Question: how many legs does a spider have? Answer: eight.",
    "Translate to French: good morning -> bonjour.",
    "positive negative neutral label input response instruction output",
    "def add(a, b):\n    return a + b\n",
    '{"name": "fw", "type": "json", "values": [1, 2, 3]}',
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000",
]


def build_tokenizer(path: str | Path, corpus: list[str] | None = None):
    """Train a byte-level BPE tokenizer on ``corpus`` and save it (``save_pretrained``) under ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(list(corpus or DEFAULT_CORPUS) * 4, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=MAX_POSITIONS,
                                      **SPECIAL_TOKENS)
    Path(path).mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(path))
    return wrapped


def _special_ids(tokenizer) -> dict[str, int]:
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def _save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    return path


def build_tiny_llama(path: str | Path, seed: int = 0, **shape) -> Path:
    """A random-init ``LlamaForCausalLM`` (hidden 64, 2 layers, 4 heads / 2 kv heads) plus tokenizer; ``shape``
    overrides ``LlamaConfig`` fields (e.g. ``hidden_size``, ``num_hidden_layers``) for a bigger model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = build_tokenizer(path)
    fields = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  num_key_value_heads=LLAMA_KV_HEADS, intermediate_size=INTERMEDIATE,
                  max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=False)
    config = LlamaConfig(vocab_size=len(tokenizer), **{**fields, **shape}, **_special_ids(tokenizer))
    torch.manual_seed(seed)
    return _save(LlamaForCausalLM(config), tokenizer, path)


def build_tiny_gpt2(path: str | Path, seed: int = 0) -> Path:
    """A random-init ``GPT2LMHeadModel`` (hidden 64, 2 layers, 4 heads, inner 128) plus tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    path = Path(path)
    tokenizer = build_tokenizer(path)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                        n_inner=INTERMEDIATE, n_positions=MAX_POSITIONS, **_special_ids(tokenizer))
    torch.manual_seed(seed)
    return _save(GPT2LMHeadModel(config), tokenizer, path)

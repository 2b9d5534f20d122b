"""CPU micro-benchmark of fw.train.loss (chunked loss) and fw.train.packing (padding-free packing). Not a test.

    .venv/bin/python bench/loss_packing_cpu.py

1. Loss: one forward + backward of a small Llama with a 128k vocabulary (hidden 256, 2 layers, LoRA r=16 on
   q,k,v,o) on 4 rows x 512 tokens, response = the last half of each row: the model's own loss (full
   ``[tokens x vocab]`` float32 logits) against fw's chunked loss (head + cross-entropy on response tokens
   only, 512-token chunks). Each variant runs in its own subprocess; peak memory = peak RSS during the step
   minus RSS before it.
2. Packing: one epoch over 64 rows with an Alpaca-like long tail of lengths (lognormal, median 64, clipped to
   16..256), batch 8 padded to the longest row vs packed into 8 x mean-length token budgets; real
   (non-padding) tokens per second, forward + backward with LoRA.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

VOCAB, HIDDEN, ROWS, LENGTH = 128_256, 256, 4, 512


def small_llama(vocab: int):
    import peft
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=4 * HIDDEN, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         attn_implementation="sdpa")
    model = LlamaForCausalLM(config)
    lora = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                  "o_proj"])
    return peft.get_peft_model(model, lora)


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def loss_variant(name: str) -> dict:
    import torch

    from fw.train import loss

    model = small_llama(VOCAB)
    ids = torch.randint(5, VOCAB, (ROWS, LENGTH), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :LENGTH // 2] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    compute = loss.chunked_loss_sum if name == "chunked" else loss.standard_loss_sum
    total, tokens = compute(model, batch)  # warm-up (allocator, kernels)
    (total / tokens).backward()
    model.zero_grad(set_to_none=True)
    del total
    before = rss_mb()
    started = time.perf_counter()
    total, tokens = compute(model, batch)
    (total / tokens).backward()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": name, "loss": float(total.detach()) / tokens, "seconds": round(seconds, 3),
            "peak_step_memory_mb": round(peak - before, 1)}


def lengths(count: int) -> list[int]:
    import torch

    generator = torch.Generator().manual_seed(0)
    raw = torch.exp(torch.randn(count, generator=generator) * 0.8) * 64
    return [int(min(256, max(16, value))) for value in raw.tolist()]


def packing_variant(name: str) -> dict:
    import torch

    from fw.train import loss, packing
    from fw.data.tokens import EncodedRow, collate

    model = small_llama(32_000)
    generator = torch.Generator().manual_seed(1)
    rows = []
    for length in lengths(64):
        ids = torch.randint(5, 32_000, (length,), generator=generator).tolist()
        rows.append(EncodedRow(ids, [-100] * (length // 2) + ids[length // 2:]))
    trainer = {"batch_size": 8}
    if name == "packed":
        groups = packing.packed_batches(rows, trainer)
        batches = [packing.collate_packed([rows[i] for i in group]) for group in groups]
    else:
        from fw.data.tokens import length_sorted_batches

        groups = length_sorted_batches([len(row) for row in rows], 8)
        batches = [collate([rows[i] for i in group], pad_token_id=0) for group in groups]
    real = sum(len(row) for row in rows)
    computed = sum(batch["input_ids"].numel() for batch in batches)
    started = time.perf_counter()
    for batch in batches:
        total, tokens = loss.chunked_loss_sum(model, batch)
        (total / tokens).backward()
    seconds = time.perf_counter() - started
    return {"variant": name, "micro_batches": len(batches), "real_tokens": real, "computed_tokens": computed,
            "seconds": round(seconds, 2), "real_tokens_per_second": round(real / seconds)}


def run(kind: str, name: str) -> dict:
    output = subprocess.run([sys.executable, __file__, kind, name], check=True, capture_output=True, text=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    results = {"loss": [run("loss", name) for name in ("standard", "chunked")],
               "packing": [run("packing", name) for name in ("padded", "packed")]}
    for row in results["loss"]:
        print(f"loss {row['variant']:>8}: {row['seconds']:.3f} s per forward+backward, "
              f"peak step memory {row['peak_step_memory_mb']:.0f} MB, loss {row['loss']:.4f}")
    for row in results["packing"]:
        print(f"epoch {row['variant']:>7}: {row['micro_batches']} micro-batches, {row['computed_tokens']} tokens "
              f"computed for {row['real_tokens']} real, {row['seconds']:.2f} s, "
              f"{row['real_tokens_per_second']} real tok/s")
    print(json.dumps(results))


if __name__ == "__main__":
    if len(sys.argv) == 3:
        function = loss_variant if sys.argv[1] == "loss" else packing_variant
        print(json.dumps(function(sys.argv[2])))
    else:
        main()

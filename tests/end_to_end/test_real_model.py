"""On a real instruct model (SmolLM2-135M-Instruct from fw's cache; `make smollm2`): the chat template round trip
(train -> save -> fw predict gives the text plain transformers + peft give on the saved model), zero-shot category
extraction with and without the template, and a short LoRA run whose held-out loss drops. Few rows, few steps: CPU.
"""
from __future__ import annotations


import pandas as pd
import pytest
import torch

from fw import pipeline

from repo_root import REPO

pytestmark = [pytest.mark.realmodel, pytest.mark.slow]

TWEETS = REPO / "examples" / "sentiment" / "tweets.csv"
QUESTION = "Is the sentiment of this tweet positive, negative or neutral? Answer with one word.\n\nTweet: {text}"
LABELS = ("positive", "negative", "neutral")
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # the template's default


def tweets(split: str, rows: int) -> pd.DataFrame:
    frame = pd.read_csv(TWEETS)
    return frame[frame["split"] == split].drop(columns="split").head(rows).reset_index(drop=True)


def config(base, **changes) -> dict:
    data = {"base_model": str(base), "input_features": [{"name": "text"}],
            "output_features": [{"name": "sentiment", "preprocessing": {"max_sequence_length": 4}}],
            "prompt": {"chat_template": True, "template": QUESTION},
            "adapter": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0,
                        "target_modules": ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]},
            # fw's former defaults, written out: AdamW, one cosine over the 2 steps, clipglobalnorm 1.0
            "trainer": {"type": "finetune", "epochs": 1, "batch_size": 8, "eval_batch_size": 8, "learning_rate": 0.003,
                        "optimizer": {"type": "adamw"}, "learning_rate_scheduler": {"decay": "cosine", "t_0": 2},
                        "gradient_clipping": {"clipglobalnorm": 1.0}, "seed": 42},
            "generation": {"max_new_tokens": 6, "do_sample": False}}
    data.update(changes)
    return data


def classify(base, chat: bool) -> dict:
    return config(base, trainer={"type": "none", "eval_batch_size": 8},
                  prompt={"chat_template": chat, "template": QUESTION},
                  output_features=[{"name": "sentiment", "type": "category",
                                    "preprocessing": {"fallback_label": "none"},
                                    "decoder": {"type": "category_extractor",
                                                "match": {label: {"type": "contains", "value": label}
                                                          for label in LABELS}}}])


@pytest.fixture(scope="module")
def trained(smollm2_dir, tmp_path_factory):
    """A short LoRA run (2 steps) on 16 training tweets, with the loss on 8 held-out tweets before and after."""
    from fw.data.tokens import encode
    from fw.model.loading import load_base_model
    from fw.train.trainer import evaluate_loss

    data = config(smollm2_dir)
    held_out = tweets("test", 8)
    base, tokenizer = load_base_model(data)
    prompts = [QUESTION.format(text=text) for text in held_out["text"]]
    rows, _ = encode(prompts, held_out["sentiment"].tolist(), tokenizer, pipeline.resolve_config(data))
    before = evaluate_loss(base, tokenizer, rows, 8)["loss"]
    del base
    run = pipeline.train(data, training_set=tweets("train", 16), test_set=held_out,
                         output_directory=tmp_path_factory.mktemp("real-runs"), show_progress=False)
    return run, before


def test_a_short_lora_run_lowers_the_held_out_loss(trained):
    run, before = trained
    assert run.statistics["test"]["loss"] < before


def test_the_chat_template_round_trip_matches_plain_transformers_and_peft(trained, smollm2_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, _ = trained
    rows = tweets("test", 3)
    result = pipeline.predict(model_path=run.model_dir, dataset=rows, output_directory=tmp_path, show_progress=False)
    tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_dir), run.model_dir).eval()
    for text, predicted, raw in zip(rows["text"], result.predictions["sentiment_predictions"],
                                    result.predictions["raw_generation"]):
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION.format(text=text)}]
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        new = output[0, inputs["input_ids"].shape[1]:]
        assert tokenizer.decode(new, skip_special_tokens=True).strip() == predicted
        assert tokenizer.decode(new, skip_special_tokens=False) == raw  # the same stop: <|im_end|>, no padding


def test_zero_shot_category_extraction_names_a_label_only_through_the_chat_template(smollm2_dir):
    rows = tweets("test", 8)
    _, model, tokenizer = pipeline.model_for_inference(config=classify(smollm2_dir, True))
    fallback, raw, shown = {}, {}, {}
    for chat in (True, False):
        data = pipeline.resolve_config(classify(smollm2_dir, chat))
        prompts = pipeline.prompts_of(rows, data, tokenizer)
        generations, outputs = pipeline.generate_for(prompts, data, model, tokenizer, False)
        fallback[chat] = sum(not matched for matched in outputs.matched) / len(rows)
        raw[chat], shown[chat] = [g.raw for g in generations], pipeline.shown_prompts(prompts, data, tokenizer)
    assert fallback[True] <= 0.25 < fallback[False], fallback
    ended = [text for text in raw[True] if "<|im_end|>" in text]  # the others ran into max_new_tokens
    assert ended and all(text.endswith("<|im_end|>") and text.count("<|im_end|>") == 1 for text in ended)
    assert shown[True][0].startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n")
    assert shown[False][0] == QUESTION.format(text=rows["text"][0])

"""The engine end to end on the tiny Llama: fw train / predict / evaluate (CLI and fw.pipeline), artifacts that
load with transformers / peft alone, every built-in adapter saving and reloading to the same logits, full
fine-tuning, merging, trainer none, reproducibility and LoRA+."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from fw import pipeline
from fw.artifacts import load_trained
from fw.cli.main import main

from built_in_plugins import LAYER_ADAPTERS, TINY_OVERRIDES

PROBE = torch.tensor([[1, 5, 9, 20, 30, 41]])


def table(rows: int = 12) -> pd.DataFrame:
    return pd.DataFrame({"question": [f"what is {i} plus one" for i in range(rows)],
                         "answer": [f"it is {i + 1}" for i in range(rows)]})


def config(base, **overrides) -> dict:
    data = {"base_model": str(base), "input_features": [{"name": "question"}],
            "output_features": [{"name": "answer"}], "prompt": {"template": "Q: {question}\nA:"},
            "adapter": {"type": "lora", "r": 4},
            "trainer": {"type": "finetune", "epochs": 2, "batch_size": 4, "learning_rate": 0.01, "seed": 1},
            "generation": {"max_new_tokens": 4, "do_sample": False}}
    data.update(overrides)
    return data


def logits(model, probe=PROBE):
    with torch.no_grad():
        return model(probe.to(next(model.parameters()).device)).logits.float().cpu()


@pytest.fixture()
def files(tmp_path, tiny_llama_dir):
    dataset = tmp_path / "data.csv"
    table(20).to_csv(dataset, index=False)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config(tiny_llama_dir)))
    return tmp_path, config_file, dataset


# -- the CLI path ------------------------------------------------------------------------------------------------
def test_train_predict_evaluate_through_the_cli(files):
    root, config_file, dataset = files
    results = root / "results"
    assert main(["train", "--config", str(config_file), "--dataset", str(dataset), "--output_directory", str(results),
                 "--experiment_name", "exp", "--no_progress"]) == 0
    run = results / "exp_run"
    for name in ("model/adapter_model.safetensors", "model/adapter_config.json", "model/tokenizer.json",
                 "model/generation_config.json", "config.yaml", "manifest.json", "training_statistics.json"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert {"fw", "torch", "transformers", "peft"} <= set(manifest["versions"]) and manifest["seed"] == 1
    assert len(manifest["data_hash"]) == 64
    stats = json.loads((run / "training_statistics.json").read_text())
    assert len(stats["validation"]["loss"]) == 2 and stats["train_loss_per_step"]
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["trainer"]["optimizer"]["type"] == "adam"  # every default filled in (Ludwig's)

    assert main(["predict", "--model_path", str(run / "model"), "--dataset", str(dataset), "--no_progress"]) == 0
    predictions = pd.read_parquet(run / "predictions" / "predictions.parquet")
    assert len(predictions) == 20 and {"prompt", "raw_generation", "answer_predictions"} <= set(predictions.columns)
    assert predictions["prompt"][0] == "Q: what is 0 plus one\nA:"
    assert len(pd.read_csv(run / "predictions" / "predictions.csv")) == 20

    assert main(["evaluate", "--model_path", str(run), "--dataset", str(dataset), "--split", "test",
                 "--no_progress"]) == 0
    statistics = json.loads((run / "evaluation" / "test_statistics.json").read_text())["answer"]
    assert {"loss", "perplexity", "exact_match", "token_f1", "bleu", "rougeL_f"} <= set(statistics)


def test_the_saved_model_loads_with_transformers_and_peft_alone(tmp_path, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = pipeline.train(config(tiny_llama_dir), training_set=table(), output_directory=tmp_path,
                            show_progress=False)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    plain = PeftModel.from_pretrained(base, result.model_dir).eval()
    assert torch.allclose(logits(plain), logits(result.model), atol=1e-5)
    assert AutoTokenizer.from_pretrained(result.model_dir).pad_token is not None


def test_trainer_none_evaluates_the_base_model_from_the_config(tmp_path, tiny_llama_dir):
    data = config(tiny_llama_dir, trainer={"type": "none"})
    result = pipeline.evaluate(config=data, dataset=table(6), output_directory=tmp_path / "out", show_progress=False)
    assert result.statistics["answer"]["exact_match"] == 0.0 and result.statistics["answer"]["loss"] > 1
    assert (tmp_path / "out" / "test_statistics.json").is_file()
    assert (tmp_path / "out" / "predictions.parquet").is_file()


def test_same_seed_same_loss_curve(tmp_path, tiny_llama_dir):
    data = config(tiny_llama_dir, adapter={"type": "lora", "r": 4, "dropout": 0.1})
    runs = [pipeline.train(data, training_set=table(), output_directory=tmp_path / str(i), show_progress=False)
            for i in range(2)]
    assert runs[0].statistics["train_loss_per_step"] == runs[1].statistics["train_loss_per_step"]


def test_training_lowers_the_loss(tmp_path, tiny_llama_dir):
    data = config(tiny_llama_dir, adapter=None,
                  trainer={"type": "finetune", "epochs": 4, "batch_size": 4, "learning_rate": 0.003})
    stats = pipeline.train(data, training_set=table(), output_directory=tmp_path, show_progress=False).statistics
    assert stats["train_loss_per_step"][-1] < stats["train_loss_per_step"][0] * 0.8


# -- adapters ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("adapter", LAYER_ADAPTERS)
def test_every_adapter_trains_saves_and_reloads_to_the_same_logits(tmp_path, tiny_llama_dir, adapter):
    from transformers import AutoModelForCausalLM

    data = config(tiny_llama_dir, adapter={"type": adapter, **TINY_OVERRIDES.get(adapter, {})},
                  trainer={"type": "finetune", "epochs": 1, "train_steps": 2, "batch_size": 4, "learning_rate": 0.01})
    result = pipeline.train(data, training_set=table(8), output_directory=tmp_path, show_progress=False)
    assert (result.model_dir / "adapter_config.json").is_file()
    _, reloaded, _ = load_trained(result.model_dir)
    if adapter == "adalora":  # PEFT reloads AdaLoRA resized to its allocated ranks: same values, other matmul shapes
        assert torch.allclose(logits(reloaded), logits(result.model), atol=1e-6)
    else:
        assert torch.equal(logits(reloaded), logits(result.model))
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert not torch.allclose(logits(base), logits(reloaded)), "training changed nothing"


def test_no_adapter_is_a_full_fine_tune(tmp_path, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    result = pipeline.train(config(tiny_llama_dir, adapter=None), training_set=table(8), output_directory=tmp_path,
                            show_progress=False)
    assert (result.model_dir / "model.safetensors").is_file()
    assert not (result.model_dir / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(result.model_dir)
    assert torch.allclose(logits(plain), logits(result.model), atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert not torch.allclose(logits(base), logits(plain))


def test_merge_adapter_into_base_model_writes_a_plain_transformers_model(tmp_path, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    adapter = {"type": "lora", "r": 4, "postprocessor": {"merge_adapter_into_base_model": True, "progressbar": True}}
    result = pipeline.train(config(tiny_llama_dir, adapter=adapter), training_set=table(8), output_directory=tmp_path,
                            show_progress=False)
    assert not (result.model_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(result.model_dir)
    assert torch.allclose(logits(merged), logits(result.model), atol=1e-4)
    predicted = pipeline.predict(model_path=result.model_dir, dataset=table(2), show_progress=False)
    assert len(predicted.predictions) == 2


def test_pretrained_adapter_weights_continue_training(tmp_path, tiny_llama_dir):
    first = pipeline.train(config(tiny_llama_dir), training_set=table(8), output_directory=tmp_path / "a",
                           show_progress=False)
    adapter = {"type": "lora", "r": 4, "pretrained_adapter_weights": str(first.model_dir)}
    data = config(tiny_llama_dir, adapter=adapter, trainer={"type": "finetune", "epochs": 1, "train_steps": 1,
                                                            "batch_size": 4,
                                                            "learning_rate": 1e-9})
    second = pipeline.train(data, training_set=table(8), output_directory=tmp_path / "b", show_progress=False)
    assert torch.allclose(logits(second.model), logits(first.model), atol=1e-3)


# -- trainer pieces ----------------------------------------------------------------------------------------------
def test_loraplus_gives_the_b_matrices_a_larger_learning_rate(tiny_llama_dir):
    from fw.model.adapters import wrap_model
    from fw.config.load import load_config
    from fw.model.loading import load_base_model
    from fw.train.optim import build_optimizer

    data = load_config(config(tiny_llama_dir, adapter={"type": "lora", "r": 4, "loraplus_lr_ratio": 16})).data
    model, _ = load_base_model(data, for_training=True)
    model = wrap_model(model, data["adapter"])
    optimizer = build_optimizer(model, data)
    assert [group["lr"] for group in optimizer.param_groups] == [0.01, 0.16]
    b_ids = {id(p) for n, p in model.named_parameters() if "lora_B" in n}
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == b_ids


def test_early_stopping_and_best_checkpoint(tmp_path, tiny_llama_dir):
    from fw.data.tokens import encode
    from fw.train.trainer import evaluate_loss

    # validation answers the training rows never show: fitting the training rows soon makes validation worse
    validation = pd.DataFrame({"question": [f"what is {i} plus one" for i in range(4)], "answer": ["zebra blue"] * 4})
    data = config(tiny_llama_dir, adapter=None,
                  trainer={"type": "finetune", "epochs": 8, "batch_size": 4, "learning_rate": 0.003, "early_stop": 1})
    result = pipeline.train(data, training_set=table(), validation_set=validation, output_directory=tmp_path,
                            show_progress=False)
    stats = result.statistics
    assert stats["stopped_early"] and len(stats["validation"]["loss"]) < 8
    assert stats["best"]["loss"] == min(stats["validation"]["loss"]) < stats["validation"]["loss"][-1]
    rows, _ = encode([f"Q: what is {i} plus one\nA:" for i in range(4)], ["zebra blue"] * 4, result.tokenizer,
                     result.config)
    kept = evaluate_loss(result.model, result.tokenizer, rows, 4)["loss"]
    assert kept == pytest.approx(stats["best"]["loss"], rel=1e-4), "the best weights were not restored"


def test_metrics():
    from fw.infer.metrics import exact_match, text_metrics, token_f1

    assert exact_match(["a b", " c "], ["a b", "c"]) == 1.0
    assert token_f1(["the cat sat"], ["the cat"]) == pytest.approx(0.8)
    scores = text_metrics(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert scores["bleu"] == pytest.approx(1.0) and scores["rougeL_f"] == pytest.approx(1.0)

"""Every error a user can cause in fw train / predict / evaluate is one clear line (no traceback) that names
what is wrong and how to fix it."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pandas as pd
import pytest
import yaml

from fw.cli.main import main


@pytest.fixture()
def workspace(tmp_path, tiny_llama_dir):
    dataset = tmp_path / "data.csv"
    pd.DataFrame({"question": [f"q{i}" for i in range(8)], "answer": [f"a{i}" for i in range(8)]}).to_csv(
        dataset, index=False)

    def write_config(base_model=str(tiny_llama_dir), **overrides):
        config = {"base_model": base_model, "input_features": [{"name": "question"}],
                  "output_features": [{"name": "answer"}],
                  "adapter": {"type": "lora", "r": 4}, "trainer": {"type": "finetune", "epochs": 1, "batch_size": 4}}
        config.update(overrides)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        return str(path)

    return tmp_path, dataset, write_config


def run(capsys, *argv) -> tuple[int, str]:
    code = main([*map(str, argv), "--no_progress"])
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return code, " ".join(error.split())


def test_missing_local_base_model(workspace, capsys):
    root, dataset, write_config = workspace
    code, error = run(capsys, "train", "--config", write_config(base_model="./models/nope"), "--dataset", dataset)
    assert code == 1
    assert "base_model: local path './models/nope' does not exist" in error


def test_base_model_directory_without_a_model(workspace, capsys):
    root, dataset, write_config = workspace
    (root / "empty").mkdir()
    code, error = run(capsys, "train", "--config", write_config(base_model=str(root / "empty")), "--dataset", dataset)
    assert code == 1 and "is not a model directory (no config.json in it)" in error


def test_a_base_model_that_cannot_load_leaves_no_run_directory(workspace, capsys):
    root, dataset, write_config = workspace
    code, error = run(capsys, "train", "--config", write_config(base_model="./models/nope"), "--dataset", dataset,
                      "--output_directory", root / "results")
    assert code == 1 and "base_model: local path './models/nope' does not exist" in error
    assert not (root / "results").exists() or not any((root / "results").iterdir())


def test_models_that_need_remote_code_are_refused(workspace, capsys, tiny_llama_dir):
    root, dataset, write_config = workspace
    custom = root / "custom"
    shutil.copytree(tiny_llama_dir, custom)
    declared = json.loads((custom / "config.json").read_text())
    declared["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomModel"}
    (custom / "config.json").write_text(json.dumps(declared))
    code, error = run(capsys, "train", "--config", write_config(base_model=str(custom)), "--dataset", dataset)
    assert code == 1 and "needs trust_remote_code" in error and "does not execute untrusted code" in error


def test_unreachable_hub_model(workspace, capsys, monkeypatch):
    root, dataset, write_config = workspace
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    code, error = run(capsys, "evaluate", "--config", write_config(base_model="no-such-org/no-such-model",
                                                                    trainer={"type": "none"}), "--dataset", dataset)
    assert code == 1
    assert "base_model: 'no-such-org/no-such-model' is not in the local cache, and HF_HUB_OFFLINE is set" in error \
        and "local directory" in error


@pytest.mark.parametrize("failure, expected", [
    ("gated", "is a gated model and your token (HUGGING_FACE_HUB_TOKEN / HF_TOKEN) has no access yet. Request "
              "access on https://huggingface.co/org/model"),
    ("missing", "is neither a local directory nor a model on the Hugging Face Hub"),
])
def test_gated_and_unknown_hub_models(failure, expected, monkeypatch):
    from huggingface_hub import errors
    from transformers import AutoTokenizer

    from fw.errors import FwError
    from fw.model.loading import load_tokenizer

    response = type("Response", (), {"headers": {}, "status_code": 403, "request": None, "url": "x"})()
    exception = {"gated": errors.GatedRepoError, "missing": errors.RepositoryNotFoundError}[failure]

    def refuse(*args, **kwargs):
        raise exception("boom", response=response)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    with pytest.raises(FwError) as raised:
        load_tokenizer("org/model")
    assert expected in str(raised.value) and "hf_secret_value" not in str(raised.value)


def test_model_path_that_does_not_exist(workspace, capsys):
    root, dataset, _ = workspace
    code, error = run(capsys, "predict", "--model_path", root / "results" / "nope", "--dataset", dataset)
    assert code == 1 and "--model_path: '" in error and "does not exist" in error


def test_model_path_without_a_saved_model(workspace, capsys):
    root, dataset, _ = workspace
    code, error = run(capsys, "predict", "--model_path", root, "--dataset", dataset)
    assert code == 1 and "holds no saved model" in error


def test_predict_needs_a_model_or_a_config(workspace, capsys):
    root, dataset, _ = workspace
    code, error = run(capsys, "predict", "--dataset", dataset)
    assert code == 1 and "give --model_path" in error and "--config" in error


def test_predict_needs_data(workspace, capsys):
    root, dataset, write_config = workspace
    code, error = run(capsys, "predict", "--config", write_config(trainer={"type": "none"}))
    assert code == 1 and "no data given: pass --dataset" in error


def test_config_file_not_found(workspace, capsys):
    root, dataset, _ = workspace
    code, error = run(capsys, "train", "--config", root / "missing.yaml", "--dataset", dataset)
    assert code == 2 and "config file not found" in error


def test_an_invalid_config_is_reported_with_its_paths_before_anything_loads(workspace, capsys):
    root, dataset, write_config = workspace
    code, error = run(capsys, "train", "--config", write_config(adapter={"type": "lora", "r": 0}), "--dataset",
                      dataset)
    assert code == 1 and "adapter.r" in error


def test_training_with_trainer_none_explains_what_to_do(workspace, capsys):
    root, dataset, write_config = workspace
    code, error = run(capsys, "train", "--config", write_config(trainer={"type": "none"}), "--dataset", dataset)
    assert code == 1 and "trainer.type is none: there is nothing to train" in error and "fw evaluate" in error


def test_evaluate_needs_the_output_column(workspace, capsys):
    root, dataset, write_config = workspace
    unlabeled = root / "unlabeled.csv"
    pd.DataFrame({"question": ["q"]}).to_csv(unlabeled, index=False)
    code, error = run(capsys, "evaluate", "--config", write_config(trainer={"type": "none"}), "--dataset", unlabeled)
    assert code == 1 and "reads column 'answer' that the evaluate data does not have" in error \
        and "Use fw predict for unlabeled data." in error


def test_dataset_file_that_does_not_exist(workspace, capsys):
    root, dataset, write_config = workspace
    code, error = run(capsys, "train", "--config", write_config(), "--dataset", root / "nope.csv")
    assert code == 1 and "nope.csv" in error


def test_template_naming_an_unknown_column(workspace, capsys):
    root, dataset, write_config = workspace
    code, error = run(capsys, "train", "--config", write_config(prompt={"template": "Q: {questoin}"}),
                      "--dataset", dataset)
    assert code == 1 and "'questoin'" in error and "question" in error


def test_pretrained_adapter_weights_that_are_not_an_adapter(workspace, capsys):
    root, dataset, write_config = workspace
    (root / "not_an_adapter").mkdir()
    config = write_config(adapter={"type": "lora", "pretrained_adapter_weights": str(root / "not_an_adapter")})
    code, error = run(capsys, "train", "--config", config, "--dataset", dataset)
    assert code == 1 and "adapter.pretrained_adapter_weights" in error and "no adapter_config.json" in error


def test_resume_after_changing_the_adapter_is_refused(workspace, capsys):
    root, dataset, write_config = workspace
    flags = ["--dataset", dataset, "--output_directory", root / "out"]
    assert run(capsys, "train", "--config", write_config(), *flags)[0] == 0
    code, error = run(capsys, "train", "--config", write_config(adapter={"type": "ia3"}), *flags, "--resume")
    assert code == 1 and "--resume: the config differs from the one" in error
    assert "adapter.type 'lora' -> 'ia3'" in error and "the checkpoint holds another model" in error
    assert "train a new run without --resume" in error


def test_merging_an_adapter_peft_cannot_merge_is_refused_before_training(workspace, capsys, monkeypatch):
    from fw.plugin import registry as registry_module

    root, dataset, write_config = workspace
    registry = registry_module.get_registry()
    real_get = registry.get

    def unmergeable(kind, name):
        descriptor = real_get(kind, name)
        return dataclasses.replace(descriptor, mergeable=False) if kind == "adapter" else descriptor

    monkeypatch.setattr(registry, "get", unmergeable)
    adapter = {"type": "lora", "r": 4, "postprocessor": {"merge_adapter_into_base_model": True}}
    code, error = run(capsys, "train", "--config", write_config(adapter=adapter), "--dataset", dataset,
                      "--output_directory", root / "out")
    assert code == 1 and "PEFT cannot merge 'lora' adapters" in error and "Set it to false" in error
    assert not (root / "out").exists() or not list((root / "out").rglob("model"))


def broken_model(root, tiny_llama_dir, breakage: str) -> str:
    model = root / "model"
    shutil.copytree(tiny_llama_dir, model)
    if breakage == "weights":
        (model / "model.safetensors").write_bytes(b"not safetensors")
    else:
        declared = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**declared, "auto_map": {"AutoModelForCausalLM": "x.Y"}}))
    return str(model)


@pytest.mark.parametrize("breakage, expected", [
    ("weights", "base_model: cannot load"),
    ("remote code", "needs trust_remote_code"),
    ("adapter", "adapter: PEFT could not apply adapter 'lora' to the model"),
])
def test_a_run_that_fails_before_training_leaves_no_run_directory(workspace, capsys, tiny_llama_dir, breakage,
                                                                  expected):
    root, dataset, write_config = workspace
    if breakage == "adapter":
        config = write_config(adapter={"type": "lora", "r": 4, "target_modules": ["no_such_layer"]})
    else:
        config = write_config(base_model=broken_model(root, tiny_llama_dir, breakage))
    code, error = run(capsys, "train", "--config", config, "--dataset", dataset, "--output_directory", root / "out")
    assert code == 1 and expected in error
    assert not (root / "out").exists() or not list((root / "out").iterdir())

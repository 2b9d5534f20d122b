"""Prompt-learning PEFT methods (virtual tokens instead of adapted layers) as plain adapter plugins: prompt tuning
trained through fw train, saved, reloaded by fw predict; and refused clearly where PEFT cannot follow."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import fw
from fw import pipeline
from fw.artifacts import load_trained
from fw.cli.main import main
from fw.errors import FwError

PROBE = torch.tensor([[1, 5, 9, 20, 30, 41]])
PROMPT_TUNING = {"type": "prompt_tuning", "num_virtual_tokens": 4}


def table(rows: int = 16) -> pd.DataFrame:
    return pd.DataFrame({"question": [f"what is {i} plus one" for i in range(rows)],
                         "answer": [f"it is {i + 1}" for i in range(rows)]})


def config(base, **sections) -> dict:
    return {"base_model": str(base), "input_features": [{"name": "question"}],
            "output_features": [{"name": "answer"}], "prompt": {"template": "Q: {question}\nA:"},
            "trainer": {"type": "finetune", "epochs": 3, "batch_size": 4, "learning_rate": 0.1, "seed": 1},
            "generation": {"max_new_tokens": 4, "do_sample": False}, **sections}


def logits(model):
    model.eval()
    with torch.no_grad():
        return model(PROBE).logits


def issues(data) -> list[str]:
    return [str(issue) for issue in fw.validate_config(data).issues]


def test_prompt_tuning_trains_saves_and_reloads_through_train_and_predict(tmp_path, tiny_llama_dir):
    result = pipeline.train(config(tiny_llama_dir, adapter=PROMPT_TUNING), training_set=table(),
                            output_directory=tmp_path / "results", show_progress=False)
    losses = result.statistics["train_loss_per_step"]
    assert losses[-1] < losses[0]
    saved = json.loads((result.model_dir / "adapter_config.json").read_text())
    assert (saved["peft_type"], saved["num_virtual_tokens"]) == ("PROMPT_TUNING", 4)
    assert "target_modules" not in saved or not saved["target_modules"]
    trained = logits(result.model)
    assert trained.shape[1] == PROBE.shape[1] + 4  # the virtual tokens come first
    _, reloaded, _ = load_trained(result.model_dir)
    assert torch.allclose(logits(reloaded), trained, atol=1e-5)
    table().head(3).to_csv(tmp_path / "new.csv", index=False)
    assert main(["predict", "--model_path", str(result.model_dir), "--dataset", str(tmp_path / "new.csv"),
                 "--output_directory", str(tmp_path / "predicted"), "--no_progress"]) == 0
    assert len(pd.read_csv(tmp_path / "predicted" / "predictions.csv")) == 3


def test_prompt_tuning_takes_no_layer_keys():
    found = issues(config("m/x", adapter={**PROMPT_TUNING, "target_modules": ["q_proj"], "r": 8}))
    assert "adapter.r: unknown key 'r' for adapter 'prompt_tuning'. prompt tuning has no rank `r`; use " \
           "`num_virtual_tokens` to size it." in found
    assert any(issue.startswith("adapter.target_modules: unknown key 'target_modules'") for issue in found)


@pytest.mark.parametrize("sections, path, words", [
    ({"adapters": {"adapters": {"a1": PROMPT_TUNING, "b1": PROMPT_TUNING},
                   "merge": {"name": "m", "sources": ["a1", "b1"], "weights": [0.5, 0.5]}}},
     "adapters.adapters.a1.type", "merging needs LoRA-family adapters"),
    ({"adapter": PROMPT_TUNING, "quantization": {"bits": 4}}, "adapter.type", "needs a LoRA-family adapter"),
])
def test_what_peft_cannot_do_with_prompt_tuning_is_refused_at_validation(sections, path, words):
    found = issues(config("m/x", **sections))
    assert any(issue.startswith(path + ":") and words in issue for issue in found), found


def test_merging_prompt_tuning_into_the_base_model_is_refused_before_training(tmp_path, tiny_llama_dir):
    adapter = {**PROMPT_TUNING, "postprocessor": {"merge_adapter_into_base_model": True}}
    with pytest.raises(FwError, match="PEFT cannot merge 'prompt_tuning' adapters into the base model"):
        pipeline.train(config(tiny_llama_dir, adapter=adapter), training_set=table(),
                       output_directory=tmp_path, show_progress=False)
    assert not (tmp_path / "experiment_run").exists()

"""fw.train.trainer.Trainer: the run is planned once, and everything that depends on how many processes run goes
through its Runtime (placing the model, this process's micro-batches, summing metrics, who writes)."""
from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from fw import pipeline
from fw.train.validation import TOTALS
from fw.config.load import load_config
from fw.data.tokens import encode
from fw.model.loading import apply_adapter, load_base_model
from fw.train import trainer as training
from fw.train.runtime import Runtime


def config(base) -> dict:
    return load_config({"base_model": str(base), "input_features": [{"name": "question"}],
                        "output_features": [{"name": "answer"}], "prompt": {"template": "Q: {question}\nA:"},
                        "adapter": {"type": "lora", "r": 4, "dropout": 0.0},
                        "trainer": {"type": "finetune", "epochs": 2, "batch_size": 2, "gradient_accumulation_steps": 2,
                                    "learning_rate": 0.01, "steps_per_checkpoint": 1, "seed": 3}}).data


def encoded(tokenizer, data, count: int, offset: int = 0):
    questions = [f"Q: what is {i} plus one\nA:" for i in range(offset, offset + count)]
    return encode(questions, [f"it is {i + 1}" for i in range(offset, offset + count)], tokenizer, data)[0]


class RecordingRuntime(Runtime):
    """One process that says it is not the main one, and records what the trainer asks of it."""

    is_main_process = False

    def __init__(self):
        self.prepared, self.sharded, self.reduced = [], [], []

    def prepare_model(self, model):
        self.prepared.append(model)
        return super().prepare_model(model)

    def shard(self, items):
        self.sharded.append(list(items))
        return super().shard(items)

    def reduce_sum(self, values):
        self.reduced.append(list(values))
        return super().reduce_sum(values)


def run(tiny_llama_dir, run_dir, runtime=None):
    import torch

    data = config(tiny_llama_dir)
    torch.manual_seed(0)
    model, tokenizer = load_base_model(data, for_training=True)
    trainer = training.Trainer(data, tokenizer, encoded(tokenizer, data, 8), encoded(tokenizer, data, 2, 100),
                               runtime=runtime, show_progress=False)
    trainer.setup(apply_adapter(model, data), run_dir)
    return trainer, trainer.train()


def test_every_seam_goes_through_the_runtime_and_a_non_main_process_writes_nothing(tmp_path, tiny_llama_dir):
    _, single = run(tiny_llama_dir, tmp_path / "single")
    runtime = RecordingRuntime()
    trainer, recorded = run(tiny_llama_dir, tmp_path / "recorded", runtime)

    assert recorded["train_loss_per_step"] == single["train_loss_per_step"]  # identity seams change nothing
    assert runtime.prepared == [trainer.model] and trainer.step_model is trainer.model
    shared = Counter(map(tuple, runtime.sharded))  # the rows of every micro-batch go through shard(), every epoch
    assert all(shared[tuple(batch)] >= 2 for batch in trainer.plan.batches)
    evaluations = len(recorded["evaluation_steps"])  # one validation batch each
    assert evaluations == 4 and len(runtime.sharded) == 2 * len(trainer.plan.batches) + evaluations
    assert trainer.plan.steps_per_epoch == 2
    steps = [values[:2] for values in runtime.reduced if len(values) == 3]  # per step: loss, tokens, stop votes
    validations = [values for values in runtime.reduced if len(values) == len(TOTALS)]  # per epoch: validation
    assert [loss for loss, _ in steps] == recorded["train_loss_per_step"] and all(tokens > 0 for _, tokens in steps)
    assert [total / count for total, count, *_ in validations] == pytest.approx(recorded["validation"]["loss"])
    assert len([values for values in runtime.reduced if len(values) == 1]) == 4  # trained tokens of each step
    assert recorded["validation"]["loss"] and not (tmp_path / "recorded").exists()  # no checkpoint, no events
    assert (tmp_path / "single" / "checkpoints" / "latest.json").is_file()
    assert (tmp_path / "single" / "tensorboard").is_dir()


def test_the_run_is_planned_once(tmp_path, tiny_llama_dir, monkeypatch):
    real_plan, plans = training.plan, []
    monkeypatch.setattr(training, "plan", lambda *args: plans.append(real_plan(*args)) or plans[-1])
    rows = pd.DataFrame({"question": [f"q{i}" for i in range(6)], "answer": [f"a{i}" for i in range(6)]})
    data = {**config(tiny_llama_dir), "adapter": {"type": "adalora", "init_r": 4, "target_r": 2, "tinit": 0,
                                                  "tfinal": 0}}
    result = pipeline.train(data, training_set=rows, output_directory=tmp_path, show_progress=False)
    assert len(plans) == 1
    assert result.model.peft_config["default"].total_step == plans[0].total_steps == result.statistics["steps"]


def test_an_empty_training_split_is_refused_before_the_adapter(tiny_llama_dir):
    from fw.errors import FwError

    with pytest.raises(FwError, match="^the training split is empty: give --training_set"):
        training.Trainer(config(tiny_llama_dir), None, [])

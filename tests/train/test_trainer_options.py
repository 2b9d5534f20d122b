"""The trainer options Ludwig users set, each with its effect: optimizers, learning-rate schedules (compared with
the rates Ludwig's own scheduler gives), reduce-on-plateau, gradient clipping, frozen layers, batch sizes and auto,
evaluation cadence and metrics, shuffling, mixed precision."""
from __future__ import annotations

import copy

import pytest
import torch

from fw import console
from fw.config.load import load_config
from fw.data.tokens import encode
from fw.errors import FwError
from fw.model.loading import apply_adapter, load_base_model
from fw.train import batch_size as batching
from fw.train import trainer as training
from fw.train.optim import PlateauReducer, Schedule, Steps, build_optimizer


def config(base, adapter=None, **trainer) -> dict:
    return load_config({"base_model": str(base), "input_features": [{"name": "question"}],
                        "output_features": [{"name": "answer"}], "prompt": {"template": "Q: {question}\nA:"},
                        "adapter": {"type": "lora", "r": 4, "dropout": 0.0} if adapter is None else adapter,
                        "trainer": {"type": "finetune", "epochs": 2, "batch_size": 2, "learning_rate": 0.01,
                                    "seed": 3, **trainer}}).data


def encoded(tokenizer, data, count: int, offset: int = 0):
    questions = [f"Q: what is {i} plus one\nA:" for i in range(offset, offset + count)]
    return encode(questions, [f"it is {i + 1}" for i in range(offset, offset + count)], tokenizer, data)[0]


def unseen_answers(tokenizer, data, count: int):
    """Validation rows whose answers the training rows never show: fitting the training rows makes them worse."""
    questions = [f"Q: what is {i} plus one\nA:" for i in range(count)]
    return encode(questions, ["zebra blue"] * count, tokenizer, data)[0]


def trained(tiny_llama_dir, tmp_path, data, rows: int = 8, validation: int = 4, unseen: bool = False):
    torch.manual_seed(0)
    model, tokenizer = load_base_model(data, for_training=True)
    held_out = unseen_answers(tokenizer, data, validation) if unseen else encoded(tokenizer, data, validation, 100)
    trainer = training.Trainer(data, tokenizer, encoded(tokenizer, data, rows), held_out, show_progress=False)
    trainer.setup(apply_adapter(model, data), tmp_path / "run")
    return trainer, trainer.train()


@pytest.fixture()
def fresh_report():
    console.clear()
    yield console
    console.clear()


# -- optimizers ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, cls, expected", [
    ("adam", torch.optim.Adam, {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}),
    ("adamw", torch.optim.AdamW, {"betas": (0.8, 0.9), "eps": 1e-6, "weight_decay": 0.01, "amsgrad": True}),
    ("sgd", torch.optim.SGD, {"momentum": 0.9, "nesterov": True, "dampening": 0.0}),
    ("rmsprop", torch.optim.RMSprop, {"alpha": 0.99, "centered": False}),
    ("adagrad", torch.optim.Adagrad, {"eps": 1e-10, "lr_decay": 0}),
    ("adadelta", torch.optim.Adadelta, {"rho": 0.9}),
    ("adamax", torch.optim.Adamax, {"betas": (0.9, 0.999)}),
    ("nadam", torch.optim.NAdam, {"momentum_decay": 0.004}),
    ("radam", torch.optim.RAdam, {"eps": 1e-8}),
])
def test_optimizer_types_and_parameters_are_ludwigs(tiny_llama_dir, kind, cls, expected):
    written = {"adamw": {"betas": [0.8, 0.9], "eps": 1e-6, "weight_decay": 0.01, "amsgrad": True},
               "sgd": {"momentum": 0.9, "nesterov": True}}.get(kind, {})
    data = config(tiny_llama_dir, optimizer={"type": kind, **written})
    model, _ = load_base_model(data, for_training=True)
    optimizer = build_optimizer(apply_adapter(model, data), data)
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert {key: group[key] for key in expected} == expected and group["lr"] == 0.01


def test_different_optimizers_train_differently(tiny_llama_dir, tmp_path):
    _, adam = trained(tiny_llama_dir, tmp_path / "adam", config(tiny_llama_dir, optimizer={"type": "adam"}))
    _, sgd = trained(tiny_llama_dir, tmp_path / "sgd", config(tiny_llama_dir, optimizer={"type": "sgd"}))
    assert adam["train_loss_per_step"][0] == pytest.approx(sgd["train_loss_per_step"][0])  # same start
    assert adam["train_loss_per_step"][-1] != pytest.approx(sgd["train_loss_per_step"][-1], abs=1e-4)


def test_adafactor_with_its_own_rate_has_no_schedule(tiny_llama_dir):
    data = config(tiny_llama_dir, optimizer={"type": "adafactor"})
    model, _ = load_base_model(data, for_training=True)
    optimizer = build_optimizer(apply_adapter(model, data), data)
    assert type(optimizer).__name__ == "Adafactor" and optimizer.param_groups[0]["lr"] is None
    assert Schedule(optimizer, data["trainer"]["learning_rate_scheduler"], Steps(10, 5)).per_step is None


@pytest.mark.skipif(__import__("importlib").util.find_spec("bitsandbytes") is not None,
                    reason="bitsandbytes is installed here: the missing-package message cannot be shown")
def test_a_bitsandbytes_optimizer_without_the_package_names_it(tiny_llama_dir):
    data = config(tiny_llama_dir, optimizer={"type": "paged_adamw_8bit"})
    model, _ = load_base_model(data, for_training=True)
    with pytest.raises(FwError, match=r"^trainer.optimizer.type: 'paged_adamw_8bit' needs the bitsandbytes package, "
                                      r"which is not installed \(pip install bitsandbytes"):
        build_optimizer(apply_adapter(model, data), data)
    warnings = [str(w) for w in load_config(data).warnings]
    assert "trainer.optimizer.type: 'paged_adamw_8bit' needs the bitsandbytes package, which is not installed here " \
           "(pip install bitsandbytes)." in warnings


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bitsandbytes' paged and 8-bit optimizers need a CUDA GPU")
def test_paged_8bit_adamw_trains_on_a_gpu(tiny_llama_dir, tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    data = config(tiny_llama_dir, optimizer={"type": "paged_adamw_8bit"})
    trainer, statistics = trained(tiny_llama_dir, tmp_path, data)
    assert type(trainer.optimizer).__name__ == "PagedAdamW8bit"
    assert statistics["train_loss_per_step"][-1] < statistics["train_loss_per_step"][0]


# -- learning-rate schedules -------------------------------------------------------------------------------------
#: the rate of each of 10 steps (peak 1.0, warmup_fraction 0.2, 5 steps between evaluations), as Ludwig 0.17.8's
#: own LRScheduler gives it (ludwig.modules.lr_scheduler, run offline on these numbers)
LUDWIG_RATES = {
    None: [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    "linear": [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125],
    "cosine": [0.0, 0.5, 1.0, 0.9045, 0.6545, 0.3455, 0.0955, 1.0, 0.9045, 0.6545],
    "exponential": [0.0, 0.5, 0.96, 0.96, 0.96, 0.96, 0.96, 0.96, 0.96, 0.96],
    "one_cycle": [0.04, 0.52, 1.0, 0.9505, 0.8117, 0.6113, 0.3887, 0.1883, 0.0495, 0.0],
    "inverse_sqrt": [0.0, 0.5, 0.0158, 0.0158, 0.0158, 0.0158, 0.0158, 0.0158, 0.0158, 0.0158],
    "wsd": [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
}


def scheduler_section(tiny_llama_dir, **keys) -> dict:
    return config(tiny_llama_dir, learning_rate_scheduler=keys)["trainer"]["learning_rate_scheduler"]


def rates(section: dict, steps: Steps, count: int = 10) -> list[float]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    schedule, seen = Schedule(optimizer, section, steps), []
    for _ in range(count):
        seen.append(round(optimizer.param_groups[0]["lr"], 4))
        optimizer.step()
        schedule.step()
    return seen


@pytest.mark.parametrize("decay", list(LUDWIG_RATES))
def test_each_decay_gives_ludwigs_rates(tiny_llama_dir, decay):
    assert rates(scheduler_section(tiny_llama_dir, decay=decay, warmup_fraction=0.2), Steps(10, 5)) == \
        LUDWIG_RATES[decay]


def test_polynomial_decay_starts_from_the_peak_after_warmup(tiny_llama_dir):
    """Ludwig's polynomial decay counts the warmup twice (its rate rises to 1.25x the peak); fw's decays from it."""
    seen = rates(scheduler_section(tiny_llama_dir, decay="polynomial", warmup_fraction=0.2), Steps(10, 5))
    assert seen == [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
    squared = rates(scheduler_section(tiny_llama_dir, decay="polynomial", polynomial_power=2.0), Steps(4, 4), 4)
    assert squared == [1.0, 0.5625, 0.25, 0.0625]


def test_warmup_evaluations_count_evaluation_periods(tiny_llama_dir):
    seen = rates(scheduler_section(tiny_llama_dir, warmup_evaluations=1), Steps(10, 4))
    assert seen[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_the_cosine_period_is_t_0(tiny_llama_dir):
    seen = rates(scheduler_section(tiny_llama_dir, decay="cosine", t_0=2), Steps(10, 5), 4)
    assert seen == [1.0, 0.5, 1.0, 0.5]


def test_a_training_run_follows_the_schedule(tiny_llama_dir, tmp_path):
    data = config(tiny_llama_dir, learning_rate_scheduler={"decay": "linear"})
    trainer, statistics = trained(tiny_llama_dir, tmp_path, data)
    total = trainer.plan.total_steps
    assert statistics["learning_rate_per_step"] == pytest.approx([0.01 * (total - s) / total for s in range(total)])


def test_reduce_on_plateau_cuts_the_rate_at_most_as_often_as_allowed():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reducer = PlateauReducer(optimizer, {"reduce_on_plateau": 2, "reduce_on_plateau_patience": 1,
                                         "reduce_on_plateau_rate": 0.5}, "min")
    changes = [reducer.evaluated(value) for value in (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)]
    assert changes.count(True) == 2 and reducer.reductions == 2 and optimizer.param_groups[0]["lr"] == 0.25
    optimizer.param_groups[0]["lr"] = 1.0  # what the per-step schedule sets next
    reducer.apply()
    assert optimizer.param_groups[0]["lr"] == 0.25


def test_reduce_on_plateau_in_a_run(tiny_llama_dir, tmp_path):
    """The validation loss of answers the training never shows stops improving: the rate is cut, once."""
    data = config(tiny_llama_dir, epochs=6, learning_rate=0.01, early_stop=-1,
                  learning_rate_scheduler={"reduce_on_plateau": 1, "reduce_on_plateau_patience": 0,
                                           "reduce_on_plateau_rate": 0.1, "reduce_eval_split": "validation"})
    _, statistics = trained(tiny_llama_dir, tmp_path, data, unseen=True)
    losses = statistics["validation"]["loss"]
    assert any(later >= earlier for earlier, later in zip(losses, losses[1:])), losses
    assert statistics["learning_rate_reductions"] == 1
    assert statistics["learning_rate_per_step"][-1] == pytest.approx(0.001)
    assert statistics["learning_rate_per_step"][0] == pytest.approx(0.01)


# -- gradient clipping, frozen layers ------------------------------------------------------------------------------
def gradients(*values) -> list[torch.nn.Parameter]:
    parameters = [torch.nn.Parameter(torch.zeros(len(v))) for v in values]
    for parameter, value in zip(parameters, values):
        parameter.grad = torch.tensor(value, dtype=torch.float32)
    return parameters


def test_gradient_clipping_global_norm_norm_and_value():
    parameters = gradients([3.0, 0.0], [0.0, 4.0])  # global norm 5
    training.clip_gradients(parameters, {"clipglobalnorm": 1.0})
    assert torch.cat([p.grad for p in parameters]).norm().item() == pytest.approx(1.0, rel=1e-4)
    parameters = gradients([3.0, -8.0])
    training.clip_gradients(parameters, {"clipglobalnorm": None, "clipvalue": 2.0})
    assert parameters[0].grad.tolist() == [2.0, -2.0]
    parameters = gradients([6.0, 8.0])
    training.clip_gradients(parameters, {"clipglobalnorm": 20.0, "clipnorm": 5.0})
    assert parameters[0].grad.norm().item() == pytest.approx(5.0, rel=1e-4)


def test_layers_to_freeze_regex_keeps_those_weights(tiny_llama_dir, tmp_path, fresh_report):
    data = config(tiny_llama_dir, adapter={}, layers_to_freeze_regex=r"embed_tokens|layers\.0\.")
    data["adapter"] = None
    model, _ = load_base_model(data, for_training=True)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer, _ = trained(tiny_llama_dir, tmp_path, data)
    after = dict(trainer.model.named_parameters())
    frozen = [name for name in before if "embed_tokens" in name or "layers.0." in name]
    assert frozen and all(torch.equal(before[name], after[name]) for name in frozen)
    assert any(not torch.equal(before[name], after[name]) for name in before if name not in frozen)
    assert any(message.startswith("trainer.layers_to_freeze_regex: froze ") for message in fresh_report.messages)


# -- batch sizes -----------------------------------------------------------------------------------------------
def settings(**keys) -> dict:
    return {"batch_size": 1, "gradient_accumulation_steps": "auto", "effective_batch_size": "auto",
            "max_batch_size": 1 << 40, "eval_batch_size": 2, **keys}


@pytest.mark.parametrize("keys, rows, expected", [
    ({}, 100, (1, 1)),                                                                  # Ludwig's defaults
    ({"effective_batch_size": 8, "batch_size": 2}, 100, (2, 4)),
    ({"batch_size": "auto", "effective_batch_size": 16, "gradient_accumulation_steps": 4}, 100, (4, 4)),
    ({"batch_size": "auto"}, 100, (batching.CPU_BATCH_SIZE, 1)),                        # the CPU rule
    ({"batch_size": "auto"}, 20, (4, 1)),                                               # at most 20 % of the rows
    ({"batch_size": "auto", "effective_batch_size": 32}, 1000, (batching.CPU_BATCH_SIZE, 4)),
    ({"batch_size": 3, "gradient_accumulation_steps": 5}, 100, (3, 5)),
])
def test_batch_size_accumulation_and_effective_batch_size(keys, rows, expected):
    result = batching.training_batching(settings(**keys), rows, None)
    assert (result.batch_size, result.accumulation) == expected


def test_auto_on_a_gpu_takes_the_largest_size_that_fits():
    sizes = []

    def fits(size):
        sizes.append(size)
        return size <= 16

    assert batching.search(64, fits, "trainer.batch_size") == \
        (16, "trainer.batch_size auto: 16 (the largest power of two that fit the GPU; 32 ran out of memory)")
    assert sizes == [1, 2, 4, 8, 16, 32]
    with pytest.raises(FwError, match="^trainer.batch_size auto: even one row runs out of GPU memory"):
        batching.search(64, lambda size: False, "trainer.batch_size")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the memory probe needs a CUDA GPU")
def test_auto_batch_size_probes_the_gpu(tiny_llama_dir, tmp_path, fresh_report):
    data = config(tiny_llama_dir, batch_size="auto", eval_batch_size="auto")
    trainer, statistics = trained(tiny_llama_dir, tmp_path, data, rows=200)
    assert statistics["batch_size"] == 32  # capped at 20 % of 200 rows: the tiny model fits far more
    assert any("the largest power of two that fit the GPU" in message for message in fresh_report.messages)


def test_auto_batch_size_on_cpu_is_the_stated_rule(tiny_llama_dir, tmp_path, fresh_report):
    data = config(tiny_llama_dir, batch_size="auto", eval_batch_size="auto", epochs=1)
    trainer, statistics = trained(tiny_llama_dir, tmp_path, data, rows=50)
    assert statistics["batch_size"] == 8 and trainer.eval_batch_size == 8
    assert "trainer.batch_size auto: 8 (CPU: 8 rows, at most 10 here; memory is not probed)" in fresh_report.messages


def test_evaluation_batches_are_never_smaller_than_training_batches(tiny_llama_dir):
    data = config(tiny_llama_dir, batch_size=4, eval_batch_size=2)
    _, tokenizer = load_base_model(data, for_training=True)
    assert training.Trainer(data, tokenizer, encoded(tokenizer, data, 8)).eval_batch_size == 4
    unset = config(tiny_llama_dir, batch_size=3, eval_batch_size=None)
    assert training.Trainer(unset, tokenizer, encoded(tokenizer, unset, 8)).eval_batch_size == 3


def test_effective_batch_size_sets_the_steps(tiny_llama_dir, tmp_path):
    trainer, statistics = trained(tiny_llama_dir, tmp_path, config(tiny_llama_dir, effective_batch_size=8, epochs=1))
    assert (statistics["batch_size"], statistics["gradient_accumulation_steps"]) == (2, 4)
    assert statistics["steps"] == 1  # 8 rows, 8 per step


# -- evaluation --------------------------------------------------------------------------------------------------
def test_checkpoints_per_epoch_sets_how_often_the_run_is_evaluated(tiny_llama_dir, tmp_path):
    trainer, statistics = trained(tiny_llama_dir, tmp_path, config(tiny_llama_dir, checkpoints_per_epoch=2))
    assert trainer.plan.steps_per_epoch == 4
    assert statistics["evaluation_steps"] == [2, 4, 6, 8] and len(statistics["validation"]["loss"]) == 4


def test_steps_per_checkpoint_sets_how_often_the_run_is_evaluated(tiny_llama_dir, tmp_path):
    _, statistics = trained(tiny_llama_dir, tmp_path, config(tiny_llama_dir, steps_per_checkpoint=3))
    assert statistics["evaluation_steps"] == [3, 6, 8]  # every 3 steps across epochs (Ludwig's), and the last


def test_eval_steps_limits_the_evaluation_batches(tiny_llama_dir, tmp_path):
    data = config(tiny_llama_dir, eval_steps=1, eval_batch_size=2, epochs=1)
    trainer, statistics = trained(tiny_llama_dir, tmp_path, data, validation=6)
    full = training.Trainer({**data, "trainer": {**data["trainer"], "eval_steps": None}}, trainer.tokenizer,
                            trainer.train_rows, trainer.validation_rows, show_progress=False)
    full.model = trainer.model
    limited = trainer.evaluate(trainer.validation_rows)
    assert limited["loss"] != pytest.approx(full.evaluate(trainer.validation_rows)["loss"])


def test_validation_metric_picks_the_best_weights(tiny_llama_dir, tmp_path):
    data = config(tiny_llama_dir, epochs=3, validation_metric="token_accuracy", early_stop=-1)
    _, statistics = trained(tiny_llama_dir, tmp_path, data)
    best = statistics["best"]
    assert best["metric"] == "token_accuracy"
    assert best["value"] == max(statistics["validation"]["token_accuracy"])
    assert set(statistics["validation"]) == {"loss", "perplexity", "token_accuracy", "sequence_accuracy"}


def test_evaluate_training_set_scores_the_whole_training_split(tiny_llama_dir, tmp_path):
    _, quick = trained(tiny_llama_dir, tmp_path / "a", config(tiny_llama_dir, epochs=1))
    _, full = trained(tiny_llama_dir, tmp_path / "b", config(tiny_llama_dir, epochs=1, evaluate_training_set=True))
    assert set(quick["training"]) == {"loss"}
    assert set(full["training"]) == {"loss", "perplexity", "token_accuracy", "sequence_accuracy"}
    assert quick["training"]["loss"] == [pytest.approx(sum(quick["train_loss_per_step"]) / 4)]


def test_skip_all_evaluation_keeps_the_last_weights(tiny_llama_dir, tmp_path):
    _, statistics = trained(tiny_llama_dir, tmp_path, config(tiny_llama_dir, skip_all_evaluation=True))
    assert statistics["validation"] == {} and statistics["best"] is None and statistics["evaluation_steps"] == []


# -- order, precision --------------------------------------------------------------------------------------------
def test_should_shuffle(tiny_llama_dir):
    def orders(shuffle):
        data = config(tiny_llama_dir, should_shuffle=shuffle)
        _, tokenizer = load_base_model(data, for_training=True)
        trainer = training.Trainer(data, tokenizer, encoded(tokenizer, data, 12))
        return [trainer.epoch_batches(epoch) for epoch in range(3)]

    shuffled, fixed = orders(True), orders(False)
    assert fixed[0] == fixed[1] == fixed[2] and shuffled[0] != shuffled[1]
    assert sorted(map(tuple, shuffled[0])) == sorted(map(tuple, fixed[0]))


def test_mixed_precision_has_no_effect_on_cpu(tiny_llama_dir, tmp_path, fresh_report):
    trainer, _ = trained(tiny_llama_dir, tmp_path, config(tiny_llama_dir, use_mixed_precision=True, epochs=1))
    assert trainer.scaler is None
    assert "trainer.use_mixed_precision: no effect on CPU (as in Ludwig)." in fresh_report.messages


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed precision needs a CUDA GPU")
def test_mixed_precision_autocasts_on_a_gpu(tiny_llama_dir, tmp_path):
    data = config(tiny_llama_dir, use_mixed_precision=True, precision="fp32", epochs=1)
    trainer, statistics = trained(tiny_llama_dir, tmp_path, data)
    with trainer.autocast():
        assert torch.get_autocast_dtype("cuda") in (torch.bfloat16, torch.float16)
    assert statistics["train_loss_per_step"][-1] < statistics["train_loss_per_step"][0]


def test_configs_are_copied_not_changed(tiny_llama_dir):
    data = config(tiny_llama_dir, batch_size="auto")
    kept = copy.deepcopy(data)
    _, tokenizer = load_base_model(data, for_training=True)
    training.Trainer(data, tokenizer, encoded(tokenizer, data, 8))
    assert data == kept

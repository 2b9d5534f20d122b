"""``backend.trainer.strategy`` (Ludwig's shape) and what the training side of a job decides without launching one:
the schema's and the rules' messages, the strategy each config means, one process with a strategy set, the
errors of the runtimes, Ludwig's batch sizes over several processes, the random states a job's checkpoint keeps,
and ``fw plan`` reading the strategy from the config. The 2-process jobs are in test_distributed_train.py."""
from __future__ import annotations

import importlib.util

import pytest

import fw
from fw.config import strategy as strategies
from fw.train.batch_size import training_batching
from fw.config.strategy import Strategy


def config(strategy=None, **sections) -> dict:
    data = {"base_model": "facebook/opt-350m", "input_features": [{"name": "question"}],
            "output_features": [{"name": "answer"}], "trainer": {"type": "finetune"}}
    if strategy is not None:
        data["backend"] = {"type": "local", "trainer": {"strategy": strategy}}
    data.update(sections)
    return data


def report(data):
    found = fw.validate_config(data)
    return [str(issue) for issue in found.issues], [str(warning) for warning in found.warnings]


# -- the config ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy, expected", [
    ("fdsp", "backend.trainer.strategy: 'fdsp' is not one of ddp, fsdp, deepspeed, accelerate. Did you mean 'fsdp'?"),
    ({"type": "fsdp", "fsdp_config": {"reshard_after_forwrd": False}},
     "backend.trainer.strategy.fsdp_config.reshard_after_forwrd: unknown key 'reshard_after_forwrd'. Did you mean "
     "'reshard_after_forward'?"),
    ({"type": "ddp", "mixed_precision": "bf17"},
     "backend.trainer.strategy.mixed_precision: 'bf17' is not one of no, bf16, fp16, None. Did you mean 'bf16'?"),
    ({"type": "fsdp", "fsdp_config": {"fsdp_version": 1}},
     "backend.trainer.strategy.fsdp_config.fsdp_version: 1 is not one of 2."),
    ({"type": "fsdp", "fsdp_config": {"transformer_cls_names_to_wrap": []}},
     "backend.trainer.strategy.fsdp_config.transformer_cls_names_to_wrap: [] should be non-empty."),
    ({"type": "ddp", "fsdp_config": {}},
     "backend.trainer.strategy.fsdp_config: configures fsdp, but type is ddp. Set type: fsdp (or accelerate), or "
     "remove fsdp_config."),
    ({"fsdp_config": {}, "deepspeed_config": {"zero_optimization": {"stage": 3}}},
     "backend.trainer.strategy.deepspeed_config: is set together with fsdp_config: a run is sharded by FSDP or by "
     "DeepSpeed, not both. Keep one of them."),
    ({"type": "fsdp", "mixed_precision": "fp16"},
     "backend.trainer.strategy.mixed_precision: fp16 is not offered with fsdp (it needs a sharded gradient scaler); "
     "use bf16."),
    ({"type": "deepspeed"},
     "backend.trainer.strategy.deepspeed_config: type deepspeed needs a DeepSpeed config: the path of its JSON file "
     "or a mapping with zero_optimization.stage 2 or 3."),
    ({"type": "deepspeed", "deepspeed_config": {"zero_optimization": {"stage": 1}}},
     "backend.trainer.strategy.deepspeed_config: zero_optimization.stage is 1; fw runs DeepSpeed ZeRO stage 2 or 3."),
])
def test_a_strategy_that_cannot_work_is_one_message(strategy, expected):
    issues, _ = report(config(strategy))
    assert issues == [expected]


def test_the_backend_trainer_takes_no_other_key_than_ludwigs():
    issues, _ = report({**config(), "backend": {"trainer": {"stratgy": "ddp"}}})
    assert issues == ["backend.trainer.stratgy: unknown key 'stratgy'. Did you mean 'strategy'?"]


def test_a_deepspeed_file_that_is_not_there_is_named(tmp_path):
    missing = tmp_path / "zero3.json"
    issues, _ = report(config({"type": "deepspeed", "deepspeed_config": str(missing)}))
    assert issues == [f"backend.trainer.strategy.deepspeed_config: cannot read {missing} (No such file or "
                      "directory); give the path of a DeepSpeed JSON config."]


def test_fsdp_over_a_4bit_base_model_is_valid_and_loads_it_in_a_float_storage_fsdp_can_split():
    """QLoRA under fsdp: bitsandbytes' for_sharding packs the 4-bit weights into the compute dtype."""
    issues, _ = report(config("fsdp", quantization={"bits": 4}, adapter={"type": "lora"}))
    assert not issues
    section = {"backend": "bitsandbytes", "bits": 4, "bnb_4bit_compute_dtype": "bfloat16"}
    assert strategies.section_for_sharding(section) == {**section, "bnb_4bit_quant_storage": "bfloat16"}
    assert strategies.section_for_sharding({"backend": "bitsandbytes", "bits": 4})["bnb_4bit_quant_storage"] == \
        "float16"  # the spec's default compute dtype


def test_a_sharded_4bit_section_reaches_bitsandbytes_config_as_its_quant_storage():
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install 'fw[bitsandbytes]')")
    import torch
    from fw.model import quantization

    data = {**config("fsdp"), "quantization": {"backend": "bitsandbytes", "bits": 4,
                                               "bnb_4bit_compute_dtype": "bfloat16"}}
    kwargs, _, _ = quantization.quantization_kwargs(data, for_training=True, sharded=True)
    assert kwargs["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16
    kwargs, _, _ = quantization.quantization_kwargs(data, for_training=True)
    assert kwargs["quantization_config"].bnb_4bit_quant_storage == torch.uint8


def test_fsdp_over_an_8bit_base_model_is_refused_with_the_ways_that_work():
    issues, _ = report(config("fsdp", quantization={"bits": 8}, adapter={"type": "lora"}))
    assert issues == ["quantization.bits: 8-bit bitsandbytes weights are stored as int8, which fsdp cannot shard; "
                      "use bits: 4 (QLoRA sharded by fsdp) or backend.trainer.strategy: ddp (the 8-bit base on every "
                      "GPU)."]


def test_fsdp_over_a_backend_without_a_sharded_storage_is_refused():
    issues, _ = report(config("fsdp", quantization={"backend": "torchao", "mode": "int8_weight_only"},
                              adapter={"type": "lora"}))
    assert "quantization.backend: torchao weights cannot be sharded by fsdp; use backend.trainer.strategy: ddp (the " \
           "quantized base on every GPU)." in issues


def test_a_valid_deepspeed_config_is_accepted(tmp_path):
    zero3 = tmp_path / "zero3.json"
    zero3.write_text('{"zero_optimization": {"stage": 3}}')
    assert report(config({"type": "deepspeed", "deepspeed_config": str(zero3)})) == ([], [])


@pytest.mark.parametrize("written, expected", [
    (None, Strategy("ddp")),
    ("accelerate", Strategy("ddp")),
    ("fsdp", Strategy("fsdp")),
    ({"type": "accelerate", "mixed_precision": "bf16", "fsdp_config": {"cpu_offload": False}},
     Strategy("fsdp", "bf16", {"cpu_offload": False})),
    ({"deepspeed_config": "zero3.json"}, Strategy("deepspeed", deepspeed="zero3.json")),
    ({"type": "ddp", "mixed_precision": "fp16"}, Strategy("ddp", "fp16")),
])
def test_each_shape_means_the_strategy_ludwig_gives_it(written, expected):
    assert strategies.of_config(config(written)) == expected


def test_the_resolved_backend_keeps_the_strategy_as_written():
    resolved = fw.load_config(config({"type": "fsdp", "mixed_precision": "bf16"})).data
    assert resolved["backend"]["trainer"]["strategy"] == {
        "type": "fsdp", "mixed_precision": "bf16", "fsdp_config": None, "deepspeed_config": None}


# -- the runtime ---------------------------------------------------------------------------------------------------
def test_one_process_with_a_strategy_set_trains_as_usual_and_says_so(capsys):
    from fw.train.runtime import Runtime, for_job

    runtime = for_job(config("fsdp"))
    assert type(runtime) is Runtime
    assert "backend.trainer.strategy: one process runs, so there is nothing to share or shard" in \
        capsys.readouterr().err


ZERO3 = Strategy("deepspeed", deepspeed={"zero_optimization": {"stage": 3}})


@pytest.mark.parametrize("strategy, expected", [
    (ZERO3, "backend.trainer.strategy: DeepSpeed ZeRO runs on CUDA GPUs and this machine has none; on CPU use fsdp "
            "(parameters, gradients and optimizer state sharded as ZeRO-3 does) or ddp."),
    (Strategy("fsdp", fsdp={"cpu_offload": True}),
     "backend.trainer.strategy.fsdp_config.cpu_offload: moves GPU state to the CPU, and this machine has no GPU; "
     "set it to false."),
])
def test_what_this_machine_cannot_run_is_one_error_before_the_job_starts(strategy, expected, monkeypatch):
    import torch

    from fw.errors import FwError
    from fw.train import parallel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "deepspeed" else None)
    with pytest.raises(FwError) as error:
        parallel.runtime_for(strategy, {})
    assert str(error.value) == expected


@pytest.mark.parametrize("installed, gpu, expected", [
    (False, True, "backend.trainer.strategy: deepspeed needs the deepspeed package: pip install 'fw[deepspeed]' (or "
                  "use fsdp, which shards like ZeRO-3 with torch alone)."),
])
def test_deepspeed_without_its_package_or_with_it_says_what_to_do(installed, gpu, expected, monkeypatch):
    import torch

    from fw.errors import FwError
    from fw.train import parallel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if installed else None)
    with pytest.raises(FwError) as error:
        parallel.runtime_for(ZERO3, {})
    assert str(error.value) == expected


def test_fw_batch_size_accumulation_and_clipping_fill_deepspeeds_auto_values_as_accelerate_does():
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install 'fw[deepspeed]')")
    from fw.train import parallel

    written = {"zero_optimization": {"stage": 2}, "gradient_clipping": "auto", "train_batch_size": "auto"}
    strategy = Strategy("deepspeed", mixed_precision="bf16", deepspeed=written)
    plugin = parallel.deepspeed_plugin(strategy, batch_size=2, accumulation=3, clipping={"clipglobalnorm": 0.5},
                                       processes=4)
    settings = plugin.deepspeed_config
    assert (settings["train_micro_batch_size_per_gpu"], settings["gradient_accumulation_steps"],
            settings["train_batch_size"], settings["gradient_clipping"]) == (2, 3, 24, 0.5)
    assert settings["bf16"] == {"enabled": True} and plugin.zero_stage == 2
    assert written["train_batch_size"] == "auto"  # the config itself is left as written


def test_a_deepspeed_value_that_contradicts_the_trainer_section_is_named():
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install 'fw[deepspeed]')")
    from fw.errors import FwError
    from fw.train import parallel

    strategy = Strategy("deepspeed", deepspeed={"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 8})
    with pytest.raises(FwError) as error:
        parallel.deepspeed_plugin(strategy, batch_size=2, accumulation=1, clipping=None, processes=2)
    assert str(error.value) == ("backend.trainer.strategy.deepspeed_config: differs from the trainer section (ds "
                                "train_micro_batch_size_per_gpu=8 vs arg train_micro_batch_size_per_gpu=2); set these "
                                "keys to auto.")


def test_fsdp_names_the_layer_classes_when_the_configured_one_is_not_in_the_model(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from fw.errors import FwError
    from fw.train.parallel import FSDPRuntime

    runtime = object.__new__(FSDPRuntime)
    runtime.strategy = Strategy("fsdp", fsdp={"transformer_cls_names_to_wrap": ["GPT2Block"]})
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir))
    with pytest.raises(FwError, match=r"^backend.trainer.strategy.fsdp_config.transformer_cls_names_to_wrap: no module "
                                      r"of the model is a GPT2Block; name its repeated layer class, one of: .*"
                                      r"LlamaDecoderLayer"):
        runtime.layers(model)
    runtime.strategy = Strategy("fsdp")  # the model's own: its decoder layers
    assert [type(layer).__name__ for layer in runtime.layers(model)] == ["LlamaDecoderLayer"] * 2


# -- batches, checkpoints, plan ------------------------------------------------------------------------------------
def test_effective_batch_size_counts_every_process_as_ludwig_does():
    settings = {"batch_size": 2, "gradient_accumulation_steps": "auto", "effective_batch_size": 16,
                "max_batch_size": 1024}
    assert training_batching(settings, 100, None).accumulation == 8
    assert training_batching(settings, 100, None, processes=4).accumulation == 2
    from_effective = {**settings, "batch_size": "auto", "gradient_accumulation_steps": 2}
    found = training_batching(from_effective, 100, None, processes=4)
    assert found.batch_size == 2 and found.note.endswith("(effective_batch_size 16 / gradient_accumulation_steps 2 "
                                                         "/ 4 processes)")


def test_a_jobs_checkpoint_keeps_every_processs_random_states():
    import torch

    from fw.train import checkpoint

    states = [({"torch": torch.tensor([rank, 1], dtype=torch.uint8)}, {"python": [rank], "numpy": [rank]})
              for rank in range(3)]
    tensors, described = checkpoint.rng_files(states)
    assert sorted(tensors) == ["rank1.torch", "rank2.torch", "torch"]  # the main process's keep their names
    for rank, (their_tensors, their_json) in enumerate(states):
        restored_tensors, restored_json = checkpoint.rng_of_rank(tensors, described, rank)
        assert torch.equal(restored_tensors["torch"], their_tensors["torch"])
        assert {key: restored_json[key] for key in their_json} == their_json
    assert checkpoint.rng_of_rank(tensors, described, 3) is None  # resumed on more processes: nothing saved


def test_fw_plan_reads_the_strategy_from_the_config(tiny_llama_dir):
    from fw.plan import Request, make_plan

    data = {**config("fsdp"), "base_model": str(tiny_llama_dir), "trainer": {"type": "finetune", "batch_size": 2}}
    assert make_plan(Request(data, num_processes=2, device="cpu")).strategy == "fsdp"
    assert make_plan(Request(data, num_processes=2, device="cpu", strategy="ddp")).strategy == "ddp"
    assert make_plan(Request(data, num_processes=1, device="cpu")).strategy == "single"

"""Training on several processes, for real: 2-process gloo jobs on the CPU started with torchrun.

N processes with batch b train as one process with batch N·b (DDP and FSDP2, LoRA and full fine-tune, packing,
EVA), every row once per epoch; EVA calibrates and the retrieval index is built once; checkpoints survive
``kill -9`` of the whole job and FSDP's reassemble on another number of processes; a failing process ends the
job; SIGTERM stops every process after the same step with one checkpoint. Each test launches as few jobs as it
can (a launch costs the imports of every process); the worker is tests/train/distributed_jobs.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fw import pipeline

#: relative difference allowed between the per-step losses of N processes and one (fp32 on CPU)
TOLERANCE = 1e-5
WORKER = Path(__file__).with_name("distributed_jobs.py")
#: how long a 2-process job may take on a loaded 2-core machine before the test calls it hung
JOB_LIMIT = 300


# -- launching -----------------------------------------------------------------------------------------------------
def torchrun(*args: str, processes: int = 2, timeout: float = JOB_LIMIT, env: dict | None = None,
             **kwargs) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node <processes> <args>``, its output captured."""
    return subprocess.run(launch_command(processes, *args), capture_output=True, text=True, timeout=timeout,
                          env=job_environment(env), **kwargs)


def launch_command(processes: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *args]


def job_environment(extra: dict | None = None) -> dict:
    # a lost peer fails a collective within a minute instead of torch's 30
    path = os.pathsep.join(filter(None, [str(WORKER.parent), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "FW_DISTRIBUTED_TIMEOUT": "60", "PYTHONPATH": path, **(extra or {})}


def rows(count: int, offset: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"question": [f"what is {i} plus one" for i in range(offset, offset + count)],
                         "answer": [f"it is {i + 1}" for i in range(offset, offset + count)]})


def config(base, *, adapter: dict | None = None, strategy=None, batch: int = 2, epochs: int = 1,
           **trainer) -> dict:
    data = {"base_model": str(base), "input_features": [{"name": "question"}], "output_features": [{"name": "answer"}],
            "prompt": {"template": "Q: {question}\nA:"},
            "trainer": {"type": "finetune", "epochs": epochs, "batch_size": batch, "gradient_accumulation_steps": 1,
                        "learning_rate": 0.01, "seed": 3, "optimizer": {"type": "adamw"}, **trainer}}
    if adapter is not None:
        data["adapter"] = adapter
    if strategy is not None:
        data["backend"] = {"trainer": {"strategy": strategy}}
    return data


LORA = {"type": "lora", "r": 4, "dropout": 0.0}
EVA = {**LORA, "init_lora_weights": "eva", "eva_config": {"n_samples": 8, "rho": 1.0, "use_label_mask": False}}


def relative_difference(losses: list[float], reference: list[float]) -> float:
    assert len(losses) == len(reference)
    return max(abs(a - b) / abs(b) for a, b in zip(losses, reference))


# -- the same run on more processes --------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_with_batch_b_train_as_one_process_with_batch_2b(tmp_path, tiny_llama_dir):
    """DDP and FSDP, LoRA and full fine-tune, accumulation, packing and EVA: one job, several runs; every
    per-step loss within 1e-5 (relative) of one process with twice the batch, the validation metrics too (FSDP with
    bf16 mixed precision: within 1e-2 of the float32 run). Under FSDP only the main process reads the weights
    (the other builds the model on the meta device), unless cpu_ram_efficient_loading is false."""
    training, validation = tmp_path / "train.csv", tmp_path / "validation.csv"
    rows(9).to_csv(training, index=False)  # 9 rows, 4 per micro-batch: the last one leaves a process without rows
    rows(3, offset=100).to_csv(validation, index=False)
    cache = {"type": "local", "cache_dir": str(tmp_path / "cache")}
    retrieval = {"template": "Examples:\n{__context__}\nQ: {question}\nA:", "retrieval": {"type": "random", "k": 1}}
    scenarios = {  # name: (the 2-process run's config, the 1-process reference's)
        "ddp-lora": (config(tiny_llama_dir, adapter=LORA, epochs=2, gradient_accumulation_steps=2),
                     config(tiny_llama_dir, adapter=LORA, batch=4, epochs=2, gradient_accumulation_steps=2)),
        "fsdp-lora": (config(tiny_llama_dir, adapter=LORA, strategy="fsdp"), config(tiny_llama_dir, adapter=LORA, batch=4)),
        "ddp-full": (config(tiny_llama_dir, strategy="ddp"), config(tiny_llama_dir, batch=4)),
        "fsdp-full": (config(tiny_llama_dir, strategy={"type": "fsdp", "fsdp_config": {
                          "reshard_after_forward": False, "activation_checkpointing": True}}),
                      config(tiny_llama_dir, batch=4)),
        "ddp-packed": (config(tiny_llama_dir, adapter=LORA, packing=True),
                       config(tiny_llama_dir, adapter=LORA, batch=4, packing=True)),
        "ddp-eva": (config(tiny_llama_dir, adapter=EVA), config(tiny_llama_dir, adapter=EVA, batch=4)),
        "ddp-retrieval": ({**config(tiny_llama_dir, adapter=LORA), "prompt": retrieval, "backend": cache},
                          {**config(tiny_llama_dir, adapter=LORA, batch=4), "prompt": retrieval, "backend": cache}),
        # bfloat16 compute over float32 shards (FSDP2's MixedPrecisionPolicy runs on CPU too): close, not equal
        "fsdp-bf16": (config(tiny_llama_dir, strategy={"type": "fsdp", "mixed_precision": "bf16",
                                                       "fsdp_config": {"cpu_ram_efficient_loading": False}}),
                      config(tiny_llama_dir, batch=4)),
    }
    tolerances = {"fsdp-bf16": 1e-2}
    jobs = {"runs": [{"name": name, "config": multi, "training_set": str(training),
                      "validation_set": str(validation), "output_directory": str(tmp_path / "jobs")}
                     for name, (multi, _) in scenarios.items()],
            "results": str(tmp_path / "results")}
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    job = torchrun(str(WORKER), str(tmp_path / "jobs.json"))
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"results.rank{rank}.json").read_text()) for rank in (0, 1)]

    references = {name: pipeline.train(single, training_set=training, validation_set=validation,
                                       output_directory=tmp_path / "single", show_progress=False)
                  for name, (_, single) in scenarios.items()}
    for name, result in references.items():
        reference, statistics = result.statistics, ranks[0][name]["statistics"]
        tolerance = tolerances.get(name, TOLERANCE)
        assert relative_difference(statistics["train_loss_per_step"], reference["train_loss_per_step"]) <= tolerance, name
        assert relative_difference(statistics["validation"]["loss"], reference["validation"]["loss"]) <= tolerance, name
        if name not in tolerances:
            assert statistics["validation"]["token_accuracy"] == reference["validation"]["token_accuracy"], name
        assert ranks[1][name]["statistics"]["train_loss_per_step"] == statistics["train_loss_per_step"], name
        for epoch, seen in ranks[0][name]["rows"].items():  # every row once per epoch, across the processes
            assert sorted(seen + ranks[1][name]["rows"][epoch]) == list(range(9)), (name, epoch)
            assert seen and ranks[1][name]["rows"][epoch], (name, epoch)
    assert len(ranks[0]["ddp-lora"]["rows"]) == 2
    assert [rank["ddp-eva"]["eva_passes"] for rank in ranks] == [1, 0]  # calibrated once, by the main process
    assert [rank["ddp-retrieval"]["index_builds"] for rank in ranks] == [1, 0]  # the others read the cache
    assert ranks[0]["fsdp-full"]["checkpointing"] and not ranks[0]["ddp-full"]["checkpointing"]
    # FSDP's CPU-efficient loading (the default): only the main process opened the weight files
    for name in scenarios:
        reads = [rank[name]["weight_reads"] for rank in ranks]
        assert reads[0] >= 1 and (reads[1] == 0) == (name in ("fsdp-lora", "fsdp-full")), (name, reads)

    fsdp_run = Path(ranks[0]["fsdp-lora"]["run_dir"])
    assert_loads_with_transformers_and_peft(fsdp_run / "model", tiny_llama_dir)
    assert_reassembles_in_one_process(fsdp_run, references["fsdp-lora"].run_dir, single=scenarios["fsdp-lora"][1])


def assert_loads_with_transformers_and_peft(model_dir: Path, base) -> None:
    """``model/`` written once, in save_pretrained layout: transformers + peft load it, nothing of fw's needed."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert sorted(path.name for path in model_dir.glob("adapter_*")) == ["adapter_config.json",
                                                                         "adapter_model.safetensors"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(model_dir))
    assert any("lora_A" in name for name, _ in model.named_parameters())


def assert_reassembles_in_one_process(fsdp_run: Path, single_run: Path, single: dict) -> None:
    """The FSDP job's last checkpoint, read by one process (torch.distributed.checkpoint reshards 2 -> 1), holds
    the weights and optimizer state of the single-process run's last checkpoint."""
    from safetensors.torch import load_file

    from fw.config.load import load_config
    from fw.model.loading import apply_adapter, load_base_model
    from fw.train import checkpoint
    from fw.train.optim import build_optimizer

    data = load_config(single).data
    model, _ = load_base_model(data, for_training=True)
    model = apply_adapter(model, data)
    optimizer = build_optimizer(model, data)

    class Schedule:
        def load_state_dict(self, state):
            self.state = state

    sharded = checkpoint.latest_checkpoint(fsdp_run / "checkpoints")
    assert (sharded / checkpoint.SHARDS).is_dir() and not (sharded / "weights.safetensors").exists()
    state = checkpoint.load_checkpoint(sharded, model, optimizer, Schedule())
    assert state["position"]["processes"] == 2
    expected = checkpoint.latest_checkpoint(single_run / "checkpoints")
    weights, moments = load_file(str(expected / "weights.safetensors")), load_file(str(expected / "optimizer.safetensors"))
    assert weights.keys() == checkpoint.trainable_state(model).keys()
    for name, value in checkpoint.trainable_state(model).items():
        assert (value - weights[name]).abs().max() <= 1e-6, name
    for name, value in checkpoint.optimizer_to_files(optimizer)[0].items():
        assert (value - moments[name]).abs().max() <= 1e-6, name


# -- checkpoints ---------------------------------------------------------------------------------------------------
@pytest.fixture()
def cli_run(tmp_path, tiny_llama_dir):
    """(flags of an fw train call, its config for one process with twice the batch): 2 epochs of 3 steps over 9
    rows, a checkpoint after every step."""
    training = tmp_path / "train.csv"
    rows(9).to_csv(training, index=False)
    checkpointed = {"steps_per_checkpoint": 1}
    files = {}
    for name, data in (("job", config(tiny_llama_dir, adapter=LORA, strategy="fsdp", epochs=2, **checkpointed)),
                       ("single", config(tiny_llama_dir, adapter=LORA, batch=4, epochs=2, **checkpointed))):
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump(data))
    return (["--config", str(files["job"]), "--training_set", str(training), "--experiment_name", "exp",
             "--no_progress"], files["single"])


def statistics_of(run: Path) -> dict:
    return json.loads((run / "training_statistics.json").read_text())


@pytest.mark.slow
def test_kill_9_of_an_fsdp_job_then_resume_gives_the_uninterrupted_loss_curve(tmp_path, cli_run, capsys):
    """SIGKILL of every process (torchrun too) after the second checkpoint; ``--resume`` on 2 processes reaches
    the loss curve of an uninterrupted run, and on 1 process the sharded checkpoint resumes too (resharded)."""
    import shutil

    from fw.cli.main import main

    flags, single = cli_run
    killed = torchrun(str(WORKER), "fw", "train", *flags, "--output_directory", str(tmp_path / "out"),
                      env={"KILL_AFTER_CHECKPOINTS": "2"})
    assert killed.returncode != 0, killed.stdout[-2000:] + killed.stderr[-2000:]
    run = tmp_path / "out" / "exp_run"
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert not (run / "model").exists()
    shutil.copytree(run, tmp_path / "copy" / "exp_run")

    resumed = torchrun(str(WORKER), "fw", "train", *flags, "--output_directory", str(tmp_path / "out"), "--resume")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert main(["train", *flags, "--config", str(single), "--output_directory", str(tmp_path / "straight")]) == 0
    reference = statistics_of(tmp_path / "straight" / "exp_run")["train_loss_per_step"]
    assert relative_difference(statistics_of(run)["train_loss_per_step"], reference) <= TOLERANCE
    assert_loads_with_transformers_and_peft(run / "model", yaml.safe_load(Path(flags[1]).read_text())["base_model"])

    capsys.readouterr()
    assert main(["train", *flags, "--output_directory", str(tmp_path / "copy"), "--resume"]) == 0
    assert "the checkpoint was written by 2 process(es), this job has 1" in capsys.readouterr().err
    alone = statistics_of(tmp_path / "copy" / "exp_run")["train_loss_per_step"]
    assert relative_difference(alone[:2], reference[:2]) <= TOLERANCE  # the steps the checkpoint holds
    assert len(alone) == 2 + 3 + 5  # the rest of epoch 1 (5 steps of 2 rows here) after 2 steps, then epoch 2


# -- a job's behaviour ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_process_that_fails_ends_the_whole_job_with_its_error(tmp_path, cli_run):
    """Process 1 raises (as out of memory would) after step 2: every process exits, well within the bound (no
    peer waits forever in a collective), the error is shown, and the last regular checkpoint is kept."""
    flags, _ = cli_run
    started = time.monotonic()
    job = torchrun(str(WORKER), "fw", "train", *flags, "--output_directory", str(tmp_path / "out"),
                   env={"FAIL_AT_STEP": "2", "FAIL_RANK": "1"}, timeout=JOB_LIMIT)
    assert job.returncode != 0
    assert time.monotonic() - started < JOB_LIMIT
    assert "injected failure: this process ran out of memory" in job.stdout + job.stderr
    checkpoints = tmp_path / "out" / "exp_run" / "checkpoints"
    assert json.loads((checkpoints / "latest.json").read_text())["step"] in (1, 2)


@pytest.mark.slow
def test_sigterm_stops_every_process_after_the_same_step_with_one_checkpoint(tmp_path, cli_run, capsys):
    """SIGTERM to torchrun (a scheduler's stop) reaches every process; they stop together after one step and write
    one checkpoint with every process's random states, which a later ``--resume`` continues (here on 1 process)."""
    from fw.cli.main import main

    flags, _ = cli_run
    flags = [*flags, "--config", str(Path(flags[1]).with_name("ddp.yaml"))]
    data = yaml.safe_load(Path(flags[1]).read_text())
    data["backend"]["trainer"]["strategy"] = "ddp"
    data["trainer"]["steps_per_checkpoint"] = 100  # no checkpoint but the one the stop writes (and epoch ends)
    Path(flags[-1]).write_text(yaml.safe_dump(data))
    job = torchrun(str(WORKER), "fw", "train", *flags, "--output_directory", str(tmp_path / "out"),
                   env={"TERMINATE_AT_STEP": "1"})
    assert job.returncode != 0
    assert "stopped by SIGTERM" in job.stdout + job.stderr
    run = tmp_path / "out" / "exp_run"
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert 1 <= latest["step"] < 6 and not (run / "model").exists()
    state = json.loads((run / "checkpoints" / f"step-{latest['step']:08d}" / "state.json").read_text())
    assert state["position"]["step"] == latest["step"] and len(state["rng"]["rng_ranks"]) == 1

    capsys.readouterr()
    assert main(["train", *flags, "--output_directory", str(tmp_path / "out"), "--resume"]) == 0
    assert f"step {latest['step']})" in capsys.readouterr().err
    assert (run / "model" / "adapter_model.safetensors").is_file()


# -- on GPUs (make gpu-check) --------------------------------------------------------------------------------------
def gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.gpu
@pytest.mark.skipif(gpus() < 2, reason="needs 2 CUDA GPUs: nccl runs one process per GPU")
def test_nccl_ddp_fsdp2_bf16_and_qlora_ddp_fsdp_on_two_gpus(tmp_path, tiny_llama_dir):
    """The GPU paths no CPU test reaches: DDP over nccl (fp32: as one process with twice the batch), FSDP2 with
    bf16 mixed precision (a full fine-tune), QLoRA (bitsandbytes nf4) with DDP and with FSDP2 (4-bit weights in
    bf16 storage, sharded); each writes a model/ that loads."""
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install 'fw[bitsandbytes]')")
    training = tmp_path / "train.csv"
    rows(9).to_csv(training, index=False)
    qlora = {"quantization": {"bits": 4, "bnb_4bit_compute_dtype": "bfloat16"}}
    scenarios = {
        "nccl-ddp": (config(tiny_llama_dir, adapter=LORA, strategy="ddp", precision="fp32"),
                     config(tiny_llama_dir, adapter=LORA, batch=4, precision="fp32"), 1e-4),
        "fsdp2-bf16": (config(tiny_llama_dir, strategy={"type": "fsdp", "mixed_precision": "bf16"}, precision="fp32"),
                       config(tiny_llama_dir, batch=4, precision="fp32"), 5e-2),
        "qlora-ddp": ({**config(tiny_llama_dir, adapter=LORA, strategy="ddp"), **qlora},
                      {**config(tiny_llama_dir, adapter=LORA, batch=4), **qlora}, 2e-2),
        "qlora-fsdp": ({**config(tiny_llama_dir, adapter=LORA, strategy="fsdp"), **qlora},
                       {**config(tiny_llama_dir, adapter=LORA, batch=4), **qlora}, 2e-2),
    }
    jobs = {"runs": [{"name": name, "config": multi, "training_set": str(training),
                      "output_directory": str(tmp_path / "jobs")} for name, (multi, _, _) in scenarios.items()],
            "results": str(tmp_path / "results")}
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    job = torchrun(str(WORKER), str(tmp_path / "jobs.json"))
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    results = json.loads((tmp_path / "results.rank0.json").read_text())
    for name, (_, single, tolerance) in scenarios.items():
        reference = pipeline.train(single, training_set=training, output_directory=tmp_path / "single",
                                   show_progress=False).statistics["train_loss_per_step"]
        assert relative_difference(results[name]["statistics"]["train_loss_per_step"], reference) <= tolerance, name
        model_dir = Path(results[name]["run_dir"]) / "model"
        assert (model_dir / "adapter_model.safetensors").is_file() or (model_dir / "model.safetensors").is_file()


@pytest.mark.gpu
@pytest.mark.skipif(gpus() < 2, reason="needs 2 CUDA GPUs: DeepSpeed ZeRO runs one process per GPU")
def test_deepspeed_zero2_and_zero3_on_two_gpus_train_as_one_process_with_twice_the_batch(tmp_path, tiny_llama_dir):
    """DeepSpeed through accelerate (fw.train.parallel.DeepSpeedRuntime): LoRA under ZeRO-2, a full fine-tune under
    ZeRO-3, fp32; the loss curve of one process with twice the batch, and a model/ that loads."""
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install 'fw[deepspeed]')")
    training = tmp_path / "train.csv"
    rows(9).to_csv(training, index=False)
    zero = {stage: {"type": "deepspeed", "deepspeed_config": {"zero_optimization": {"stage": stage}}}
            for stage in (2, 3)}
    scenarios = {
        "zero2-lora": (config(tiny_llama_dir, adapter=LORA, strategy=zero[2], precision="fp32"),
                       config(tiny_llama_dir, adapter=LORA, batch=4, precision="fp32")),
        "zero3-full": (config(tiny_llama_dir, strategy=zero[3], precision="fp32"),
                       config(tiny_llama_dir, batch=4, precision="fp32")),
    }
    jobs = {"runs": [{"name": name, "config": multi, "training_set": str(training),
                      "output_directory": str(tmp_path / "jobs")} for name, (multi, _) in scenarios.items()],
            "results": str(tmp_path / "results")}
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    job = torchrun(str(WORKER), str(tmp_path / "jobs.json"))
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    results = json.loads((tmp_path / "results.rank0.json").read_text())
    for name, (_, single) in scenarios.items():
        reference = pipeline.train(single, training_set=training, output_directory=tmp_path / "single",
                                   show_progress=False).statistics["train_loss_per_step"]
        assert relative_difference(results[name]["statistics"]["train_loss_per_step"], reference) <= 1e-3, name
        model_dir = Path(results[name]["run_dir"]) / "model"
        assert (model_dir / "adapter_model.safetensors").is_file() or (model_dir / "model.safetensors").is_file()

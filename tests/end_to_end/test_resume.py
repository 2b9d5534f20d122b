"""Never lose work: a training process killed with SIGKILL mid-epoch resumes (`fw train --resume`) to exactly the
loss curve of an uninterrupted run; a crash or a full disk never leaves a half-written model/ directory."""
from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import yaml

from fw import pipeline
from fw.cli.main import main

#: runs `fw train` in this process, SIGKILLing itself right after its KILL_AFTER-th checkpoint is on disk
KILLER = textwrap.dedent("""
    import os, signal, sys
    from fw.train import checkpoint
    from fw.cli.main import main

    real_save, saved = checkpoint.save_checkpoint, []

    def save_then_die(*args, **kwargs):
        path = real_save(*args, **kwargs)
        saved.append(path)
        if len(saved) == int(os.environ["KILL_AFTER"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    checkpoint.save_checkpoint = save_then_die
    sys.exit(main(sys.argv[1:]))
""")


def rows(count: int) -> pd.DataFrame:
    return pd.DataFrame({"question": [f"what is {i} plus one" for i in range(count)],
                         "answer": [f"it is {i + 1}" for i in range(count)]})


@pytest.fixture()
def setup(tmp_path, tiny_llama_dir):
    config = {"base_model": str(tiny_llama_dir), "input_features": [{"name": "question"}],
              "output_features": [{"name": "answer"}], "prompt": {"template": "Q: {question}\nA:"},
              "adapter": {"type": "lora", "r": 4, "dropout": 0.1},  # dropout: the RNG state must be restored too
              "trainer": {"type": "finetune", "epochs": 2, "batch_size": 2, "gradient_accumulation_steps": 2,
                          "learning_rate": 0.01,
                          "steps_per_checkpoint": 2, "seed": 3}}
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    dataset = tmp_path / "train.csv"
    rows(24).to_csv(dataset, index=False)  # 12 micro-batches = 6 steps per epoch, 12 steps in all
    return tmp_path, config_file, dataset


def test_kill_9_mid_epoch_then_resume_gives_the_uninterrupted_loss_curve(setup):
    root, config_file, dataset = setup
    flags = ["--config", str(config_file), "--training_set", str(dataset), "--experiment_name", "exp", "--no_progress"]
    killed = subprocess.run([sys.executable, "-c", KILLER, "train", *flags, "--output_directory",
                             str(root / "killed")], env={**__import__("os").environ, "KILL_AFTER": "2"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    run = root / "killed" / "exp_run"
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 4  # killed in the first epoch (6 steps), after the step-4 checkpoint
    assert not (run / "model").exists()

    assert main(["train", *flags, "--output_directory", str(root / "killed"), "--resume"]) == 0
    resumed = json.loads((run / "training_statistics.json").read_text())

    assert main(["train", *flags, "--output_directory", str(root / "straight")]) == 0
    straight = json.loads((root / "straight" / "exp_run" / "training_statistics.json").read_text())
    assert len(resumed["train_loss_per_step"]) == 12
    assert resumed["train_loss_per_step"] == straight["train_loss_per_step"]
    assert (run / "model" / "adapter_model.safetensors").is_file()


def test_an_exception_mid_training_leaves_a_resumable_checkpoint(setup, monkeypatch):
    from fw.train import trainer

    root, config_file, dataset = setup
    real_step, calls = trainer.Reporter.step, []

    def step_then_fail(self, step, *args):
        real_step(self, step, *args)
        calls.append(step)
        if step == 3:
            raise KeyboardInterrupt  # Ctrl-C between micro-batches

    monkeypatch.setattr(trainer.Reporter, "step", step_then_fail)
    flags = ["--config", str(config_file), "--training_set", str(dataset), "--output_directory", str(root),
             "--no_progress"]
    assert main(["train", *flags]) == 130
    latest = json.loads((root / "experiment_run" / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 3
    monkeypatch.setattr(trainer.Reporter, "step", real_step)
    assert main(["train", *flags, "--resume"]) == 0
    statistics = json.loads((root / "experiment_run" / "training_statistics.json").read_text())
    assert len(statistics["train_loss_per_step"]) == 12


def test_a_full_disk_while_saving_leaves_no_half_written_model(setup, monkeypatch, capsys):
    from peft import PeftModel

    root, config_file, dataset = setup

    def disk_full(self, directory, **kwargs):
        (__import__("pathlib").Path(directory) / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))

    monkeypatch.setattr(PeftModel, "save_pretrained", disk_full)
    code = main(["train", "--config", str(config_file), "--training_set", str(dataset), "--output_directory",
                 str(root), "--no_progress"])
    assert code == 1
    error = capsys.readouterr().err
    run = root / "experiment_run"
    assert "Traceback" not in error
    assert f"no space left on the device writing {run / 'model'}" in " ".join(error.split())
    assert "nothing of it was written. Kept: the checkpoint" in " ".join(error.split())
    assert not (run / "model").exists()
    assert not [path for path in run.iterdir() if path.name.startswith(".model")], "temporary model dir left"
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 12


def test_resume_without_a_checkpoint_says_so(setup, capsys):
    root, config_file, dataset = setup
    code = main(["train", "--config", str(config_file), "--training_set", str(dataset), "--output_directory",
                 str(root / "nothing"), "--resume", "--no_progress"])
    assert code == 1
    assert "--resume: no run of experiment 'experiment' with a checkpoint" in capsys.readouterr().err

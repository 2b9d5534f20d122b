"""Faults: nothing is lost, overwritten or written outside the output directory, and every failure is one true line.

Runs stay inside --output_directory and are locked while a process trains in them; --resume continues a run only
with its own config and is checked before anything is written; SIGTERM saves a checkpoint as Ctrl-C does; a full
disk at any write names the file, the space left and what was kept; predict / evaluate never overwrite earlier
outputs; a saved adapter goes on another base model only when asked for, and one that does not fit says so.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fw import runs
from fw.cli.main import main
from fw.errors import FwError

#: runs the fw CLI; with STOP_AT set, training pauses after that optimizer step (READY is created) until GO exists
PAUSING_FW = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from fw.train import trainer
    from fw.cli.main import main

    real_step = trainer.Reporter.step

    def step_then_pause(self, step, *args):
        real_step(self, step, *args)
        if step == int(os.environ["STOP_AT"]):
            Path(os.environ["READY"]).write_text(str(os.getpid()))
            deadline = time.monotonic() + 300
            while not Path(os.environ["GO"]).exists() and time.monotonic() < deadline:
                time.sleep(0.05)

    trainer.Reporter.step = step_then_pause
    sys.exit(main(sys.argv[1:]))
""")


def rows(count: int) -> pd.DataFrame:
    return pd.DataFrame({"question": [f"what is {i} plus one" for i in range(count)],
                         "answer": [f"it is {i + 1}" for i in range(count)]})


def write_config(path: Path, base_model, **trainer) -> Path:
    config = {"base_model": str(base_model), "input_features": [{"name": "question"}],
              "output_features": [{"name": "answer"}], "prompt": {"template": "Q: {question}\nA:"},
              "adapter": {"type": "lora", "r": 4},
              "trainer": {"type": "finetune", "epochs": 1, "batch_size": 2, "learning_rate": 0.01, "steps_per_checkpoint": 1, "seed": 3,
                          **trainer}}
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture()
def project(tmp_path, tiny_llama_dir):
    """(config file, dataset, output directory): 12 rows, 6 optimizer steps, a checkpoint after each."""
    dataset = tmp_path / "train.csv"
    rows(12).to_csv(dataset, index=False)
    return write_config(tmp_path / "config.yaml", tiny_llama_dir), dataset, tmp_path / "results"


def train_flags(config: Path, dataset: Path, output: Path, *more) -> list[str]:
    return ["train", "--config", str(config), "--training_set", str(dataset), "--output_directory", str(output),
            "--no_progress", *map(str, more)]


def fw(capsys, *argv) -> tuple[int, str]:
    """Exit code and stderr (whitespace folded) of the fw CLI in this process; never a traceback."""
    code = main([*map(str, argv)])
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return code, " ".join(error.split())


def interrupted_run(config: Path, dataset: Path, output: Path, monkeypatch, at_step: int = 2) -> Path:
    """A run stopped by Ctrl-C after ``at_step`` optimizer steps (its checkpoint is there, model/ is not)."""
    from fw.train import trainer

    real_step = trainer.Reporter.step

    def step_then_interrupt(self, step, *args):
        real_step(self, step, *args)
        if step == at_step:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(trainer.Reporter, "step", step_then_interrupt)
        assert main(train_flags(config, dataset, output)) == 130
    return output / "experiment_run"


def snapshot(run: Path) -> dict[str, bytes]:
    """The run's files (relative path -> bytes); the lock file and TensorBoard's (written by a thread) aside."""
    return {str(path.relative_to(run)): path.read_bytes() for path in sorted(run.rglob("*"))
            if path.is_file() and path.name != runs.LOCK_FILE and "tensorboard" not in path.parts}


def start_pausing_fw(tmp_path: Path, argv: list[str], stop_at: int) -> tuple[subprocess.Popen, Path, Path]:
    ready, go = tmp_path / "ready", tmp_path / "go"
    env = {**os.environ, "STOP_AT": str(stop_at), "READY": str(ready), "GO": str(go)}
    process = subprocess.Popen([sys.executable, "-c", PAUSING_FW, *argv], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"fw never reached step {stop_at}: {process.communicate()[1][-3000:]}")
        time.sleep(0.1)
    return process, ready, go


# -- runs stay inside the output directory -----------------------------------------------------------------------
@pytest.mark.parametrize("flag, name", [("--experiment_name", "../../escaped"), ("--experiment_name", "/tmp/abs"),
                                        ("--experiment_name", "team/exp"), ("--model_name", ".."),
                                        ("--model_name", "a\\b")])
def test_run_names_cannot_leave_the_output_directory(tmp_path, project, capsys, flag, name):
    config, dataset, output = project
    escaped = output / (f"{name}_run" if flag == "--experiment_name" else f"experiment_{name}")
    code, error = fw(capsys, *train_flags(config, dataset, output), flag, name)
    assert code == 2
    assert f"error: {flag}: {name!r} is not a plain name" in error and "--output_directory results/<group>" in error
    assert not output.exists() and not escaped.resolve().exists()
    code, error = fw(capsys, "predict", "--config", config, "--dataset", dataset, flag, name)
    assert code == 2 and f"{flag}: {name!r} is not a plain name" in error


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_run_directory(project, capsys, monkeypatch):
    from fw.train.trainer import Trainer

    config, dataset, output = project

    def setup_fails(self, model, run_dir):
        assert (run_dir / "config.yaml").is_file()  # the run directory was made and filled: now it must go again
        raise FwError("trainer setup failed")

    monkeypatch.setattr(Trainer, "setup", setup_fails)
    assert fw(capsys, *train_flags(config, dataset, output)) == (1, "data: 12 training, 0 validation, 0 test rows "
                                                                     "error: trainer setup failed")
    assert output.is_dir() and not list(output.iterdir())


# -- the run lock --------------------------------------------------------------------------------------------------
HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from fw.runs import locked
    with locked(sys.argv[1]):
        print("held", flush=True)
        time.sleep(300)
""")


def test_a_killed_lock_holder_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "exp_run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FwError, match=rf"{run} is in use: process {holder.pid} on .* is training in it"):
            with runs.locked(run):
                pass
    finally:
        holder.kill()  # SIGKILL: no chance to clean up
        holder.wait()
    with runs.locked(run) as lock:
        assert lock.read_text().startswith(f"process {os.getpid()} on ")


def test_a_second_resume_into_a_run_being_trained_is_refused(tmp_path, project, capsys, monkeypatch):
    config, dataset, output = project
    run = interrupted_run(config, dataset, output, monkeypatch)
    first, ready, go = start_pausing_fw(tmp_path, train_flags(config, dataset, output, "--resume"), stop_at=4)
    try:
        before = snapshot(run)
        code, error = fw(capsys, *train_flags(config, dataset, output, "--resume"))
        assert code == 1
        assert f"error: {run} is in use: process {first.pid} on" in error and "is training in it" in error
        assert snapshot(run) == before  # the refused resume wrote nothing
    finally:
        go.write_text("")
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    statistics = json.loads((run / "training_statistics.json").read_text())
    assert statistics["steps"] == 6 and len(statistics["train_loss_per_step"]) == 6
    manifest = json.loads((run / "manifest.json").read_text())
    assert len(manifest["resumed"]) == 1  # one resume ran, the other never touched the run
    assert (run / "model" / "adapter_model.safetensors").is_file()


# -- resume: the same run, checked before anything is written ------------------------------------------------------
@pytest.mark.parametrize("change, named, why", [
    ({"adapter": {"type": "lora", "r": 8}}, "adapter.r 4 -> 8", "the checkpoint holds another model"),
    ({"trainer": {"learning_rate": 0.001}}, "trainer.learning_rate 0.01 -> 0.001", "optimizer state and schedule"),
    ({"trainer": {"epochs": 2}}, "trainer.epochs 1 -> 2", "optimizer state and schedule"),
    ({"trainer": {"learning_rate_scheduler": {"decay": "linear"}}}, "trainer.learning_rate_scheduler.decay "
                                                                    "None -> 'linear'", "schedule")])
def test_a_resume_that_changes_the_run_is_refused_before_anything_is_written(project, capsys, monkeypatch, change,
                                                                              named, why):
    config, dataset, output = project
    run = interrupted_run(config, dataset, output, monkeypatch)
    before = snapshot(run)
    changed = yaml.safe_load(config.read_text())
    for section, values in change.items():
        changed[section] = {**changed[section], **values}
    config.write_text(yaml.safe_dump(changed))
    code, error = fw(capsys, *train_flags(config, dataset, output, "--resume"))
    assert code == 1
    assert f"error: --resume: the config differs from the one {run} was trained with: {named};" in error
    assert why in error and "Put those values back to resume it, or train a new run without --resume" in error
    assert snapshot(run) == before  # config.yaml, manifest and checkpoints as they were


def test_a_resume_may_change_speed_settings_and_records_what_ran(project, capsys, monkeypatch):
    config, dataset, output = project
    run = interrupted_run(config, dataset, output, monkeypatch)
    created = json.loads((run / "manifest.json").read_text())["created"]
    changed = yaml.safe_load(config.read_text())
    changed["trainer"].update(eval_batch_size=3, steps_per_checkpoint=2)
    config.write_text(yaml.safe_dump(changed))
    assert fw(capsys, *train_flags(config, dataset, output, "--resume"))[0] == 0
    recorded = yaml.safe_load((run / "config.yaml").read_text())["trainer"]
    assert recorded["eval_batch_size"] == 3 and recorded["steps_per_checkpoint"] == 2
    assert recorded["learning_rate"] == 0.01 and recorded["epochs"] == 1
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["created"] == created and len(manifest["resumed"]) == 1
    assert json.loads((run / "training_statistics.json").read_text())["steps"] == 6


def test_resume_compares_every_setting_but_speed_ones_and_the_trained_adapter(tmp_path):
    from fw import artifacts
    from fw.config import view

    saved = {"base_model": "m", "adapter": {"type": "lora", "r": 4, "postprocessor": {"merge_adapter_into_base_model":
             False}}, "trainer": {"learning_rate": 0.01, "eval_batch_size": 2, "compile": False},
             "output_features": [{"name": "answer", "decoder": {"type": "text_extractor"}}]}
    (tmp_path / artifacts.CONFIG_FILE).write_text(yaml.safe_dump(saved))
    (tmp_path / artifacts.MANIFEST).write_text(json.dumps({"trained_adapter": "task_a"}))
    faster = {**saved, "trainer": {**saved["trainer"], "eval_batch_size": 8, "compile": True},
              "adapter": {**saved["adapter"], "postprocessor": {"merge_adapter_into_base_model": True}}}
    runs.check_resumable(tmp_path, faster, "task_a")  # speed and after-training settings may change

    other = {**saved, "output_features": [{"name": "answer", "decoder": {"type": "category_extractor"}}]}
    with pytest.raises(FwError, match="output_features.0.decoder.type 'text_extractor' -> 'category_extractor'; "
                                      "the checkpoint's optimizer state"):
        runs.check_resumable(tmp_path, other, "task_a")
    with pytest.raises(FwError, match="--adapter 'task_a' -> 'task_b'; the checkpoint holds another model"):
        runs.check_resumable(tmp_path, saved, "task_b")
    many = {**saved, "trainer": {"learning_rate": 1, "eval_batch_size": 2, "compile": False, "a": 1, "b": 2, "c": 3,
                                 "d": 4}}
    with pytest.raises(FwError, match=r"trainer.learning_rate 0.01 -> 1, trainer.a \(absent\) -> 1, trainer.b "
                                      r"\(absent\) -> 2, trainer.c \(absent\) -> 3 and 1 more;"):
        runs.check_resumable(tmp_path, many, "task_a")
    # a run written by an fw without trainer.seed resumes when the new config has the default there
    upgraded = {**saved, "trainer": {**saved["trainer"], "seed": view.schema_default("trainer", "seed")}}
    runs.check_resumable(tmp_path, upgraded, "task_a")
    with pytest.raises(FwError, match=r"trainer.seed \(absent\) -> 12345;"):
        runs.check_resumable(tmp_path, {**saved, "trainer": {**saved["trainer"], "seed": 12345}}, "task_a")


# -- SIGTERM -------------------------------------------------------------------------------------------------------
def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path, project, capsys):
    config, dataset, output = project
    process, _, _ = start_pausing_fw(tmp_path, train_flags(config, dataset, output), stop_at=3)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    error = " ".join(err.split())
    run = output / "experiment_run"
    assert process.returncode == 143, err[-3000:]
    assert "Traceback" not in error
    assert f"training stopped at step 3; checkpoint saved in {run / 'checkpoints' / 'step-00000003'}" in error
    assert "Run the same fw train command with --resume to continue." in error
    assert "fw train: stopped by SIGTERM." in error
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 3
    assert fw(capsys, *train_flags(config, dataset, output, "--resume"))[0] == 0
    assert len(json.loads((run / "training_statistics.json").read_text())["train_loss_per_step"]) == 6


# -- a full disk ---------------------------------------------------------------------------------------------------
def disk_full_when_writing(monkeypatch, name: str) -> None:
    """The first fsync of a file called ``name`` fails with ENOSPC (where a full disk often shows first)."""
    import fw.atomic

    real_fsync = fw.atomic.fsync_file

    def fsync_or_disk_full(path):
        if Path(path).name.startswith((name, f".{name}.tmp-")):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(path)

    monkeypatch.setattr(fw.atomic, "fsync_file", fsync_or_disk_full)


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one(project, capsys, monkeypatch):
    from safetensors import SafetensorError
    from safetensors import torch as safetensors_torch

    config, dataset, output = project
    real_save, calls = safetensors_torch.save_file, []

    def save_until_full(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if "step-00000003" in str(filename):  # safetensors' own words for ENOSPC, as a real full disk gives them
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors_torch, "save_file", save_until_full)
    code, error = fw(capsys, *train_flags(config, dataset, output))
    run = output / "experiment_run"
    kept = run / "checkpoints" / "step-00000002"
    assert code == 1
    assert (f"error: no space left on the device writing {run / 'checkpoints' / 'step-00000003'} (" in error
            and " free there); nothing of it was written." in error)
    assert (f"Kept: the checkpoint {kept}; free space, then run the same fw train command with --resume to continue "
            "from it." in error)
    assert "could not write a checkpoint" not in error  # no second attempt on a full disk
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["latest.json", "step-00000001",
                                                                             "step-00000002"]


def test_a_full_disk_at_the_training_statistics_keeps_the_last_checkpoint(project, capsys, monkeypatch):
    config, dataset, output = project
    disk_full_when_writing(monkeypatch, "training_statistics.json")
    code, error = fw(capsys, *train_flags(config, dataset, output))
    run = output / "experiment_run"
    assert code == 1
    assert f"no space left on the device writing {run / 'training_statistics.json'}" in error
    assert f"Kept: the checkpoint {run / 'checkpoints' / 'step-00000006'}; free space" in error
    assert not (run / "model").exists() and not list(run.glob(".*tmp*"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_dir):
    """(model dir, config file, dataset) of one short trained run, shared by the predict / evaluate tests."""
    root = tmp_path_factory.mktemp("trained")
    dataset = root / "train.csv"
    rows(6).to_csv(dataset, index=False)
    config = write_config(root / "config.yaml", tiny_llama_dir, steps_per_checkpoint=0)
    from fw import pipeline

    result = pipeline.train(str(config), training_set=str(dataset), output_directory=root / "results",
                            show_progress=False)
    return result.model_dir, config, dataset


@pytest.fixture()
def model_copy(trained, tmp_path):
    """A copy of the trained run (tests write predictions into it)."""
    model_dir, config, dataset = trained
    run = shutil.copytree(model_dir.parent, tmp_path / "copied_run")
    return run / "model", config, dataset


@pytest.mark.parametrize("verb, failing, kept", [
    ("predict", "predictions.parquet", "Nothing of this call was kept."),
    ("predict", "predictions.csv", "Kept in {directory}: predictions.parquet."),
    ("evaluate", "test_statistics.json", "Kept in {directory}: predictions.parquet, predictions.csv.")])
def test_a_full_disk_at_predictions_or_statistics_says_what_was_kept(model_copy, capsys, monkeypatch, verb, failing,
                                                                     kept):
    model_dir, _, dataset = model_copy
    disk_full_when_writing(monkeypatch, failing)
    code, error = fw(capsys, verb, "--model_path", model_dir, "--dataset", dataset, "--no_progress")
    directory = model_dir.parent / runs.OUTPUT_DIRS[verb]
    assert code == 1
    assert f"error: no space left on the device writing {directory / failing}" in error
    assert f"nothing of it was written. {kept.format(directory=directory)} Free space, then run fw {verb} again." \
        in error
    assert not list(directory.glob(".*tmp*"))


def unshare_tmpfs_works(directory: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {directory}"],
                           capture_output=True)
    return probe.returncode == 0


#: inside a private mount namespace: a 16 MB tmpfs as the output directory, filled up after the second checkpoint;
#: then freed, the run resumed, filled again and fw predict run on it
FULL_TMPFS = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from fw.train import checkpoint
    from fw.cli.main import main

    out, dataset, flags = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    filler = out / "filler"
    real_save, saved = checkpoint.save_checkpoint, []

    def fill_the_disk():
        with open(filler, "wb", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"x" * 65536)
            except OSError:
                pass

    def save_then_fill_the_disk(*args, **kwargs):
        path = real_save(*args, **kwargs)
        saved.append(path)
        if len(saved) == 2:
            fill_the_disk()
        return path

    checkpoint.save_checkpoint = save_then_fill_the_disk
    code = main(flags)
    run = out / "experiment_run"
    report = {"code": code, "latest": json.loads((run / "checkpoints" / "latest.json").read_text()),
              "files": sorted(str(p.relative_to(run)) for p in run.rglob("*"))}
    print("REPORT " + json.dumps(report), file=sys.stderr)
    os.unlink(filler)
    print("RESUMED " + str(main(flags + ["--resume"])), file=sys.stderr)
    print("STEPS " + str(json.loads((run / "training_statistics.json").read_text())["steps"]), file=sys.stderr)
    fill_the_disk()
    print("PREDICTED " + str(main(["predict", "--model_path", str(run), "--dataset", dataset, "--no_progress"])),
          file=sys.stderr)
    print("LEFT " + json.dumps(sorted(p.name for p in (run / "predictions").iterdir())), file=sys.stderr)
""")


def test_a_real_full_disk_during_training_on_a_tmpfs(tmp_path, project):
    config, dataset, _ = project
    mount = tmp_path / "small_disk"
    mount.mkdir()
    if not unshare_tmpfs_works(mount):
        pytest.skip("cannot mount a tmpfs here (needs unshare -rm: unprivileged user namespaces); the injected "
                    "ENOSPC tests cover the same write sites")
    script = f"mount -t tmpfs -o size=16m tmpfs {mount} && exec \"$0\" \"$@\""
    argv = ["unshare", "-rm", "sh", "-c", script, sys.executable, "-c", FULL_TMPFS, str(mount), str(dataset),
            *train_flags(config, dataset, mount)]
    finished = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    error = " ".join(finished.stderr.split())
    assert finished.returncode == 0, finished.stderr[-3000:]
    run = mount / "experiment_run"
    report = json.loads(finished.stderr.split("REPORT ", 1)[1].splitlines()[0])
    assert report["code"] == 1 and report["latest"]["step"] == 2
    assert f"no space left on the device writing {run / 'checkpoints' / 'step-00000003'} (" in error
    assert f"Kept: the checkpoint {run / 'checkpoints' / 'step-00000002'}; free space" in error
    assert "Traceback" not in error.split("REPORT", 1)[0]
    assert not [name for name in report["files"] if ".tmp-" in name]
    assert "RESUMED 0" in error and "STEPS 6" in error
    predictions = run / "predictions"
    assert f"error: no space left on the device writing {predictions / 'predictions.parquet'} (" in error
    assert "Nothing of this call was kept. Free space, then run fw predict again." in error
    assert "PREDICTED 1" in error and "LEFT []" in error  # no half-written file, no temporary one


# -- an interrupted final save -------------------------------------------------------------------------------------
#: the final save is killed (SIGKILL) halfway through writing adapter_config.json
KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from peft import PeftModel
    from fw.cli.main import main

    real_save = PeftModel.save_pretrained

    def save_and_die_halfway(self, directory, **kwargs):
        real_save(self, directory, **kwargs)
        written = Path(directory) / "adapter_config.json"
        written.write_text(written.read_text()[:40])
        os.kill(os.getpid(), signal.SIGKILL)

    PeftModel.save_pretrained = save_and_die_halfway
    sys.exit(main(sys.argv[1:]))
""")


def test_an_interrupted_final_save_leaves_nothing_a_later_command_trips_over(project, capsys):
    config, dataset, output = project
    killed = subprocess.run([sys.executable, "-c", KILLED_SAVE, *train_flags(config, dataset, output)],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    run = output / "experiment_run"
    assert [path.name[:len(".model.tmp-")] for path in run.glob(".model*")] == [".model.tmp-"]
    for model_path in (run, run / "model"):
        code, error = fw(capsys, "predict", "--model_path", model_path, "--dataset", dataset, "--no_progress")
        assert code == 1
        assert (f"error: --model_path: {run} holds no model/: its training stopped before the model was saved. "
                "Finish it with the fw train command that started it plus --resume") in error
    assert fw(capsys, *train_flags(config, dataset, output, "--resume"))[0] == 0
    assert not list(run.glob(".model*")) and (run / "model" / "adapter_config.json").is_file()
    assert fw(capsys, "predict", "--model_path", run, "--dataset", dataset, "--no_progress")[0] == 0


# -- predict / evaluate never overwrite ----------------------------------------------------------------------------
def test_predict_and_evaluate_never_overwrite_earlier_outputs(model_copy, capsys):
    model_dir, _, dataset = model_copy
    run = model_dir.parent
    flags = ["--model_path", str(model_dir), "--dataset", str(dataset), "--no_progress"]
    assert main(["predict", *flags]) == 0
    first = (run / "predictions" / "predictions.parquet").read_bytes()
    assert main(["predict", *flags]) == 0
    assert f"6 predictions in {run / 'predictions_1'}" in capsys.readouterr().out
    assert (run / "predictions" / "predictions.parquet").read_bytes() == first
    assert (run / "predictions_1" / "predictions.csv").is_file()

    for _ in range(2):
        assert main(["evaluate", *flags]) == 0
    assert f"test_statistics.json and predictions in {run / 'evaluation_1'}" in capsys.readouterr().out
    assert (run / "evaluation" / "test_statistics.json").is_file()
    assert runs.test_statistics_of(run) == run / "evaluation_1" / "test_statistics.json"  # what the card reports


def test_an_output_directory_holding_earlier_outputs_is_not_written_into(tmp_path, capsys):
    asked = tmp_path / "out"
    assert runs.output_directory("predict", asked) == asked  # made
    assert runs.output_directory("evaluate", asked) == asked  # still empty of outputs
    (asked / "predictions.csv").write_text("earlier")
    (tmp_path / "out_1").mkdir()
    (tmp_path / "out_1" / "test_statistics.json").write_text("{}")
    capsys.readouterr()
    assert runs.output_directory("predict", asked) == tmp_path / "out_2"
    assert (f"--output_directory {asked} holds the outputs of an earlier call; this one goes to {tmp_path / 'out_2'}"
            in capsys.readouterr().err)
    assert (asked / "predictions.csv").read_text() == "earlier"
    (tmp_path / "out_2" / "predictions.parquet").write_text("meanwhile")  # another writer got there first
    from fw import pipeline

    with pytest.raises(FwError, match="predictions.parquet appeared while fw predict was writing it"):
        with pipeline.writing_outputs("predict", tmp_path / "out_2"):
            pipeline.write_predictions(pd.DataFrame({"a": [1]}), tmp_path / "out_2")
    assert (tmp_path / "out_2" / "predictions.parquet").read_text() == "meanwhile"


# -- another base model only when asked for ------------------------------------------------------------------------
def test_a_config_naming_another_base_model_is_refused(model_copy, tmp_path, tiny_gpt2_dir, tiny_llama_dir,
                                                       capsys):
    model_dir, config, dataset = model_copy
    other = write_config(tmp_path / "other.yaml", tiny_gpt2_dir)
    code, error = fw(capsys, "predict", "--model_path", model_dir, "--config", other, "--dataset", dataset,
                     "--no_progress")
    assert code == 1
    assert (f"error: --config: base_model '{tiny_gpt2_dir}' is not the base model the adapter in {model_dir} was "
            f"trained on ('{tiny_llama_dir}'). To put the adapter on another base model, ask for it with "
            f"--base_model {tiny_gpt2_dir}") in error
    assert not (model_dir.parent / "predictions").exists()
    assert fw(capsys, "predict", "--model_path", model_dir, "--config", config, "--dataset", dataset,
              "--no_progress")[0] == 0  # the config it was trained with is fine


def test_an_adapter_on_another_base_model_only_when_asked_and_it_must_fit(model_copy, tmp_path, tiny_gpt2_dir,
                                                                          tiny_llama_dir, capsys):
    from fw.model.tiny import build_tiny_llama

    model_dir, _, dataset = model_copy
    predict = ["predict", "--model_path", model_dir, "--dataset", dataset, "--no_progress"]
    code, error = fw(capsys, *predict, "--base_model", tiny_gpt2_dir)
    assert code == 1
    assert f"error: --model_path: cannot load '{model_dir}': Target modules" in error
    assert (f"not found in the base model. Please check the target modules and try again. The base model is "
            f"'{tiny_gpt2_dir}'; the adapter was trained on '{tiny_llama_dir}'.") in error

    narrow = build_tiny_llama(tmp_path / "narrow_llama", hidden_size=32, intermediate_size=64)
    code, error = fw(capsys, *predict, "--base_model", narrow)
    assert code == 1
    assert ("the saved weights do not fit the model: base_model.model.model.layers.0.self_attn.q_proj.lora_A.default"
            ".weight has shape [4, 64] in the saved weights but [4, 32] in the model") in error
    assert f"The base model is '{narrow}'; the adapter was trained on '{tiny_llama_dir}'." in error

    same_weights = shutil.copytree(tiny_llama_dir, tmp_path / "moved_llama")
    code, error = fw(capsys, *predict, "--base_model", same_weights)
    assert code == 0
    assert f"--base_model: the adapter of {model_dir} goes on '{same_weights}' (it was trained on " \
           f"'{tiny_llama_dir}')" in error


def test_an_adapter_whose_base_model_is_gone_asks_for_base_model(tmp_path, tiny_llama_dir, capsys):
    from fw import pipeline

    base = shutil.copytree(tiny_llama_dir, tmp_path / "base")
    dataset = tmp_path / "train.csv"
    rows(4).to_csv(dataset, index=False)
    result = pipeline.train(str(write_config(tmp_path / "config.yaml", base, steps_per_checkpoint=0)),
                            training_set=str(dataset), output_directory=tmp_path / "results", show_progress=False)
    shutil.move(base, tmp_path / "moved")
    code, error = fw(capsys, "predict", "--model_path", result.model_dir, "--dataset", dataset, "--no_progress")
    assert code == 1
    assert (f"error: --model_path: the adapter in {result.model_dir} was trained on base model '{base}', which is "
            "not there any more. Give where that model is now with --base_model PATH") in error
    assert fw(capsys, "predict", "--model_path", result.model_dir, "--dataset", dataset, "--no_progress",
              "--base_model", tmp_path / "moved")[0] == 0


def test_a_directory_written_atomically_has_the_permissions_of_any_new_directory(tmp_path):
    """mkdtemp makes its directory 0700; a saved model or export must be readable as the umask allows."""
    import os

    from fw.atomic import atomic_directory

    previous = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "model") as staging:
            (staging / "weights").write_text("w")
    finally:
        os.umask(previous)
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755

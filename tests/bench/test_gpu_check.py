"""``make gpu-check`` (issue 12, point 9): its GPU steps are commands the benchmark scripts accept, within the
8-minute budget; a GPU machine without network gets one clear line when fw's wheels are missing or stale. (The CPU
smoke path runs the scripts themselves: tests/bench/test_bench_smoke.py runs ``train_speed.py --smoke``.)"""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from repo_root import REPO

BENCH = REPO / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check():
    return load("gpu_check")


def test_the_gpu_steps_are_commands_the_scripts_accept_within_eight_minutes(gpu_check):
    train_speed, predict_speed = load("train_speed"), load("predict_speed")
    tests, training, prediction = gpu_check.steps("python3", gpu=True)
    assert sum(step.limit for step in (tests, training, prediction)) <= gpu_check.BUDGET_SECONDS == 8 * 60
    assert tests.argv[1:5] == ["-m", "pytest", "-m", "gpu"]
    assert {"tests/model/test_quantization.py", "tests/model/test_initializers.py"} <= set(tests.argv)
    arguments = train_speed.parse(training.argv[2:])
    settings = train_speed.settings_from(arguments)
    assert settings.quick and not settings.smoke and settings.model == "1b"
    assert (settings.steps, settings.warmup_steps, arguments.timeout) == (15, 3, 100)
    assert not train_speed.fast_trainer_options(settings).get("compile")
    report = {"model": {"name": "1b"}, "quick": True, "device": "NVIDIA H100 80GB HBM3", "date": "2026-01-01"}
    assert train_speed.output_path(report, BENCH / "results", False).name == \
        "train_speed-quick-nvidia-h100-80gb-hbm3-2026-01-01.json"
    assert predict_speed.parse(prediction.argv[2:]).device == "cuda"


def test_the_gpu_tests_it_runs_are_collected(gpu_check):
    tests = gpu_check.steps(sys.executable, gpu=True)[0]
    collected = subprocess.run([*tests.argv[:-len(gpu_check.gpu_test_files())], "--collect-only",
                                *gpu_check.gpu_test_files()], cwd=gpu_check.ROOT, capture_output=True, text=True)
    names = collected.stdout
    for test in ("test_qlora_nf4_on_the_gpu", "test_float8_lora_on_an_h100_class_gpu", "test_loftq_trains_on_a_gpu"):
        assert test in names, collected.stdout[-2000:] + collected.stderr[-2000:]


def test_without_fw_or_its_wheels_the_machine_is_told_what_to_do(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "imports", lambda *args: False)  # a GPU image's python3, without fw
    monkeypatch.setattr(gpu_check, "WHEELS", tmp_path)
    monkeypatch.setattr(gpu_check, "SOURCES_HASH", tmp_path / "fw-sources.sha1")
    with pytest.raises(SystemExit) as missing:
        gpu_check.environment("python3")
    assert "cannot import fw and" in str(missing.value) and "run make gpu-wheels" in str(missing.value)
    (tmp_path / "fw-0.1.0-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "fw-sources.sha1").write_text("0" * 40)
    with pytest.raises(SystemExit) as stale:
        gpu_check.environment("python3")
    assert "was built from other sources than this checkout's: run make gpu-wheels again" in str(stale.value)

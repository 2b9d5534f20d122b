"""bench/startup.py (issue 15, point 11): both sides mark the same phases, and the table and ratio come from
those marks. In-process on the tiny model; the timed subprocess runs are `make bench`'s (no wall-clock here)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from fw import pipeline

from repo_root import REPO

SCRIPT = REPO / "bench" / "startup.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("startup_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["startup_bench"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def workspace(bench, tmp_path_factory):
    directory = tmp_path_factory.mktemp("startup")
    built = bench.build_workspace(directory, "smoke")
    assert built["rows"] == bench.ROWS and 0 < built["parameters"] < 1e6
    return directory


def phases_of(bench, trace_file: Path) -> list[str]:
    return [mark["phase"] for mark in bench.read_marks(trace_file)]


def test_fw_train_marks_every_phase_in_order(bench, workspace, tmp_path, monkeypatch):
    trace_file = tmp_path / "trace.jsonl"
    monkeypatch.setenv("FW_STARTUP_TRACE", str(trace_file))
    config = yaml.safe_load((workspace / "config.yaml").read_text())
    result = pipeline.train(config, training_set=str(workspace / "train.csv"), output_directory=tmp_path / "out",
                            show_progress=False)
    assert result.statistics["steps"] == 1
    assert phases_of(bench, trace_file) == list(bench.PHASES)  # each once, though the loop marks every step


def test_the_reference_marks_its_phases_in_the_same_order(bench, workspace, tmp_path, monkeypatch):
    trace_file = tmp_path / "trace.jsonl"
    monkeypatch.setenv("FW_STARTUP_TRACE", str(trace_file))
    assert bench.reference(workspace, tmp_path / "out") == 0
    assert phases_of(bench, trace_file) == ["imports", "data", "model", "tokens", "adapter", "setup", "first_step"]


def test_phases_are_the_gaps_between_marks_and_the_ratio_compares_median_totals(bench):
    def run(start, *times):
        marks = [{"phase": phase, "time": start + t, "cpu": 2 * t} for phase, t in zip(bench.PHASES, times)]
        return {"returncode": 0, **bench.split(marks, start)}

    fw = [run(100, 2, 2.1, 2.3, 2.5, 4, 4.1, 4.4, 4.6, 5), run(0, 3, 3.1, 3.3, 3.5, 5, 5.1, 5.4, 5.6, 6)]
    assert fw[0]["phases"]["model"] == pytest.approx(1.5) and fw[0]["total"] == pytest.approx(5)
    assert fw[0]["cpu_phases"]["model"] == pytest.approx(3.0) and fw[0]["cpu_total"] == pytest.approx(10)
    reference = [{"returncode": 0, "total": 4.0, "phases": {"imports": 3.0, "first_step": 1.0},
                  "cpu_total": 8.8, "cpu_phases": {"imports": 5.0, "first_step": 3.8}}]
    failed = {"returncode": 1, "total": None, "phases": {}, "error": "boom"}
    summary = bench.summarize({"fw": fw + [failed], "reference": reference})
    assert summary["fw"]["runs"] == 2 and summary["fw"]["total"] == pytest.approx(5.5)
    assert summary["fw"]["phases"]["imports"] == pytest.approx(2.5)
    assert summary["ratio"] == pytest.approx(5.5 / 4.0) and summary["cpu_ratio"] == pytest.approx(11 / 8.8)
    printed = bench.table(summary)
    assert "fw / Trainer + PEFT: 1.38 wall clock, 1.25 CPU time" in printed
    assert [line.split()[-1] for line in printed.splitlines() if line.startswith("plugin discovery")] == ["-"]

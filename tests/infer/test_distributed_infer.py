"""fw predict / fw evaluate on two real processes (torchrun, gloo on CPU) and the tiny Llama: the rows are split
across the processes and the job writes, once, the files a single process writes; messages come from rank 0
only; a failure on one process ends the whole job with that process's error. On two GPUs (nccl): the gpu test."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from fw import pipeline
from fw.cli.main import main

ROWS = 7  # the processes get 4 and 3 rows: shares of unequal size
#: one process of a job run with ``python -m fw.cli.launch --nproc_per_node 2 job.py VERB ...``: fw's command line,
#: recording which processes build a retrieval index, and failing generation on the process FAIL_ON_RANK names
JOB = '''
import os, sys
import fw.infer.generation as generation
from fw.data import retrieval
from fw.errors import FwError

rank, prepare = os.environ["RANK"], retrieval.prepare

def recorded_prepare(*args, **kwargs):
    with open(os.environ["INDEX_BUILDS"], "a") as builds:
        builds.write(rank + "\\n")
    return prepare(*args, **kwargs)

def out_of_memory(*args, **kwargs):
    raise FwError("generation ran out of memory on this process")

retrieval.prepare = recorded_prepare
if os.environ.get("FAIL_ON_RANK") == rank:
    generation.generate = out_of_memory
from fw.cli.main import main
sys.exit(main(sys.argv[1:]))
'''


@pytest.fixture()
def files(tmp_path, tiny_llama_dir):
    """(config, retrieval config, dataset): the base model directly (trainer none), greedy decoding."""
    dataset = tmp_path / "data.csv"
    pd.DataFrame({"question": [f"what is {i} plus one" for i in range(ROWS)],
                  "answer": [f"it is {i + 1}" for i in range(ROWS)]}).to_csv(dataset, index=False)
    data = {"base_model": str(tiny_llama_dir), "input_features": [{"name": "question"}],
            "output_features": [{"name": "answer"}], "prompt": {"template": "Q: {question}\nA:"},
            "trainer": {"type": "none"}, "generation": {"max_new_tokens": 4, "do_sample": False}}
    config, few_shot = tmp_path / "config.yaml", tmp_path / "few_shot.yaml"
    config.write_text(yaml.safe_dump(data))
    few_shot.write_text(yaml.safe_dump({**data, "prompt": {"task": "Add one.", "retrieval": {"type": "random", "k": 2}},
                                        "backend": {"cache_dir": str(tmp_path / "cache")}}))
    return config, few_shot, dataset


def run_job(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "INDEX_BUILDS": str(tmp_path / "index_builds"), **env}
    return subprocess.run([sys.executable, "-m", "fw.cli.launch", "--nproc_per_node", "2", str(script), *argv],
                          env=environment, capture_output=True, text=True, timeout=300)


def assert_same_predictions(one: Path, two: Path) -> None:
    pd.testing.assert_frame_equal(pd.read_parquet(one / "predictions.parquet"),
                                  pd.read_parquet(two / "predictions.parquet"))
    assert (one / "predictions.csv").read_text() == (two / "predictions.csv").read_text()


def test_predict_on_two_processes_writes_the_file_of_one(files, tmp_path, capfd):
    config, _, dataset = files
    argv = ["predict", "--config", str(config), "--dataset", str(dataset), "--no_progress"]
    assert main([*argv, "--output_directory", str(tmp_path / "two"), "--num_processes", "2"]) == 0
    out, err = capfd.readouterr()
    assert out.count(f"✓ {ROWS} predictions in") == 1 and err.count(f"wrote {ROWS} predictions to") == 1
    single = pipeline.predict(config=str(config), dataset=str(dataset), output_directory=tmp_path / "one",
                              show_progress=False)
    assert len(single.predictions) == ROWS and single.predictions["raw_generation"].str.len().gt(0).all()
    assert_same_predictions(tmp_path / "one", tmp_path / "two")
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("two")) == ["two"]


def test_evaluate_on_two_processes_scores_every_row_once(files, tmp_path):
    _, few_shot, dataset = files
    argv = ["evaluate", "--config", str(few_shot), "--dataset", str(dataset), "--no_progress"]
    job = run_job(tmp_path, *argv, "--output_directory", str(tmp_path / "two"))
    assert job.returncode == 0, job.stderr[-3000:]
    assert job.stdout.count("✓ test_statistics.json and predictions in") == 1
    assert (tmp_path / "index_builds").read_text() == "0\n"  # the few-shot index: built by rank 0 alone
    single = pipeline.evaluate(config=str(few_shot), dataset=str(dataset), output_directory=tmp_path / "one",
                               show_progress=False)
    assert_same_predictions(tmp_path / "one", tmp_path / "two")
    statistics = json.loads((tmp_path / "two" / "test_statistics.json").read_text())
    assert statistics.keys() == single.statistics.keys() and statistics["rows"] == ROWS
    for output in ("answer", "combined"):  # sums over the rows: equal up to the order of the additions
        assert statistics[output] == pytest.approx(single.statistics[output], rel=1e-6)
    assert statistics["answer"]["loss"] > 0 and "exact_match" in statistics["answer"]


def test_a_failure_on_one_process_ends_the_job_with_its_error(files, tmp_path):
    config, _, dataset = files
    job = run_job(tmp_path, "predict", "--config", str(config), "--dataset", str(dataset), "--no_progress",
                  "--output_directory", str(tmp_path / "out"), FAIL_ON_RANK="1")
    assert job.returncode == 1
    assert job.stderr.count("[rank 1] error: generation ran out of memory on this process") == 1
    assert "fw: rank 1 exited with code 1 (its error is above); torchrun stopped the other processes." in job.stderr
    assert "Traceback" not in job.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="a job on nccl needs two CUDA GPUs, one per process")
def test_predict_on_two_gpus_writes_the_file_of_one(files, tmp_path):
    config, _, dataset = files
    data = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**data, "trainer": {**data["trainer"], "precision": "fp32"}}))
    argv = ["predict", "--config", str(config), "--dataset", str(dataset), "--no_progress"]
    assert main([*argv, "--output_directory", str(tmp_path / "two"), "--num_processes", "2"]) == 0
    pipeline.predict(config=str(config), dataset=str(dataset), output_directory=tmp_path / "one", show_progress=False)
    assert_same_predictions(tmp_path / "one", tmp_path / "two")

"""bench/train_speed.py (issue 6): the GPU benchmark's every code path, run on CPU with a tiny model (--smoke),
and the figures it rests on (parameter counts, length distribution, MFU)."""
from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys

import pytest

from repo_root import REPO

SCRIPT = REPO / "bench" / "train_speed.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_speed"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, expected", [("1b", 1.24e9), ("8b", 8.03e9)])
def test_parameter_counts_match_the_real_llama_shapes(bench, name, expected):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**bench.MODELS[name]))
    real = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert bench.parameter_count(bench.MODELS[name]) == real
    assert abs(real - expected) / expected < 0.005


def test_variable_lengths_follow_the_long_tail_and_fixed_rows_are_1024(bench):
    import numpy

    settings = bench.Settings(model="smoke")
    lengths = bench.row_lengths(settings, "variable", 4000, numpy.random.default_rng(0))
    assert min(lengths) >= 32 and max(lengths) == 1024
    assert 240 <= statistics.median(lengths) <= 272
    assert bench.row_lengths(settings, "fixed", 3, numpy.random.default_rng(0)) == [1024] * 3
    rows = bench.make_rows(settings, "variable", 20, seed=1)
    assert all(0 < prompt < len(tokens) for tokens, prompt in rows)
    assert all(settings.pad_id not in tokens for tokens, _ in rows)


def test_mfu_is_4n_flops_per_token_against_the_peak(bench):
    # the reference figure: 7.2k tok/s on the 1.24B model is 3.6% of 989 TFLOP/s
    result = bench.complete({"status": "ok", "tokens_per_second": 7200.0}, 1.24e9, 989.0)
    assert result["mfu"] == pytest.approx(0.0361, abs=5e-4)
    assert set(bench.SIDE_FIELDS) <= set(result)


@pytest.mark.bench
def test_smoke_runs_both_sides_on_both_workloads_and_writes_every_field(bench, tmp_path):
    process = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--output-dir", str(tmp_path)],
                             capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    assert "real tok/s" in process.stdout
    [path] = tmp_path.glob("train_speed-smoke-cpu-*.json")
    report = json.loads(path.read_text())
    assert report["smoke"] and report["device"] == "cpu" and report["settings"]["peak_tflops"] == 989.0
    assert set(report["workloads"]) == {"variable", "fixed"}
    for workload, entry in report["workloads"].items():
        assert set(bench.WORKLOAD_FIELDS) <= set(entry), workload
        for side in bench.SIDES:
            result = entry[side]
            assert set(bench.SIDE_FIELDS) <= set(result), (workload, side)
            assert result["status"] == "ok", result.get("error")
            assert result["tokens_per_second"] > 0 and result["mfu"] > 0
            assert result["tokens_counted"] == "measured"
            assert result["timed_steps"] == result["total_steps"] - 1
        reference, fw = entry["reference"], entry["fw"]
        assert reference["real_tokens"] == fw["real_tokens"]  # the same rows on both sides
        assert reference["eval_loss_initial"] == pytest.approx(fw["eval_loss_initial"], rel=1e-5)  # same weights
        assert entry["speedup"] > 0 and entry["loss_agrees"] is True
    assert report["workloads"]["fixed"]["reference"]["computed_tokens"] == \
        report["workloads"]["fixed"]["reference"]["real_tokens"]  # fixed-length rows: no padding
    assert report["workloads"]["variable"]["reference"]["computed_tokens"] > \
        report["workloads"]["variable"]["reference"]["real_tokens"]  # the reference pads
    assert report["workloads"]["variable"]["fw"]["options"]["packing"] is True


def test_an_out_of_memory_reference_is_reported_not_fatal(bench, capsys):
    import torch

    oom = bench.complete(bench.failure(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")),
                         8.03e9, 989.0)
    assert oom["status"] == "oom" and oom["tokens_per_second"] is None and oom["mfu"] is None
    fw = bench.complete({"status": "ok", "tokens_per_second": 9000.0, "peak_memory_gib": 60.0,
                         "eval_loss_initial": 11.9, "eval_loss_final": 7.1, "train_loss_final": 7.2}, 8.03e9, 989.0)
    entry = bench.compare(oom, fw, "fixed", 0.02)
    assert entry["speedup"] is None and entry["loss_agrees"] is None and entry["targets"]["memory_met"] is True
    report = {"device": "NVIDIA H100 80GB HBM3", "model": {"name": "8b", "parameters": 8.03e9},
              "settings": {"peak_tflops": 989.0, "loss_tolerance": 0.02}, "workloads": {"fixed": entry}}
    bench.print_table(report)
    out = capsys.readouterr().out
    assert "oom" in out and "9,000" in out and "OutOfMemoryError" in out


def test_a_worker_that_dies_is_reported_as_crashed(bench, tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text('{"no_such_setting": 1}')
    result = bench.run_worker("fw", ["variable"], settings, timeout=120)
    assert result["variable"]["status"] == "crashed"
    assert "no_such_setting" in result["variable"]["error"]

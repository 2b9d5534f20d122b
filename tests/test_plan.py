"""``fw plan`` (issue 12, point 10): parameters and memory per device from the config alone, checked against the
measured peak of a real run.

How the real run is measured: the tiny Llama trains through fw (``fw.pipeline.train``, in a subprocess) under
``torch.profiler`` with ``profile_memory=True``; its peak is the largest "Total Allocated" among the profiler's
memory events, i.e. the bytes torch's CPU allocator holds for the tensors allocated since profiling began. That is
exactly the tensor memory training holds (weights, gradients, optimizer state, activations, temporaries), counted
the same way on every run whatever else the shared machine is doing; peak RSS would add the interpreter, the
libraries and the allocator's caching, and move with the machine's load.
"""
from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from fw.cli.main import main

WORDS = "the movie was wonderful and moving but the food was cold and the service slow".split()
#: fw plan's estimate must be within this fraction of the measured peak (the issue's bound)
TOLERANCE = 0.25

MEASURE = r"""
import itertools, json, sys
import torch
from torch.profiler import ProfilerActivity, profile
from fw import pipeline

torch.set_num_threads(1)
peaks = {}
for name, config in json.loads(sys.argv[1]).items():
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        pipeline.train(config, dataset=sys.argv[2], output_directory=sys.argv[3], experiment_name=name,
                       show_progress=False)
    events = sorted((event.start_ns(), event.nbytes()) for event in profiler.profiler.kineto_results.events()
                    if event.name() == "[memory]")  # +bytes allocated, -bytes freed
    peaks[name] = max(itertools.accumulate(size for _, size in events))
print("PEAKS=" + json.dumps(peaks))
"""


def dataset(path, rows: int = 16) -> str:
    """Rows of nearly equal length, so that every optimizer step meets a micro-batch as large as the largest."""
    rng = random.Random(0)
    frame = pd.DataFrame([{"review": " ".join(rng.choice(WORDS) for _ in range(40)),
                           "label": " ".join(rng.choice(WORDS) for _ in range(12))} for _ in range(rows)])
    frame.to_csv(path, index=False)
    return str(path)


def config(base, **changes) -> dict:
    data = {"base_model": str(base), "input_features": [{"name": "review", "type": "text"}],
            "output_features": [{"name": "label", "type": "text"}],
            "preprocessing": {"split": {"type": "random", "probabilities": [1.0, 0.0, 0.0]}},
            "trainer": {"type": "finetune", "batch_size": 4, "epochs": 1, "precision": "fp32", "learning_rate": 1e-3}}
    for key, value in changes.items():
        if key == "trainer":
            data["trainer"] = {**data["trainer"], **value}
        else:
            data[key] = value
    return data


def plan_of(data: dict, **request):
    from fw.plan import Request, make_plan

    return make_plan(Request(data, **request))


# -- the estimate against a real run ---------------------------------------------------------------------------
@pytest.mark.slow
def test_the_estimate_is_within_25_percent_of_the_measured_peak_of_a_real_run(tmp_path, tiny_llama_dir):
    data_file = dataset(tmp_path / "rows.csv")
    runs = {"full": config(tiny_llama_dir),
            "lora": config(tiny_llama_dir, adapter={"type": "lora", "r": 8}),
            "checkpointed": config(tiny_llama_dir, trainer={"enable_gradient_checkpointing": True})}
    process = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(runs), data_file, str(tmp_path / "out")],
                             capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    measured = json.loads(process.stdout.split("PEAKS=")[1])
    for name, data in runs.items():
        estimate = plan_of(data, dataset=data_file, device="cpu").memory.peak
        assert measured[name], name
        assert abs(estimate - measured[name]) <= TOLERANCE * measured[name], (name, estimate, measured[name])

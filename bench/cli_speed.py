"""Median wall time of `fw list-plugins` and `fw validate` over 10 runs each (target: <= 0.25 s).

Run: make bench   (or .venv/bin/python bench/cli_speed.py)

Measured as a user runs them: with Python's bytecode cache (.pyc) in use. An environment that sets
PYTHONDONTWRITEBYTECODE would recompile every fw module on every start (about 25 ms more per command), which
no installed package does (pip compiles the .pyc files at install time), so that variable is cleared for the
timed commands and one untimed run comes first (it writes the cache, like the first run after installing).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 10
TARGET_S = 0.25
CONFIG = """
base_model: meta-llama/Llama-2-7b-hf
input_features: [{name: input, type: text}]
output_features: [{name: response, type: text}]
adapter: {type: lora, r: 16, init_lora_weights: gaussian}
quantization: {bits: 4}
trainer: {type: finetune, learning_rate: 1e-4, epochs: 2}
"""


ENVIRONMENT = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def run(command: list[str]) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENVIRONMENT)


def median_seconds(command: list[str]) -> float:
    run(command)  # untimed: writes the bytecode and plugin caches
    timings = []
    for _ in range(RUNS):
        start = time.perf_counter()
        run(command)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def main() -> int:
    fw = str(Path(sys.executable).with_name("fw"))
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(CONFIG)
        results = {
            "fw list-plugins": median_seconds([fw, "list-plugins"]),
            "fw validate": median_seconds([fw, "validate", str(config)]),
        }
    for name, seconds in results.items():
        verdict = "ok" if seconds <= TARGET_S else "SLOWER THAN TARGET"
        print(f"{name:18s} median {seconds * 1000:6.0f} ms over {RUNS} runs  (target {TARGET_S * 1000:.0f} ms: {verdict})")
    print(json.dumps({k: round(v, 4) for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

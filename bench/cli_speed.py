"""Median wall time of `fw list-plugins` and `fw validate` over 10 runs each (target: <= 0.25 s).

Run: make bench   (or .venv/bin/python bench/cli_speed.py)
"""
from __future__ import annotations

import json
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
adapter: {type: lora, r: 16, init_lora_weights: pissa}
quantization: {bits: 4}
trainer: {learning_rate: 1e-4, epochs: 2}
"""


def median_seconds(command: list[str]) -> float:
    timings = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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

"""``make gpu-check``: everything that needs a CUDA GPU, in one command, in under 8 minutes on one H100 / H200.

On a CUDA GPU, three steps, each with a time limit (together 8 minutes):

1. the ``gpu``-marked tests (``pytest -m gpu`` on the test files that have them): QLoRA with bitsandbytes nf4,
   LoftQ, LoRA on torchao float8 weights, and whatever later work marks ``gpu``;
2. ``bench/train_speed.py --quick``: fw against transformers.Trainer + PEFT on the 1.24B Llama, shortened (15 steps,
   no torch.compile); its JSON lands in ``bench/results/train_speed-quick-<device>-<date>.json``;
3. ``bench/predict_speed.py --device cuda``: generation and label scoring speed; JSON in ``bench/results/``.

Everything printed also goes to ``bench/results/gpu_check-<device>-<date>.log``. Exit status 0 when every step
passed.

Without a CUDA GPU it says so in one line and runs the same steps' CPU smoke path (the gpu tests are collected and
reported as skipped, ``train_speed.py --smoke``, ``predict_speed.py --smoke``; results under the ignored
``bench/results/smoke/``), exiting 0 when they work.

A GPU machine without network (the workplace's device machine: Python 3.12 with torch, transformers, accelerate,
peft... but not fw's other dependencies) gets fw and what its image lacks as wheels in ``.whl/`` (ignored by git,
carried to the machine): ``make gpu-wheels`` (``--prepare-wheels``) fills it here, where the package index is
reachable. There, when ``fw`` does not import, this script installs ``.whl/*.whl`` into a directory of its own and
puts it on ``PYTHONPATH`` for the steps; it refuses a fw wheel built from other sources than the checkout's (the
hash of ``core/``, ``plugins/``, ``schemas/`` and ``pyproject.toml`` is kept beside the wheels).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WHEELS = ROOT / ".whl"
SOURCES_HASH = WHEELS / "fw-sources.sha1"
SITE = Path(tempfile.gettempdir()) / "fw-gpu-check-site"
BUDGET_SECONDS = 8 * 60
#: what the device machine's Python lacks among fw's dependencies (its image: /work/.library/device/KINDS.md),
#: pinned to the versions fw is tested with here; peft travels too, so that its version is the tested one
MISSING_ON_THE_GPU_IMAGE = ("jsonschema", "jsonschema-specifications", "referencing", "rpds-py", "torchao",
                            "PyWavelets", "nltk", "rouge-score", "peft")
#: not in fw's test environment (an extra); 0.50.2 ships the CUDA 13.0 library the image's torch is built with
BITSANDBYTES = "bitsandbytes==0.50.2"
#: the GPU image's interpreter and platform (pip download's tags)
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
          "--platform", "manylinux_2_27_x86_64", "--platform", "manylinux_2_24_x86_64", "--platform",
          "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "--platform", "manylinux1_x86_64"]


@dataclass
class Step:
    name: str
    argv: list[str]
    #: seconds before the step is stopped
    limit: int


def gpu_test_files() -> list[str]:
    return sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests").rglob("test_*.py")
                  if "pytest.mark.gpu" in path.read_text())


def steps(python: str, gpu: bool) -> list[Step]:
    """The steps on a GPU (``gpu``) or their CPU smoke path; their limits add up to the 8-minute budget."""
    tests = Step("gpu tests", [python, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider",
                               *gpu_test_files()], 180)
    if gpu:
        return [tests,
                Step("training speed (quick)", [python, "bench/train_speed.py", "--quick", "--timeout", "100"], 240),
                Step("prediction speed", [python, "bench/predict_speed.py", "--device", "cuda"], 60)]
    return [tests,
            Step("training speed (smoke)", [python, "bench/train_speed.py", "--smoke"], 600),
            Step("prediction speed (smoke)", [python, "bench/predict_speed.py", "--smoke"], 300)]


# -- wheels for a GPU machine without network ---------------------------------------------------------------------
def sources_hash() -> str:
    """sha1 over fw's sources (path and content of every file under core/, plugins/, schemas/, pyproject.toml)."""
    digest = hashlib.sha1()
    files = [ROOT / "pyproject.toml"] + [path for folder in ("core", "plugins", "schemas")
                                         for path in (ROOT / folder).rglob("*")
                                         if path.is_file() and "__pycache__" not in path.parts]
    for path in sorted(files):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def prepare_wheels() -> int:
    """Fill .whl/ with fw's wheel and the pinned wheels the GPU image lacks (needs the package index)."""
    shutil.rmtree(WHEELS, ignore_errors=True)
    WHEELS.mkdir()
    pip = [sys.executable, "-m", "pip"]
    run_or_exit(pip + ["wheel", "--no-deps", "-q", "-w", str(WHEELS), str(ROOT)])
    pinned = [f"{name}=={importlib.metadata.version(name)}" for name in MISSING_ON_THE_GPU_IMAGE]
    binary = [spec for spec in pinned if not spec.startswith("rouge-score")] + [BITSANDBYTES]
    run_or_exit(pip + ["download", "--no-deps", "-q", "--only-binary=:all:", *TARGET, "-d", str(WHEELS), *binary])
    source_only = [spec for spec in pinned if spec.startswith("rouge-score")]  # an sdist only: built here
    run_or_exit(pip + ["wheel", "--no-deps", "-q", "-w", str(WHEELS), *source_only])
    SOURCES_HASH.write_text(sources_hash() + "\n")
    size = sum(path.stat().st_size for path in WHEELS.iterdir())
    print(f"{len(list(WHEELS.glob('*.whl')))} wheels in {WHEELS} ({size / 2**20:.1f} MiB): carry .whl to the GPU "
          "machine and run make gpu-check there")
    return 0


def run_or_exit(argv: list[str]) -> None:
    if subprocess.run(argv).returncode:
        sys.exit(f"gpu-wheels: failed: {' '.join(argv)}")


def environment(python: str) -> dict:
    """The steps' environment: fw from .whl/ on PYTHONPATH when this Python cannot import it; offline hub."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if imports(python, env, "fw, jsonschema"):
        return env
    wheels = sorted(WHEELS.glob("*.whl"))
    if not any(path.name.startswith("fw-") for path in wheels):
        sys.exit(f"gpu-check: {python} cannot import fw and {WHEELS} holds no fw wheel. Install fw "
                 "(make install), or run make gpu-wheels where the package index is reachable and carry .whl here.")
    built_from = SOURCES_HASH.read_text().strip() if SOURCES_HASH.exists() else None
    if built_from != sources_hash():
        sys.exit(f"gpu-check: the fw wheel in {WHEELS} was built from other sources than this checkout's: run make "
                 "gpu-wheels again and carry the new .whl.")
    shutil.rmtree(SITE, ignore_errors=True)
    install = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
               "--upgrade", "--target", str(SITE), *map(str, wheels)]
    if subprocess.run(install).returncode:
        sys.exit(f"gpu-check: installing the wheels of {WHEELS} failed.")
    env["PYTHONPATH"] = os.pathsep.join([str(SITE), *filter(None, [env.get("PYTHONPATH")])])
    return env


def imports(python: str, env: dict, modules: str) -> bool:
    return subprocess.run([python, "-c", f"import {modules}"], env=env, capture_output=True).returncode == 0


def cuda_device(python: str, env: dict) -> str | None:
    """The name of the CUDA GPU the steps would use, or None."""
    probe = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    found = subprocess.run([python, "-c", probe], env=env, capture_output=True, text=True)
    if found.returncode:
        sys.exit(f"gpu-check: {python} cannot import torch: {found.stderr.strip().splitlines()[-1:]}")
    return found.stdout.strip() or None


# -- running -------------------------------------------------------------------------------------------------------
def run_step(step: Step, env: dict, log) -> tuple[str, float]:
    """Run ``step`` with its output on the terminal and in ``log``, stopped at its limit; (status, seconds)."""
    started = time.perf_counter()
    say(f"== {step.name}: {' '.join(step.argv[1:])}", log)
    process = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace")
    timer = threading.Timer(step.limit, process.kill)
    timer.start()
    try:
        for line in process.stdout:
            say(line.rstrip("\n"), log)
        process.wait()
    finally:
        timer.cancel()
    seconds = time.perf_counter() - started
    if seconds >= step.limit:
        return "timeout", seconds
    return ("ok" if process.returncode == 0 else f"failed (exit {process.returncode})"), seconds


def say(text: str, log) -> None:
    print(text, flush=True)
    log.write(text + "\n")
    log.flush()


def log_path(device: str | None) -> Path:
    name = re.sub(r"[^a-z0-9]+", "-", (device or "cpu").lower()).strip("-")
    folder = RESULTS if device else RESULTS / "smoke"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"gpu_check-{name}-{datetime.date.today().isoformat()}.log"


def check(python: str) -> int:
    env = environment(python)
    device = cuda_device(python, env)
    if device is None:
        print("gpu-check: no CUDA GPU here: running the CPU smoke path (gpu tests skipped, tiny benchmarks; "
              "nothing is measured)", flush=True)
    results = []
    with log_path(device).open("w") as log:
        say(f"gpu-check on {device or 'CPU (smoke path)'}, {datetime.datetime.now().isoformat(timespec='seconds')}",
            log)
        for step in steps(python, gpu=device is not None):
            results.append((step, *run_step(step, env, log)))
        total = sum(seconds for _, _, seconds in results)
        say("", log)
        for step, status, seconds in results:
            say(f"{step.name:<26} {status:<18} {seconds:6.0f} s (limit {step.limit} s)", log)
        budget = f"; the budget is {BUDGET_SECONDS // 60} minutes" if device else ""
        say(f"{'total':<26} {'':<18} {total:6.0f} s{budget}", log)
        say(f"log: {log.name}", log)
    return 0 if all(status == "ok" for _, status, _ in results) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepare-wheels", action="store_true",
                        help="fill .whl/ for a GPU machine without network (needs the package index)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter the steps run with")
    args = parser.parse_args(argv)
    return prepare_wheels() if args.prepare_wheels else check(args.python)


if __name__ == "__main__":
    sys.exit(main())

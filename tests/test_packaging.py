"""Real installs: the fw wheel into a clean venv, and the contrib plugin packages next to fw."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from repo_root import REPO as ROOT

CONTRIB = ("fw-randlora", "fw-broken-example", "fw-text-parser")
CONFIG = """
base_model: meta-llama/Llama-2-7b-hf
input_features: [{name: input, type: text}]
output_features: [{name: response, type: text}]
adapter: %s
"""


#: what a build leaves in a source tree; never copied, so the copy builds from the sources alone
BUILD_LEFTOVERS = shutil.ignore_patterns(".git", ".venv", "build", "dist", "results", "*.egg-info", "__pycache__",
                                         ".pytest_cache")


def source_copy(project: Path, parent: Path) -> Path:
    """A copy of ``project`` to build from: pip builds in the source tree (build/, *.egg-info), and tests never
    write into the checkout."""
    return Path(shutil.copytree(project, parent / project.name, ignore=BUILD_LEFTOVERS))


def pip_install(*args: str | Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *map(str, args)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def contrib_site(tmp_path_factory) -> Path:
    """The contrib packages pip-installed (for real, built from their pyproject) into one directory."""
    site, sources = tmp_path_factory.mktemp("contrib-site"), tmp_path_factory.mktemp("contrib-sources")
    pip_install("--no-deps", "--target", site, *(source_copy(ROOT / "contrib" / name, sources) for name in CONTRIB))
    return site


def fw_with(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "fw.cli.main", *args], capture_output=True, text=True, env=env)


def test_contrib_plugin_is_listed_and_broken_one_does_not_break_the_cli(contrib_site):
    result = fw_with(contrib_site, "list-plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["randlora"]["distribution"] == "fw-randlora" and rows["randlora"]["status"] == "ok"
    broken = rows["broken-example"]
    assert broken["status"].startswith("broken:") and "fw_dependency_that_is_not_installed" in broken["status"]
    assert rows["lora"]["status"] == "ok"


def test_config_using_the_contrib_adapter_validates(contrib_site, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG % "{type: randlora}")
    assert fw_with(contrib_site, "validate", str(path)).returncode == 0
    path.write_text(CONFIG % "{type: randlora, r: 0}")
    result = fw_with(contrib_site, "validate", str(path))
    assert result.returncode == 1 and "adapter.r: 0 is less than the minimum of 1" in result.stderr


def test_contrib_adapter_wraps_a_tiny_model(contrib_site, tiny_llama_dir):
    code = f"""
import torch, transformers
from fw.model.adapters import wrap_model
model = transformers.AutoModelForCausalLM.from_pretrained({str(tiny_llama_dir)!r})
peft_model = wrap_model(model, {{"type": "randlora", "r": 4, "alpha": 80}})
ids = torch.tensor([[1, 5, 9, 12]])
loss = peft_model(input_ids=ids, labels=ids).loss
loss.backward()
trainable = [p for p in peft_model.parameters() if p.requires_grad]
print(type(peft_model.peft_config['default']).__name__, bool(trainable), bool(torch.isfinite(loss)))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(contrib_site), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-3:] == ["RandLoraConfig", "True", "True"]


# -- a third-party decoder: fw-text-parser ------------------------------------------------------------------------
PARSER_CONFIG = """
base_model: {base}
input_features: [{{name: question}}]
output_features:
  - name: answer
    decoder: {decoder}
prompt: {{template: "Q: {{question}} A:"}}
trainer: {{type: none, batch_size: 4, seed: 1}}
generation: {{max_new_tokens: 6, do_sample: false}}
"""


def test_contrib_decoder_parses_generated_text_into_prediction_columns(contrib_site, tiny_llama_dir, tmp_path):
    config = tmp_path / "parser.yaml"
    config.write_text(PARSER_CONFIG.format(base=tiny_llama_dir,
                                           decoder="{type: text_parser, pattern: '(?P<first>\\S+)', fields: [city]}"))
    (tmp_path / "questions.csv").write_text("question\n" + "\n".join(f"where is town {i}" for i in range(6)) + "\n")
    result = fw_with(contrib_site, "predict", "--config", str(config), "--dataset", str(tmp_path / "questions.csv"),
                     "--output_directory", str(tmp_path / "out"), "--no_progress")
    assert result.returncode == 0, result.stderr[-3000:]
    import pandas as pd

    table = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert {"answer_predictions", "answer_first", "answer_city"} <= set(table.columns)
    generated = [text for text in table["answer_predictions"] if text.split()]
    assert generated, "the tiny model generated only whitespace"
    for text, first in zip(table["answer_predictions"], table["answer_first"]):
        assert first == (text.split()[0] if text.split() else "")  # the regex group: the first word generated


def test_contrib_decoder_is_listed_and_its_section_validated(contrib_site, tmp_path):
    listed = {row["name"]: row for row in json.loads(fw_with(contrib_site, "list-plugins", "--kind", "decoder",
                                                             "--json").stdout)}
    assert listed["text_parser"]["distribution"] == "fw-text-parser"
    config = tmp_path / "bad.yaml"
    config.write_text(PARSER_CONFIG.format(base="m/x", decoder="{type: text_parser, pattern: '(?P<a>x', fields: 3}"))
    result = fw_with(contrib_site, "validate", str(config))
    assert result.returncode == 1
    assert "output_features[0].decoder.fields: expected array or null, got integer 3." in result.stderr
    config.write_text(PARSER_CONFIG.format(base="m/x", decoder="{type: text_parser, pattern: '(?P<a>x'}"))
    result = fw_with(contrib_site, "validate", str(config))
    assert "output_features[0].decoder.pattern: is not a valid regular expression" in result.stderr


def test_contrib_decoder_reads_key_value_lines(contrib_site, monkeypatch):
    import re

    monkeypatch.syspath_prepend(str(contrib_site))
    from fw_text_parser import parse

    text = "city: Paris\ncountry = France\ncity: Lyon"
    assert parse(text, None, ["city", "country", "population"]) == {"city": "Paris", "country": "France",
                                                                      "population": None}
    assert parse("no fields here", re.compile(r"(?P<year>\d{4})"), ["city"]) == {"city": None, "year": None}


def test_wheel_installs_into_a_clean_venv_and_works(tmp_path):
    dist = tmp_path / "dist"
    source = source_copy(ROOT, tmp_path / "source")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(source)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("fw-*.whl")
    env_dir = tmp_path / "clean"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    install = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run([str(bin_dir / "fw"), "list-plugins", "--json"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert {r["name"] for r in rows if r["kind"] == "adapter"} >= {"lora", "vblora", "ln_tuning"}
    assert all(r["status"] == "ok" for r in rows)
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG % "{type: lora}")
    assert subprocess.run([str(bin_dir / "fw"), "validate", str(config)], cwd=tmp_path).returncode == 0
    config.write_text(CONFIG % "{type: lorra}")
    bad = subprocess.run([str(bin_dir / "fw"), "validate", str(config)], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 1 and "Did you mean 'lora'?" in bad.stderr

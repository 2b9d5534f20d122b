"""The fw command line: verbs, exit codes, output."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from fw.cli.main import main

HEAVY = ("torch", "transformers", "peft")
GOOD = """
base_model: meta-llama/Llama-2-7b-hf
input_features: [{name: input, type: text}]
output_features: [{name: response, type: text}]
adapter: {type: lora, r: 16}
"""
BAD = GOOD.replace("r: 16", "r: -1, rank: 4")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_validate_exit_codes(tmp_path, capsys):
    assert main(["validate", write(tmp_path, GOOD)]) == 0
    assert main(["validate", write(tmp_path, BAD)]) == 1
    err = capsys.readouterr().err
    assert "adapter.r: -1 is less than the minimum of 1" in err and "adapter.rank: unknown key" in err
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2


def test_usage_error_exit_code(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["validate"])
    assert caught.value.code == 2


def test_validate_resolved_prints_a_config_that_validates_again(tmp_path, capsys):
    assert main(["validate", "--resolved", write(tmp_path, GOOD)]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["adapter"]["r"] == 16 and resolved["adapter"]["alpha"] == 16
    assert main(["validate", write(tmp_path, yaml.safe_dump(resolved))]) == 0


def test_list_plugins_json(capsys):
    assert main(["list-plugins", "--json", "--kind", "adapter"]) == 0
    rows = json.loads(capsys.readouterr().out)
    lora = next(row for row in rows if row["name"] == "lora")
    assert lora["distribution"] == "fw" and lora["status"] == "ok" and lora["kind"] == "adapter"


def test_list_plugins_table(capsys):
    assert main(["list-plugins"]) == 0
    out = capsys.readouterr().out
    for word in ("adapter", "lora", "matcher", "json_schema", "merge_strategy", "dare_ties", "retriever"):
        assert word in out


def test_unknown_kind_is_a_usage_error(capsys):
    assert main(["list-plugins", "--kind", "adaptr"]) == 2
    assert "Did you mean 'adapter'?" in capsys.readouterr().err


def test_full_schema_validates_good_and_rejects_bad(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(yaml.safe_load(GOOD))) == []
    assert list(validator.iter_errors(yaml.safe_load(BAD)))
    assert list(validator.iter_errors(yaml.safe_load(GOOD.replace("type: lora", "type: lorra"))))


def test_one_plugin_schema(capsys):
    assert main(["schema", "adapter", "lora"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["properties"]["r"]["default"] == 8
    assert "pretrained_adapter_weights" in schema["properties"]


def test_help_lists_every_verb():
    out = subprocess.run([sys.executable, "-m", "fw.cli.main", "--help"], capture_output=True, text=True).stdout
    for verb in ("list-plugins", "schema", "validate"):
        assert verb in out


def test_listing_and_validating_import_no_heavy_library(tmp_path):
    """Cheap discovery: the CLI's light verbs never import torch, transformers or peft."""
    path = write(tmp_path, GOOD)
    code = (f"import sys; from fw.cli.main import main; main(['list-plugins', '--json']); main(['validate', {path!r}]);"
            f" main(['schema']); print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "HEAVY="

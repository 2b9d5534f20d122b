"""Hostile input: each case gets one true line naming what is wrong, and nothing hangs, blows up or is lost.

One section per kind of input: config files (YAML), absurd values (schema bounds), data files, hub and model
errors, and regex matchers that time out on model output.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import fw
from fw.cli.main import main
from fw.config.safe_yaml import MAX_DEPTH, MAX_VALUES, read_yaml
from fw.errors import ConfigError, shown

REPO = Path(__file__).resolve().parents[1]
HEADER = """\
base_model: meta-llama/Llama-2-7b-hf
input_features: [{name: input, type: text}]
output_features: [{name: response, type: text}]
"""


def config_file(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        read_yaml(path)
    return [str(issue) for issue in caught.value.issues]


def laughs(levels: int, where: str = "trainer: {epochs: *l%d}") -> str:
    """A "billion laughs": each anchor repeats the one before nine times (9**levels values in all)."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels + 1):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]")
    return HEADER + "\n".join(lines) + "\n" + where % levels + "\n"


# -- 1. config files: aliases, duplicate keys, binary files, huge values ---------------------------------------
def test_alias_expansion_past_the_bound_names_the_anchor(tmp_path):
    (found,) = problems(config_file(tmp_path, laughs(6)))
    assert found == ("l4[5]: the alias *l3 (line 8) expands past 50,000 values in all; a config holds hundreds. "
                     "Write the values out, or repeat anchors less often.")


def test_a_billion_laughs_is_refused_within_a_small_memory_limit(tmp_path):
    """9**9 values: unbounded, the expansion (or printing it) needs gigabytes; fw validate stays under 1 GiB."""
    path = config_file(tmp_path, laughs(9, "json_schema_value: *l%d"))

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))

    done = subprocess.run([sys.executable, "-m", "fw.cli.main", "validate", str(path)], capture_output=True,
                          text=True, preexec_fn=limit_memory, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "the alias *l" in done.stderr and f"past {MAX_VALUES:,} values" in done.stderr
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path):
    (found,) = problems(config_file(tmp_path, HEADER + "trainer: &loop {optimizer: *loop}\n"))
    assert found == ("trainer.optimizer: the alias *loop (line 4) is inside the anchor &loop it refers to: a value "
                     "cannot contain itself.")


def test_deep_nesting_is_refused(tmp_path):
    (found,) = problems(config_file(tmp_path, HEADER + "prompt: " + "[" * 500 + "]" * 500 + "\n"))
    assert found.startswith("prompt[0][0]: nests values more than") and f"{MAX_DEPTH} levels deep (line 4)" in found


def test_ordinary_aliases_still_work(tmp_path):
    text = HEADER + "x-lora: &lora {type: lora, r: 4}\nadapter: *lora\n"
    assert read_yaml(config_file(tmp_path, text))["adapter"] == {"type": "lora", "r": 4}


def test_duplicate_keys_name_the_key_and_both_lines(tmp_path):
    text = HEADER + "trainer:\n  epochs: 3\nadapter: {type: lora}\ntrainer:\n  batch_size: 2\n  batch_size: 4\n"
    assert problems(config_file(tmp_path, text)) == [
        "trainer: written twice (lines 4 and 7); YAML would silently keep only the second. (merge them into one)",
        "trainer.batch_size: written twice (lines 8 and 9); YAML would silently keep only the second. (merge them "
        "into one)",
    ]


def test_a_binary_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"config file {path} is not UTF-8 text (byte 0x89 on line 1); a config is a YAML text file." in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2  # "✗ path: 1 problem(s)" + the line


def test_a_huge_file_is_refused_before_it_is_read_whole(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * 1_100_000)
    (found,) = problems(path)
    assert found == f"config file {path} is larger than 10 MB; a config is a small YAML text file. Is it the right file?"


def test_an_integer_too_long_for_python_is_a_yaml_error(tmp_path):
    (found,) = problems(config_file(tmp_path, HEADER + "trainer: {epochs: " + "9" * 5000 + "}\n"))
    assert found == "invalid YAML at line 4, column 19: an integer of 5,000 digits is out of range"


def test_messages_never_show_a_whole_large_value(tmp_path):
    big_list = json.dumps(list(range(40_000)))
    report = fw.validate_config(config_file(tmp_path, HEADER + f"trainer: {{epochs: {big_list}}}\n"))
    (issue,) = report.issues
    assert str(issue).startswith("trainer.epochs: expected integer, got list [0, 1, 2, 3, ...]") and len(str(issue)) < 120
    huge_key = "k" * 100_000
    report = fw.validate_config({**yaml.safe_load(HEADER), "trainer": {huge_key: 1}})
    (issue,) = report.issues
    assert str(issue).startswith(f"trainer.{'k' * 37}...: unknown key '{'k' * 37}...'. Allowed keys: ")
    assert len(str(issue)) < 1000  # the allowed keys are listed; the key itself is shortened


def test_shown_bounds_any_value():
    nested: list = [1]
    for _ in range(40):
        nested = [nested] * 10  # 10**40 leaves if it were written out
    assert len(shown(nested)) <= 60 and len(shown("x" * 10**6)) <= 60
    assert shown(10**5000) == "an integer of 5001 digits" and shown(-(10**40)) == "a negative integer of 41 digits"
    assert shown("plain", quoted=False) == "plain" and shown(1e300) == "1e+300"


def test_many_problems_are_summarised(tmp_path, capsys):
    words = json.dumps([[-i] for i in range(1, 101)])
    path = config_file(tmp_path, HEADER + f"generation: {{bad_words_ids: {words}}}\n")
    assert main(["validate", str(path)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].endswith("100 problem(s)") and lines[-1] == "  • ... and 70 more"
    assert lines[1] == "  • generation.bad_words_ids[0][0]: -1 is less than the minimum of 0."
    assert lines[2].startswith("  • generation.bad_words_ids[1][0]")  # list positions in numeric order


# -- 2. absurd values: every count and size is bounded, integers are integers ------------------------------------
def one_problem(**sections) -> str:
    data = {**yaml.safe_load(HEADER), **sections}
    found = [str(issue) for issue in fw.validate_config(data).issues]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("sections, expected", [
    ({"trainer": {"epochs": 100000000000000000000000}},
     "trainer.epochs: 100000000000000000000000 is greater than the maximum of 10000."),
    ({"trainer": {"batch_size": 1e300}}, "trainer.batch_size: 1e+300 is greater than the maximum of 65536."),
    ({"adapter": {"type": "lora", "r": 99999999999999999999}},
     "adapter.r: 99999999999999999999 is greater than the maximum of 4096."),
    ({"trainer": {"gradient_accumulation_steps": 1.5}},
     "trainer.gradient_accumulation_steps: expected integer, got number 1.5."),
    ({"trainer": {"epochs": True}}, "trainer.epochs: expected integer, got boolean True."),
    ({"generation": {"max_new_tokens": 10**12}},
     "generation.max_new_tokens: 1000000000000 is greater than the maximum of 10000000."),
    ({"trainer": {"learning_rate": float("inf")}}, "trainer.learning_rate: inf is greater than the maximum of 10."),
    ({"adapter": {"type": "lora", "alpha": float("nan")}}, "adapter.alpha: is .nan (not a number); give a number."),
    ({"prompt": {"task": "Answer.", "retrieval": {"type": "random", "k": 10**6}}},
     "prompt.retrieval.k: 1000000 is greater than the maximum of 1024."),
    ({"adapter": {"type": "vblora", "vector_length": 2**40}},
     "adapter.vector_length: 1099511627776 is greater than the maximum of 65536."),
])
def test_absurd_values_fail_at_validation_with_the_path(sections, expected):
    assert one_problem(**sections) == expected


def test_an_integral_float_is_read_as_an_integer():
    """JSON Schema counts 3.0 as an integer (Ludwig configs may write it); what runs downstream gets an int."""
    data = {**yaml.safe_load(HEADER), "trainer": {"epochs": 3.0}, "adapter": {"type": "lora", "r": 16.0},
            "generation": {"max_new_tokens": 8.0, "temperature": 1.0}}
    resolved = fw.load_config(data).data
    assert type(resolved["trainer"]["epochs"]) is int and resolved["trainer"]["epochs"] == 3
    assert type(resolved["adapter"]["r"]) is int and type(resolved["generation"]["max_new_tokens"]) is int
    assert type(resolved["generation"]["temperature"]) is float  # a number stays a number


def every_schema() -> list[Path]:
    return sorted((REPO / "schemas").rglob("*.json")) + sorted((REPO / "contrib").glob("*/*/schema.json"))


@pytest.mark.parametrize("path", every_schema(), ids=lambda path: str(path.relative_to(REPO)))
def test_every_number_in_every_schema_is_bounded(path):
    from fw.plugin.testing import unbounded_numbers

    assert unbounded_numbers(json.loads(path.read_text())) == []


def test_the_bounds_check_finds_an_unbounded_count():
    from fw.plugin.testing import unbounded_numbers

    schema = {"type": "object", "properties": {
        "r": {"type": "integer", "minimum": 1}, "bits": {"type": "integer", "enum": [4, 8]},
        "weights": {"type": "array", "items": {"type": "number"}}, "value": {"type": ["object", "number"]},
        "alpha": {"type": "number", "exclusiveMinimum": 0, "maximum": 10}}}
    assert unbounded_numbers(schema) == ["r", "weights.items"]

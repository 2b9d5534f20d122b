"""Hostile input: each case gets one true line naming what is wrong, and nothing hangs, blows up or is lost.

One section per kind of input: config files (YAML), absurd values (schema bounds), data files, hub and model
errors, and regex matchers that time out on model output.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import fw
from fw.cli.main import main
from fw.config.safe_yaml import MAX_DEPTH, MAX_VALUES, read_yaml
from fw.errors import ConfigError, shown

from repo_root import REPO

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


def laughs(levels: int, where: str = "trainer: {type: finetune, epochs: *l%d}") -> str:
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
    (found,) = problems(config_file(tmp_path, HEADER + "trainer: &loop {type: finetune, optimizer: *loop}\n"))
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
    assert found == f"config file {path} is larger than 10 MB; a config is a small YAML text file. Is it the right " \
                    "file?"


def test_an_integer_too_long_for_python_is_a_yaml_error(tmp_path):
    (found,) = problems(config_file(tmp_path, HEADER + "trainer: {epochs: " + "9" * 5000 + ", type: finetune}\n"))
    assert found == "invalid YAML at line 4, column 19: an integer of 5,000 digits is out of range"


def test_messages_never_show_a_whole_large_value(tmp_path):
    big_list = json.dumps(list(range(40_000)))
    report = fw.validate_config(config_file(tmp_path, HEADER + f"trainer: {{type: finetune, epochs: {big_list}}}\n"))
    (issue,) = report.issues
    assert str(issue).startswith("trainer.epochs: expected integer, got list [0, 1, 2, 3, ...]")
    assert len(str(issue)) < 120
    huge_key = "k" * 100_000
    report = fw.validate_config({**yaml.safe_load(HEADER), "trainer": {"type": "finetune", huge_key: 1}})
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
    ({"trainer": {"type": "finetune", "epochs": 100000000000000000000000}},
     "trainer.epochs: 100000000000000000000000 is greater than the maximum of 10000."),
    ({"trainer": {"type": "finetune", "batch_size": 1e300}},
     "trainer.batch_size: 1e+300 is greater than the maximum of 65536."),
    ({"adapter": {"type": "lora", "r": 99999999999999999999}},
     "adapter.r: 99999999999999999999 is greater than the maximum of 4096."),
    ({"trainer": {"type": "finetune", "gradient_accumulation_steps": 1.5}},
     "trainer.gradient_accumulation_steps: expected integer or 'auto', got number 1.5."),
    ({"trainer": {"type": "finetune", "epochs": True}}, "trainer.epochs: expected integer, got boolean True."),
    ({"generation": {"max_new_tokens": 10**12}},
     "generation.max_new_tokens: 1000000000000 is greater than the maximum of 10000000."),
    ({"trainer": {"type": "finetune", "learning_rate": float("inf")}},
     "trainer.learning_rate: inf is greater than the maximum of 10."),
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
    data = {**yaml.safe_load(HEADER), "trainer": {"type": "finetune", "epochs": 3.0},
            "adapter": {"type": "lora", "r": 16.0},
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


# -- 7. data files: delimiters, JSON syntax, duplicate columns, dropped rows ------------------------------------
def test_a_semicolon_csv_is_read_with_semicolons_and_said_so(tmp_path):
    from fw import console
    from fw.data.tables import read_table

    path = tmp_path / "reviews.csv"
    path.write_text("question;answer\nhow, exactly?;like this\nwhy;because\n")
    frame = read_table(path)
    assert list(frame.columns) == ["question", "answer"] and frame["question"].tolist() == ["how, exactly?", "why"]
    assert console.messages[-1] == "data: reviews.csv is semicolon-separated (its header has no comma); reading it " \
                                   "with semicolons"


def test_a_comma_tsv_is_read_with_commas(tmp_path):
    from fw.data.tables import read_table

    path = tmp_path / "data.tsv"
    path.write_text("question,answer\nq,a\n")
    assert read_table(path).to_dict("records") == [{"question": "q", "answer": "a"}]


@pytest.mark.parametrize("name, text, expected", [
    ("rows.jsonl", '{"q": "a", "a": "b"}\n{"q": "c", "a": }\n{"q": "e", "a": "f"}\n',
     "as JSONL: line 2, column 17: Expecting value"),
    ("rows.json", '{"q": "a", "a": "b"}\n\n{"q": "c" "a": "d"}\n',
     "as JSON: line 3, column 11: Expecting ',' delimiter"),
    ("records.json", '[\n  {"q": "a", "a": "b"}\n  {"q": "c", "a": "d"}\n]\n',
     "as JSON: line 3, column 3: Expecting ',' delimiter"),
])
def test_a_json_syntax_error_names_its_line(tmp_path, name, text, expected):
    from fw.data.tables import read_table
    from fw.errors import FwError

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(FwError) as raised:
        read_table(path)
    assert str(raised.value) == f"cannot read dataset {path} {expected}"


def test_a_compressed_json_lines_error_names_its_line(tmp_path):
    import gzip

    from fw.data.tables import read_table
    from fw.errors import FwError

    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"q": "a"}\n{"q": "b"}\n{"q": \n'))
    with pytest.raises(FwError, match="line 3, column 7: Expecting value"):
        read_table(path)


def test_duplicate_column_names_are_an_error_and_training_writes_nothing(tmp_path, tiny_llama_dir, capsys):
    data = tmp_path / "data.csv"
    data.write_text("question,answer,question\nq1,a1,other\nq2,a2,other\n")
    config = config_file(tmp_path, yaml.safe_dump({
        "base_model": str(tiny_llama_dir), "input_features": [{"name": "question"}],
        "output_features": [{"name": "answer"}], "adapter": {"type": "lora", "r": 4},
        "trainer": {"type": "finetune"}}))
    code = main(["train", "--config", str(config), "--dataset", str(data), "--output_directory",
                 str(tmp_path / "results"), "--no_progress"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"dataset {data} has more than one column named 'question' (columns 1 and 3). Give each column its " \
           "own name." in err
    assert not (tmp_path / "results").exists()
    assert data.read_text() == "question,answer,question\nq1,a1,other\nq2,a2,other\n"  # the data is untouched


def test_duplicate_columns_of_a_dataframe_are_an_error():
    import pandas as pd

    from fw.data.tables import read_table
    from fw.errors import FwError

    with pytest.raises(FwError, match=r"the DataFrame has more than one column named '1' \(columns 2 and 3\)"):
        read_table(pd.DataFrame([["a", "b", "c"]], columns=["text", 1, "1"]))


def test_every_verb_reports_rows_without_a_target_the_same_way():
    import pandas as pd

    from fw import console
    from fw.data.tables import clean

    data = fw.load_config({"base_model": "unused", "input_features": [{"name": "question"}],
                           "output_features": [{"name": "answer"}]}).data
    frame = pd.DataFrame({"question": ["q1", "q2", "q3"], "answer": ["a1", None, "a3"]})
    for verb in ("train", "validation", "evaluate"):
        assert clean(frame, data, verb).index.tolist() == [0, 2]
        assert console.warnings[-1] == f"{verb}: dropped 1 row(s) with no 'answer' target: row 2."
    assert clean(frame, data, "predict").index.tolist() == [0, 1, 2]  # predictions need no target


def test_fw_evaluate_warns_about_rows_without_a_target(tmp_path, tiny_llama_dir, capsys):
    import pandas as pd

    dataset = tmp_path / "data.csv"
    pd.DataFrame({"question": ["q1", "q2", "q3", "q4"], "answer": ["a1", "", "a3", "a4"]}).to_csv(dataset, index=False)
    config = config_file(tmp_path, yaml.safe_dump({
        "base_model": str(tiny_llama_dir), "input_features": [{"name": "question"}],
        "output_features": [{"name": "answer"}], "trainer": {"type": "none"}, "generation": {"max_new_tokens": 2}}))
    assert main(["evaluate", "--config", str(config), "--dataset", str(dataset), "--output_directory",
                 str(tmp_path / "out"), "--no_progress"]) == 0
    assert "warning: evaluate: dropped 1 row(s) with no 'answer' target: row 2." in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "test_statistics.json").read_text())["rows"] == 3


# -- 8. hub and model errors: classified right, whole, no token, no C++ frames -----------------------------------
@pytest.fixture()
def mock_hub(monkeypatch):
    """The Hugging Face Hub replaced by a function answering each request (no network): huggingface_hub and
    transformers run for real, retries do not wait."""
    import types

    import httpx2
    import huggingface_hub.constants
    import huggingface_hub.utils._http as hub_http
    from huggingface_hub.utils import set_client_factory

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_http, "time", types.SimpleNamespace(sleep=lambda seconds: None, time=time.time))
    answers = {}

    def handler(request):
        return answers["respond"](request)

    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(handler), follow_redirects=True))
    yield lambda respond: answers.update(respond=respond)
    set_client_factory(hub_http.default_client_factory)


def respond_with(status: int, **headers):
    import httpx2

    return lambda request: httpx2.Response(status, headers=headers, request=request)


def no_connection(request):
    import httpx2

    raise httpx2.ConnectError("[Errno -3] Temporary failure in name resolution", request=request)


SECRET = "hf_secret_token_value_123"


@pytest.mark.parametrize("respond, token, expected", [
    (respond_with(404, **{"X-Error-Code": "RepoNotFound"}), None,
     "base_model: 'org/model-x' is neither a local directory nor a model on the Hugging Face Hub (check the spelling; "
     "a private one needs HUGGING_FACE_HUB_TOKEN or HF_TOKEN)."),
    (respond_with(403, **{"X-Error-Code": "GatedRepo"}), None,
     "base_model: 'org/model-x' is a gated model. Request access on https://huggingface.co/org/model-x, then export "
     "HUGGING_FACE_HUB_TOKEN=<your token> (or HF_TOKEN) and run again."),
    (respond_with(403, **{"X-Error-Code": "GatedRepo"}), SECRET,
     "base_model: 'org/model-x' is a gated model and your token (HUGGING_FACE_HUB_TOKEN / HF_TOKEN) has no access "
     "yet. Request access on https://huggingface.co/org/model-x with its account, then run again."),
    (respond_with(401, **{"X-Error-Message": "Invalid credentials in Authorization header"}), SECRET,
     "base_model: the Hugging Face Hub rejected the token (HUGGING_FACE_HUB_TOKEN / HF_TOKEN) while fetching "
     "'org/model-x': it is invalid or expired. Create one at https://huggingface.co/settings/tokens, or unset it for "
     "a public model."),
    (respond_with(403), SECRET,
     "base_model: the token (HUGGING_FACE_HUB_TOKEN / HF_TOKEN) may not read 'org/model-x' (403 Forbidden); give it "
     "read access to that repository."),
    (respond_with(500), None,
     "base_model: the Hugging Face Hub failed with a server error (500) while fetching 'org/model-x', and it is not in "
     "the local cache. Try again later, or point base_model at a local directory."),
    (no_connection, None,
     "base_model: cannot download 'org/model-x': the Hugging Face Hub is unreachable (offline?) and it is not in the "
     "local cache. Connect, or point base_model at a local directory."),
], ids=["not-found", "gated", "gated-with-token", "token-rejected", "forbidden", "server-error", "offline"])
def test_hub_errors_are_classified(mock_hub, monkeypatch, respond, token, expected):
    from fw.errors import FwError
    from fw.model.loading import load_tokenizer

    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    mock_hub(respond)
    with pytest.raises(FwError) as raised:
        load_tokenizer("org/model-x")
    assert str(raised.value) == expected.replace("cannot load", "cannot load the tokenizer of")


def test_offline_mode_is_named():
    from huggingface_hub.errors import OfflineModeIsEnabled

    from fw.plugin.models import hub_error_message

    try:
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") \
            from OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled.")
    except OSError as exc:
        message = hub_error_message("org/model-x", exc, key="prompt.retrieval.model_name")
    assert message == ("prompt.retrieval.model_name: 'org/model-x' is not in the local cache, and HF_HUB_OFFLINE is "
                       "set, so it cannot be downloaded. Unset HF_HUB_OFFLINE, or point prompt.retrieval.model_name at "
                       "a local directory.")


def test_the_token_is_never_shown(monkeypatch):
    from fw.plugin.models import hub_error_message

    monkeypatch.setenv("HF_TOKEN", SECRET)
    message = hub_error_message("org/model-x", ValueError(f"Authorization: Bearer {SECRET} was refused\nby the proxy"))
    assert message == "base_model: cannot load 'org/model-x': Authorization: Bearer *** was refused by the proxy"


def test_a_model_directory_without_tokenizer_files(tmp_path, tiny_llama_dir):
    import shutil

    from fw.errors import FwError
    from fw.model.loading import load_tokenizer

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(tiny_llama_dir) / name, bare / name)
    with pytest.raises(FwError) as raised:
        load_tokenizer(str(bare), "./bare")
    assert str(raised.value) == ("base_model: './bare' has no tokenizer files (none of tokenizer.json, "
                                 "tokenizer_config.json, tokenizer.model, ...): save the tokenizer next to the model, "
                                 "e.g. tokenizer.save_pretrained(<that directory>).")


def test_a_state_dict_mismatch_is_one_whole_sentence(tmp_path, tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from fw.errors import FwError
    from fw.model.loading import load_pretrained_adapter

    trained = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                             LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trained.save_pretrained(tmp_path / "adapter")
    narrower = LlamaForCausalLM(LlamaConfig(**{**trained.config.to_dict(), "hidden_size": 32, "head_dim": 8}))
    with pytest.raises(FwError) as raised:
        load_pretrained_adapter(narrower, str(tmp_path / "adapter"), trainable=False)
    assert str(raised.value) == (
        f"adapter.pretrained_adapter_weights: cannot load '{tmp_path / 'adapter'}': the saved weights do not fit the "
        "model: base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight has shape [4, 64] in the "
        "saved weights but [4, 32] in the model (and 7 more tensors). Were they saved from another base model, or "
        "with other adapter settings (r, target_modules)?")


def test_no_cpp_frames_reach_the_user():
    import torch

    from fw.plugin.models import library_message

    with pytest.raises(TypeError) as raised:  # torch appends ~20 C++ frames to this one
        torch.nn.Linear(8, 99999999999999999999)
    assert "frame #" in str(raised.value)
    assert library_message(raised.value) == ("empty(): argument 'size' failed to unpack the object at pos 1 with "
                                             'error "Overflow when unpacking long long"')


def test_a_long_library_message_ends_at_a_sentence():
    from fw.plugin.models import LONGEST_LIBRARY_MESSAGE, library_message

    text = " ".join(f"Sentence number {n} says something." for n in range(100))
    message = library_message(RuntimeError(text))
    assert len(message) <= LONGEST_LIBRARY_MESSAGE + 6 and message.endswith("says something. (...)")


# -- 9. regex matchers that time out on model output: counted, warned once, recorded -----------------------------
def category_data(base_model: str = "unused") -> dict:
    return fw.load_config({
        "base_model": base_model, "input_features": [{"name": "review"}],
        "output_features": [{"name": "label", "type": "category", "preprocessing": {"fallback_label": "neutral"},
                             "decoder": {"type": "category_extractor", "match": {
                                 "positive": {"type": "regex", "value": r"(x+x+)+y"},
                                 "negative": {"type": "contains", "value": "bad"}}}}],
        "prompt": {"template": "Review: {review}\nSentiment:"},
        "trainer": {"type": "none"}, "generation": {"max_new_tokens": 2}}).data


def test_matcher_timeouts_are_counted_and_warned_about_once():
    from fw import console
    from fw.infer.decoders import decode

    outputs = decode(["x" * 5000, "bad", "x" * 5000 + " bad"], category_data())
    assert outputs.values == ["neutral", "negative", "negative"] and outputs.timeouts == {"positive": 2}
    timeouts = [line for line in console.warnings if "ran out of time" in line]
    assert timeouts == ["decoder: 2 match(es) over 3 generation(s) ran out of time and counted as no match "
                        "('positive': 2). Simplify the pattern: nested repetition such as (a+)+ backtracks without "
                        "end on some texts."]


def test_fw_evaluate_records_matcher_timeouts(tmp_path, tiny_llama_dir, monkeypatch, capsys):
    import pandas as pd

    from fw.infer import generation

    def hostile_output(model, tokenizer, prompt_ids, data, show_progress=False):
        return [generation.Generation(raw="x" * 5000, text="x" * 5000) for _ in prompt_ids]

    monkeypatch.setattr(generation, "generate", hostile_output)
    dataset = tmp_path / "reviews.csv"
    pd.DataFrame({"review": ["great", "awful", "fine"], "label": ["positive", "negative", "neutral"]}).to_csv(
        dataset, index=False)
    config = config_file(tmp_path, yaml.safe_dump(category_data(str(tiny_llama_dir))))
    assert main(["evaluate", "--config", str(config), "--dataset", str(dataset), "--output_directory",
                 str(tmp_path / "out"), "--no_progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("ran out of time") == 1 and "decoder: 3 match(es) over 3 generation(s)" in err
    statistics = json.loads((tmp_path / "out" / "test_statistics.json").read_text())
    assert statistics["label"]["match_timeouts"] == 3 and statistics["label"]["fallback_rate"] == 1.0

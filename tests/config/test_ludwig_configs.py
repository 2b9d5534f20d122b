"""Configs written for Ludwig mean the same run in fw.

``tests/config/ludwig_configs/`` holds Ludwig-style configs written from Ludwig's documented keys:
``accept_*`` ones fw accepts, ``reject_*`` ones it refuses with the one error written in the file
(``# fw: reject <path>: <message>``). Each was also run through Ludwig 0.17.8's own validator
(``ModelConfig.from_dict``, offline); where Ludwig's verdict differs from fw's the file says so
(``# ludwig: ...``) and why — the deliberate differences README's "Coming from Ludwig" lists. ``resolved/``
holds two configs and exactly what Ludwig resolves them to: fw's resolved config is compared with them key by
key.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

import fw
from fw.cli.main import main
from fw.config.store import core_schema
from fw.config.walk import deref, format_path

CORPUS = Path(__file__).parent / "ludwig_configs"
RESOLVED = CORPUS / "resolved"


def header(path: Path, key: str) -> str | None:
    """The ``# key: ...`` line of a corpus file, with its ``#   ...`` continuation lines joined."""
    lines = path.read_text().splitlines()
    for index, line in enumerate(lines):
        if line.startswith(f"# {key}:"):
            parts = [line.split(":", 1)[1].strip()]
            for more in lines[index + 1:]:
                if not more.startswith("#   "):
                    break
                parts.append(more[4:])
            return " ".join(parts)
    return None


def corpus() -> list[Path]:
    return sorted(CORPUS.glob("*.yaml"))


def test_the_corpus_has_both_verdicts():
    names = [path.name for path in corpus()]
    assert sum(n.startswith("accept_") for n in names) >= 12 and sum(n.startswith("reject_") for n in names) >= 12


@pytest.mark.parametrize("path", corpus(), ids=lambda p: p.stem)
def test_fw_accepts_or_rejects_as_the_file_says(path):
    report = fw.validate_config(path)
    if path.name.startswith("accept_"):
        assert report.ok, [str(issue) for issue in report.issues]
        return
    expected = header(path, "fw").removeprefix("reject").strip()
    assert not report.ok, f"{path.name} was accepted"
    assert [f"{issue.path}: {issue.message}" for issue in report.issues] == [expected]


@pytest.mark.parametrize("path", [p for p in corpus() if header(p, "ludwig")], ids=lambda p: p.stem)
def test_every_verdict_that_differs_from_ludwigs_says_why(path):
    """A file whose Ludwig verdict differs from fw's explains it in the lines above the verdicts."""
    ludwig_verdict, fw_verdict = header(path, "ludwig"), "accept" if path.name.startswith("accept_") else "reject"
    assert ludwig_verdict.split()[0] != fw_verdict
    explanation = [line for line in path.read_text().splitlines()
                   if line.startswith("# ") and not line.startswith(("# ludwig:", "# fw:"))]
    assert explanation, f"{path.name}: say why fw's verdict differs from Ludwig's"


def test_ludwig_keys_are_summarised_in_one_warning_line():
    report = fw.validate_config(CORPUS / "accept_saved_keys.yaml")
    ludwig_lines = [str(w) for w in report.warnings if "Ludwig key(s) accepted with no effect" in str(w)]
    assert len(ludwig_lines) == 1
    for key in ("input_features[0].{active, proc_column, tied}", "ludwig_version", "trainer.{regularization_lambda",
                "output_features[0].decoder.{num_fc_layers, fc_dropout}", "output_features[0].{active, proc_column"):
        assert key in ludwig_lines[0], key


@pytest.mark.parametrize("name", ["finetune_lora.yaml.resolved.yaml", "zero_shot_category.yaml.resolved.yaml"])
def test_configs_ludwig_saves_are_accepted_and_round_trip(name):
    loaded = fw.load_config(RESOLVED / name)
    assert sum("Ludwig key(s) accepted with no effect" in str(w) for w in loaded.warnings) == 1
    again = fw.load_config(copy.deepcopy(loaded.data)).data
    assert again == loaded.data


# -- fw validate --resolved against Ludwig's resolved configs, key by key ---------------------------------------
#: Ludwig's resolved values that fw writes differently with the same meaning, and why
SAME_MEANING = {
    "backend": (None, "null is the local backend; fw writes it out: {type: local, cache_dir: null}"),
    "prompt.retrieval": ({"type": None, "index_name": None, "model_name": None, "k": 0},
                         "a retrieval section without a type is no retrieval; fw writes null"),
    "model_parameters": (None, "null means the defaults; fw writes them out (no RoPE scaling, no NEFTune)"),
}
#: Ludwig's values that depend on the base model, which fw reads when it loads the model
AT_LOAD_TIME = {
    "generation.max_new_tokens": "no output max_sequence_length nor global_max_sequence_length: half the model's "
                                 "context length (Ludwig's rule), decided when fw loads the model "
                                 "(tests/config/test_ludwig_configs.py::"
                                 "test_max_new_tokens_follows_the_context)",
}


def fw_resolved(name: str, capsys) -> dict:
    assert main(["validate", str(RESOLVED / name), "--resolved"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def leaves(value: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """(path, value) of every leaf; a mapping stops at keys the schema handles as one value (x-ludwig trees)."""
    if isinstance(value, dict) and value:
        return [leaf for key, item in value.items() for leaf in leaves(item, path + (key,))]
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return [leaf for index, item in enumerate(value) for leaf in leaves(item, path + (index,))]
    return [(path, value)]


def lookup(data: Any, path: tuple) -> tuple[bool, Any]:
    for key in path:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and key < len(data):
            data = data[key]
        else:
            return False, None
    return True, data


def ludwig_annotation(path: tuple) -> tuple[tuple, Any] | None:
    """(path, annotation) of the ``x-ludwig`` annotation on ``path`` or one of its parents: the core schema, and
    for a decoder the keys every decoder accepts."""
    core = core_schema()
    schema: Any = core
    for depth, key in enumerate(path):
        schema = deref(schema, core)
        properties = schema.get("properties", {})
        if path[depth - 1:depth] == ("decoder",) and key not in properties:
            properties = core["$defs"]["decoder_common"]["properties"]
        if isinstance(key, int):
            schema = schema.get("items", {})
        elif key in properties:
            schema = properties[key]
        else:
            return None
        schema = deref(schema, core)
        if "x-ludwig" in schema:
            return path[:depth + 1], schema["x-ludwig"]
    return None


def classify(path: tuple, ludwig_value: Any, ludwig: dict, resolved: dict) -> str:
    """How fw's resolved config holds the value Ludwig resolved ``path`` to ("" when it does not)."""
    from fw.config.ludwig import _fits

    present, fw_value = lookup(resolved, path)
    if present and fw_value == ludwig_value:
        return "same value"
    where = format_path(path)
    for key, (value, _) in SAME_MEANING.items():
        if where == key or where.startswith(key + "."):
            return "same meaning" if lookup(ludwig, tuple(key.split(".")))[1] == value else ""
    if where in AT_LOAD_TIME:
        return "at load time" if present and fw_value is None else ""
    if path[-1] == "column" and path[0] in ("input_features", "output_features"):
        return "same value" if ludwig_value == lookup(resolved, path[:-1] + ("name",))[1] else ""
    annotated = ludwig_annotation(path)
    if annotated is None:
        return ""
    key_path, annotation = annotated
    if annotation == "ignored":
        return "no effect"
    if "only" in annotation:
        return "ludwig default" if any(_fits(ludwig_value, allowed) for allowed in annotation["only"]) else ""
    whole = lookup(ludwig, key_path)[1]
    return "ludwig default" if any(_fits(whole, tree) for tree in annotation["tree"]) else ""


@pytest.mark.parametrize("name", ["finetune_lora.yaml", "zero_shot_category.yaml"])
def test_resolved_config_matches_ludwigs_key_by_key(name, capsys):
    """Every value Ludwig resolves the config to is fw's too, or has no effect in fw, or is a Ludwig key fw accepts
    only at that very default, or is written differently with the same meaning (SAME_MEANING) or depends on the base
    model (AT_LOAD_TIME): nothing else."""
    ludwig = yaml.safe_load((RESOLVED / f"{name}.resolved.yaml").read_text())
    resolved = fw_resolved(name, capsys)
    verdicts = {format_path(path): classify(path, value, ludwig, resolved) for path, value in leaves(ludwig)}
    unexplained = {path: verdict for path, verdict in verdicts.items() if not verdict}
    assert unexplained == {}
    counts = {kind: sum(v == kind for v in verdicts.values()) for kind in set(verdicts.values())}
    assert counts["same value"] >= 80, counts


@pytest.mark.parametrize("name, trainer", [
    ("finetune_lora.yaml", {"type": "finetune", "learning_rate": 0.001, "epochs": 100, "early_stop": 5,
                            "batch_size": 1, "eval_batch_size": 2, "optimizer": {"type": "adam"},
                            "learning_rate_scheduler": {"decay": None, "warmup_fraction": 0.0},
                            "gradient_clipping": {"clipglobalnorm": 0.5}}),
    ("zero_shot_category.yaml", {"type": "none", "learning_rate": 0.0002, "epochs": 3, "early_stop": -1,
                                 "validation_metric": "accuracy"}),
])
def test_the_trainer_defaults_that_change_a_run_are_ludwigs(name, trainer, capsys):
    """The values the issue found different before, stated plainly (the key-by-key test covers them too)."""
    resolved = fw_resolved(name, capsys)["trainer"]
    for key, value in trainer.items():
        if isinstance(value, dict):
            assert {k: resolved[key][k] for k in value} == value, key
        else:
            assert resolved[key] == value, key
    assert "optimizer" not in resolved or trainer["type"] == "finetune"


def test_split_defaults_are_ludwigs(capsys):
    split = fw_resolved("finetune_lora.yaml", capsys)["preprocessing"]["split"]
    assert split["type"] == "random" and split["probabilities"] == [0.7, 0.1, 0.2]


def test_deliberate_defaults_are_one_note_each(capsys):
    report = fw.validate_config(RESOLVED / "finetune_lora.yaml")
    assert [note.path for note in report.notes] == ["trainer.precision"]
    fixed = yaml.safe_load((RESOLVED / "finetune_lora.yaml").read_text())
    fixed["trainer"]["precision"] = "fp32"
    assert fw.validate_config(fixed).notes == []


def test_max_new_tokens_follows_the_context():
    """Ludwig resolves an unset max_new_tokens of a text output to half the base model's context (2048 for the
    4096 positions of the stand-in model its reference was made with); fw decides it when it loads the model."""
    from types import SimpleNamespace

    from fw.infer.settings import resolve_max_new_tokens

    data = fw.load_config(RESOLVED / "finetune_lora.yaml").data
    assert data["generation"]["max_new_tokens"] is None
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=4096))
    assert resolve_max_new_tokens(data, model, longest_prompt=100) == 2048
    capped = fw.load_config({**yaml.safe_load((RESOLVED / "finetune_lora.yaml").read_text()),
                             "preprocessing": {"global_max_sequence_length": 16}}).data
    assert capped["generation"]["max_new_tokens"] == 32  # at least Ludwig's 32


# -- the other messages of Ludwig's keys, word for word -------------------------------------------------------------
BASE = {"model_type": "llm", "base_model": "meta-llama/Llama-2-7b-hf", "input_features": [{"name": "question"}],
        "output_features": [{"name": "answer"}]}


@pytest.mark.parametrize("sections, expected", [
    ({"adapter": {"type": "lora"}},
     "adapter: trainer.type is none (also what a config without a trainer section means), so a fresh adapter is never "
     "trained and changes nothing. (add trainer: {type: finetune} to train it, or set pretrained_adapter_weights)"),
    ({"trainer": {"type": "none", "optimizer": {"type": "sgd"}, "gradient_clipping": None}},
     "trainer: type is none, so nothing is trained and optimizer, gradient_clipping have no effect. (set type: "
     "finetune to train)"),
    ({"trainer": {"type": "finetune", "batch_size": 2, "gradient_accumulation_steps": 2, "effective_batch_size": 8}},
     "trainer.effective_batch_size: 8 is not batch_size x gradient_accumulation_steps (2 x 2); training uses 2 x 2, "
     "as Ludwig does. (set one of the three to auto)"),
    ({"hyperopt": {"goal": "minimize"}, "ludwig_version": "0.17.8", "trainer": {"type": "none", "profiler": {}}},
     "3 Ludwig key(s) accepted with no effect in fw: hyperopt, ludwig_version, trainer.profiler."),
])
def test_warnings_of_ludwig_keys(sections, expected):
    report = fw.validate_config({**BASE, **sections})
    assert report.ok and expected in [str(warning) for warning in report.warnings]


@pytest.mark.parametrize("sections, expected", [
    ({"defaults": {"text": {"preprocessing": {"max_sequence_length": 512}}}},
     "defaults.text.preprocessing.max_sequence_length: fw implements only Ludwig's default 256, got 512. (remove the "
     "key)"),
    ({"defaults": {"text": {"preprocesing": {}}}},
     "defaults.text.preprocesing: unknown key 'preprocesing'. Did you mean 'preprocessing'?"),
    ({"output_features": [{"name": "answer", "loss": {"type": "next_token_softmax_cross_entropy", "weight": 2.0}}]},
     "output_features[0].loss.weight: fw implements only Ludwig's default 1.0, got 2.0. (remove the key)"),
    ({"output_features": [{"name": "label", "type": "category", "preprocessing": {"fallback_label": "neutral"},
                           "decoder": {"type": "category_extractor", "fallback_label": "other",
                                       "match": {"neutral": {"type": "contains", "value": "neutral"}}}}]},
     "output_features[0].decoder.fallback_label: 'other' differs from output_features[0].preprocessing.fallback_label "
     "('neutral'), the one used (as in Ludwig). (set output_features[0].preprocessing.fallback_label: other)"),
    ({"output_features": [{"name": "label", "type": "category",
                           "preprocessing": {"fallback_label": "neutral", "lowercase": True},
                           "decoder": {"type": "category_extractor",
                                       "match": {"Neutral": {"type": "contains", "value": "neutral"}}}}]},
     "output_features[0].decoder.match.Neutral: preprocessing.lowercase lower-cases the targets, so this label would "
     "never match one. (write it 'neutral')"),
    ({"trainer": {"type": "finetune", "optimizer": {"type": "lbfgs"}}},
     "trainer.optimizer.type: 'lbfgs' is not supported by fw: L-BFGS needs a closure re-evaluating the loss every "
     "step. (use adamw or adam)"),
    ({"trainer": {"type": "finetune", "layers_to_freeze_regex": "layers.(0"}},
     "trainer.layers_to_freeze_regex: is not a valid regular expression: missing ), unterminated subpattern at "
     "position 7."),
    ({"trainer": {"type": "finetune", "batch_size": "autp"}},
     "trainer.batch_size: expected integer or 'auto', got 'autp'. Did you mean 'auto'?"),
    ({"input_features": [{"name": "answer"}]},
     "output_features: feature name 'answer' is used more than once; feature names must be unique (as in Ludwig). "
     "(rename the input or the output feature)"),
    ({"preprocessing": {"split": {"type": "hash"}}},
     "preprocessing.split.column: split type 'hash' splits on a column; name it. (e.g. column: label (stratify), id "
     "(hash), date (datetime))"),
])
def test_errors_of_ludwig_keys(sections, expected):
    assert expected in [str(issue) for issue in fw.validate_config({**BASE, **sections}).issues]


def test_presets_become_hub_ids_and_retrieval_k_0_means_1():
    data = fw.load_config({**BASE, "base_model": "mistral-7b-instruct", "prompt": {
        "task": "Answer.", "retrieval": {"type": "random", "k": 0}}}).data
    assert data["base_model"] == "mistralai/Mistral-7B-Instruct-v0.1" and data["prompt"]["retrieval"]["k"] == 1

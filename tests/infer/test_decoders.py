"""Decoder plugins (``output_features[0].decoder.type``): the default follows the output type, each decoder's schema
validates its section, a decoder only serves the output types it declares, and a new one needs no core edit (the
contrib ``text_parser`` runs end to end in tests/test_packaging.py)."""
from __future__ import annotations

import importlib
import json

import fw
from fw.config.assembly import full_schema
from fw.config.validate import validate
from fw.infer.decoders import decode, joined
from fw.plugin import DecodedOutputs
from fw.plugin.testing import registry_with

SHOUT = '''
from fw.plugin import DecodedOutputs, DecoderPlugin, hookimpl

@hookimpl
def fw_decoders():
    return [DecoderPlugin(name="shout", schema="shout_decoder:schema.json", summary="upper case",
                          decode=__name__ + ":decode")]

def decode(texts, config):
    return DecodedOutputs([text.upper() for text in texts], columns={"length": [len(t) for t in texts]})
'''


def config(output: dict, **sections) -> dict:
    return {"base_model": "m/x", "input_features": [{"name": "question"}], "output_features": [output],
            "trainer": {"type": "none"}, **sections}


def messages(data, registry=None) -> list[str]:
    return [str(issue) for issue in validate(data, registry).issues]


def test_the_default_decoder_follows_the_output_type():
    text = fw.load_config(config({"name": "answer"})).data["output_features"][0]["decoder"]
    assert text == {"type": "text_extractor"}
    category = fw.load_config(config({"name": "label", "type": "category",
                                      "decoder": {"match": {"yes": {"value": "yes"}}}})).data
    decoder = category["output_features"][0]["decoder"]
    assert (decoder["type"], decoder["constrain_to_vocabulary"], decoder["label_scoring"]) == \
           ("category_extractor", False, False)
    assert decoder["match"]["yes"]["type"] == "contains"  # the matcher sockets inside the decoder's section


def test_an_unknown_decoder_gets_did_you_mean():
    (message,) = messages(config({"name": "answer", "decoder": {"type": "text_extractr"}}))
    assert message.startswith("output_features[0].decoder.type: Unknown decoder 'text_extractr'.")
    assert "Did you mean 'text_extractor'?" in message and "fw list-plugins --kind decoder" in message


def test_a_decoder_serves_only_its_output_types():
    assert messages(config({"name": "label", "type": "category", "decoder": {"type": "text_extractor"}})) == [
        "output_features[0].decoder.type: a category output needs decoder type category_extractor, got "
        "'text_extractor'."]
    found = messages(config({"name": "answer", "decoder": {"type": "category_extractor",
                                                            "match": {"y": {"value": "y"}}}}))
    assert found == ["output_features[0].decoder.type: a text output needs decoder type text_extractor, got "
                     "'category_extractor'."]


def test_category_keys_on_a_text_decoder_say_where_they_belong():
    (message,) = messages(config({"name": "answer", "decoder": {"constrain_to_vocabulary": True}}))
    assert message == ("output_features[0].decoder.constrain_to_vocabulary: unknown key 'constrain_to_vocabulary' "
                       "for decoder 'text_extractor'. it only applies to a category output (category_extractor): set "
                       "output_features[0].type: category.")


def test_the_built_in_decoders_decode():
    text = fw.load_config(config({"name": "answer"})).data
    assert decode([" a b ", "c"], text).values == [" a b ", "c"]
    category = fw.load_config(config({"name": "label", "type": "category", "preprocessing": {"fallback_label": "no"},
                                      "decoder": {"match": {"yes": {"value": "yes"}}}})).data
    decoded = decode(["Yes!", "maybe"], category)
    assert (decoded.values, decoded.matched) == (["yes", "no"], [True, False])


SHOUT_SCHEMA = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                "properties": {"type": {"const": "shout", "default": "shout", "description": "upper case"}},
                "additionalProperties": False}


def test_a_third_party_decoder_needs_no_core_edit(tmp_path, monkeypatch):
    package = tmp_path / "shout_decoder"
    package.mkdir()
    (package / "__init__.py").write_text(SHOUT)
    (package / "schema.json").write_text(json.dumps(SHOUT_SCHEMA))
    monkeypatch.syspath_prepend(str(tmp_path))
    builtins = [importlib.import_module(f"fw.plugins.decoders.{name}") for name in ("text_extractor",
                                                                                     "category_extractor")]
    registry = registry_with(importlib.import_module("shout_decoder"), *builtins,
                             importlib.import_module("fw.plugins.matchers.contains"))
    data = config({"name": "answer", "decoder": {"type": "shout"}})
    report = validate(data, registry)
    assert report.ok, report.issues
    assert messages(config({"name": "answer", "decoder": {"type": "shout", "loud": True}}), registry) == [
        "output_features[0].decoder.loud: unknown key 'loud' for decoder 'shout'. Allowed keys: type."]
    monkeypatch.setattr("fw.infer.decoders.get_registry", lambda: registry)
    decoded = decode(["hi there"], report.resolved)
    assert decoded.values == ["HI THERE"] and decoded.columns == {"length": [8]}


def test_the_full_schema_nests_matchers_in_the_category_decoder():
    decoder = full_schema()["$defs"]["decoder"]
    assert set(decoder["properties"]["type"]["enum"]) >= {"text_extractor", "category_extractor"}
    (category,) = [branch["then"] for branch in decoder["allOf"]
                   if branch["if"]["properties"]["type"]["const"] == "category_extractor"]
    matchers = category["properties"]["match"]["additionalProperties"]["properties"]["type"]["enum"]
    assert {"contains", "regex", "json_schema"} <= set(matchers)


def test_the_outputs_of_consecutive_shares_join_in_order():
    first = DecodedOutputs(values=["a", "b"], columns={"p": [0.1, 0.2]}, matched=[True, False], timeouts={"x": 1})
    second = DecodedOutputs(values=["c"], columns={"p": [0.3]}, matched=[True], timeouts={"x": 2, "y": 1})
    empty = DecodedOutputs(values=[], columns={"p": []}, matched=[], timeouts={})
    assert joined([first, empty, second]) == DecodedOutputs(values=["a", "b", "c"], columns={"p": [0.1, 0.2, 0.3]},
                                                            matched=[True, False, True], timeouts={"x": 3, "y": 1})
    assert joined([DecodedOutputs(values=["a"]), DecodedOutputs(values=["b"])]).matched is None

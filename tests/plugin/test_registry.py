"""The plugin registry: entry-point discovery, conflicts, broken plugins, lookups."""
from __future__ import annotations

import pytest

from fw.errors import PluginConflictError, PluginNotFoundError
from fw.plugin.registry import Registry, get_registry
from fw.plugin.testing import check_descriptor, fake_distribution

EXPECTED_BUILTINS = {
    "adapter": {"lora", "adalora", "ia3", "vera", "loha", "lokr", "fourierft", "boft", "tinylora", "c3a", "oft",
                "hra", "waveft", "ln_tuning", "vblora", "prompt_tuning"},
    "initializer": {"default", "gaussian", "pissa", "olora", "orthogonal", "eva", "corda", "loftq"},
    "quantizer": {"bitsandbytes", "torchao"},
    "matcher": {"contains", "regex", "json_schema"},
    "merge_strategy": {"linear", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune", "cat"},
    "retriever": {"random", "semantic"},
    "decoder": {"text_extractor", "category_extractor"},
}

ADAPTER_PLUGIN = """
from fw.plugin import AdapterPlugin, hookimpl

@hookimpl
def fw_adapters():
    return [AdapterPlugin(name={name!r}, schema="fw.schemas:adapters/lora.json", summary="test",
                          build_peft_config="fw.plugins.adapters.lora:build_lora_config")]
"""


def test_live_registry_holds_exactly_the_builtins():
    registry = get_registry()
    assert registry.broken == []
    builtins = {kind: {p.name for p in registry.all(kind) if p.distribution.name == "fw"} for kind in EXPECTED_BUILTINS}
    assert builtins == EXPECTED_BUILTINS


@pytest.mark.parametrize("entry", get_registry().all(), ids=lambda e: f"{e.kind}-{e.name}")
def test_every_builtin_descriptor_is_well_formed(entry):
    assert check_descriptor(entry.descriptor) == []


def test_unknown_name_gets_did_you_mean():
    with pytest.raises(PluginNotFoundError) as caught:
        get_registry().get("adapter", "loar")
    message = str(caught.value)
    assert "Unknown adapter 'loar'" in message and "Did you mean 'lora'?" in message
    assert "fw list-plugins --kind adapter" in message


def test_plugin_from_a_fake_distribution_is_found(tmp_path, monkeypatch):
    eps = fake_distribution(tmp_path, "fw-extra", "1.2", {"fw_extra_mod": ADAPTER_PLUGIN.format(name="extra")},
                            {"extra": "fw_extra_mod"})
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry().load_entry_points(eps)
    (entry,) = registry.all("adapter")
    assert (entry.name, str(entry.distribution)) == ("extra", "fw-extra 1.2")


def test_duplicate_name_names_both_distributions(tmp_path, monkeypatch):
    eps = fake_distribution(tmp_path / "a", "pkg-a", "1.0", {"pkg_a_mod": ADAPTER_PLUGIN.format(name="x")},
                            {"x": "pkg_a_mod"})
    eps += fake_distribution(tmp_path / "b", "pkg-b", "2.0", {"pkg_b_mod": ADAPTER_PLUGIN.format(name="x")},
                             {"x": "pkg_b_mod"})
    monkeypatch.syspath_prepend(str(tmp_path / "a"))
    monkeypatch.syspath_prepend(str(tmp_path / "b"))
    registry = Registry().load_entry_points(eps)
    with pytest.raises(PluginConflictError, match=r"adapter 'x' provided by: pkg-a 1\.0, pkg-b 2\.0"):
        registry.get("adapter", "x")


def test_plugin_failing_on_import_is_listed_as_broken(tmp_path, monkeypatch):
    eps = fake_distribution(tmp_path, "fw-bad", "0.1", {"fw_bad_mod": "import missing_dependency_xyz\n"},
                            {"bad": "fw_bad_mod"})
    eps += fake_distribution(tmp_path / "ok", "fw-good", "0.1", {"fw_good_mod": ADAPTER_PLUGIN.format(name="good")},
                             {"good": "fw_good_mod"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path / "ok"))
    registry = Registry().load_entry_points(eps)
    (broken,) = registry.broken
    assert broken.entry_point == "bad" and "missing_dependency_xyz" in broken.error
    assert registry.get("adapter", "good").name == "good"


def test_misspelled_hook_implementation_is_reported_not_ignored(tmp_path, monkeypatch):
    source = "from fw.plugin import hookimpl\n@hookimpl\ndef fw_adaptors():\n    return []\n"
    eps = fake_distribution(tmp_path, "fw-typo", "0.1", {"fw_typo_mod": source}, {"typo": "fw_typo_mod"})
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry().load_entry_points(eps)
    assert len(registry.broken) == 1 and "fw_adaptors" in registry.broken[0].error


def test_hook_returning_wrong_type_is_broken(tmp_path, monkeypatch):
    source = "from fw.plugin import hookimpl\n@hookimpl\ndef fw_matchers():\n    return ['not a descriptor']\n"
    eps = fake_distribution(tmp_path, "fw-wrong", "0.1", {"fw_wrong_mod": source}, {"wrong": "fw_wrong_mod"})
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry().load_entry_points(eps)
    assert "expected MatcherPlugin" in registry.broken[0].error


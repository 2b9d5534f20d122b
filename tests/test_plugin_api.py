"""The plugin contract: ``fw.plugin`` is the whole API a plugin imports, built-in and contrib plugins import nothing
else from fw, the core names no concrete plugin, and a PEFT method can be added as data."""
from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

import fw.plugin
from fw.plugin import AdapterPlugin, DecoderPlugin, declare, get_registry
from fw.plugin.testing import check_descriptor, fake_distribution, registry_with

from repo_root import REPO as ROOT



def source_files(*folders: str, root: Path = ROOT) -> list[Path]:
    """The Python files of the checkout under ``folders`` as git sees them: tracked, or new and not ignored; never
    what a build left there (``build/lib`` copies of a contrib package, ``*.egg-info``)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *folders],
                            cwd=root, capture_output=True, text=True, check=True).stdout.splitlines()
    return sorted({root / name for name in listed if name.endswith(".py") and (root / name).is_file()})


PLUGIN_SOURCES = source_files("plugins", "contrib")
#: names only plugins know: parameters, parameter names and modes that pick behaviour
PLUGIN_ONLY_WORDS = {"lora_B", "lora_embedding_B", "loraplus_lr_ratio", "use_dora", "use_rslora", "tinit",
                     "total_step", "update_and_allocate", "int8_dynamic", "fw_after_training"}
#: string constants in core that equal a plugin name, and why that is not the core picking a plugin
ALLOWED_IN_CORE = {
    ("config/sockets.py", "lora"): "the config language's default adapter.type (the spec's)",
    ("config/sockets.py", "bitsandbytes"): "the config language's default quantization.backend (the spec's)",
    ("plugin/models.py", "torchao"): "a logger name: transformers imports torchao itself",
    ("config/optimizers.py", "bitsandbytes"): "the package of Ludwig's 8-bit and paged optimizers, not the quantizer",
}


def fw_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every import of fw in a source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
    return [(line, module, names) for line, module, names in found if module == "fw" or module.startswith("fw.")]


def test_there_are_plugin_sources_to_check():
    names = {path.name for path in PLUGIN_SOURCES}
    assert {"lora.py", "peft_methods.py", "category_extractor.py"} <= names and len(PLUGIN_SOURCES) > 20


def test_what_a_build_leaves_in_a_plugin_package_is_no_plugin_source(tmp_path):
    """pip building a contrib package in place writes build/lib/<package> and *.egg-info next to it: not sources
    (the checkout's .gitignore); a module not yet added to git is one."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    shutil.copy2(ROOT / ".gitignore", tmp_path / ".gitignore")
    package = tmp_path / "contrib" / "fw-x"
    for name in ("fw_x/__init__.py", "build/lib/fw_x/__init__.py", "fw_x.egg-info/top_level.py", "pyproject.toml"):
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text("\n")
    assert source_files("contrib", root=tmp_path) == [package / "fw_x" / "__init__.py"]


@pytest.mark.parametrize("path", PLUGIN_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_plugin_api(path):
    """Built-in (plugins/) and third-party example (contrib/) plugins import nothing from fw but ``fw.plugin``,
    and only names it exports."""
    for line, module, names in fw_imports(path):
        assert module == "fw.plugin", f"{path.name}:{line} imports {module}; import it from fw.plugin"
        missing = [name for name in names if name not in fw.plugin.__all__]
        assert not missing, f"{path.name}:{line} imports {missing}, which fw.plugin does not export"


def test_every_exported_name_exists():
    assert [name for name in fw.plugin.__all__ if not hasattr(fw.plugin, name)] == []


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module's code (docstrings left out)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_core_names_no_concrete_plugin():
    """No plugin name (of the kinds that pick behaviour) nor plugin-only parameter in core code: the core asks the
    descriptors. ('default' is the initializer ``init_lora_weights: true`` means, a word of the language.)"""
    registry = get_registry()
    names = {entry.name for kind in ("adapter", "quantizer", "decoder", "initializer")
             for entry in registry.all(kind)} - {"default"}
    found = []
    for path in source_files("core"):
        relative = path.relative_to(ROOT / "core").as_posix()
        for line, value in _code_strings(path):
            if (value in names or value in PLUGIN_ONLY_WORDS) and (relative, value) not in ALLOWED_IN_CORE:
                found.append(f"core/{relative}:{line} {value!r}")
    assert found == []


# -- declaring plugins -----------------------------------------------------------------------------------------
LOHA_AGAIN = AdapterPlugin(name="loha_again", schema="fw.schemas:adapters/loha.json", summary="LoHa, declared",
                           peft_config_class="LoHaConfig")


def test_a_declared_object_answers_its_own_kind_only():
    decoder = DecoderPlugin(name="shout", schema="fw.schemas:decoders/text_extractor.json", summary="x",
                            decode="fw.plugins.decoders.text_extractor:decode")
    registry = registry_with(declare(LOHA_AGAIN, decoder))
    assert [e.name for e in registry.all("adapter")] == ["loha_again"]
    assert [e.name for e in registry.all("decoder")] == ["shout"]
    assert registry.all("quantizer") == [] and registry.broken == []
    with pytest.raises(TypeError, match="takes plugin descriptors"):
        declare("loha")


def test_a_peft_method_is_one_declaration_plus_one_schema(tmp_path, monkeypatch, tiny_llama_dir):
    """A third party adds a PEFT method with a descriptor naming the PEFT config class and a schema: fw builds the
    config from the schema's x-peft fields and wraps the model."""
    import peft
    from transformers import AutoModelForCausalLM

    from fw.model.adapters import wrap_model

    source = ("from fw.plugin import AdapterPlugin, declare\n"
              "loha_again = declare(AdapterPlugin(name='loha_again', schema='fw.schemas:adapters/loha.json',\n"
              "                                   summary='LoHa, declared', peft_config_class='LoHaConfig'))\n")
    entry_points = fake_distribution(tmp_path, "fw-loha-again", "1.0", {"fw_loha_again": source},
                                     {"adapter-loha_again": "fw_loha_again:loha_again"})
    monkeypatch.syspath_prepend(str(tmp_path))
    from fw.plugin.registry import Registry

    registry = Registry().load_entry_points(entry_points)
    assert registry.broken == [] and check_descriptor(registry.get("adapter", "loha_again")) == []
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    wrapped = wrap_model(model, {"type": "loha_again", "r": 4, "target_modules": ["q_proj"]}, registry=registry)
    assert type(wrapped.peft_config["default"]) is peft.LoHaConfig and wrapped.peft_config["default"].r == 4


def test_check_descriptor_flags_an_adapter_without_a_peft_config_class():
    bare = AdapterPlugin(name="bare", schema="fw.schemas:adapters/loha.json", summary="x")
    misspelled = AdapterPlugin(name="typo", schema="fw.schemas:adapters/loha.json", summary="x",
                               peft_config_class="LohaConfig")
    assert check_descriptor(bare) == ["adapter 'bare': set peft_config_class (or build_peft_config)"]
    assert check_descriptor(misspelled)[0].startswith("adapter 'typo': peft has no LohaConfig")


def test_check_descriptor_resolves_the_serving_and_export_references():
    """vllm_problem (adapters) and dequantize (quantizers) are references like the others: a typo is found; a
    display name is prose, never resolved."""
    import dataclasses

    registry = get_registry()
    lora, torchao = registry.get("adapter", "lora"), registry.get("quantizer", "torchao")
    assert check_descriptor(lora) == [] and check_descriptor(torchao) == []
    assert check_descriptor(dataclasses.replace(lora, display_name="LoRA: low rank")) == []
    (typo,) = check_descriptor(dataclasses.replace(lora, vllm_problem="fw.plugins.adapters.lora:vllm_problme"))
    assert typo.startswith("adapter 'lora': vllm_problem=fw.plugins.adapters.lora:vllm_problme does not resolve")
    (typo,) = check_descriptor(dataclasses.replace(torchao, dequantize="fw.plugins.quantizers.torchao:dequantise"))
    assert typo.startswith("quantizer 'torchao': dequantize=fw.plugins.quantizers.torchao:dequantise does not resolve")

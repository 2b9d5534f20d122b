"""Sharing a trained model: the model card written with every saved model, ``fw export`` to a standalone model that
transformers alone runs exactly as fw does, and ``fw upload hf_hub`` through fw's real code up to a recorded fake
``huggingface_hub.HfApi`` (no network)."""
from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from fw import console, pipeline
from fw.artifacts import load_trained
from fw.cli.main import main
from fw.errors import FwError

PROBE = torch.tensor([[1, 5, 9, 20, 30, 41]])
TOKEN = "hf_fwTestTokenThatMustNeverLeak0123456789"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def table(rows: int = 16) -> pd.DataFrame:
    return pd.DataFrame({"question": [f"spell {i % 10} please" for i in range(rows)],
                         "answer": [WORDS[i % 10] for i in range(rows)],
                         "split": [0] * (rows - 4) + [1, 1, 2, 2]})


def config(base, **overrides) -> dict:
    data = {"base_model": str(base), "input_features": [{"name": "question"}],
            "output_features": [{"name": "answer"}], "prompt": {"template": "Q: {question}\nA:"},
            "adapter": {"type": "lora", "r": 4, "target_modules": ["q_proj", "v_proj", "lm_head"]},
            "trainer": {"type": "finetune", "epochs": 2, "batch_size": 4, "learning_rate": 0.02, "seed": 1},
            "generation": {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False},
            "preprocessing": {"split": {"type": "fixed"}}}  # the table's split column: 12 / 2 / 2 rows
    data.update(overrides)
    return data


def train(root: Path, data: dict):
    dataset = root / "data.csv"
    table().to_csv(dataset, index=False)
    return pipeline.train(data, dataset=str(dataset), output_directory=str(root / "results"), show_progress=False)


def logits(model, probe=PROBE):
    with torch.no_grad():
        return model(probe.to(next(model.parameters()).device)).logits.float().cpu()


def card_of(directory: Path):
    from huggingface_hub import ModelCard

    return ModelCard.load(Path(directory) / "README.md")


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)\n```", text, flags=re.S)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("lora-run")
    result = train(root, config(tiny_llama_dir))
    dataset = root / "data.csv"
    pipeline.evaluate(model_path=result.model_dir, dataset=str(dataset), split="test", show_progress=False)
    return result, dataset


@pytest.fixture(scope="module")
def two_adapter_run(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("two-adapters")
    adapters = {"adapters": {"task_a": {"type": "lora", "r": 4}, "task_b": {"type": "lora", "r": 4}},
                "active": "task_a"}
    data = config(tiny_llama_dir, adapters=adapters)
    del data["adapter"]
    first = train(root, data)
    # task_b trained too, on top of the first run's task_a
    adapters_b = {"adapters": {"task_a": {"type": "lora", "r": 4, "pretrained_adapter_weights": str(first.model_dir)},
                               "task_b": {"type": "lora", "r": 4}}, "active": "task_a"}
    data_b = {**data, "adapters": adapters_b}
    dataset = root / "data.csv"
    return pipeline.train(data_b, dataset=str(dataset), output_directory=str(root / "results_b"), show_progress=False,
                          adapter="task_b")


# -- the model card -----------------------------------------------------------------------------------------------
def test_a_saved_adapter_carries_a_hub_model_card(lora_run, tiny_llama_dir):
    result, _ = lora_run
    card = card_of(result.model_dir)
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert {"fw", "lora"} <= set(card.data.tags)
    assert card.data.base_model is None  # a local directory is no Hub id: the Hub would reject it
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    rows = manifest["rows"]
    assert sum(rows.values()) == 16 and rows["train"] > 10
    text = card.text
    assert "r 4" in text and "target_modules lm_head, q_proj, v_proj" in text
    assert (f"16 rows ({rows['train']} train, {rows['validation']} validation, {rows['test']} test), "
            f"sha256 `{manifest['data_hash']}`") in text
    assert "```text\nQ: {question}\nA:\n```" in text
    assert "| `max_new_tokens` | 5 |" in text and "| `min_new_tokens` | 5 |" in text and "| `do_sample` | False |" in text
    assert "PeftModel.from_pretrained(base, " in text and "LoRARequest(" in text
    assert f"fw predict --model_path {result.model_dir.resolve()} --dataset new_rows.csv" in text
    assert "prompt = 'Q: <question>\\nA:'" in text
    for block in python_blocks(text):
        ast.parse(block)  # every snippet is valid Python


def test_the_card_shows_the_evaluation_once_fw_evaluate_ran(lora_run):
    from fw.artifacts import saved_config
    from fw.publish.card import write_model_card

    result, _ = lora_run
    statistics = json.loads((result.run_dir / "evaluation" / "test_statistics.json").read_text())
    write_model_card(result.model_dir, saved_config(result.model_dir))
    text = card_of(result.model_dir).text
    assert "`fw evaluate` on 2 rows" in text
    assert f"| answer | loss | {statistics['answer']['loss']:.4f} |" in text


def test_the_card_takes_the_license_of_a_local_base_models_card(tmp_path, lora_run, tiny_llama_dir):
    from fw.artifacts import saved_config
    from fw.publish.card import write_model_card

    result, _ = lora_run
    base = shutil.copytree(tiny_llama_dir, tmp_path / "base")
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    model = shutil.copytree(result.model_dir, tmp_path / "model")
    write_model_card(model, {**saved_config(model), "base_model": str(base)})
    assert card_of(model).data.license == "apache-2.0"


def test_a_hub_base_model_is_named_in_the_metadata(tmp_path, lora_run):
    from fw.artifacts import saved_config
    from fw.publish.card import write_model_card

    result, _ = lora_run
    model = shutil.copytree(result.model_dir, tmp_path / "model")
    write_model_card(model, {**saved_config(model), "base_model": "HuggingFaceTB/SmolLM2-135M"}, repo_id="me/spell")
    card = card_of(model)
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert "base_model:adapter:HuggingFaceTB/SmolLM2-135M" in card.data.tags
    assert "PeftModel.from_pretrained(base, 'me/spell')" in card.text
    assert "snapshot_download('me/spell')" in card.text
    assert "hf download me/spell --local-dir spell\nfw predict --model_path spell" in card.text


def test_the_example_prompt_keeps_a_template_a_placeholder_cannot_fill():
    from fw.publish.card import example_prompt

    data = config("base", prompt={"template": "Price {price:.2f} of {question}"})
    assert example_prompt(data) == "Price {price:.2f} of {question}"
    assert example_prompt(config("base", prompt={"task": "spell it"})).endswith("ASSISTANT:\n")


def described_adapter(directory: Path, section: dict):
    from fw.publish.card import SavedModel

    return SavedModel(directory, config("m/base", adapter=section), "adapter", {"default": directory},
                      location=directory)


@pytest.mark.parametrize("section, title, vllm", [
    ({"type": "lora", "r": 12, "rank_pattern": {"q_proj": 40}}, "A LoRA adapter (PEFT)",
     "LLM(model='m/base', enable_lora=True, max_lora_rank=64)"),
    ({"type": "lora", "r": 4, "use_dora": True}, "A LoRA adapter (PEFT)",
     "vLLM serves LoRA adapters without DoRA's magnitude vectors, and this one has them (use_dora: true): merge it "
     "into the base model with `fw export --merge` (when PEFT can merge it) and serve the result."),
    ({"type": "adalora", "r": 4}, "An AdaLoRA adapter (PEFT)", "vLLM serves LoRA adapters only, not AdaLoRA ones: "),
    ({"type": "ia3"}, "An IA³ adapter (PEFT)", "vLLM serves LoRA adapters only, not IA³ ones: "),
    ({"type": "not_installed_here", "r": 4}, "A not_installed_here adapter (PEFT)",
     "vLLM serves LoRA adapters only, not not_installed_here ones: "),
])
def test_the_card_names_the_method_and_serves_with_vllm_what_its_plugin_allows(tmp_path, section, title, vllm):
    """The adapter plugin names its method (display_name) and says whether vLLM serves it (vllm_problem)."""
    from fw.publish.card import method_summary, vllm_snippet

    saved = described_adapter(tmp_path, section)
    assert method_summary(saved) == title
    assert vllm in vllm_snippet(saved, str(tmp_path), None, "Q: <question>\nA:")


@pytest.mark.parametrize("prompt, reason", [
    ({"template": "{question} and {answer_hint}"}, "the prompt template reads 2 columns (answer_hint, question), not one"),
    ({"template": "Row: {__sample__}"}, "the prompt template uses {__sample__}"),
    ({"template": "Q: {question!r}"}, "the prompt template formats {question} with a format spec or conversion"),
])
def test_a_prompt_one_chat_message_cannot_fill_leaves_no_chat_template(tiny_llama_dir, prompt, reason):
    from transformers import AutoTokenizer

    from fw.publish.chat_template import use_prompt_as_chat_template

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.chat_template = "{{ messages[0]['content'] }}"  # the base model's own
    assert use_prompt_as_chat_template(tokenizer, config(tiny_llama_dir, prompt=prompt)) == reason
    assert tokenizer.chat_template is None


def test_the_chat_template_fills_the_task_and_the_one_column(tiny_llama_dir):
    from transformers import AutoTokenizer

    from fw.data.prompt import PromptRenderer
    from fw.publish.chat_template import use_prompt_as_chat_template

    data = config(tiny_llama_dir, prompt={"task": "Spell the digit {as} a \"word\"", "template":
                                          "Task: {__task__}\n{{literal}} {question}\nA:"})
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert use_prompt_as_chat_template(tokenizer, data) is None
    messages = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "spell 7 please"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == PromptRenderer(data).render({"question": "spell 7 please"})


# -- fw export ----------------------------------------------------------------------------------------------------
def test_merged_export_has_the_logits_of_base_plus_adapter(tmp_path, lora_run):
    from transformers import AutoModelForCausalLM

    result, _ = lora_run
    output = tmp_path / "merged"
    assert main(["export", "--model_path", str(result.model_dir), "--output", str(output), "--merge",
                 "--dtype", "float32"]) == 0
    assert not (output / "adapter_config.json").exists() and (output / "model.safetensors").is_file()
    _, reference, _ = load_trained(result.model_dir)
    exported = AutoModelForCausalLM.from_pretrained(output)
    assert torch.allclose(logits(reference), logits(exported), atol=1e-5)
    with reference.disable_adapter():
        assert not torch.allclose(logits(reference), logits(exported), atol=1e-3)  # the adapter counts
    card = card_of(output)
    assert card.data.library_name == "transformers" and "merged into the base model's weights" in card.text
    assert "llm = LLM(model=" in card.text and (output / "manifest.json").is_file()


def test_transformers_alone_generates_what_fw_predict_generates(tmp_path, lora_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fw.data.tokens import encode_prompts

    result, dataset = lora_run
    output = tmp_path / "merged"
    main(["export", "--model_path", str(result.run_dir), "--output", str(output), "--merge"])
    predictions = pipeline.predict(model_path=result.model_dir, dataset=str(dataset), output_directory=tmp_path,
                                   show_progress=False).predictions
    model, tokenizer = AutoModelForCausalLM.from_pretrained(output), AutoTokenizer.from_pretrained(output)
    generated = []
    for prompt in predictions["prompt"]:
        inputs = tokenizer(prompt, return_tensors="pt")
        output_ids = model.generate(**inputs)  # the exported generation_config.json: greedy, 5 new tokens
        generated.append(tokenizer.decode(output_ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    assert [text.strip() for text in generated] == list(predictions["answer_predictions"])
    assert all(text.strip() for text in generated)  # min_new_tokens travelled in generation_config.json too
    # a chat client gets the prompt fw trained on
    message = [{"role": "user", "content": "spell 3 please"}]
    chat_ids = tokenizer.apply_chat_template(message, add_generation_prompt=True, return_dict=True)["input_ids"]
    rows, _ = encode_prompts(["Q: spell 3 please\nA:"], tokenizer, result.config)
    assert list(chat_ids) == rows[0].input_ids


def test_export_in_bfloat16_is_sharded_above_the_size_limit(tmp_path, lora_run):
    from transformers import AutoModelForCausalLM

    result, _ = lora_run
    output = tmp_path / "bf16"
    assert main(["export", "--model_path", str(result.model_dir), "--output", str(output), "--merge",
                 "--dtype", "bfloat16", "--max_shard_size", "100KB"]) == 0
    shards = sorted(output.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (output / "model.safetensors.index.json").is_file()
    assert json.loads((output / "config.json").read_text())["dtype"] == "bfloat16"
    exported = AutoModelForCausalLM.from_pretrained(output, dtype="auto")
    assert {parameter.dtype for parameter in exported.parameters()} == {torch.bfloat16}
    _, reference, _ = load_trained(result.model_dir)
    assert torch.allclose(logits(reference), logits(exported), atol=0.1)


def test_export_without_merge_writes_the_adapter_for_peft_and_vllm(tmp_path, lora_run, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, _ = lora_run
    output = tmp_path / "adapter"
    assert main(["export", "--model_path", str(result.model_dir), "--output", str(output)]) == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "generation_config.json",
            "fw_config.yaml", "README.md"} <= {path.name for path in output.iterdir()}
    assert not list(output.glob("model*.safetensors"))
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), output)
    _, reference, _ = load_trained(result.model_dir)
    assert torch.allclose(logits(reference), logits(peft_model), atol=1e-6)
    assert card_of(output).data.library_name == "peft"


def test_several_named_adapters_export_the_one_asked_for(tmp_path, two_adapter_run):
    from transformers import AutoModelForCausalLM

    run = two_adapter_run
    output = tmp_path / "task_b"
    assert main(["export", "--model_path", str(run.model_dir), "--output", str(output), "--merge",
                 "--adapter", "task_b"]) == 0
    _, reference, _ = load_trained(run.model_dir, adapter="task_b")
    _, active, _ = load_trained(run.model_dir)  # task_a, the configured one
    exported = AutoModelForCausalLM.from_pretrained(output)
    assert torch.allclose(logits(reference), logits(exported), atol=1e-5)
    assert not torch.allclose(logits(active), logits(exported), atol=1e-3)
    saved = yaml.safe_load((output / "fw_config.yaml").read_text())
    assert saved["adapters"] is None and saved["adapter"]["postprocessor"]["merge_adapter_into_base_model"]
    _, reloaded, _ = load_trained(output)  # fw predict takes the export too
    assert torch.allclose(logits(reloaded), logits(exported), atol=1e-6)

    adapter_only = tmp_path / "task_a"
    assert main(["export", "--model_path", str(run.model_dir), "--output", str(adapter_only)]) == 0
    assert (adapter_only / "adapter_config.json").is_file() and not (adapter_only / "task_b").exists()
    _, reloaded, _ = load_trained(adapter_only)
    assert torch.allclose(logits(reloaded), logits(active), atol=1e-6)


def test_an_adapter_missing_from_the_saved_directory_is_named(tmp_path, two_adapter_run, capsys):
    model = shutil.copytree(two_adapter_run.model_dir, tmp_path / "model")
    shutil.rmtree(model / "task_b")
    assert main(["export", "--model_path", str(model), "--output", str(tmp_path / "out"), "--adapter", "task_b"]) == 1
    assert capsys.readouterr().err.strip() == f"error: --adapter: 'task_b' is not saved in {model}. Saved adapters: task_a."


def test_an_adapter_trained_on_a_quantized_base_merges_into_the_unquantized_weights(tmp_path, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    quantization = {"backend": "torchao", "mode": "int8_weight_only"}
    result = train(tmp_path, config(tiny_llama_dir, quantization=quantization))
    console.clear()
    assert main(["export", "--model_path", str(result.model_dir), "--output", str(tmp_path / "out"), "--merge"]) == 0
    assert any("trained on a base quantized with torchao" in warning for warning in console.warnings)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert "quantization_config" not in json.loads((tmp_path / "out" / "config.json").read_text())
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), result.model_dir)
    assert torch.allclose(logits(reference), logits(exported), atol=1e-5)


def test_weights_saved_quantized_are_exported_dequantized(tmp_path, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    adapter = {"type": "lora", "r": 4, "postprocessor": {"merge_adapter_into_base_model": True}}
    result = train(tmp_path, config(tiny_llama_dir, adapter=adapter,
                                    quantization={"backend": "torchao", "mode": "int8_weight_only"}))
    console.clear()
    assert main(["export", "--model_path", str(result.model_dir), "--output", str(tmp_path / "out")]) == 0
    assert any("stored quantized (torchao)" in warning for warning in console.warnings)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert "quantization_config" not in json.loads((tmp_path / "out" / "config.json").read_text())
    assert type(exported.model.layers[0].self_attn.q_proj.weight) is torch.nn.Parameter
    _, quantized, _ = load_trained(result.model_dir)
    assert torch.allclose(logits(quantized), logits(exported), atol=1e-4)


def test_a_quantization_nothing_can_dequantize_is_refused():
    from fw.publish.export import dequantized

    class Quantizer:
        quantization_config = type("Config", (), {"quant_method": "gptq"})()

    class Model:
        hf_quantizer = Quantizer()

        def dequantize(self):
            raise NotImplementedError("gptq has no implementation of `dequantize`")

    with pytest.raises(FwError, match=r"^--model_path: the weights are stored quantized with gptq, which "
                                      r"transformers cannot dequantize .* so fw export cannot write plain weights") \
            as refusal:
        dequantized(Model())
    assert "no fw quantizer plugin does (torchao can)" in str(refusal.value)  # the plugins with a dequantize


@pytest.mark.parametrize("arguments, message", [
    (["--max_shard_size", "5 gigs"], "error: --max_shard_size: '5 gigs' is not a size; write a number and a unit, "
                                     "e.g. 5GB, 500MB, 2GiB."),
    (["--adapter", "task_a"], "error: --adapter task_a: the config has no `adapters:` section (several named "
                              "adapters); drop --adapter, or describe the adapters under adapters.adapters."),
])
def test_export_refusals(tmp_path, lora_run, capsys, arguments, message):
    result, _ = lora_run
    assert main(["export", "--model_path", str(result.model_dir), "--output", str(tmp_path / "out"), *arguments]) == 1
    assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "out").exists()


def test_export_names_the_dtypes_it_knows(tmp_path, lora_run):
    from fw.publish.export import export

    result, _ = lora_run
    with pytest.raises(FwError, match=r"^--dtype: 'bfloat' is not one of float32, bfloat16, float16. "
                                      r"Did you mean 'bfloat16'\?$"):
        export(result.model_dir, tmp_path / "out", dtype="bfloat")


def test_export_never_overwrites(tmp_path, lora_run, capsys):
    result, _ = lora_run
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["export", "--model_path", str(result.model_dir), "--output", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip() == (f"error: --output: '{tmp_path / 'out'}' already exists and is not an "
                                               "empty directory; give a new directory (fw export never overwrites).")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_merging_an_adapter_peft_cannot_merge_is_refused_before_loading(tmp_path, lora_run, monkeypatch, capsys):
    import dataclasses

    from fw.model import adapters

    real = adapters.adapter_descriptor
    monkeypatch.setattr(adapters, "adapter_descriptor",
                        lambda kind, registry=None: dataclasses.replace(real(kind, registry), mergeable=False))
    result, _ = lora_run
    assert main(["export", "--model_path", str(result.model_dir), "--output", str(tmp_path / "out"), "--merge"]) == 1
    assert capsys.readouterr().err.strip() == ("error: --merge: PEFT cannot merge 'lora' adapters into the base model. "
                                               "Export without --merge: the adapter is written on its own and loads "
                                               "on top of the base model.")


# -- fw upload hf_hub ---------------------------------------------------------------------------------------------
class RecordedHfApi:
    """Stands in for ``huggingface_hub.HfApi``: records every call and what would go up, sends nothing."""

    instances: list[RecordedHfApi] = []
    fail_with: Exception | None = None

    def __init__(self, token=None, **kwargs):
        self.token, self.calls = token, []
        RecordedHfApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        from huggingface_hub import RepoUrl

        self.calls.append(("create_repo", repo_id, kwargs))
        if RecordedHfApi.fail_with is not None:
            raise RecordedHfApi.fail_with
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        from huggingface_hub import CommitInfo
        from huggingface_hub.utils import filter_repo_objects

        root = Path(folder_path)
        files = sorted(filter_repo_objects([path.relative_to(root).as_posix() for path in root.rglob("*")
                                            if path.is_file()], allow_patterns=kwargs.get("allow_patterns"),
                                           ignore_patterns=kwargs.get("ignore_patterns")))
        sent = {name: (root / name).read_bytes() for name in files}
        self.calls.append(("upload_folder", repo_id, {**kwargs, "folder_path": folder_path, "files": sent}))
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/abc123", commit_message="",
                          commit_description="", oid="abc123")


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub import constants

    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordedHfApi)
    RecordedHfApi.instances, RecordedHfApi.fail_with = [], None
    console.clear()
    return RecordedHfApi


def calls(recorder) -> dict:
    (api,) = recorder.instances
    return {name: (repo_id, kwargs) for name, repo_id, kwargs in api.calls}


def assert_token_never_leaked(capsys, caplog, *directories: Path) -> None:
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err + caplog.text
    assert not any(TOKEN in message for message in console.messages)
    for directory in directories:
        for path in Path(directory).rglob("*"):
            assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path


def test_upload_sends_the_model_directory_with_every_option(hub, lora_run, monkeypatch, capsys, caplog):
    caplog.set_level("DEBUG")
    result, _ = lora_run
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["upload", "hf_hub", "--repo_id", "me/spell-lora", "--model_path", str(result.run_dir), "--private",
                 "--commit_message", "first version", "--commit_description", "LoRA r=4 on the tiny model",
                 "--revision", "v1"]) == 0
    (api,) = hub.instances
    assert api.token == TOKEN
    recorded = calls(hub)
    assert [name for name, *_ in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert recorded["create_repo"] == ("me/spell-lora", {"private": True, "repo_type": "model", "exist_ok": True})
    assert recorded["create_branch"] == ("me/spell-lora", {"branch": "v1", "repo_type": "model", "exist_ok": True})
    repo_id, upload = recorded["upload_folder"]
    assert repo_id == "me/spell-lora" and Path(upload["folder_path"]) == result.model_dir
    assert (upload["revision"], upload["repo_type"]) == ("v1", "model")
    assert (upload["commit_message"], upload["commit_description"]) == ("first version", "LoRA r=4 on the tiny model")
    assert set(upload["files"]) == {"README.md", "adapter_config.json", "adapter_model.safetensors",
                                    "chat_template.jinja", "fw_config.yaml", "generation_config.json",
                                    "tokenizer.json", "tokenizer_config.json"}
    card = upload["files"]["README.md"].decode()
    assert "# me/spell-lora" in card and "PeftModel.from_pretrained(base, 'me/spell-lora')" in card
    assert "`fw evaluate` on 2 rows" in card
    out = capsys.readouterr().out
    assert "uploaded 8 files to https://huggingface.co/me/spell-lora (private)" in out
    assert "commit: https://huggingface.co/me/spell-lora/commit/abc123" in out
    assert_token_never_leaked(capsys, caplog, result.run_dir)


def test_upload_defaults_public_main_and_the_saved_login(hub, lora_run, tmp_path, monkeypatch, capsys, caplog):
    caplog.set_level("DEBUG")
    from huggingface_hub import constants

    result, _ = lora_run
    saved_login = tmp_path / "token"
    saved_login.write_text(TOKEN)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(saved_login))
    assert main(["upload", "hf_hub", "-r", "me/spell", "-m", str(result.model_dir), "-p", "false"]) == 0
    (api,) = hub.instances
    assert api.token == TOKEN
    recorded = calls(hub)
    assert "create_branch" not in recorded
    assert recorded["create_repo"][1]["private"] is False
    upload = recorded["upload_folder"][1]
    assert upload["revision"] is None and upload["commit_message"] == "Upload a model trained with fw"
    assert upload["commit_description"] is None
    assert_token_never_leaked(capsys, caplog, result.run_dir)


def test_upload_of_several_named_adapters_sends_each_one(hub, two_adapter_run, monkeypatch):
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", TOKEN)
    assert main(["upload", "hf_hub", "--repo_id", "me/two", "--model_path", str(two_adapter_run.model_dir)]) == 0
    files = calls(hub)["upload_folder"][1]["files"]
    assert {"task_a/adapter_config.json", "task_a/adapter_model.safetensors", "task_b/adapter_config.json",
            "task_b/adapter_model.safetensors", "README.md", "fw_config.yaml"} <= set(files)
    card = files["README.md"].decode()
    assert "2 named LoRA adapters" in card and "subfolder='task_a', adapter_name='task_a'" in card
    assert "--adapter task_a" in card


def test_a_full_fine_tune_is_described_and_uploaded_as_transformers_weights(hub, tmp_path, tiny_llama_dir,
                                                                            monkeypatch):
    data = config(tiny_llama_dir, trainer={"type": "finetune", "epochs": 1, "batch_size": 8, "learning_rate": 0.001,
                                           "seed": 1})
    del data["adapter"]
    result = train(tmp_path, data)
    card = card_of(result.model_dir)
    assert card.data.library_name == "transformers" and "A full fine-tune (every weight trained)" in card.text
    assert "| Adapter |" not in card.text and "PeftModel" not in card.text
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["upload", "hf_hub", "--repo_id", "me/full", "--model_path", str(result.model_dir)]) == 0
    files = calls(hub)["upload_folder"][1]["files"]
    assert {"model.safetensors", "config.json", "README.md", "fw_config.yaml"} <= set(files)
    assert "AutoModelForCausalLM.from_pretrained('me/full'" in files["README.md"].decode()


def test_upload_of_an_export_keeps_its_training_record(hub, lora_run, tmp_path, monkeypatch):
    result, _ = lora_run
    main(["export", "--model_path", str(result.model_dir), "--output", str(tmp_path / "merged"), "--merge"])
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["upload", "hf_hub", "--repo_id", "me/merged", "--model_path", str(tmp_path / "merged")]) == 0
    files = calls(hub)["upload_folder"][1]["files"]
    assert "model.safetensors" in files and "config.json" in files
    card = files["README.md"].decode()
    rows = json.loads((result.run_dir / "manifest.json").read_text())["rows"]
    assert "library_name: transformers" in card and f"{rows['train']} train, {rows['validation']} validation" in card
    assert "`fw evaluate` on 2 rows" in card and "LLM(model='me/merged')" in card


@pytest.mark.parametrize("case, message", [
    ("not-fw", "error: --model_path: '{path}' is not a model saved by fw (no fw_config.yaml in it). Give the model/ "
               "folder of an fw train run, or a directory written by fw export."),
    ("missing", "error: --model_path: '{path}' does not exist (expected results/<experiment>_<run>/model)."),
    ("bad-repo", "error: --repo_id: Cannot have -- or .. in repo_id: 'me/bad--name'. Write OWNER/NAME, "
                 "e.g. my-name/my-model."),
    ("no-token", "error: no Hugging Face token: set HF_TOKEN (or HUGGING_FACE_HUB_TOKEN) to a token with write access "
                 "(https://huggingface.co/settings/tokens), or log in once with `hf auth login`."),
    ("space", "error: --repo_type: a Space runs an app, it does not hold a model for others to load; upload to a "
              "model repository (--repo_type model, the default)."),
])
def test_upload_refuses_before_any_network_call(hub, lora_run, tiny_llama_dir, tmp_path, monkeypatch, capsys, case,
                                                message):
    result, _ = lora_run
    path = {"not-fw": tiny_llama_dir, "missing": tmp_path / "nowhere"}.get(case, result.model_dir)
    repo_id = "me/bad--name" if case == "bad-repo" else "me/spell"
    if case != "no-token":
        monkeypatch.setenv("HF_TOKEN", TOKEN)
    arguments = ["upload", "hf_hub", "--repo_id", repo_id, "--model_path", str(path)]
    assert main(arguments + (["--repo_type", "space"] if case == "space" else [])) == 1
    assert capsys.readouterr().err.strip() == message.format(path=path)
    assert hub.instances == []  # no HfApi, so no request


@pytest.mark.parametrize("status, message", [
    (401, "error: the Hugging Face Hub rejected the token: set HF_TOKEN"),
    (403, "error: the token may not write to 'me/spell': it is read-only, or its owner is not a member of 'me'."),
    (500, "error: uploading to 'me/spell' failed: 500 Server Error for ***"),
])
def test_hub_failures_are_one_line_without_the_token(hub, lora_run, monkeypatch, capsys, status, message):
    import importlib

    from huggingface_hub import errors

    http = importlib.import_module(errors.Response.__module__.split(".")[0])  # httpx, the client huggingface_hub uses
    result, _ = lora_run
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    response = http.Response(status, request=http.Request("POST", "https://huggingface.co/api/repos/create"))
    hub.fail_with = errors.HfHubHTTPError(f"{status} Server Error for {TOKEN}", response=response)
    assert main(["upload", "hf_hub", "--repo_id", "me/spell", "--model_path", str(result.model_dir)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and len(err.splitlines()) == 1
    assert TOKEN not in err


def test_the_upload_and_export_verbs_stay_light():
    import subprocess
    import sys

    code = ("import sys; from fw.cli.main import build_parser; build_parser().parse_args(['upload', 'hf_hub', "
            "'-r', 'a/b', '-m', 'x']); print(','.join(m for m in ('torch', 'transformers', 'peft', "
            "'huggingface_hub') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""

"""The model card: ``README.md`` in a saved model's directory, in the Hugging Face Hub's conventions.

Written when ``fw train`` saves ``model/``, when ``fw export`` writes a standalone model, and refreshed by
``fw upload`` (then the snippets name the Hub repository and the evaluation figures are the latest). Built with
``huggingface_hub.ModelCard`` / ``ModelCardData``:

- metadata: ``base_model`` (only a Hub id: the Hub rejects a local path there), ``library_name`` (``peft`` for
  adapters, ``transformers`` for full and merged weights), ``pipeline_tag: text-generation``, ``tags`` and the
  base model's ``license`` when its own card is on this machine (a local base directory, or the Hub cache; never
  fetched);
- body: what was trained (method and its parameters, quantization, epochs, data size and hash from the run's
  manifest), the prompt format and generation settings the model expects, the figures of ``test_statistics.json``
  when ``fw evaluate`` wrote one, and loading snippets for transformers + peft, vLLM and ``fw predict``. The
  adapter's plugin names its method (``display_name``) and says whether vLLM serves it (``vllm_problem``).

Everything is read from disk (the directory, its ``fw_config.yaml``, the run's manifest and statistics), so the
card says what the directory really holds. Imports no torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fw import artifacts, runs
from fw.config.rules import peft_rank
from fw.data.prompt import PromptRenderer
from fw.errors import FwError
from fw.model import multi_adapter
from fw.plugin import get_registry, looks_like_path, resolve
from fw.publish.chat_template import prompt_pieces

CARD_FILE = "README.md"
PIPELINE_TAG = "text-generation"
#: vLLM's accepted ``max_lora_rank`` values (vllm.config.lora); the snippet asks for the smallest that fits
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: generation keys a vLLM ``SamplingParams`` takes under the same name
VLLM_SAMPLING_KEYS = ("top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")
#: generation_config.json values that leave decoding as it would be without them
NEUTRAL_GENERATION = {"min_length": 0, "early_stopping": False, "num_beams": 1, "num_beam_groups": 1, "use_cache": True,
                      "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "length_penalty": 1.0,
                      "no_repeat_ngram_size": 0, "renormalize_logits": False, "remove_invalid_values": False,
                      "diversity_penalty": 0.0, "top_p": 1.0, "typical_p": 1.0, "epsilon_cutoff": 0.0,
                      "eta_cutoff": 0.0, "temperature": 1.0}
NOT_GENERATION_SETTINGS = {"transformers_version", "_from_model_config", "bos_token_id"}
#: adapter parameters that are plumbing rather than what was trained
NOT_SHOWN = {"type", "postprocessor", "pretrained_adapter_weights"}


@dataclass(frozen=True)
class SavedModel:
    """What a model directory holds, as the card describes it."""

    directory: Path
    data: dict
    #: ``adapter`` (one PEFT adapter), ``adapters`` (several named ones), ``merged`` (an adapter merged into the
    #: base weights) or ``full`` (every weight fine-tuned)
    kind: str
    #: name -> directory of each saved adapter (adapter kinds only)
    adapters: dict = field(default_factory=dict)
    #: the adapter ``fw predict`` runs (several named adapters), or the one merged (``fw export --merge``)
    active: str | None = None
    #: where the directory lives once written (``directory`` may still be a temporary one)
    location: Path | None = None

    @property
    def is_adapter(self) -> bool:
        return self.kind in ("adapter", "adapters")

    @property
    def base_model(self) -> str:
        return self.data["base_model"]


def describe(model_dir: Path, data: dict, active: str | None = None, location: Path | None = None) -> SavedModel:
    model_dir = Path(model_dir)
    location = Path(location or model_dir).resolve()
    if multi_adapter.is_multi_adapter_dir(model_dir):
        adapters = multi_adapter.saved_adapter_dirs(model_dir)
        configured = multi_adapter.inference_adapter(data) if multi_adapter.section_of(data) else None
        return SavedModel(model_dir, data, "adapters", adapters, active or configured or next(iter(adapters)),
                          location)
    if (model_dir / "adapter_config.json").is_file():
        return SavedModel(model_dir, data, "adapter", {multi_adapter.PEFT_DEFAULT_NAME: model_dir}, active, location)
    trained_adapter = data.get("adapter") or data.get("adapters")
    return SavedModel(model_dir, data, "merged" if trained_adapter else "full", {}, active, location)


# -- the card -----------------------------------------------------------------------------------------------------
def write_model_card(model_dir: Path, data: dict, run_dir: Path | None = None, repo_id: str | None = None,
                     active: str | None = None, location: Path | None = None) -> Path:
    """Write ``README.md`` into ``model_dir`` (replacing PEFT's placeholder card). ``run_dir`` holds the manifest
    and statistics (default: :func:`run_directory_of` ``location``); ``repo_id`` is the Hub
    repository the snippets load from, else ``location``: where ``model_dir`` will live (default: itself).
    ``active``: the adapter a merged export holds."""
    saved = describe(model_dir, data, active, location)
    card = model_card(saved, Path(run_dir) if run_dir else run_directory_of(saved.location), repo_id)
    path = Path(model_dir) / CARD_FILE
    card.save(path)
    return path


def run_directory_of(model_dir: Path) -> Path:
    """Where a model's manifest and statistics are: the directory itself (fw export copies them in), else its
    parent (the run directory of ``fw train``)."""
    model_dir = Path(model_dir)
    return model_dir if (model_dir / artifacts.MANIFEST).is_file() else model_dir.parent


def model_card(saved: SavedModel, run_dir: Path, repo_id: str | None = None):
    from huggingface_hub import ModelCard

    metadata = card_metadata(saved)
    body = "\n\n".join(part for part in (
        title(saved, repo_id), training_section(saved, run_dir), prompt_section(saved),
        generation_section(saved), evaluation_section(run_dir), usage_section(saved, repo_id)) if part)
    return ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{body}\n")


def card_metadata(saved: SavedModel):
    from huggingface_hub import ModelCardData

    base = hub_id(saved.base_model)
    methods = sorted({section["type"] for section in adapter_sections(saved.data).values()})
    quantization = (saved.data.get("quantization") or {}).get("backend")
    tags = ["fw", *methods, *([quantization] if quantization else [])]
    if base:
        tags.append(f"base_model:{'adapter' if saved.is_adapter else 'finetune'}:{base}")
    return ModelCardData(base_model=base, library_name="peft" if saved.is_adapter else "transformers",
                         pipeline_tag=PIPELINE_TAG, tags=tags, **base_license(saved.base_model))


def hub_id(name: str) -> str | None:
    """``name`` when it is a Hugging Face Hub id, None for a local directory."""
    return None if looks_like_path(name) else name


def base_license(base_model: str) -> dict:
    """``license`` (and ``license_name`` / ``license_link`` for custom ones) from the base model's own card when
    it is on this machine: a local base directory's README.md, or the Hub cache. Never downloads."""
    from huggingface_hub import ModelCard, try_to_load_from_cache

    local = Path(base_model).expanduser() / CARD_FILE
    if hub_id(base_model):
        cached = try_to_load_from_cache(base_model, CARD_FILE)
        local = Path(cached) if isinstance(cached, str) else None
    if local is None or not local.is_file():
        return {}
    try:
        card = ModelCard.load(local, ignore_metadata_errors=True)
    except Exception:  # an unreadable base card only means the license is unknown
        return {}
    found = {key: getattr(card.data, key, None) for key in ("license", "license_name", "license_link")}
    return {key: value for key, value in found.items() if value}


# -- body ---------------------------------------------------------------------------------------------------------
def title(saved: SavedModel, repo_id: str | None) -> str:
    folder = saved.location
    name = repo_id or (folder.parent.name if folder.name == artifacts.MODEL_DIR else folder.name)
    return f"# {name}\n\n{method_summary(saved)}, fine-tuned with fw from `{saved.base_model}`."


def method_summary(saved: SavedModel) -> str:
    sections = adapter_sections(saved.data)
    if saved.kind == "full":
        return "A full fine-tune (every weight trained)"
    if saved.kind == "adapters":
        return f"{len(saved.adapters)} named {method_name(next(iter(sections.values())))} adapters (PEFT)"
    section = sections.get(saved.active) or next(iter(sections.values()))
    if saved.kind == "merged":
        merged = f" `{saved.active}`" if saved.active else ""
        return f"{with_article(method_name(section))} adapter{merged} merged into the base model's weights"
    return f"{with_article(method_name(section))} adapter (PEFT)"


def with_article(name: str) -> str:
    """``An AdaLoRA``, ``An IA³``, ``A LoRA``: the article as the name is spoken (initial vowel sound)."""
    return f"{'An' if name[:1].upper() in 'AEIOU' else 'A'} {name}"


def method_name(section: dict) -> str:
    """The adapter method as prose names it (the plugin's ``display_name``)."""
    descriptor = adapter_plugin(section)
    return (descriptor.display_name or descriptor.name) if descriptor else section["type"]


def adapter_plugin(section: dict):
    """The plugin of an adapter section, None when it is not installed here (the card still describes the run)."""
    registry = get_registry()
    return registry.get("adapter", section["type"]) if registry.has("adapter", section["type"]) else None


def adapter_sections(data: dict) -> dict[str, dict]:
    """name -> adapter section: ``adapters.adapters`` or the single ``adapter`` (named ``default``)."""
    if multi_adapter.section_of(data):
        return dict(multi_adapter.section_of(data).get("adapters") or {})
    return {multi_adapter.PEFT_DEFAULT_NAME: data["adapter"]} if data.get("adapter") else {}


def training_section(saved: SavedModel, run_dir: Path) -> str:
    data, manifest = saved.data, artifacts.read_manifest(run_dir)
    trainer = data.get("trainer") or {}
    rows: list[tuple[str, str]] = [("Base model", f"`{saved.base_model}`")]
    rows += [(f"Adapter `{name}`" if saved.kind == "adapters" else "Adapter", adapter_text(saved, name, section))
             for name, section in adapter_sections(data).items()]
    merge = ((data.get("adapters") or {}).get("merge")) or {}
    if merge:
        rows.append((f"Adapter `{merge['name']}`", f"merge of {', '.join(merge['sources'])} "
                                                   f"({merge.get('combination_type') or 'linear'}, weights "
                                                   f"{', '.join(map(str, merge['weights']))})"))
    if saved.kind == "adapters":
        rows.append(("Active adapter", f"`{saved.active}` (what `fw predict` runs unless given `--adapter`)"))
    rows.append(("Quantization", quantization_text(data.get("quantization"))))
    length = f"{trainer['train_steps']} steps" if trainer.get("train_steps") else f"{trainer.get('epochs')} epochs"
    rows.append(("Training", f"{length}, learning rate {trainer.get('learning_rate')}, batch size "
                             f"{trainer.get('batch_size')}, seed {trainer.get('seed')}"))
    rows.append(("Data", data_text(manifest)))
    rows += statistics_rows(run_dir)
    if manifest.get("versions"):
        rows.append(("Versions", ", ".join(f"{name} {version}" for name, version in manifest["versions"].items()
                                           if version)))
    table = "\n".join(f"| {key} | {cell(value)} |" for key, value in rows)
    return f"## Training\n\n| | |\n|---|---|\n{table}"


def adapter_text(saved: SavedModel, name: str, section: dict) -> str:
    saved_config = saved.adapters.get(name, saved.directory if saved.kind == "adapter" else None)
    params = {key: value for key, value in section.items()
              if key not in NOT_SHOWN and value not in (None, False, [], {}, "")}
    declared = read_json(Path(saved_config) / "adapter_config.json") if saved_config else {}
    targets = declared.get("target_modules")
    if targets:  # resolved when the adapter was built (the config may say null); PEFT saves a set's order
        params["target_modules"] = sorted(targets) if isinstance(targets, list) else targets
    listed = ", ".join(f"{key} {format_value(value)}" for key, value in params.items())
    return f"{method_name(section)}: {listed}" if listed else method_name(section)


def quantization_text(section: dict | None) -> str:
    if not section:
        return "none"
    shown = {key: value for key, value in section.items() if value not in (None, False, "", [], {})}
    return ", ".join(f"{key} {format_value(value)}" for key, value in shown.items())


def data_text(manifest: dict) -> str:
    rows = manifest.get("rows") or {}
    sizes = ""
    if rows:
        total = sum(rows.values())
        sizes = f"{total} rows ({', '.join(f'{count} {split}' for split, count in rows.items())}), "
    digest = manifest.get("data_hash")
    return f"{sizes}sha256 `{digest}`" if digest else (sizes.rstrip(", ") or "unknown (no manifest.json)")


def statistics_rows(run_dir: Path) -> list[tuple[str, str]]:
    statistics = read_json(run_dir / artifacts.TRAINING_STATISTICS)
    rows = []
    losses = statistics.get("train_loss_per_step") or []
    if losses:
        rows.append(("Final training loss", f"{losses[-1]:.4f} after {statistics.get('steps', len(losses))} steps"))
    best = statistics.get("best") or {}
    if best.get("loss") is not None:
        rows.append(("Best validation loss", f"{best['loss']:.4f} (epoch {best.get('epoch')})"))
    return rows


def prompt_section(saved: SavedModel) -> str:
    if chat_messages(saved.data, "") is not None:
        return chat_prompt_section(saved)
    renderer = PromptRenderer(saved.data)
    if renderer.mode == "column":
        how = (f"The model was trained on the `{renderer.input_column}` column as-is, with no template around it "
               "and not the base model's chat template: give it the raw input text.")
    else:
        task = (saved.data.get("prompt") or {}).get("task")
        how = ("The model was trained on prompts rendered from this template, not on the base model's chat "
               "template; write prompts exactly this way, every `{column}` replaced by the row's value"
               + (f" and `{{__task__}}` by the task: _{task}_" if task else "") + ":\n\n"
               + fenced(renderer.template))
        if renderer.uses_sample:
            how += "\n\n`{__sample__}` is the whole row as one JSON object (every column but the output)."
        if (saved.data.get("prompt") or {}).get("retrieval"):
            how += ("\n\n`{__context__}` holds few-shot examples retrieved from the training rows; `fw predict` "
                    "fills it from the `retrieval/` index saved with the model.")
    _, reason = prompt_pieces(saved.data)
    chat = ("The tokenizer's chat template renders this format from one user message (the last one), so chat "
            "clients (`apply_chat_template`, vLLM's chat endpoint) send the model the prompt it was trained on."
            if not reason else f"The tokenizer has no chat template: {reason}, which one chat message cannot fill. "
            "Send formatted prompts to a completions endpoint.")
    return (f"## Prompt format\n\n{how}\n\n{chat} Tokenize the prompt with the tokenizer's default special tokens "
            "(a BOS token where the tokenizer adds one); the model answers after it and ends with the EOS token.")


def chat_prompt_section(saved: SavedModel) -> str:
    prompt = saved.data.get("prompt") or {}
    renderer = PromptRenderer(saved.data)
    if renderer.mode == "column":
        user = (f"the `{renderer.input_column}` column as-is (or, when it holds a conversation, that conversation's "
                "messages)")
    else:
        user = "the prompt rendered from this template:\n\n" + fenced(renderer.template) + "\n\n"
    system = (f"after the system message _{prompt['system_message']}_" if prompt.get("system_message") else
              "with no system message of its own (the template's default applies, if it has one)")
    trained = ("every assistant turn" if prompt.get("train_on") != "last_assistant_turn" else
               "the final assistant turn")
    return ("## Prompt format\n\nThe model was trained through the tokenizer's chat template (saved with it): the "
            f"user message is {user} {system}; the loss covered {trained} and its end-of-turn token. Send messages "
            "to a chat endpoint (`apply_chat_template(messages, add_generation_prompt=True)`, vLLM's `llm.chat` or "
            "`/v1/chat/completions`); generation ends at the end-of-turn token, which `generation_config.json` lists "
            "among its `eos_token_id`s.")


def chat_messages(data: dict, example: str) -> list[dict] | None:
    """The chat messages of an example prompt when the model was trained through a chat template, else None."""
    prompt = data.get("prompt") or {}
    if not prompt.get("chat_template"):
        return None
    system = [{"role": "system", "content": prompt["system_message"]}] if prompt.get("system_message") else []
    return system + [{"role": "user", "content": example}]


def generation_section(saved: SavedModel) -> str:
    rows = "\n".join(f"| `{key}` | {cell(format_value(value))} |" for key, value in generation_settings(saved).items())
    return ("## Generation settings\n\nWhat `fw predict` uses, saved in `generation_config.json` (transformers reads "
            f"it from there; `fw predict` from `fw_config.yaml`):\n\n| setting | value |\n|---|---|\n{rows}")


def generation_settings(saved: SavedModel) -> dict:
    """The saved generation config without bookkeeping and without values that change nothing."""
    stored = read_json(saved.directory / "generation_config.json")
    return {key: value for key, value in stored.items()
            if key not in NOT_GENERATION_SETTINGS and value is not None and NEUTRAL_GENERATION.get(key, ...) != value}


def evaluation_section(run_dir: Path) -> str:
    statistics = read_json(runs.test_statistics_of(run_dir))
    rows = [(output, metric, value) for output, metrics in statistics.items() if isinstance(metrics, dict)
            and output != "combined" for metric, value in metrics.items() if isinstance(value, (int, float))]
    if not rows:
        return ""
    table = "\n".join(f"| {output} | {metric} | {'-' if value is None else f'{value:.4f}'} |"
                      for output, metric, value in rows)
    counted = f" on {statistics['rows']} rows" if statistics.get("rows") else ""
    return f"## Evaluation\n\n`fw evaluate`{counted}:\n\n| output | metric | value |\n|---|---|---:|\n{table}"


# -- loading snippets ---------------------------------------------------------------------------------------------
def usage_section(saved: SavedModel, repo_id: str | None) -> str:
    location = repo_id or str(saved.location)
    example = example_prompt(saved.data)
    parts = ["## Use it", "### transformers" + (" + peft" if saved.is_adapter else ""),
             fenced(transformers_snippet(saved, location, example), "python"),
             "### vLLM", vllm_snippet(saved, location, repo_id, example), "### fw", fenced(fw_snippet(saved, repo_id),
                                                                                           "bash")]
    return "\n\n".join(parts)


def example_prompt(data: dict) -> str:
    """The prompt of a row whose every column holds ``<column>``: the format, ready to fill in."""
    renderer = PromptRenderer(data)
    row = {column: f"<{column}>" for column in sorted(renderer.columns | {renderer.input_column})}
    try:
        return renderer.render(row)
    except FwError:  # a format spec ({price:.2f}) cannot format a placeholder: show the template itself
        return renderer.template


def loaded_adapter(saved: SavedModel) -> tuple[str | None, str | None]:
    """(adapter name, sub-folder) of the adapter the snippets load."""
    if saved.kind != "adapters":
        return None, None
    directory = saved.adapters[saved.active]
    return saved.active, None if directory == saved.directory else directory.name


def transformers_snippet(saved: SavedModel, location: str, example: str) -> str:
    lines = ["from transformers import AutoModelForCausalLM, AutoTokenizer"]
    if saved.is_adapter:
        name, subfolder = loaded_adapter(saved)
        extra = (f", subfolder={subfolder!r}" if subfolder else "") + (f", adapter_name={name!r}" if name else "")
        lines += ["from peft import PeftModel", "from transformers import GenerationConfig", "",
                  f'base = AutoModelForCausalLM.from_pretrained({saved.base_model!r}, dtype="auto")',
                  f"model = PeftModel.from_pretrained(base, {location!r}{extra})",
                  f"generation_config = GenerationConfig.from_pretrained({location!r})"]
        generate = "model.generate(**inputs, generation_config=generation_config)"
    else:
        lines += ["", f'model = AutoModelForCausalLM.from_pretrained({location!r}, dtype="auto")']
        generate = "model.generate(**inputs)  # generation_config.json holds the settings above"
    messages = chat_messages(saved.data, example)
    lines += [f"tokenizer = AutoTokenizer.from_pretrained({location!r})", ""]
    if messages is None:
        lines += [f"prompt = {example!r}", 'inputs = tokenizer(prompt, return_tensors="pt")']
    else:
        lines += [f"messages = {messages!r}", "inputs = tokenizer.apply_chat_template(messages, "
                  'add_generation_prompt=True, return_tensors="pt", return_dict=True)']
    lines += [f"output = {generate}",
              'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))']
    return "\n".join(lines)


def vllm_snippet(saved: SavedModel, location: str, repo_id: str | None, example: str) -> str:
    sampling = sampling_params(saved)
    messages = chat_messages(saved.data, example)
    call = f"llm.generate([{example!r}], params" if messages is None else f"llm.chat({messages!r}, params"
    endpoint = ("the formatted prompt to the completions endpoint (`/v1/completions`)" if messages is None else
                "the messages to the chat endpoint (`/v1/chat/completions`)")
    if not saved.is_adapter:
        code = ["from vllm import LLM, SamplingParams", "", f"llm = LLM(model={location!r})",
                f"params = SamplingParams({sampling})", f"outputs = {call})",
                "print(outputs[0].outputs[0].text)"]
        return (fenced("\n".join(code), "python") + f"\n\nAs a server: `vllm serve {location}`, then send "
                f"{endpoint}.")
    sections = adapter_sections(saved.data)
    section = sections.get(saved.active) or next(iter(sections.values()))
    problem = vllm_problem(section)
    if problem:
        return (f"{problem}: merge it into the base model with `fw export --merge` (when PEFT can merge it) and "
                "serve the result.")
    name, subfolder = loaded_adapter(saved)
    name = name or "adapter"
    rank = next((value for value in VLLM_LORA_RANKS if value >= peft_rank(section)), VLLM_LORA_RANKS[-1])
    path = f'f"{{adapter_dir}}/{subfolder}"' if subfolder else "adapter_dir"
    fetch = ([f"adapter_dir = snapshot_download({repo_id!r})"] if repo_id else [f"adapter_dir = {location!r}"])
    code = ["from vllm import LLM, SamplingParams", "from vllm.lora.request import LoRARequest",
            *(["from huggingface_hub import snapshot_download"] if repo_id else []), "", *fetch,
            f"llm = LLM(model={saved.base_model!r}, enable_lora=True, max_lora_rank={rank})",
            f"params = SamplingParams({sampling})",
            f"outputs = {call}, lora_request=LoRARequest({name!r}, 1, {path}))",
            "print(outputs[0].outputs[0].text)"]
    served = f"{location}/{subfolder}" if subfolder else location
    return (fenced("\n".join(code), "python") + f"\n\nAs a server: `vllm serve {saved.base_model} --enable-lora "
            f"--max-lora-rank {rank} --lora-modules {name}={served}` (a local directory), then send {endpoint} "
            f"with `\"model\": \"{name}\"`.")


def vllm_problem(section: dict) -> str | None:
    """Why vLLM cannot serve the adapter of ``section`` as a LoRA adapter (its plugin's ``vllm_problem``), None
    when it can."""
    descriptor = adapter_plugin(section)
    if descriptor is None or descriptor.vllm_problem is None:
        return f"vLLM serves LoRA adapters only, not {method_name(section)} ones"
    return resolve(descriptor.vllm_problem)(section)


def sampling_params(saved: SavedModel) -> str:
    """vLLM ``SamplingParams`` arguments matching the generation settings (vLLM samples unless temperature is 0)."""
    settings = generation_settings(saved)
    sampling = bool(settings.get("do_sample"))
    arguments = {"temperature": settings.get("temperature", 1.0) if sampling else 0}
    keys = VLLM_SAMPLING_KEYS if sampling else ("repetition_penalty",)
    arguments.update({key: settings[key] for key in keys if key in settings})
    if settings.get("max_new_tokens"):
        arguments["max_tokens"] = settings["max_new_tokens"]
    eos = settings.get("eos_token_id")
    if eos is not None:
        arguments["stop_token_ids"] = eos if isinstance(eos, list) else [eos]
    return ", ".join(f"{key}={value!r}" for key, value in arguments.items())


def fw_snippet(saved: SavedModel, repo_id: str | None) -> str:
    folder = repo_id.split("/")[-1] if repo_id else str(saved.location)
    lines = [f"hf download {repo_id} --local-dir {folder}"] if repo_id else []
    chosen = f" --adapter {saved.active}" if saved.kind == "adapters" else ""
    lines.append(f"fw predict --model_path {folder} --dataset new_rows.csv{chosen}")
    return "\n".join(lines)


# -- small helpers ------------------------------------------------------------------------------------------------
def fenced(text: str, language: str = "text") -> str:
    fence = "````" if "```" in text else "```"
    return f"{fence}{language}\n{text}\n{fence}"


def cell(text: str) -> str:
    """``text`` safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}

"""``model/`` as ``fw train`` saves it: ready to share as it is.

The weights in save_pretrained layout (an adapter in PEFT's, or full / merged weights), the tokenizer with fw's
prompt as its chat template (:mod:`fw.publish.chat_template`), ``generation_config.json``, the fw config
(``fw_config.yaml``) and the model card (:mod:`fw.publish.card`), written into a temporary directory renamed into
place (:func:`fw.atomic.atomic_directory`). The run directory around it is :mod:`fw.artifacts`'.
"""
from __future__ import annotations

from pathlib import Path

from fw import artifacts
from fw.atomic import atomic_directory
from fw.infer.generation import generation_config
from fw.model.initialization import save_kwargs
from fw.publish.card import write_model_card
from fw.publish.chat_template import use_prompt_as_chat_template


def save_model(model, tokenizer, data: dict, model_dir: Path) -> Path:
    """Write ``model_dir`` atomically in save_pretrained layout (+ tokenizer with fw's prompt as its chat template,
    generation config, fw config, model card)."""
    with atomic_directory(Path(model_dir)) as directory:
        model.save_pretrained(str(directory), safe_serialization=True, **save_kwargs(model))
        use_prompt_as_chat_template(tokenizer, data)  # served as trained: chat clients send fw's prompt
        tokenizer.save_pretrained(str(directory))
        generation_config(data, tokenizer).save_pretrained(str(directory))
        (directory / artifacts.MODEL_CONFIG_FILE).write_text(artifacts.config_yaml(data), encoding="utf-8")
        write_model_card(directory, data, location=Path(model_dir))
    return Path(model_dir)

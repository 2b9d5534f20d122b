"""A chat template that renders fw's prompt, so that chat clients send the model what it was trained on.

fw trains on the rendered ``prompt.template`` (or the input column as-is), never on the base model's chat template.
A server's chat endpoint (vLLM's ``/v1/chat/completions``, transformers' ``apply_chat_template``) would wrap the
user's message in the base model's chat markup instead, and a fine-tuned model then answers worse than it did
under ``fw predict``. So the tokenizer saved with a model gets a chat template that reproduces fw's prompt: the
last user message fills the one column the prompt reads, ``{__task__}`` is the configured task, and the BOS token
leads when the tokenizer adds one (chat endpoints tokenize the template's text without special tokens).

With ``prompt.chat_template`` the model was trained through a real chat template: the saved tokenizer keeps it (or
gets the one the config gives as text), so chat clients send exactly the training format.

Prompts that read several columns, the whole row (``{__sample__}``), few-shot examples (``{__context__}``) or use
a format spec cannot come from one chat message: then the tokenizer keeps no chat template, so a chat request
fails loudly instead of silently sending another format; the completions endpoint takes the formatted prompt.
"""
from __future__ import annotations

import json
import string

from fw.data.prompt import CONTEXT, SAMPLE, TASK, PromptRenderer
from fw.data.tokens import _adds_bos

USER_CONTENT = ("{%- set user_messages = messages | selectattr('role', 'equalto', 'user') | list -%}"
                "{%- if not user_messages -%}{{ raise_exception('fw prompt template: give one user message') }}"
                "{%- endif -%}")


def prompt_chat_template(data: dict, tokenizer) -> tuple[str | None, str | None]:
    """(Jinja chat template rendering fw's prompt, None) or (None, why it cannot)."""
    pieces, reason = prompt_pieces(data)
    if reason:
        return None, reason
    bos = "{{ bos_token }}" if _adds_bos(tokenizer) else ""
    body = "".join("{{ user_messages[-1]['content'] }}" if kind == "field" else jinja_text(value)
                   for kind, value in pieces)
    return USER_CONTENT + bos + body, None


def prompt_pieces(data: dict) -> tuple[list[tuple[str, str | None]], str | None]:
    """fw's prompt as ``("text", literal)`` and ``("field", column)`` pieces, or ([], why one chat message cannot
    fill it)."""
    renderer = PromptRenderer(data)
    if (data.get("prompt") or {}).get("retrieval"):
        return [], "the prompt holds few-shot examples retrieved per row ({__context__})"
    if renderer.mode == "column":
        return [("field", renderer.input_column)], None
    pieces: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in string.Formatter().parse(renderer.template):
        if literal:
            pieces.append(("text", literal))
        if name is None:
            continue
        if name in (SAMPLE, CONTEXT):
            return [], f"the prompt template uses {{{name}}}"
        if spec or conversion:
            return [], f"the prompt template formats {{{name}}} with a format spec or conversion"
        pieces.append(("text", renderer.task or "") if name == TASK else ("field", name))
    if len(renderer.columns) != 1:
        columns = ", ".join(sorted(renderer.columns)) or "none"
        return [], f"the prompt template reads {len(renderer.columns)} columns ({columns}), not one"
    return pieces, None


def jinja_text(text: str) -> str:
    """``text`` as a Jinja expression that outputs it verbatim (a quoted string literal)."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}"


def use_prompt_as_chat_template(tokenizer, data: dict) -> str | None:
    """Give ``tokenizer`` the chat template of fw's prompt (before it is saved); when the prompt cannot come
    from one chat message, remove its chat template. Returns why it could not, or None. A config that trained
    through a chat template (``prompt.chat_template``) keeps that template."""
    chosen = (data.get("prompt") or {}).get("chat_template")
    if chosen:
        if isinstance(chosen, str):
            tokenizer.chat_template = chosen
        return None
    template, reason = prompt_chat_template(data, tokenizer)
    tokenizer.chat_template = template
    return reason

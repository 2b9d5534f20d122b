"""Chat templates and conversations (``prompt.chat_template``).

Off by default, so a Ludwig config means the same run. With ``prompt.chat_template: true`` (the tokenizer's own
template) or a Jinja template given as text:

- the rendered prompt (column, template or task) becomes the user message, after ``prompt.system_message`` when
  one is set; the target is the assistant message;
- an input column holding a conversation (OpenAI ``messages`` with role/content, or ShareGPT ``conversations`` with
  from/value; a list, or JSON text of one) is used as the conversation itself (see :func:`as_conversation`);
- generation starts where the template puts the assistant's content (after its header, and after any block it
  inserts before the content, e.g. an empty ``<think></think>``), and stops at the template's end-of-turn token;
- the loss covers each assistant content and its end-of-turn token: every assistant turn, or the final one only
  (``prompt.train_on: last_assistant_turn``).

Masks come from rendering the conversation incrementally, not from ``{% generation %}`` markers (few templates
have them): for assistant turn *i* the text of the conversation up to that turn, as the template renders it for
generation, must be a prefix of the whole rendering; the loss then starts at the turn's content and ends with the
first end-of-turn token after it. Template text inserted before the content (an empty reasoning block) is never
trained on; a message carrying its own reasoning (``reasoning_content``, or content holding ``<think>``) is trained
from the assistant header on, reasoning included.

Each piece (untrained, trained, untrained …) is tokenized on its own, without special tokens added (templates write
their BOS themselves), so the tokens a model generates after a prompt are the tokens it was trained on.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fw.errors import FwError, shown
from fw.config import view
from fw.data.prompt import is_missing

#: a stand-in for an assistant's content: no spaces or markup a template could change
SENTINEL = "FWASSISTANTTURN7F3A9C"
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "model": "assistant",
         "bot": "assistant", "chatgpt": "assistant", "system": "system", "tool": "tool", "function": "tool",
         "observation": "tool", "ipython": "ipython"}
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
ALL_TURNS, LAST_TURN = "all_assistant_turns", "last_assistant_turn"


def uses_chat_template(config) -> bool:
    return bool(view.prompt(config).get("chat_template"))


# -- conversations in the data --------------------------------------------------------------------------------------
def as_conversation(value: Any) -> list[dict] | None:
    """``value`` as ``[{"role", "content", ...}]`` when it is a conversation (OpenAI messages or ShareGPT turns, as a
    list or as JSON text of one), else None. ShareGPT roles (human, gpt) become user / assistant."""
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list) or not value or not all(isinstance(item, Mapping) for item in value):
        return None
    messages = []
    for item in value:
        role = item.get("role", item.get("from"))
        content = item.get("content", item.get("value"))
        if not isinstance(role, str) or role.lower() not in ROLES or not (content is None or isinstance(content, str)):
            return None
        extra = {key: item[key] for key in REASONING_KEYS if item.get(key)}
        messages.append({"role": ROLES[role.lower()], "content": content or "", **extra})
    return messages


def conversation_rows(values: Sequence[Any]) -> tuple[list[int], list[int]]:
    """(positions of values that are conversations, positions of non-missing values that are not)."""
    conversations, others = [], []
    for position, value in enumerate(values):
        if is_missing(value):
            continue
        (conversations if as_conversation(value) is not None else others).append(position)
    return conversations, others


def split_final_turn(messages: list[dict]) -> tuple[list[dict], str | None]:
    """(the conversation before a final assistant turn, that turn's content) — or (messages, None)."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return messages, None


# -- the template ---------------------------------------------------------------------------------------------------
@dataclass
class Span:
    """Characters ``[start, end)`` of the rendered text that carry loss."""

    start: int
    end: int


@dataclass
class ChatFormat:
    """The chat template of a config and tokenizer: renders conversations, finds what carries loss, and knows the
    end-of-turn text."""

    tokenizer: Any
    template: str | None = None   # None: the tokenizer's own
    system_message: str | None = None
    last_turn_only: bool = False

    @classmethod
    def of(cls, config, tokenizer) -> ChatFormat:
        prompt = view.prompt(config)
        chosen = prompt.get("chat_template")
        template = chosen if isinstance(chosen, str) else None
        if template is None and not getattr(tokenizer, "chat_template", None):
            raise FwError("prompt.chat_template: true, but the base model's tokenizer has no chat template. Give "
                          "the template itself (Jinja text) in prompt.chat_template, or set it to false.")
        return cls(tokenizer, template, prompt.get("system_message"), prompt.get("train_on") == LAST_TURN)

    # -- rendering ----------------------------------------------------------------------------------------------
    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        except Exception as exc:  # a template's raise_exception, or a Jinja error
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            roles = "/".join(message["role"] for message in messages)
            raise FwError(f"prompt.chat_template: the chat template cannot render a conversation of "
                          f"{shown(roles, 80, quoted=False)} messages: {shown(first, 300, quoted=False)}") from None

    def messages(self, prompt: str, target: str | None = None) -> list[dict]:
        """The conversation of one row: its conversation (an input holding one) or the prompt as the user message;
        the system message first when set and the conversation has none; the target as the final assistant turn."""
        messages = as_conversation(prompt) or [{"role": "user", "content": prompt}]
        if self.system_message and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system_message}] + messages
        if target is not None:
            messages = messages + [{"role": "assistant", "content": target}]
        return messages

    def generation_prompt(self, messages: list[dict]) -> str:
        """The text the model continues to write the next assistant turn: exactly what training put before an
        assistant content (header, and any block the template inserts before the content)."""
        history, _ = split_final_turn(messages)
        probe = self.render(history + [{"role": "assistant", "content": SENTINEL}])
        if SENTINEL in probe:
            return probe[:probe.index(SENTINEL)]
        return self.render(history, add_generation_prompt=True)

    # -- what carries loss --------------------------------------------------------------------------------------
    @functools.cached_property
    def end_of_turn(self) -> str | None:
        """The text that closes an assistant turn, through its first special token (``<|im_end|>``), found by
        rendering one; None when the template writes none (fw then appends EOS to each trained turn)."""
        probe = self.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": SENTINEL}])
        after = probe[probe.index(SENTINEL) + len(SENTINEL):] if SENTINEL in probe else ""
        found = [(after.find(token), -len(token)) for token in special_tokens(self.tokenizer) if token in after]
        if not found:
            return None
        position, minus_length = min(found)
        return after[:position - minus_length]

    def stop_token_ids(self) -> list[int]:
        """Token ids that end a generated assistant turn: the end-of-turn token and the tokenizer's EOS."""
        ids = []
        if self.end_of_turn:
            closing = self.tokenizer.encode(self.end_of_turn.strip() or self.end_of_turn, add_special_tokens=False)
            ids += closing[-1:]
        eos = self.tokenizer.eos_token_id
        ids += list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
        return list(dict.fromkeys(ids))

    def segments(self, messages: list[dict]) -> list[tuple[str, bool]]:
        """The rendered conversation as ``(text, carries loss)`` pieces, in order."""
        text = self.render(messages)
        assistant_turns = [index for index, message in enumerate(messages) if message["role"] == "assistant"]
        if self.last_turn_only:
            assistant_turns = assistant_turns[-1:]
        pieces, position, appended = [], 0, self.end_of_turn is None
        for index in assistant_turns:
            span = self._span(messages, index, text, position)
            pieces += [(text[position:span.start], False), (text[span.start:span.end], True)]
            if appended:
                pieces.append((self.tokenizer.eos_token or "", True))
            position = span.end
        pieces.append((text[position:], False))
        return [(piece, trained) for piece, trained in pieces if piece]

    def _span(self, messages: list[dict], index: int, text: str, earliest: int) -> Span:
        """The trained characters of assistant turn ``index``: its content (from the header on when the message
        carries reasoning, or when the template rewrites the content) through the end-of-turn text."""
        anchor = self._anchor(messages, index, text, earliest)
        message, closing = messages[index], self.end_of_turn
        content = (message["content"] or "").strip()
        stop = text.find(closing, anchor) if closing else len(text)
        if stop < 0:
            raise FwError(f"prompt.chat_template: assistant turn {index + 1} of a conversation does not end with "
                          f"the template's end-of-turn text {shown(closing)}, so fw cannot tell which tokens to "
                          "train on.")
        found = text.find(content, anchor, stop) if content else stop
        if found < 0 and closing is None:
            raise FwError(f"prompt.chat_template: the template rewrites assistant turn {index + 1} "
                          f"({shown(content, 40)}) and closes it with no special token, so fw cannot tell which "
                          "tokens to train on.")
        start = anchor if self._has_reasoning(message) or found < 0 else found
        end = stop + len(closing) if closing else found + len(content)
        return Span(start, end)

    def _anchor(self, messages: list[dict], index: int, text: str, earliest: int) -> int:
        """Where assistant turn ``index`` starts in ``text``: the end of the conversation before it as rendered for
        generation (with what the template inserts before a final content, else with its plain generation
        header), when that is a prefix of ``text``; else the end of the previous turn."""
        for prefix in (self.generation_prompt(messages[:index]),
                       self.render(messages[:index], add_generation_prompt=True)):
            if text.startswith(prefix) and len(prefix) >= earliest:
                return len(prefix)
        previous = messages[index - 1]["content"].strip() if index else ""
        found = text.find(previous, earliest) if previous else -1
        return found + len(previous) if found >= 0 else earliest

    @staticmethod
    def _has_reasoning(message: dict) -> bool:
        return any(message.get(key) for key in REASONING_KEYS) or "<think>" in (message.get("content") or "")


def special_tokens(tokenizer) -> list[str]:
    """The tokenizer's special token strings, longest first."""
    names = set(getattr(tokenizer, "all_special_tokens", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    names |= {token.content for token in decoder.values() if getattr(token, "special", False)}
    return sorted((name for name in names if name), key=len, reverse=True)


# -- tokens ---------------------------------------------------------------------------------------------------------
#: attempts at fitting a conversation into the limits by cutting a message's text (re-rendering may shift a token)
FIT_ATTEMPTS = 6


@dataclass
class Tokens:
    """A rendered conversation as token ids, labels, and where its final trained turn starts."""

    input_ids: list[int]
    labels: list[int]
    prompt_length: int


class ChatEncoder:
    """Conversations -> :class:`fw.data.tokens.EncodedRow` under the config's length limits: whole earliest exchanges
    are dropped first (never the system message nor the final user / assistant turns), then the final assistant
    content's tail (global limit, keeping one token), then the last user message's tail."""

    def __init__(self, chat: ChatFormat, limits, report):
        self.chat, self.limits, self.report = chat, limits, report

    def ids(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self.chat.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]

    def tokens(self, messages: list[dict], training: bool) -> Tokens:
        from fw.data.tokens import IGNORE_INDEX

        if not training:
            ids = self.ids([self.chat.generation_prompt(messages)])[0]
            return Tokens(ids, [IGNORE_INDEX] * len(ids), len(ids))
        pieces = self.chat.segments(messages)
        input_ids, labels, final_start, previous_trained = [], [], None, False
        for (_, trained), ids in zip(pieces, self.ids([text for text, _ in pieces])):
            if trained and not previous_trained:
                final_start = len(input_ids)
            input_ids += ids
            labels += ids if trained else [IGNORE_INDEX] * len(ids)
            previous_trained = trained
        return Tokens(input_ids, labels, len(input_ids) if final_start is None else final_start)

    def encode(self, messages: list[dict], position: int, training: bool):
        from fw.data.tokens import EncodedRow

        cut, sides = False, set()
        if training and self.limits.output is not None:
            messages, cut = self._fit_output(messages)
            sides |= {"output"} if cut else set()
        dropped = 0
        for attempt in range(FIT_ATTEMPTS + len(messages)):
            tokens = self.tokens(messages, training)
            over_input = tokens.prompt_length - self.limits.input if self.limits.input is not None else 0
            over_total = len(tokens.input_ids) - self.limits.total if training and self.limits.total else 0
            if max(over_input, over_total) <= 0:
                break
            sides |= {"input"} if over_input > 0 else {"global"}
            if droppable(messages):
                messages, dropped = drop_earliest_exchange(messages), dropped + 1
                continue
            messages = self._cut(messages, over_input, over_total, attempt)
        else:
            raise FwError(f"row {position + 1}: the chat template's own text (system message, headers) does not fit "
                          "the length limits even with the messages cut to nothing; raise input_features[0]."
                          "preprocessing.max_sequence_length / preprocessing.global_max_sequence_length.")
        self._count(position, sides, dropped)
        return EncodedRow(input_ids=tokens.input_ids, labels=tokens.labels)

    def _fit_output(self, messages: list[dict]) -> tuple[list[dict], bool]:
        """The final assistant content cut so that it and its end-of-turn token fit the output limit."""
        if not messages or messages[-1]["role"] != "assistant":
            return messages, False
        closing = len(self.ids([self.chat.end_of_turn])[0]) if self.chat.end_of_turn else 1
        budget = max(1, self.limits.output - closing)
        if len(self.ids([messages[-1]["content"]])[0]) <= budget:
            return messages, False
        return cut_message(messages, len(messages) - 1, budget, self), True

    def _cut(self, messages: list[dict], over_input: int, over_total: int, attempt: int) -> list[dict]:
        """Cut the final response's tail (global limit; one token stays), else the last user message's tail."""
        extra = attempt  # each failed attempt cuts one token more: re-rendering may merge or split a token
        final = len(messages) - 1
        if over_total > 0 and over_input <= 0 and messages[final]["role"] == "assistant":
            length = len(self.ids([messages[final]["content"]])[0])
            if length > 1:
                return cut_message(messages, final, max(1, length - over_total - extra), self)
        users = [index for index, message in enumerate(messages) if message["role"] == "user"]
        user = users[-1] if users else max(index for index, message in enumerate(messages)
                                           if message["role"] != "assistant")
        length = len(self.ids([messages[user]["content"]])[0])
        return cut_message(messages, user, max(0, length - max(over_input, over_total) - extra), self)

    def _count(self, position: int, sides: set[str], dropped: int) -> None:
        report = self.report
        report.input_truncated += "input" in sides
        report.output_truncated += "output" in sides
        report.global_truncated += "global" in sides
        if dropped:
            report.rows_with_turns_dropped += 1
            report.turns_dropped += dropped
        if sides:
            report.truncated_rows.append(position)


def cut_message(messages: list[dict], index: int, keep: int, encoder: ChatEncoder) -> list[dict]:
    """``messages`` with message ``index`` cut to its first ``keep`` tokens."""
    ids = encoder.ids([messages[index]["content"]])[0][:keep]
    text = encoder.chat.tokenizer.decode(ids, skip_special_tokens=False) if ids else ""
    return messages[:index] + [{**messages[index], "content": text}] + messages[index + 1:]


def droppable(messages: list[dict]) -> bool:
    """Whether an earliest exchange can go: the conversation keeps a user message after it."""
    return sum(message["role"] == "user" for message in messages) > 1


def drop_earliest_exchange(messages: list[dict]) -> list[dict]:
    """``messages`` without the first user message and the turns after it, up to the next user message (system
    messages at the start stay)."""
    start = next(index for index, message in enumerate(messages) if message["role"] != "system")
    following = next(index for index in range(start + 1, len(messages)) if messages[index]["role"] == "user")
    return messages[:start] + messages[following:]


def encode(prompts: Sequence[str], targets: Sequence[str] | None, tokenizer, config, limits, report):
    """Rows of ``prompts`` (+ ``targets`` as the final assistant turns; None: inference rows) through the chat
    template, truncated turn-wise (see :class:`ChatEncoder`)."""
    chat = ChatFormat.of(config, tokenizer)
    encoder = ChatEncoder(chat, limits, report)
    training = targets is not None
    rows = []
    for position, prompt in enumerate(prompts):
        target = targets[position] if training else None
        messages = chat.messages(prompt, target if target or not ends_with_assistant(prompt) else None)
        rows.append(encoder.encode(messages, position, training))
    return rows


def ends_with_assistant(prompt: str) -> bool:
    conversation = as_conversation(prompt)
    return bool(conversation) and conversation[-1]["role"] == "assistant"


def generation_prompts(prompts: Sequence[str], tokenizer, config) -> list[str]:
    """The templated text each prompt's generation continues (what ``fw predict`` shows as the prompt)."""
    chat = ChatFormat.of(config, tokenizer)
    return [chat.generation_prompt(chat.messages(prompt)) for prompt in prompts]

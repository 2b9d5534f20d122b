"""The prompt: the text the model reads for one dataset row.

The spec's input modes, all handled by :class:`PromptRenderer`:

- **single column** (no ``prompt.template``, no ``prompt.task``): the input feature's column
  (``input_features[0].column``, else its ``name``), passed as-is;
- **template** with one or many ``{column}`` placeholders, replaced by the row's values. Besides dataset
  columns a template may use ``{__sample__}`` (the whole row: a JSON object of every column except the output
  and split columns, in dataset order, e.g. ``{"question": "Why?", "year": 2024}``), ``{__task__}``
  (``prompt.task``) and ``{__context__}`` (few-shot examples from retrieval). Literal braces are written
  ``{{`` and ``}}``, as in Python's ``str.format``; a format spec such as ``{price:.2f}`` formats the value;
- **task without template**: Ludwig's default zero-shot template :data:`DEFAULT_TASK_TEMPLATE` (or
  :func:`few_shot_template` when ``prompt.retrieval`` is set), so prompts match what Ludwig users know.

Missing values (None, NaN) render as an empty string. This module imports nothing heavy.
"""
from __future__ import annotations

import json
import math
import numbers
import string
from collections.abc import Iterable, Mapping
from typing import Any

from fw.config import view
from fw.errors import FwError, did_you_mean

SAMPLE, TASK, CONTEXT = "__sample__", "__task__", "__context__"
SPECIAL_FIELDS = (SAMPLE, TASK, CONTEXT)

#: used when ``prompt.task`` is set and ``prompt.template`` is not (Ludwig's zero-shot default)
DEFAULT_TASK_TEMPLATE = """SAMPLE INPUT: {__sample__}

USER: Complete the following task: {__task__}

ASSISTANT:
"""

#: used when ``prompt.task`` and ``prompt.retrieval`` are set and ``prompt.template`` is not (Ludwig's default, with
#: ``{how}`` saying how the examples were chosen: :func:`few_shot_template`)
DEFAULT_FEW_SHOT_TEMPLATE = """Below is relevant context:

CONTEXT: {{__context__}}

CONTEXT is comprised of labeled samples {how}. The labels in
these samples could aid you in your final prediction. Given this and no prior knowledge, follow the instructions
below.

SAMPLE INPUT: {{__sample__}}

USER: Complete the following task: {{__task__}}

ASSISTANT:
"""
#: how each built-in retriever chooses its examples, as the default few-shot template says it
CHOSEN = {"semantic": "whose embeddings were similar to that of the sample input",
          "random": "chosen at random from the training data"}


def few_shot_template(retriever: str) -> str:
    """The default few-shot template, saying truthfully how ``retriever`` chose the examples (Ludwig's text says
    "similar" whatever the retriever)."""
    return DEFAULT_FEW_SHOT_TEMPLATE.format(how=CHOSEN.get(retriever, f"chosen by the {retriever} retriever"))


# -- values ---------------------------------------------------------------------------------------
def is_missing(value: Any) -> bool:
    """None, NaN, pandas NA/NaT, or a string of only whitespace."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and math.isnan(value)


def as_text(value: Any) -> str:
    """A cell as the model sees it: text as-is, missing -> "", lists/dicts as JSON, anything else ``str``."""
    if isinstance(value, str):
        return value
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _plain(value: Any) -> Any:
    """numpy scalars/arrays -> Python values, missing -> None (so json.dumps writes numbers and null)."""
    if isinstance(value, (str, bytes)):
        return value
    if is_missing(value):
        return None
    return value.tolist() if hasattr(value, "tolist") else value


def sample_json(row: Mapping[str, Any], exclude: Iterable[str] = ()) -> str:
    """``{__sample__}``: the row's columns (minus ``exclude``) as one JSON object, in row order."""
    skipped = set(exclude)
    fields = {str(key): _plain(row[key]) for key in row.keys() if str(key) not in skipped}
    return json.dumps(fields, ensure_ascii=False, default=str)


def target_text(row: Mapping[str, Any], config) -> str:
    """The output column of ``row`` as text ("" when absent or missing), lower-cased when the output's
    ``preprocessing.lowercase`` says so."""
    column = view.output_column(config)
    text = as_text(row[column]) if column in row.keys() else ""
    return text.lower() if view.lowercase(config, "output_features") else text


# -- the renderer ---------------------------------------------------------------------------------
class PromptRenderer:
    """Renders the prompt of a row. ``columns`` are the dataset columns it names; ``uses_sample`` whether it
    also reads the whole row (``{__sample__}``)."""

    def __init__(self, config):
        prompt = view.prompt(config)
        self.task: str | None = prompt.get("task")
        self.input_column = view.input_column(config)
        self.excluded = {view.output_column(config), view.split_column(config)}
        self.template: str | None = prompt.get("template") or self._default_template(prompt)
        self.mode = "column" if self.template is None else ("template" if prompt.get("template") else "task")
        self._parts = self._parse(self.template) if self.template is not None else []
        fields = [name for _, name, _, _ in self._parts if name is not None]
        self.uses_sample = SAMPLE in fields
        named = [name for name in fields if name not in SPECIAL_FIELDS]
        self.columns: set[str] = {self.input_column} if self.mode == "column" else set(named)
        #: Ludwig lower-cases the whole rendered prompt (input_features[0].preprocessing.lowercase)
        self.lowercase = view.lowercase(config, "input_features")

    @staticmethod
    def _default_template(prompt: Mapping[str, Any]) -> str | None:
        if not prompt.get("task"):
            return None
        retrieval = (prompt.get("retrieval") or {}).get("type")
        return few_shot_template(retrieval) if retrieval else DEFAULT_TASK_TEMPLATE

    @staticmethod
    def _parse(template: str) -> list[tuple[str, str | None, str | None, str | None]]:
        try:
            parts = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise FwError(f"prompt.template is not a valid template: {exc}. Write literal braces as {{{{ and }}}}.") \
                from None
        if any(name == "" for _, name, _, _ in parts):
            raise FwError("prompt.template has an empty {} placeholder: name a dataset column inside the braces, "
                          "e.g. {question}, or write literal braces as {{ and }}.")
        return parts

    # -- columns ----------------------------------------------------------------------------------
    def input_columns(self, frame_columns: Iterable[Any]) -> list[str]:
        """The columns whose values make up the input text of a row of a dataset with ``frame_columns``."""
        available = [str(column) for column in frame_columns]
        if self.uses_sample:
            return [c for c in available if c in self.columns or c not in self.excluded]
        return [c for c in available if c in self.columns]

    def check_columns(self, frame_columns: Iterable[Any]) -> None:
        """Raise FwError when the prompt names a column the dataset does not have."""
        available = [str(column) for column in frame_columns]
        missing = sorted(self.columns - set(available))
        if not missing:
            return
        listing = ", ".join(available)
        hint = did_you_mean(missing[0], available)
        if self.mode == "column":
            raise FwError(f"input_features[0] reads column '{missing[0]}' that the dataset does not have. "
                          f"Columns: {listing}.{hint} To build the input from other columns, set prompt.template, "
                          "e.g. '{question}'.")
        names = ", ".join(f"'{name}'" for name in missing)
        noun = "column" if len(missing) == 1 else "columns"
        raise FwError(f"prompt.template names {noun} {names} that the dataset does not have. "
                      f"Columns: {listing}.{hint}")

    # -- rendering --------------------------------------------------------------------------------
    def render(self, row: Mapping[str, Any], context: str | None = None) -> str:
        """The prompt for ``row`` (a dict or a pandas Series); ``context`` fills ``{__context__}``."""
        keys = [str(key) for key in row.keys()]
        self.check_columns(keys)
        if self.mode == "column":
            text = as_text(row[self.input_column])
        else:
            pieces = []
            for literal, name, spec, conversion in self._parts:
                pieces.append(literal)
                if name is not None:
                    pieces.append(self._field(row, name, spec, conversion, context))
            text = "".join(pieces)
        return text.lower() if self.lowercase else text

    def _field(self, row: Mapping[str, Any], name: str, spec: str | None, conversion: str | None,
               context: str | None) -> str:
        if name == SAMPLE:
            value: Any = sample_json(row, self.excluded)
        elif name == TASK:
            value = self.task or ""
        elif name == CONTEXT:
            value = context or ""
        else:
            value = row[name]
        if conversion:
            value = string.Formatter().convert_field(_plain(value), conversion)
        return _formatted(value, spec, name) if spec else as_text(value)


def _formatted(value: Any, spec: str, name: str) -> str:
    """``format(value, spec)``; text that holds a number is formatted as the number (``{price:.2f}``)."""
    value = _plain(value)
    if value is None:
        return ""
    for convert in (lambda v: v, int, float):
        try:
            return format(convert(value), spec)
        except (ValueError, TypeError):
            continue
    raise FwError(f"prompt.template: cannot format {value!r} of column '{name}' with format spec '{spec}'.")

"""Few-shot retrieval (``prompt.retrieval``): k examples from the training split rendered into ``{__context__}``.

- **Examples** come from the *training split only*. Each is one line of JSON holding the row's input columns and
  its output (the labelled samples Ludwig's default few-shot template talks about), e.g.
  ``{"review": "great film", "label": "positive"}``; the context is those lines joined by newlines.
- **The index** is built by the retriever plugin (``random``, ``semantic``, or a third-party one) over each
  training row's input text, in ``<cache>/retrieval/<index_name or type>-<key>/`` where the key hashes the
  examples, the retriever type and its model: the next run on the same data reuses it (nothing is embedded
  again). ``fw train`` copies it into ``<model>/retrieval/``, so ``fw predict --model_path`` on new data draws on
  the same examples; with ``--config`` (``trainer.type: none``) the training split of the given dataset is used.
- **No leakage**: a row never gets itself as an example (any example identical to the row, input and output,
  is skipped), so training rows do not see their own answer.
- **Budget**: when a prompt would exceed the input token budget (``input_features[0].preprocessing.
  max_sequence_length``, else ``preprocessing.global_max_sequence_length`` minus the output's), fewer examples
  are used for that row, and one warning says how many rows were affected.

The plugin contract (``RetrieverPlugin.build_index``): ``build_index(params, texts, directory) -> index``, where
``params`` is the ``prompt.retrieval`` section plus ``seed`` (``trainer.seed``), ``texts`` the input text of
each training row, and ``directory`` where the index keeps its files (load them when present, else build and
write them); ``index.query(texts, k, exclude) -> list[list[int]]`` gives for each query text up to ``k``
example positions, best first, never one in that query's ``exclude`` set.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fw import console
from fw.atomic import atomic_directory
from fw.config import view
from fw.data.prompt import PromptRenderer, as_text, sample_json
from fw.data.tokens import Limits
from fw.errors import FwError
from fw.plugin import get_registry, resolve
from fw.plugin.discovery import cache_dir

INDEX_VERSION = 1
EXAMPLES_FILE = "examples.json"
META_FILE = "meta.json"
#: where the index is saved inside a trained model's directory
MODEL_SUBDIR = "retrieval"


@dataclass
class Retriever:
    """A built (or loaded) index and the examples it points into."""

    params: dict
    #: the context line of each training row (what the prompt shows)
    examples: list[str]
    #: the input text of each training row (what the index compares)
    texts: list[str]
    index: Any
    directory: Path
    #: example line -> positions, to skip a row's own copy
    positions: dict[str, list[int]] = field(default_factory=dict, repr=False)
    warned_k: bool = field(default=False, repr=False)

    def __post_init__(self):
        for position, line in enumerate(self.examples):
            self.positions.setdefault(line, []).append(position)


# -- the config --------------------------------------------------------------------------------------------------
def index_params(data: dict, retrieval: dict) -> dict:
    """What the plugin gets: the section plus ``seed``, localized by the plugin (a local model made absolute)."""
    params = {**retrieval, "seed": view.seed(data)}
    localize = retriever_of(params).localize_params
    return resolve(localize)(params) if localize else params


def retriever_of(params: dict):
    return get_registry().get("retriever", params["type"])


# -- rows as examples and queries --------------------------------------------------------------------------------
def example_line(renderer: PromptRenderer, row: Mapping[str, Any], data: dict) -> str:
    """The row as a labelled sample: its input columns and its output (when present) as one JSON object."""
    keys = [str(key) for key in row.keys()]
    columns = renderer.input_columns(keys)
    target = view.output_column(data)
    wanted = set(columns) | ({target} if target in keys else set())
    return sample_json({key: row[key] for key in keys if key in wanted})


def query_text(renderer: PromptRenderer, row: Mapping[str, Any]) -> str:
    """The text the index compares: the input column's text, or the input columns as JSON when several."""
    columns = renderer.input_columns([str(key) for key in row.keys()])
    if len(columns) == 1:
        return as_text(row[columns[0]])
    return sample_json({column: row[column] for column in columns})


# -- building, caching, saving -----------------------------------------------------------------------------------
def prepare(data: dict, train_frame) -> Retriever | None:
    """The retriever over ``train_frame`` (the cleaned training split), from the cache when it was built
    before for the same examples, retriever and model. None when retrieval is off."""
    retrieval = view.retrieval(data)
    if retrieval is None:
        return None
    if train_frame is None or not len(train_frame):
        raise FwError("prompt.retrieval: the training split has no rows, so there are no examples to retrieve. "
                      "Give training data (--dataset with training rows, or --training_set).")
    renderer = PromptRenderer(data)
    rows = train_frame.to_dict("records")
    examples = [example_line(renderer, row, data) for row in rows]
    texts = [query_text(renderer, row) for row in rows]
    params = index_params(data, retrieval)
    return _cached(params, examples, texts, index_directory(params, examples, texts, view.cache_dir(data)))


def index_key(params: dict, examples: Sequence[str], texts: Sequence[str]) -> str:
    """Hash of the examples, the retriever type and its model: the same key means the same index."""
    digest = hashlib.sha256(json.dumps([INDEX_VERSION, params["type"], params.get("model_name")]).encode())
    for line, text in zip(examples, texts):
        digest.update(line.encode("utf-8") + b"\0" + text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def index_directory(params: dict, examples: Sequence[str], texts: Sequence[str], cache: Path | None = None) -> Path:
    """``<cache>/retrieval/<index_name or type>-<key>``; ``cache``: ``backend.cache_dir``, else fw's cache."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", params.get("index_name") or params["type"]).strip("._") or "index"
    return (cache or cache_dir()) / "retrieval" / f"{name}-{index_key(params, examples, texts)[:16]}"


def _cached(params: dict, examples: list[str], texts: list[str], directory: Path) -> Retriever:
    if (directory / META_FILE).is_file():
        console.info(f"retrieval: reusing the {params['type']} index of {len(examples)} training rows at {directory}")
        return Retriever(params, examples, texts, build(params, texts, directory), directory)
    with atomic_directory(directory, replace=False) as building:  # built meanwhile by another run: keep that one
        index = build(params, texts, building)
        (building / EXAMPLES_FILE).write_text(json.dumps({"examples": examples, "texts": texts}), encoding="utf-8")
        meta = {"version": INDEX_VERSION, "params": params, "rows": len(examples)}
        (building / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    console.info(f"retrieval: built the {params['type']} index of {len(examples)} training rows at {directory}")
    return Retriever(params, examples, texts, index, directory)


def build(params: dict, texts: list[str], directory: Path):
    """The plugin's index over ``texts`` kept in ``directory``."""
    return resolve(retriever_of(params).build_index)(params, texts, directory)


def load(directory: Path, data: dict) -> Retriever:
    """A retriever saved by :func:`prepare` / :func:`save_with_model`; ``k`` still comes from ``data``."""
    meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    stored = json.loads((directory / EXAMPLES_FILE).read_text(encoding="utf-8"))
    params = {**meta["params"], "k": (view.retrieval(data) or {}).get("k", meta["params"].get("k"))}
    return Retriever(params, stored["examples"], stored["texts"], build(params, stored["texts"], directory),
                     directory)


def save_with_model(retriever: Retriever | None, model_dir: Path) -> None:
    """Copy the index into ``<model_dir>/retrieval`` so predictions from the saved model use the same examples."""
    if retriever is None:
        return
    target = Path(model_dir) / MODEL_SUBDIR
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(retriever.directory, target)


def for_inference(data: dict, model_dir: Path | None = None, dataset=None) -> Retriever | None:
    """The retriever for ``fw predict`` / ``fw evaluate``: the one saved with the model in ``model_dir``, else
    one over the training split of ``dataset`` (in-context learning with ``--config``)."""
    if view.retrieval(data) is None:
        return None
    if model_dir is not None:
        saved = Path(model_dir) / MODEL_SUBDIR
        if (saved / META_FILE).is_file():
            return load(saved, data)
        console.warn(f"prompt.retrieval: the model at {model_dir} was saved without its retrieval index "
                     f"(no {MODEL_SUBDIR}/ folder); the examples come from the training split of the given dataset.")
    return prepare(data, training_split(data, dataset))


def training_split(data: dict, dataset):
    """The cleaned training split of ``dataset``: the examples for in-context learning."""
    from fw.data.tables import clean, make_splits, read_table

    if dataset is None:
        raise FwError("prompt.retrieval: no data to draw examples from: pass --dataset.")
    frame = dataset if hasattr(dataset, "columns") else read_table(dataset)
    target = view.output_column(data)
    if target not in frame.columns:
        raise FwError(f"prompt.retrieval: the examples come from the training split of the dataset, which has no "
                      f"'{target}' column to show as their answers. Give a labelled dataset, or a model trained "
                      "with retrieval (fw train saves its examples with it).")
    return clean(make_splits(data, dataset=frame).train, data, "train")


# -- prompts -----------------------------------------------------------------------------------------------------
def few_shot_prompts(renderer: PromptRenderer, rows: list[dict], retriever: Retriever, data: dict,
                     tokenizer=None, split_name: str = "predict") -> list[str]:
    """The prompt of each row with up to ``k`` retrieved examples in ``{__context__}`` (fewer for rows whose
    prompt would exceed the input budget; see :func:`input_budget`)."""
    k = requested_k(retriever)
    exclude = [set(retriever.positions.get(example_line(renderer, row, data), ())) for row in rows]
    picks = retriever.index.query([query_text(renderer, row) for row in rows], k, exclude)
    budget, source = input_budget(data, tokenizer)
    prompts, shortened = [], []
    for row, picked in zip(rows, picks):
        prompt, used = fitted_prompt(renderer, row, [retriever.examples[p] for p in picked], tokenizer, budget)
        prompts.append(prompt)
        if used < len(picked):
            shortened.append(used)
    if shortened:
        console.warn(f"prompt.retrieval.k: {len(shortened)} of {len(rows)} {split_name} prompt(s) would exceed the "
                     f"{budget}-token input budget ({source}) with k={k} examples, so they got fewer (as few as "
                     f"{min(shortened)}). Raise {source} or lower prompt.retrieval.k.")
    return prompts


def requested_k(retriever: Retriever) -> int:
    """``k``, capped at the number of training rows (with one warning per retriever)."""
    k, size = int(retriever.params.get("k") or 0), len(retriever.examples)
    if k > size and not retriever.warned_k:
        retriever.warned_k = True
        console.warn(f"prompt.retrieval.k is {k} but the training split has only {size} row(s): each prompt gets at "
                     f"most {size} example(s) (a training row never gets itself). Lower prompt.retrieval.k or give "
                     "more training rows.")
    return min(k, size)


def fitted_prompt(renderer: PromptRenderer, row: Mapping[str, Any], examples: list[str], tokenizer,
                  budget: int | None) -> tuple[str, int]:
    """(prompt, examples used): the most examples, best first, that keep the prompt within ``budget`` tokens."""
    for used in range(len(examples), -1, -1):
        prompt = renderer.render(row, context="\n".join(examples[:used]))
        if budget is None or tokenizer is None or used == 0 or prompt_tokens(prompt, tokenizer) <= budget:
            return prompt, used
    raise AssertionError("unreachable")


def prompt_tokens(prompt: str, tokenizer) -> int:
    """Tokens of the prompt as fw.data.tokens counts them (BOS included when the tokenizer adds one)."""
    return len(tokenizer(prompt, add_special_tokens=True, verbose=False)["input_ids"])


def input_budget(data: dict, tokenizer) -> tuple[int | None, str]:
    """(tokens a prompt may take, the config key that sets it): the input feature's max_sequence_length,
    else the global limit minus the output's, else the tokenizer's context. (None, "") without a limit."""
    if tokenizer is None:
        return None, ""
    limits = Limits.from_config(data, tokenizer)
    if limits.input is not None:
        return limits.input, "input_features[0].preprocessing.max_sequence_length"
    if limits.total is None:
        return None, ""
    source = "preprocessing.global_max_sequence_length" if view.global_max_sequence_length(data) \
        else "the model's context"
    return max(1, limits.total - (limits.output or 0)), source

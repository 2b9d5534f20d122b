"""Datasets: reading a table, splitting it into training/validation/test, and cleaning rows.

Row numbers. Every frame keeps as its index the 0-based position of each row in the file (or DataFrame) it
came from, through sampling, splitting and cleaning, so messages can name rows as the user sees them:
``row 3`` is the third data row (the header line is not counted).

Reading. CSV and TSV cells are read as text, exactly as written (``0042`` stays ``0042``); only empty cells
are missing values (``NA`` or ``None`` are ordinary text), and a blank line is a row of empty cells, so row
numbers match the file's lines (row N is line N + 1). JSON (records or JSON lines), JSONL and Parquet keep
their own types. A compression suffix after the format (``.csv.gz``) is understood.

What a file must be. A CSV whose header has one column under its extension's delimiter but several under another
(``;``, tab, ``|``, ``,``) is read with that one, and fw says so. Column names are unique: pandas would rename a
second ``text`` to ``text.1``, so fw refuses it instead. A JSON or JSON Lines syntax error names its line.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fw import console
from fw.config import view
from fw.data.prompt import PromptRenderer, as_text, is_missing
from fw.errors import FwError, did_you_mean, shown
from fw.plugin.models import library_message

SPLIT_NAMES = ("train", "validation", "test")
#: splits whose rows are trained on: a missing text target drops the row there
TRAINING_SPLITS = ("train", "validation")
#: what ``clean`` prepares rows for where each row needs a target (fw evaluate scores against it)
NEEDS_TARGET = (*TRAINING_SPLITS, "evaluate")
DELIMITERS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
COMPRESSIONS = (".gz", ".bz2", ".zip", ".xz", ".zst")
SPLIT_VALUES = {"0": 0, "train": 0, "training": 0, "1": 1, "validation": 1, "val": 1, "valid": 1,
                "2": 2, "test": 2, "testing": 2}
SHOWN_ROWS = 10


# -- reading ----------------------------------------------------------------------------------------
def _read_csv(path: Path, sep: str = ",") -> pd.DataFrame:
    header = _header(path, sep)
    if len(header) == 1:
        sep, header = _fitting_delimiter(path, sep, header)
    _refuse_duplicate_columns(header, str(path))
    return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""], skip_blank_lines=False)


def _header(path: Path, sep: str) -> list[str]:
    """The column names as written on the first line (pandas would rename repeated ones)."""
    first = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False)
    return [str(name) for name in first.iloc[0]]


def _fitting_delimiter(path: Path, sep: str, header: list[str]) -> tuple[str, list[str]]:
    """(delimiter, header): another delimiter when the header splits into several columns on it and not on
    the extension's (a semicolon-separated .csv); else the extension's."""
    for other in DELIMITERS:
        if other != sep and len(columns := _header(path, other)) > 1:
            console.info(f"data: {path.name} is {DELIMITERS[other]}-separated (its header has no "
                         f"{DELIMITERS[sep]}); reading it with {DELIMITERS[other]}s")
            return other, columns
    return sep, header


def _refuse_duplicate_columns(columns: list[str], name: str) -> None:
    positions: dict[str, list[int]] = {}
    for position, column in enumerate(columns, start=1):
        positions.setdefault(column, []).append(position)
    repeated = {column: where for column, where in positions.items() if len(where) > 1}
    if repeated:
        listed = "; ".join(f"'{shown(column, 40, quoted=False)}' (columns {', '.join(map(str, where[:-1]))} and "
                           f"{where[-1]})" for column, where in repeated.items())
        raise FwError(f"dataset {name} has more than one column named {listed}. Give each column its own name.")


def _read_tsv(path: Path) -> pd.DataFrame:
    return _read_csv(path, sep="\t")


#: values as written: no dtype guessing, no date parsing (pandas 3 ties date parsing to dtype and deprecates the flag)
_JSON_OPTIONS: dict[str, Any] = {"dtype": False} if int(pd.__version__.split(".")[0]) >= 3 else \
    {"dtype": False, "convert_dates": False}


def _read_json(path: Path) -> pd.DataFrame:
    try:
        return pd.read_json(path, **_JSON_OPTIONS)
    except ValueError:  # a .json file holding JSON lines
        return _read_jsonl(path)


def _read_jsonl(path: Path) -> pd.DataFrame:
    try:
        return pd.read_json(path, lines=True, **_JSON_OPTIONS)
    except ValueError as exc:  # pandas names a byte position: find the line
        raise ValueError(_json_syntax_error(path) or str(exc)) from None


def _json_syntax_error(path: Path) -> str | None:
    """``line 3, column 27: Expecting value`` for the first syntax error of a JSON or JSON Lines file (None when
    its syntax is fine, or it cannot be read as text)."""
    from pandas.io.common import get_handle

    try:
        with get_handle(path, "r", compression="infer", encoding="utf-8") as handle:
            text = handle.handle.read()
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    lines = text.splitlines()
    written = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if len(written) > 1 and _parses(written[0][1]):  # JSON Lines
        for number, line in written:
            try:
                json.loads(line)
            except json.JSONDecodeError as exc:
                return f"line {number}, column {exc.colno}: {exc.msg}"
        return None
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
    return None


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _read_parquet(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


READERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    ".csv": _read_csv, ".tsv": _read_tsv, ".json": _read_json, ".jsonl": _read_jsonl, ".parquet": _read_parquet,
}
SUPPORTED = tuple(READERS)


def file_format(path: str | os.PathLike[str]) -> str:
    """The format suffix of ``path`` (``.csv`` for ``data.csv.gz``), lower-case; "" when there is none."""
    suffixes = [suffix.lower() for suffix in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def read_table(source: Any) -> pd.DataFrame:
    """A dataset as a DataFrame: ``source`` is a path (.csv .tsv .json .jsonl .parquet) or a DataFrame (copied).

    The index is reset to the 0-based row position and column names become strings."""
    if isinstance(source, pd.DataFrame):
        frame, name = source.copy(), "the DataFrame"
    elif isinstance(source, (str, os.PathLike)):
        frame, name = _read_file(Path(source)), str(source)
    else:
        raise FwError(f"cannot read a dataset from a {type(source).__name__}: give a file path "
                      f"({', '.join(SUPPORTED)}) or a pandas DataFrame.")
    frame = frame.reset_index(drop=True)
    frame.columns = [str(column) for column in frame.columns]
    _refuse_duplicate_columns(list(frame.columns), name)
    if frame.empty:
        raise FwError(f"dataset {name} has no rows.")
    return frame


def _read_file(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FwError(f"dataset file not found: {path}")
    if path.is_dir():
        raise FwError(f"dataset {path} is a directory; give a file ({', '.join(SUPPORTED)}).")
    kind = file_format(path)
    if kind not in READERS:
        shown = f"'{kind}'" if kind else "(no suffix)"
        raise FwError(f"cannot read dataset {path}: unsupported file type {shown}. "
                      f"Supported: {', '.join(SUPPORTED)}.{did_you_mean(kind, SUPPORTED) if kind else ''}")
    try:
        return READERS[kind](path)
    except pd.errors.EmptyDataError:
        raise FwError(f"dataset file {path} is empty.") from None
    except FwError:
        raise
    except Exception as exc:  # any parser failure becomes one line naming the file
        raise FwError(f"cannot read dataset {path} as {kind[1:].upper()}: {library_message(exc)}") from None


# -- splitting --------------------------------------------------------------------------------------
@dataclass
class Splits:
    """The three splits (each possibly empty), indexed by row position in their source."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        return [(name, getattr(self, name)) for name in SPLIT_NAMES]

    def sizes(self) -> dict[str, int]:
        return {name: len(frame) for name, frame in self.items()}


def make_splits(config, dataset: Any = None, training_set: Any = None, validation_set: Any = None,
                test_set: Any = None) -> Splits:
    """``dataset`` split as ``preprocessing.split`` says (:data:`SPLITTERS`), or the explicit sets as given.

    ``preprocessing.sample_ratio`` < 1 / ``sample_size`` keep a seeded sample of every source."""
    explicit = {"train": training_set, "validation": validation_set, "test": test_set}
    given = {name: source for name, source in explicit.items() if source is not None}
    if dataset is not None and given:
        raise FwError("give either --dataset (split automatically) or --training_set/--validation_set/--test_set, "
                      "not both.")
    if dataset is None and not given:
        raise FwError("no data given: pass --dataset, or --training_set (optionally with --validation_set and "
                      "--test_set).")
    if dataset is not None:
        splits = _split(_sampled(read_table(dataset), config, _name(dataset)), config, _name(dataset))
    else:
        frames = {name: _sampled(read_table(source), config, _name(source)).sort_index()
                  for name, source in given.items()}
        empty = next(iter(frames.values())).iloc[0:0]
        splits = Splits(**{name: frames.get(name, empty) for name in SPLIT_NAMES})
    sizes = splits.sizes()
    console.info(f"data: {sizes['train']} training, {sizes['validation']} validation, {sizes['test']} test rows")
    return splits


def _name(source: Any) -> str:
    return "the DataFrame" if isinstance(source, pd.DataFrame) else str(source)


def _sampled(frame: pd.DataFrame, config, name: str) -> pd.DataFrame:
    """``sample_ratio`` / ``sample_size`` as Ludwig draws them (``DataFrame.sample`` with the seed); the rows stay
    in the drawn order, which the random split then shuffles, so both give Ludwig's rows."""
    ratio, size, seed = view.sample_ratio(config), view.sample_size(config), view.seed(config)
    if ratio < 1:
        sampled = frame.sample(frac=ratio, random_state=seed)
        if sampled.empty:
            raise FwError(f"preprocessing.sample_ratio: {ratio:g} keeps no row of the {len(frame)} in {name}; "
                          "raise it.")
        frame = sampled
    if size is not None:
        if size >= len(frame):
            console.warn(f"preprocessing.sample_size: {size} is not below the {len(frame)} rows of {name}; all are "
                        "used.")
        elif size == 0:
            raise FwError(f"preprocessing.sample_size: 0 keeps no row of {name}; raise it.")
        else:
            frame = frame.sample(frac=size / len(frame), random_state=seed)
    return frame


def _split(frame: pd.DataFrame, config, name: str) -> Splits:
    """``preprocessing.split`` applied to ``frame`` (see :data:`SPLITTERS`)."""
    settings = view.split_settings(config)
    kind, column = settings["type"], view.split_column(config)
    if kind == "fixed":
        if column not in frame.columns:
            raise FwError(f"preprocessing.split.type is fixed, but dataset {name} has no column '{column}'. "
                          f"Columns: {', '.join(frame.columns)}.{did_you_mean(column, frame.columns)} Add the column "
                          "(0/train, 1/validation, 2/test) or set preprocessing.split.column.")
        return _split_by_column(frame, column, name)
    if kind == "random" and "split" in frame.columns:
        console.warn(f"dataset {name} has a 'split' column, but preprocessing.split.type is random (Ludwig's "
                    "default): the rows are split at random. Set preprocessing.split.type: fixed to use the column.")
    if kind != "random" and column not in frame.columns:
        raise FwError(f"preprocessing.split.column: dataset {name} has no column '{column}' to split on. "
                      f"Columns: {', '.join(frame.columns)}.{did_you_mean(column, frame.columns)}")
    codes = SPLITTERS[kind](frame, settings["probabilities"], view.seed(config), column)
    return Splits(*(frame[codes == code].sort_index() for code in (0, 1, 2)))


def split_code(value: Any) -> int | None:
    """0/1/2 for a split value (0, 1, 2 or train/validation/test, any case); None when it is not one."""
    if isinstance(value, (bool, np.bool_)) or is_missing(value):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)) and float(value).is_integer():
        value = int(value)
    return SPLIT_VALUES.get(str(value).strip().lower())


def _split_by_column(frame: pd.DataFrame, column: str, name: str) -> Splits:
    codes = pd.Series([split_code(value) for value in frame[column]], index=frame.index, dtype=object)
    bad = codes.isna()
    if bad.any():
        shown = ", ".join(f"row {index + 1} ({_shown_value(frame.at[index, column])})"
                          for index in frame.index[bad][:SHOWN_ROWS // 2])
        more = f" and {bad.sum() - SHOWN_ROWS // 2} more" if bad.sum() > SHOWN_ROWS // 2 else ""
        raise FwError(f"column '{column}' of {name} must hold 0/1/2 or train/validation/test; {bad.sum()} row(s) "
                      f"do not: {shown}{more}.")
    kept = frame.drop(columns=[column])
    return Splits(*(kept[codes == code] for code in (0, 1, 2)))


def _shown_value(value: Any) -> str:
    return "empty" if is_missing(value) else shown(value.item() if hasattr(value, "item") else value, 40)


#: Ludwig drops a validation or test split smaller than this (its rows go to training), as fw does
MIN_SPLIT_ROWS = 3


def _divisions(count: int, probabilities: list[float]) -> tuple[int, int]:
    """Where Ludwig cuts ``count`` shuffled rows into training / validation / test."""
    first = int(math.ceil(probabilities[0] * count))
    second = first + int(probabilities[1] * count) if probabilities[2] > 0 else count
    sizes = [first, second - first, count - second]
    if 0 < sizes[2] < MIN_SPLIT_ROWS and sizes[0] > 0:  # too small a test split: take rows from training
        shift = min(MIN_SPLIT_ROWS - sizes[2], sizes[0])
        first, second = first - shift, second - shift
    if 0 < sizes[1] < MIN_SPLIT_ROWS and sizes[0] > 0:
        first -= min(MIN_SPLIT_ROWS - sizes[1], first)
    return first, second


def _codes(size: int, divisions: tuple[int, int]) -> np.ndarray:
    """0/1/2 for ``size`` ordered rows cut at ``divisions``."""
    codes = np.full(size, 2)
    codes[:divisions[1]] = 1
    codes[:divisions[0]] = 0
    return codes


def random_codes(frame: pd.DataFrame, probabilities: list[float], seed: int, column: str | None = None) -> pd.Series:
    """Ludwig's random split: the rows shuffled by ``DataFrame.sample(frac=1, random_state=seed)``, then cut."""
    shuffled = frame.sample(frac=1, random_state=seed).index
    return pd.Series(_codes(len(frame), _divisions(len(frame), probabilities)), index=shuffled).reindex(frame.index)


def stratified_codes(frame: pd.DataFrame, probabilities: list[float], seed: int, column: str) -> pd.Series:
    """Every value of ``column`` split in the same proportions (a value seen once goes to training, as in
    Ludwig; the rows are fw's own draw, Ludwig draws with scikit-learn)."""
    codes = pd.Series(0, index=frame.index)
    for _, group in frame.groupby(frame[column].map(as_text), sort=True):
        if len(group) > 1:
            shuffled = group.sample(frac=1, random_state=seed).index
            cut = _stratum_divisions(len(group), probabilities)
            codes[shuffled] = _codes(len(group), cut)
    return codes


def _stratum_divisions(count: int, probabilities: list[float]) -> tuple[int, int]:
    first = int(round(probabilities[0] * count))
    return first, first + int(round(probabilities[1] * count))


def hashed_codes(frame: pd.DataFrame, probabilities: list[float], seed: int, column: str) -> pd.Series:
    """Ludwig's hash split: each row's split follows from a hash of its ``column`` value alone, so an id keeps
    its split when rows are added (the hash is Ludwig's: crc32 of the base64 MD5 of ``{"value": value}``)."""
    top = 2 ** 32
    thresholds = (probabilities[0] * top, (probabilities[0] + probabilities[1]) * top)

    def code(value: Any) -> int:
        text = json.dumps({"value": _json_value(value)}, sort_keys=True, ensure_ascii=True)
        digest = zlib.crc32(base64.b64encode(hashlib.md5(text.encode()).digest(), altchars=b"__"))
        return 0 if digest < thresholds[0] else 1 if digest < thresholds[1] else 2

    return frame[column].map(code)


def _json_value(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def datetime_codes(frame: pd.DataFrame, probabilities: list[float], seed: int, column: str) -> pd.Series:
    """Oldest rows first: training, then validation, then test (the rows beyond Ludwig's rounded-down cuts go
    to test; Ludwig drops them)."""
    dates = pd.to_datetime(frame[column].map(as_text), errors="coerce")
    if dates.isna().any():
        bad = frame.index[dates.isna()]
        raise FwError(f"preprocessing.split.column '{column}' must hold dates; {len(bad)} row(s) do not: "
                      f"{row_numbers(bad)}.")
    ordered = dates.sort_values(kind="stable").index
    count = len(frame)
    first = int(probabilities[0] * count)
    cuts = (first, first + int(probabilities[1] * count))
    return pd.Series(_codes(count, cuts), index=ordered).reindex(frame.index)


#: ``preprocessing.split.type`` -> the 0/1/2 code of every row (fixed reads the column: _split_by_column)
SPLITTERS: dict[str, Callable[..., pd.Series]] = {
    "random": random_codes, "stratify": stratified_codes, "hash": hashed_codes, "datetime": datetime_codes}


# -- cleaning ---------------------------------------------------------------------------------------
def row_numbers(index: Iterable[int]) -> str:
    """``row 3`` / ``rows 3, 7, 12`` (1-based), the first few only."""
    numbers = [int(position) + 1 for position in index]
    shown = ", ".join(str(number) for number in numbers[:SHOWN_ROWS])
    more = f" and {len(numbers) - SHOWN_ROWS} more" if len(numbers) > SHOWN_ROWS else ""
    return f"row{'s' if len(numbers) > 1 else ''} {shown}{more}"


def require_target_column(frame: pd.DataFrame, config, split_name: str) -> None:
    """Raise FwError when the output feature's column is missing from ``frame``."""
    column = view.output_column(config)
    if column not in frame.columns:
        unlabeled = " Use fw predict for unlabeled data." if split_name == "evaluate" else ""
        raise FwError(f"output_features[0] reads column '{column}' that the {split_name} data does not have. "
                      f"Columns: {', '.join(map(str, frame.columns))}.{did_you_mean(column, frame.columns)}"
                      f"{unlabeled}")


def clean(frame: pd.DataFrame, config, split_name: str) -> pd.DataFrame:
    """``frame`` ready to render: prompt columns checked, rows with no input text dropped (with a warning),
    missing category outputs filled with ``fallback_label`` (every split, with a warning) or else dropped (not
    in predict), missing text targets dropped in the training splits (train, validation).

    ``split_name``: train, validation, test, predict (rows that need no target; never dropped for one), or evaluate
    (rows scored against their target: dropped without one, as in training)."""
    renderer = PromptRenderer(config)
    renderer.check_columns(frame.columns)
    frame = conversation_targets(frame, renderer, config)
    if split_name in NEEDS_TARGET:
        require_target_column(frame, config, split_name)
    if frame.empty:
        return frame.copy()
    cleaned = _drop_rows_without_input(frame, renderer, split_name, config)
    if view.output_column(config) in cleaned.columns:
        cleaned = _fill_or_drop_missing_targets(cleaned, config, split_name)
    if cleaned.empty:
        raise FwError(f"no {split_name} rows left: all {len(frame)} were dropped (see the warnings above).")
    return cleaned


def conversation_targets(frame: pd.DataFrame, renderer: PromptRenderer, config) -> pd.DataFrame:
    """An input column holding conversations (``prompt.chat_template``): a final assistant turn becomes the row's
    target (the output column, created when the data has none) and the column keeps the conversation before it
    as JSON text. Without a chat template such a column is passed as JSON text, and one line says so."""
    from fw.data.chat import as_conversation, conversation_rows, split_final_turn, uses_chat_template

    column = renderer.input_column
    if renderer.mode != "column" or column not in frame.columns or frame.empty:
        return frame
    conversations, others = conversation_rows(list(frame[column]))
    if not conversations:
        return frame
    if not uses_chat_template(config):
        console.info(f"column '{column}' holds conversations; without prompt.chat_template they reach the model as "
                     "JSON text (as in Ludwig). Set prompt.chat_template: true to train and prompt them as chats.")
        return frame
    if others:
        raise FwError(f"column '{column}' holds conversations, but {row_numbers(frame.index[others])} hold(s) none "
                      "(a list of role/content or from/value messages, or JSON text of one).")
    target = view.output_column(config)
    frame = frame.copy()
    given = frame[target].map(lambda value: not is_missing(value)) if target in frame.columns else \
        pd.Series(False, index=frame.index)
    histories, finals = [], []
    for index, value in frame[column].items():
        messages = as_conversation(value) if not is_missing(value) else None
        history, final = split_final_turn(messages) if messages else (messages, None)
        if final is not None and given[index]:
            raise FwError(f"row {index + 1}: the conversation in '{column}' ends with an assistant turn and column "
                          f"'{target}' holds a response too; keep one of them (the final assistant turn is the "
                          "target when the column is absent or empty).")
        histories.append(json.dumps(history, ensure_ascii=False) if history is not None else value)
        finals.append(final)
    frame[column] = histories
    answers = pd.Series(finals, index=frame.index, dtype=object)
    frame[target] = frame[target].astype(object).where(given, answers) if target in frame.columns else answers
    return frame


def _drop_rows_without_input(frame: pd.DataFrame, renderer: PromptRenderer, split_name: str,
                             config=None) -> pd.DataFrame:
    columns = renderer.input_columns(frame.columns)
    if not columns:
        raise FwError(f"the {split_name} data has no input column: the prompt's {{__sample__}} uses every column "
                      f"except the output, and the only columns are {', '.join(frame.columns)}.")
    empty = frame[columns].map(is_missing).all(axis=1)
    if not empty.any():
        return frame.copy()
    strategy = _input_strategy(config)
    if renderer.mode == "column" and strategy != "drop_row":
        return _fill_missing_inputs(frame, empty, columns[0], config, strategy, split_name)
    which = "every input column" if renderer.uses_sample and len(columns) > 1 else \
        ", ".join(f"'{column}'" for column in columns)
    console.warn(f"{split_name}: dropped {empty.sum()} of {len(frame)} row(s) with no input text (empty "
                f"{which}): {row_numbers(frame.index[empty])}.")
    return frame[~empty].copy()


def _input_strategy(config) -> str:
    return view.setting(config, "input_features", 0, "preprocessing", "missing_value_strategy")


def _fill_missing_inputs(frame: pd.DataFrame, empty: pd.Series, column: str, config, strategy: str,
                         split_name: str) -> pd.DataFrame:
    """An empty input column (no template) filled as ``input_features[0].preprocessing.missing_value_strategy``
    says, as in Ludwig (drop_row drops it; with a template Ludwig never sees an empty input: fw drops a row whose
    template columns are all empty)."""
    fill_value = view.setting(config, "input_features", 0, "preprocessing", "fill_value")
    rows = row_numbers(frame.index[empty])
    frame = frame.copy()
    values = frame[column].astype(object).where(~empty, None)
    if strategy == "fill_with_const":
        filled, said = values.fillna(fill_value), f"'{fill_value}'"
    elif strategy == "fill_with_mode":
        present = values[~empty].map(as_text)
        if present.empty:
            raise FwError(f"{split_name}: every '{column}' value is empty, so missing_value_strategy fill_with_mode "
                          "has no value to fill with.")
        mode = present.mode().iloc[0]
        filled, said = values.fillna(mode), f"the most frequent value {shown(mode)}"
    else:  # bfill / ffill, then the other way for the rows at the edge (as Ludwig does)
        first, second = ("bfill", "ffill") if strategy == "bfill" else ("ffill", "bfill")
        filled = getattr(getattr(values, first)(), second)()
        said = "the next row's value" if strategy == "bfill" else "the previous row's value"
    frame[column] = filled
    console.warn(f"{split_name}: {empty.sum()} row(s) with no '{column}' get {said} (input_features[0].preprocessing."
                f"missing_value_strategy {strategy}): {rows}.")
    return frame


def _fill_or_drop_missing_targets(frame: pd.DataFrame, config, split_name: str) -> pd.DataFrame:
    column = view.output_column(config)
    missing = frame[column].map(is_missing).astype(bool)
    if not missing.any():
        return frame
    rows = row_numbers(frame.index[missing])
    if view.output_type(config) == "category":
        fallback = view.fallback_label(config)
        if fallback is not None:
            frame[column] = frame[column].astype(object)
            frame.loc[missing, column] = fallback
            console.warn(f"{split_name}: {missing.sum()} row(s) with no '{column}' value get the fallback_label "
                         f"'{fallback}': {rows}.")
            return frame
        if split_name == "predict":  # predictions need no label
            return frame
        console.warn(f"{split_name}: dropped {missing.sum()} row(s) with no '{column}' value (set "
                     f"output_features[0].preprocessing.fallback_label to keep them): {rows}.")
        return frame[~missing]
    if split_name in NEEDS_TARGET:
        console.warn(f"{split_name}: dropped {missing.sum()} row(s) with no '{column}' target: {rows}.")
        return frame[~missing]
    return frame


def read_dataset(source: Any, config, split_name: str = "predict") -> pd.DataFrame:
    """``read_table`` + ``clean``: the rows of one file or DataFrame, ready to render (predict, preview)."""
    return clean(read_table(source), config, split_name)

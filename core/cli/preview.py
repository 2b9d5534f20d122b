"""``fw preview CONFIG --dataset D -n 3``: the first rows exactly as the model will see them.

Without a tokenizer: the rendered prompt and the target. With one (``--tokenizer`` or a local ``base_model``; a chat
template, ``prompt.chat_template``, needs one): the token sequence itself, decoded (BOS / EOS, the chat template's
markup), with the tokens that carry the loss marked (green on a terminal, and listed after the text), plus the
truncation report. Text is never wrapped or cut, piped or not. The rows are cleaned as training would clean them
(``fw.data.tables.clean`` with the train split when the dataset has the output column), so dropped rows are
reported the same way. Imported by ``fw.cli.main`` for every command, so the top level stays light (no pandas)."""
from __future__ import annotations

import argparse
import os

from fw import console

DEFAULT_ROWS = 3


def register(verbs) -> None:
    """Add the ``preview`` verb to the CLI's subparsers."""
    text = "Show the rendered prompt and target of the first rows of a dataset (what the model sees)."
    sub = verbs.add_parser("preview", help=text, description=text)
    sub.set_defaults(handler=cmd_preview)
    sub.add_argument("config", help="path to the YAML config")
    sub.add_argument("--dataset", required=True, help="CSV, TSV, JSON, JSONL or Parquet file")
    sub.add_argument("-n", "--rows", type=_positive, default=DEFAULT_ROWS, help="how many rows to show (default 3)")
    sub.add_argument("--tokenizer", help="tokenizer directory or hub id for token counts and the truncation "
                                         "report (default: base_model when it is a local directory)")


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def cmd_preview(args: argparse.Namespace) -> int:
    from fw.config import view
    from fw.config.load import load_config
    from fw.data.chat import uses_chat_template
    from fw.data.prompt import PromptRenderer, target_text
    from fw.data.tables import clean, read_table
    from fw.errors import FwError

    config = load_config(args.config).data
    frame = read_table(args.dataset)
    has_target = view.output_column(config) in frame.columns
    frame = clean(frame, config, "train" if has_target else "predict")  # the rows training would see
    has_target = view.output_column(config) in frame.columns  # a conversation column gives its final turn
    renderer = PromptRenderer(config)
    tokenizer = _tokenizer(args.tokenizer, config)
    if tokenizer is None and uses_chat_template(config):
        raise FwError("fw preview: prompt.chat_template renders through the tokenizer; give --tokenizer (a "
                      "directory or hub id), or make base_model a local directory.")
    prompts = _prompts(renderer, frame, config, args.dataset, tokenizer)
    targets = [target_text(row, config) for _, row in frame.iterrows()] if has_target else None
    rows, report = _encoded(prompts, targets, tokenizer, config)
    for shown, index in enumerate(frame.index[:args.rows]):
        if rows is None:
            _show_text(index, prompts[shown], targets[shown] if targets else None)
        else:
            _show_tokens(index, rows[shown], tokenizer)
    console.say(f"{len(frame)} row(s) in {args.dataset}; showing {min(args.rows, len(frame))}.", err=False)
    if report is not None:
        console.say(report.summary(), err=False)
    return 0


def _prompts(renderer, frame, config: dict, dataset: str, tokenizer) -> list[str]:
    """The rendered prompts; with ``prompt.retrieval``, the examples retrieved from the dataset's training split
    (as ``fw train`` retrieves them; fewer for prompts over the input budget when a tokenizer is known)."""
    from fw.config import view
    from fw.data import retrieval

    if view.retrieval(config) is None:
        return [renderer.render(row) for _, row in frame.iterrows()]
    retriever = retrieval.prepare(config, retrieval.training_split(config, dataset))
    return retrieval.few_shot_prompts(renderer, frame.to_dict("records"), retriever, config, tokenizer, "preview")


def _tokenizer(path: str | None, config: dict):
    from fw.config import view

    base_model = os.path.expanduser(str(view.base_model(config)))
    location = path or (base_model if os.path.isdir(base_model) else None)
    if location is None:
        return None
    from fw.model.loading import load_tokenizer

    return load_tokenizer(os.path.expanduser(location))


def _encoded(prompts, targets, tokenizer, config):
    if tokenizer is None:
        return None, None
    from fw.data.tokens import encode, encode_prompts

    if targets is None:
        return encode_prompts(prompts, tokenizer, config)
    return encode(prompts, targets, tokenizer, config)


def _heading(text: str) -> None:
    console.say(f"── {text} ──", "bold", err=False)


def _show_text(index: int, prompt: str, target: str | None) -> None:
    _heading(f"row {index + 1} · prompt")
    console.say(prompt, err=False)
    if target is not None:
        _heading(f"row {index + 1} · target")
        console.say(target, "green", err=False)


def _show_tokens(index: int, row, tokenizer) -> None:
    """The row's tokens decoded, runs that carry loss in green, then those runs listed (JSON-quoted, so
    whitespace and newlines show)."""
    import json
    import sys

    runs = _runs(row)
    trained = [tokenizer.decode(ids, skip_special_tokens=False) for ids, carries in runs if carries]
    loss = f", {row.trained_tokens} carry the loss" if trained else " (a prompt: no loss)"
    _heading(f"row {index + 1} · {len(row)} tokens{loss}")
    pieces = [(tokenizer.decode(ids, skip_special_tokens=False), carries) for ids, carries in runs]
    console.say("".join(console.paint(text, "green", sys.stdout) if carries else text for text, carries in pieces),
                err=False)
    if trained:
        console.say("loss on: " + " · ".join(json.dumps(piece, ensure_ascii=False) for piece in trained), "dim",
                    err=False)


def _runs(row) -> list[tuple[list[int], bool]]:
    """The row's token ids as consecutive runs of (ids, carries loss)."""
    from fw.data.tokens import IGNORE_INDEX

    runs: list[tuple[list[int], bool]] = []
    for token, label in zip(row.input_ids, row.labels):
        carries = label != IGNORE_INDEX
        if runs and runs[-1][1] == carries:
            runs[-1][0].append(token)
        else:
            runs.append(([token], carries))
    return runs

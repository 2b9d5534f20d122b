"""``fw preview CONFIG --dataset D -n 3``: the rendered prompts and targets of the first rows, exactly as the
model will see them, plus a truncation report when a tokenizer is available (``--tokenizer`` or a local
``base_model``). The rows are cleaned as training would clean them (``fw.data.tables.clean`` with the train split
when the dataset has the output column), so dropped rows are reported the same way. Imported by ``fw.cli.main``
for every command, so the top level stays light (no pandas)."""
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
    from fw.data.prompt import PromptRenderer, target_text
    from fw.data.tables import clean, read_table

    config = load_config(args.config).data
    frame = read_table(args.dataset)
    has_target = view.output_column(config) in frame.columns
    frame = clean(frame, config, "train" if has_target else "predict")  # the rows training would see
    renderer = PromptRenderer(config)
    tokenizer = _tokenizer(args.tokenizer, config)
    prompts = _prompts(renderer, frame, config, args.dataset, tokenizer)
    targets = [target_text(row, config) for _, row in frame.iterrows()] if has_target else None
    rows, report = _encoded(prompts, targets, tokenizer, config)
    for shown, index in enumerate(frame.index[:args.rows]):
        _show_row(index, prompts[shown], targets[shown] if targets else None, rows[shown] if rows else None)
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

    location = path or (view.base_model(config) if os.path.isdir(str(view.base_model(config))) else None)
    if location is None:
        return None
    from fw.model.loading import load_tokenizer

    return load_tokenizer(location)


def _encoded(prompts, targets, tokenizer, config):
    if tokenizer is None:
        return None, None
    from fw.data.tokens import encode, encode_prompts

    if targets is None:
        return encode_prompts(prompts, tokenizer, config)
    return encode(prompts, targets, tokenizer, config)


def _show_row(index: int, prompt: str, target: str | None, encoded) -> None:
    counts = f" · {encoded.prompt_length} tokens" if encoded is not None else ""
    panels = [console.panel(prompt, f"row {index + 1} · prompt{counts}")]
    if target is not None:
        target_counts = f" · {len(encoded) - encoded.prompt_length} tokens with EOS" if encoded is not None else ""
        panels.append(console.panel(target, f"row {index + 1} · target{target_counts}", border_style="green"))
    console.show(*panels)

"""The pipeline, composed: ``train``, ``predict`` and ``evaluate`` (what the CLI verbs call; also the API).

    import fw.pipeline as pipeline
    run = pipeline.train("config.yaml", dataset="data.csv")          # -> TrainResult (run_dir, model_dir, ...)
    result = pipeline.predict(model_path=run.model_dir, dataset="new.csv")
    stats = pipeline.evaluate(model_path=run.model_dir, dataset="data.csv", split="test")

Data flow: config -> splits (fw.data.tables) -> prompts (fw.data.prompt) -> tokens (fw.data.tokens) -> base model and adapter
(fw.model.loading) -> trainer (fw.train.trainer) -> artifacts (fw.artifacts) -> generation (fw.infer.generation) -> metrics.
``trainer.type: none`` skips the training step: predict / evaluate run on the base model from ``config``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fw import artifacts, console, trace
from fw.config import view
from fw.data import retrieval
from fw.errors import FwError
from fw.model import quantization

SPLITS = ("full", "train", "validation", "test")


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    statistics: dict
    config: dict = field(repr=False)
    #: the trained model and its tokenizer, still in memory (eval mode)
    model: Any = field(default=None, repr=False)
    tokenizer: Any = field(default=None, repr=False)


@dataclass
class PredictResult:
    predictions: Any  # pandas.DataFrame
    directory: Path
    config: dict = field(repr=False)


@dataclass
class EvaluateResult:
    statistics: dict
    predictions: Any
    directory: Path


# -- config and data ---------------------------------------------------------------------------------------------
def resolve_config(config) -> dict:
    """A validated config dict from a path, a raw dict, or a :class:`fw.config.load.Config`."""
    if hasattr(config, "data"):
        return config.data
    from fw.config.load import load_config

    return load_config(config).data


def seed_everything(seed: int) -> None:
    import numpy
    import torch

    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)


def load_splits(data: dict, dataset=None, training_set=None, validation_set=None, test_set=None):
    """The three splits, cleaned (rows without input dropped with a warning, fallback labels filled)."""
    from fw.data.tables import Splits, clean, make_splits

    splits = make_splits(data, dataset=dataset, training_set=training_set, validation_set=validation_set,
                         test_set=test_set)
    return Splits(*(clean(frame, data, name) if len(frame) else frame for name, frame in splits.items()))


def rows_of(frame) -> list[dict]:
    return frame.to_dict("records")


def prompts_of(frame, data: dict, tokenizer=None, retriever=None, split_name: str = "predict") -> list[str]:
    """The prompts of ``frame``; with ``prompt.retrieval``, few-shot examples from ``retriever`` (fw.data.retrieval)."""
    from fw.data.prompt import PromptRenderer

    renderer = PromptRenderer(data)
    if view.retrieval(data):
        if retriever is None:
            raise FwError("prompt.retrieval is set but no examples index was prepared (fw.data.retrieval.prepare).")
        return retrieval.few_shot_prompts(renderer, rows_of(frame), retriever, data, tokenizer, split_name)
    return [renderer.render(row) for row in rows_of(frame)]


def targets_of(frame, data: dict) -> list[str]:
    from fw.data.prompt import target_text

    return [target_text(row, data) for row in rows_of(frame)]


def encode_frame(frame, data: dict, tokenizer, split_name: str, retriever=None):
    """Training rows (prompt + target, loss on the target) of ``frame``; truncation reported in one line."""
    if frame is None or not len(frame):
        return []
    return encode_pairs(prompts_of(frame, data, tokenizer, retriever, split_name), targets_of(frame, data),
                        tokenizer, data, split_name)


def encode_pairs(prompts: list[str], targets: list[str], tokenizer, data: dict, split_name: str):
    """Rendered prompts + targets as training rows; truncation reported in one line."""
    from fw.data.tokens import encode

    rows, truncation = encode(prompts, targets, tokenizer, data)
    if truncation.truncated_rows:
        console.info(f"{split_name}: {truncation.summary()}")
    return rows


def localize_base_model(data: dict) -> dict:
    """The config with a local ``base_model`` made absolute (the saved config then works from anywhere)."""
    from fw.model.loading import looks_like_path, resolve_location

    name = view.base_model(data)
    return {**data, "base_model": resolve_location(name)} if looks_like_path(name) else data


# -- train -------------------------------------------------------------------------------------------------------
def train(config, dataset=None, training_set=None, validation_set=None, test_set=None,
          output_directory: str | Path = "results", experiment_name: str = "experiment", model_name: str = "run",
          resume: bool = False, show_progress: bool = True, adapter: str | None = None) -> TrainResult:
    """Fine-tune per the config; write ``<output_directory>/<experiment>_<run>/`` and return where it is.
    ``adapter`` names the adapter of an ``adapters:`` section to train (default: ``adapters.active``).
    The run directory is made only once the data, the model and its adapter are ready: a run that fails before
    training leaves nothing behind."""
    from fw.model import multi_adapter
    from fw.model.loading import apply_adapter, load_base_model
    from fw.plugin.registry import get_registry
    from fw.train.trainer import Trainer

    trace.mark("imports")
    get_registry()  # plugin discovery (once per process), apart from validation in the startup trace
    trace.mark("plugins")
    data = localize_base_model(resolve_config(config))
    trace.mark("config")
    check_trainable(data)
    trained = multi_adapter.trained_name(data, adapter)
    splits = load_splits(data, dataset, training_set, validation_set, test_set)
    retriever = retrieval.prepare(data, splits.train)
    resumed = artifacts.run_directory_to_resume(output_directory, experiment_name, model_name) if resume else None
    trace.mark("data")
    seed_everything(view.seed(data))
    model, tokenizer = load_base_model(data, for_training=True)
    model = quantization.prepare_for_training(model, data)
    trace.mark("model")
    train_rows = encode_frame(splits.train, data, tokenizer, "train", retriever)
    validation_rows = encode_frame(splits.validation, data, tokenizer, "validation", retriever)
    test_rows = encode_frame(splits.test, data, tokenizer, "test", retriever)
    trainer = Trainer(multi_adapter.training_view(data, trained) if trained else data, tokenizer, train_rows,
                      validation_rows, test_rows=test_rows, show_progress=show_progress)
    trace.mark("tokens")
    model = apply_adapter(model, data, training_data(trainer, data, show_progress), adapter_name=trained)
    trace.mark("adapter")
    run_dir = prepare_run_directory(data, splits, output_directory, experiment_name, model_name, resumed)
    trainer.setup(model, run_dir)
    trace.mark("setup")
    statistics = trainer.train(resume=resume)
    if test_rows:
        statistics["test"] = trainer.evaluate(test_rows)
    if trained:
        statistics["adapter"] = trained
        multi_adapter.finish_training(model, data)
    artifacts.write_json(run_dir / artifacts.TRAINING_STATISTICS, statistics)
    model_dir, model = save_trained(model, tokenizer, data, run_dir)
    retrieval.save_with_model(retriever, model_dir)
    console.info(f"saved the model to {model_dir}")
    return TrainResult(run_dir, model_dir, statistics, data, model, tokenizer)


def check_trainable(data: dict) -> None:
    """What rules a config out of ``fw train`` before any data or model is read."""
    if view.trainer_type(data) == "none":
        raise FwError("trainer.type is none: there is nothing to train. Run fw predict / fw evaluate with --config "
                      "to use the base model directly, or set trainer.type: finetune.")
    artifacts.check_mergeable(view.adapter(data))
    quantization.check_runnable(data, for_training=True)


def prepare_run_directory(data: dict, splits, output_directory, experiment_name: str, model_name: str,
                          resumed: Path | None = None) -> Path:
    """A new ``<experiment>_<run>`` directory (or ``resumed``, the run being resumed) holding the resolved config
    and the manifest."""
    dataset_hash = artifacts.data_hash(splits.train, splits.validation, splits.test)
    if resumed is not None:
        run_dir = resumed
        previous = artifacts.read_manifest(run_dir).get("data_hash")
        if previous and previous != dataset_hash:
            console.warn(f"--resume: the data differs from the data {run_dir} was trained on so far.")
    else:
        run_dir = artifacts.new_run_directory(output_directory, experiment_name, model_name)
    artifacts.write_config(run_dir, data)
    artifacts.write_manifest(run_dir, data, dataset_hash, extra={"rows": splits.sizes()})
    return run_dir


def training_data(trainer, data: dict, show_progress: bool):
    """What the adapter may see before training: rows for EVA / CorDA calibration, the planned step count."""
    from fw.model.initialization import TrainingData

    return TrainingData(trainer.train_rows, trainer.tokenizer, trainer.batching.batch_size, trainer.planned_steps,
                        show_progress)


def save_trained(model, tokenizer, data: dict, run_dir: Path):
    """(model dir, saved model): the adapter merged first when the postprocessor asks for it."""
    section = view.adapter(data) or {}
    if artifacts.is_peft_model(model) and (section.get("postprocessor") or {}).get("merge_adapter_into_base_model"):
        model = artifacts.merge_adapter(model, section)
    model = quantization.finish_training(model, data)
    return artifacts.save_model(model, tokenizer, data, run_dir / artifacts.MODEL_DIR), model


# -- predict / evaluate ------------------------------------------------------------------------------------------
def model_for_inference(model_path=None, config=None, adapter: str | None = None):
    """(config, model, tokenizer): a trained model from ``model_path``, or the base model of ``config``
    (``trainer.type: none`` / in-context learning), with ``adapter.pretrained_adapter_weights`` if set.
    ``adapter`` picks one of several named adapters (``--adapter``)."""
    from fw.model import multi_adapter
    from fw.model.loading import load_base_model, load_pretrained_adapter

    if model_path is not None:
        return artifacts.load_trained(model_path, resolve_config(config) if config is not None else None,
                                      adapter=adapter)
    if config is None:
        raise FwError("give --model_path (a model saved by fw train) or --config (to use its base model directly).")
    data = resolve_config(config)
    multi_adapter.check_requested(data, adapter)
    model, tokenizer = load_base_model(data, for_training=False)
    if view.named_adapters(data):
        return data, multi_adapter.for_inference(model, data, adapter), tokenizer
    weights = (view.adapter(data) or {}).get("pretrained_adapter_weights")
    if weights:
        model = load_pretrained_adapter(model, weights, trainable=False)
    return data, model, tokenizer


def select_rows(data: dict, dataset, split: str, purpose: str = "predict"):
    """The rows to predict on (``purpose``: predict, or evaluate: rows without a target are dropped with a
    warning, as in training): the whole ``dataset`` (``split: full``) or one of its splits."""
    from fw.data.tables import clean, make_splits, read_table

    if dataset is None:
        raise FwError("no data given: pass --dataset.")
    if split not in SPLITS:
        raise FwError(f"--split: '{split}' is not one of {', '.join(SPLITS)}.")
    if split == "full":
        frame = read_table(dataset)
        column = view.split_column(data)
        frame = frame.drop(columns=[column]) if column in frame.columns else frame
        return clean(frame, data, purpose)
    frame = getattr(make_splits(data, dataset=dataset), "train" if split == "train" else split)
    if not len(frame):
        raise FwError(f"--split {split}: the dataset has no {split} rows.")
    return clean(frame, data, purpose)


def output_directory_for(output_directory, model_path, experiment_name: str, model_name: str) -> Path:
    if output_directory is not None:
        path = Path(output_directory)
        path.mkdir(parents=True, exist_ok=True)
        return path
    if model_path is not None:
        return artifacts.find_model_dir(model_path).parent
    return artifacts.new_run_directory("results", experiment_name, model_name)


def generate_for(prompts: list[str], data: dict, model, tokenizer, show_progress: bool):
    """(generations, :class:`fw.plugin.DecodedOutputs`) for every rendered prompt: the decoder plugin turns the
    generations into output values; with ``decoder.label_scoring`` the labels are ranked by likelihood instead of
    generated (no raw generation)."""
    from fw.data.tokens import encode_prompts
    from fw.infer.decoders import decode
    from fw.infer.generation import Generation, generate
    from fw.infer.label_scoring import score_labels

    encoded, truncation = encode_prompts(prompts, tokenizer, data)
    if truncation.truncated_rows:
        console.info(f"predict: {truncation.summary()}")
    if view.scores_labels(data):
        outputs = score_labels(model, tokenizer, encoded, data, show_progress)
        return [Generation(raw="", text=label) for label in outputs.values], outputs
    generations = generate(model, tokenizer, encoded, data, show_progress)
    return generations, decode([g.text for g in generations], data)


def predictions_frame(frame, data: dict, prompts, generations, outputs):
    name = view.output_name(data)
    table = frame.reset_index(drop=True).copy()
    table["prompt"] = prompts
    table["raw_generation"] = [g.raw for g in generations]
    table[f"{name}_predictions"] = getattr(outputs, "values", outputs)
    for column, values in getattr(outputs, "columns", {}).items():
        table[column] = values
    return table


def write_predictions(table, directory: Path) -> None:
    table.to_parquet(directory / "predictions.parquet", index=False)
    table.to_csv(directory / "predictions.csv", index=False)


def predict(model_path=None, config=None, dataset=None, split: str = "full", output_directory=None,
            experiment_name: str = "experiment", model_name: str = "run", show_progress: bool = True,
            adapter: str | None = None) -> PredictResult:
    """Generate for every row; write ``predictions.parquet`` and ``predictions.csv``."""
    data, model, tokenizer = model_for_inference(model_path, config, adapter)
    seed_everything(view.seed(data))
    frame = select_rows(data, dataset, split)
    retriever = retrieval.for_inference(data, model_path, dataset)
    prompts = prompts_of(frame, data, tokenizer, retriever)
    generations, outputs = generate_for(prompts, data, model, tokenizer, show_progress)
    table = predictions_frame(frame, data, prompts, generations, outputs)
    directory = output_directory_for(output_directory, model_path, experiment_name, model_name)
    write_predictions(table, directory)
    console.info(f"wrote {len(table)} predictions to {directory / 'predictions.parquet'} (and .csv)")
    return PredictResult(table, directory, data)


def evaluate(model_path=None, config=None, dataset=None, split: str = "full", output_directory=None,
             experiment_name: str = "experiment", model_name: str = "run", show_progress: bool = True,
             adapter: str | None = None) -> EvaluateResult:
    """Predict, then score against the output column: ``test_statistics.json`` (loss, perplexity, exact
    match, token F1, BLEU / ROUGE for text outputs; accuracy, macro-F1, per-class precision / recall, confusion
    matrix and fallback rate for category outputs)."""
    from fw.infer.metrics import output_metrics
    from fw.train.batch_size import inference_batch_size
    from fw.train.trainer import evaluate_loss

    data, model, tokenizer = model_for_inference(model_path, config, adapter)
    seed_everything(view.seed(data))
    frame = select_rows(data, dataset, split, purpose="evaluate")
    retriever = retrieval.for_inference(data, model_path, dataset)
    prompts = prompts_of(frame, data, tokenizer, retriever)  # rendered once: generation and loss share them
    generations, outputs = generate_for(prompts, data, model, tokenizer, show_progress)
    targets = targets_of(frame, data)
    rows = encode_pairs(prompts, targets, tokenizer, data, "evaluate")
    scores = evaluate_loss(model, tokenizer, rows, inference_batch_size(data, model, [len(r.input_ids) for r in rows]))
    scores.update(output_metrics(outputs.values, targets, view.output_type(data), outputs.matched, view.labels(data),
                                 outputs.timeouts))
    statistics = {view.output_name(data): scores, "combined": {"loss": scores.get("loss")}, "rows": len(frame)}
    table = predictions_frame(frame, data, prompts, generations, outputs)
    directory = output_directory_for(output_directory, model_path, experiment_name, model_name)
    write_predictions(table, directory)
    artifacts.write_json(directory / artifacts.TEST_STATISTICS, statistics)
    console.info(f"wrote {directory / artifacts.TEST_STATISTICS}")
    return EvaluateResult(statistics, table, directory)

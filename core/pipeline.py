"""The pipeline, composed: ``train``, ``predict`` and ``evaluate`` (what the CLI verbs call; also the API).

    import fw.pipeline as pipeline
    run = pipeline.train("config.yaml", dataset="data.csv")          # -> TrainResult (run_dir, model_dir, ...)
    result = pipeline.predict(model_path=run.model_dir, dataset="new.csv")
    stats = pipeline.evaluate(model_path=run.model_dir, dataset="data.csv", split="test")

Under a launcher (``torchrun``, ``accelerate launch``, ``fw ... --num_processes N``; see :mod:`fw.distributed`),
predict / evaluate split the rows across the processes: the main process renders every prompt (a retrieval index
is built once) and chooses the output directory, each process generates for its contiguous share, and the main
process writes one predictions file in input order; loss and metrics cover every row.

Data flow: config -> splits (fw.data.tables) -> prompts (fw.data.prompt) -> tokens (fw.data.tokens) -> base model and adapter
(fw.model.loading) -> trainer (fw.train.trainer) -> artifacts (fw.artifacts) -> generation (fw.infer.generation) -> metrics.
``trainer.type: none`` skips the training step: predict / evaluate run on the base model from ``config``.
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fw import artifacts, console, distributed, runs, trace
from fw.atomic import DiskFull, atomic_file
from fw.config import view
from fw.data import chat, retrieval
from fw.errors import FwError
from fw.model import quantization
from fw.publish.save import save_model

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
    The run directory is made only once the data, the model and its adapter are ready, and removed again when
    training fails before its first checkpoint: a run that fails before training leaves nothing behind. The run
    is locked while this process trains in it; ``resume`` checks the config against the run's before anything
    is written (:mod:`fw.runs`).

    In a job of several processes (torchrun …) every process runs this with the same arguments: the main process
    claims (or resumes) the run directory and tells the others where it is, builds the retrieval index first (the
    others read it from the cache), and writes every file; each trains on its share of the rows
    (fw.train.parallel)."""
    from fw.model import multi_adapter
    from fw.model.loading import apply_adapter, load_base_model
    from fw.plugin.registry import get_registry
    from fw.train.runtime import for_job
    from fw.train.trainer import Trainer

    trace.mark("imports")
    runs.run_name(experiment_name, model_name)  # a name that would leave output_directory fails before any work
    get_registry()  # plugin discovery (once per process), apart from validation in the startup trace
    trace.mark("plugins")
    data = localize_base_model(resolve_config(config))
    trace.mark("config")
    check_trainable(data)
    trained = multi_adapter.trained_name(data, adapter)
    runtime = for_job(data)
    with contextlib.ExitStack() as held:
        resumed = claimed_by_main(lambda: held.enter_context(runs.resumed_run(
            output_directory, experiment_name, model_name, data, trained))) if resume else None
        splits = load_splits(data, dataset, training_set, validation_set, test_set)
        retriever = runtime.run_once(lambda: retrieval.prepare(data, splits.train))
        trace.mark("data")
        seed_everything(view.seed(data))
        model, tokenizer = load_base_model(data, for_training=True, on_device=runtime.load_device,
                                           weights=runtime.loads_weights, sharded=runtime.shards_weights)
        model = quantization.prepare_for_training(model, data)
        trace.mark("model")
        train_rows = encode_frame(splits.train, data, tokenizer, "train", retriever)
        validation_rows = encode_frame(splits.validation, data, tokenizer, "validation", retriever)
        test_rows = encode_frame(splits.test, data, tokenizer, "test", retriever)
        trainer = Trainer(multi_adapter.training_view(data, trained) if trained else data, tokenizer, train_rows,
                          validation_rows, test_rows=test_rows, runtime=runtime, show_progress=show_progress)
        trace.mark("tokens")
        model = apply_adapter(model, data, training_data(trainer, data, show_progress), adapter_name=trained)
        trace.mark("adapter")
        run_dir = resumed or claimed_by_main(lambda: held.enter_context(
            runs.new_run(output_directory, experiment_name, model_name)))
        try:
            if runtime.is_main_process:
                record_run(run_dir, data, splits, trained)
            trainer.setup(model, run_dir)
            trace.mark("setup")
            statistics = trainer.train(resume=resume)
            try:
                model_dir, model = save_results(trainer, model, tokenizer, data, run_dir, statistics,
                                                test_rows, trained)
            except KeyboardInterrupt:
                console.warn(f"stopped after training, before {run_dir / artifacts.MODEL_DIR} was saved. "
                             + runs.resume_hint(run_dir))
                raise
            if runtime.is_main_process:
                retrieval.save_with_model(retriever, model_dir)
            runtime.barrier()
        except DiskFull as exc:
            raise exc.adding(runs.resume_hint(run_dir, "free space, then ")) from None
    console.info(f"saved the model to {model_dir}")
    return TrainResult(run_dir, model_dir, statistics, data, model, tokenizer)


def save_results(trainer, model, tokenizer, data: dict, run_dir: Path, statistics: dict, test_rows,
                 trained: str | None):
    """After training: the test split's loss, the merge of named adapters, training_statistics.json and model/;
    returns (model dir, saved model). In a job of several processes the test rows are scored by all of them and
    the main process writes (the others return the model dir and their model)."""
    from fw.model import multi_adapter

    if test_rows:
        statistics["test"] = trainer.evaluate(test_rows)
    model = trainer.runtime.model_to_save(model)
    if not trainer.runtime.is_main_process:
        return run_dir / artifacts.MODEL_DIR, model
    if trained:
        statistics["adapter"] = trained
        multi_adapter.finish_training(model, data)
    artifacts.write_json(run_dir / artifacts.TRAINING_STATISTICS, statistics)
    return save_trained(model, tokenizer, data, run_dir)


def claimed_by_main(claim) -> Path:
    """``claim()`` (make, or lock for a resume, the run directory) in the main process of a job, and its result in
    every process; a failure there (run in use, nothing to resume) stops every process with its message."""
    if not distributed.launched():
        return claim()
    outcome = None
    if distributed.is_main_process():
        try:
            outcome = (True, claim())
        except FwError as exc:
            distributed.broadcast((False, str(exc)))
            raise
    claimed, value = distributed.broadcast(outcome)
    if not claimed:
        raise FwError(value)
    return value


def check_trainable(data: dict) -> None:
    """What rules a config out of ``fw train`` before any data or model is read."""
    if view.trainer_type(data) == "none":
        raise FwError("trainer.type is none: there is nothing to train. Run fw predict / fw evaluate with --config "
                      "to use the base model directly, or set trainer.type: finetune.")
    artifacts.check_mergeable(view.adapter(data))
    quantization.check_runnable(data, for_training=True)


def record_run(run_dir: Path, data: dict, splits, trained: str | None = None) -> None:
    """The resolved config and the manifest of the run (a resumed run warns when its data changed)."""
    dataset_hash = artifacts.data_hash(splits.train, splits.validation, splits.test)
    previous = artifacts.read_manifest(run_dir).get("data_hash")
    if previous and previous != dataset_hash:
        console.warn(f"--resume: the data differs from the data {run_dir} was trained on so far.")
    artifacts.write_config(run_dir, data)
    extra = {"rows": splits.sizes(), **({"trained_adapter": trained} if trained else {})}
    artifacts.write_manifest(run_dir, data, dataset_hash, extra=extra)


def training_data(trainer, data: dict, show_progress: bool):
    """What the adapter may see before training: rows for EVA / CorDA calibration (in batches of the whole job's
    micro-batch size: in a job of several processes the main process calibrates alone, as one process with
    that batch would), the planned step count."""
    from fw.model.initialization import TrainingData

    return TrainingData(trainer.train_rows, trainer.tokenizer, trainer.batching.batch_size * trainer.runtime.processes,
                        trainer.planned_steps, show_progress)


def save_trained(model, tokenizer, data: dict, run_dir: Path):
    """(model dir, saved model): the adapter merged first when the postprocessor asks for it."""
    section = view.adapter(data) or {}
    if artifacts.is_peft_model(model) and (section.get("postprocessor") or {}).get("merge_adapter_into_base_model"):
        model = artifacts.merge_adapter(model, section)
    model = quantization.finish_training(model, data)
    return save_model(model, tokenizer, data, run_dir / artifacts.MODEL_DIR), model


# -- predict / evaluate ------------------------------------------------------------------------------------------
def model_for_inference(model_path=None, config=None, adapter: str | None = None, base_model: str | None = None):
    """(config, model, tokenizer): a trained model from ``model_path``, or the base model of ``config``
    (``trainer.type: none`` / in-context learning), with ``adapter.pretrained_adapter_weights`` if set.
    ``adapter`` picks one of several named adapters (``--adapter``); ``base_model`` puts a saved adapter on
    another base model than the one it was trained on (``--base_model``)."""
    from fw.model import multi_adapter
    from fw.model.loading import load_base_model, load_pretrained_adapter

    if model_path is not None:
        return artifacts.load_trained(model_path, resolve_config(config) if config is not None else None,
                                      adapter=adapter, base_model=base_model)
    if config is None:
        raise FwError("give --model_path (a model saved by fw train) or --config (to use its base model directly).")
    if base_model is not None:
        raise FwError("--base_model goes with --model_path (an adapter to put on another base); with --config alone, "
                      "set base_model in the config.")
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


def generate_for(prompts: list[str], data: dict, model, tokenizer, show_progress: bool):
    """(generations, :class:`fw.plugin.DecodedOutputs`) for every rendered prompt: the decoder plugin turns the
    generations into output values; with ``decoder.label_scoring`` the labels are ranked by likelihood instead of
    generated (no raw generation). In a job of several processes each generates for its share of the prompts and
    every process gets all of them back, in order."""
    from fw.data.tokens import encode_prompts
    from fw.infer.decoders import decode, joined
    from fw.infer.generation import Generation, generate
    from fw.infer.label_scoring import score_labels

    encoded, truncation = encode_prompts(prompts, tokenizer, data)
    if truncation.truncated_rows:
        console.info(f"predict: {truncation.summary()}")
    share = distributed.split(encoded)
    if view.scores_labels(data):
        outputs = joined(distributed.gather(score_labels(model, tokenizer, share, data, show_progress)))
        return [Generation(raw="", text=label) for label in outputs.values], outputs
    generations = concatenated(distributed.gather(generate(model, tokenizer, share, data, show_progress)))
    return generations, decode([g.text for g in generations], data)


def concatenated(parts: list[list]) -> list:
    return [item for part in parts for item in part]


def from_main_process(compute):
    """``compute()``, run by the main process only and its value shared with every process of the job (one
    retrieval index, one output directory); simply ``compute()`` in a single process."""
    return distributed.gather(compute() if distributed.is_main_process() else None)[0]


def join_job() -> None:
    """Under a launcher: join the job's process group now (on GPUs this also picks this process's GPU), before
    any model is loaded."""
    if distributed.launched():
        distributed.state()


def rendered_prompts(frame, data: dict, tokenizer, model_path, dataset) -> list[str]:
    """The prompts of every row of ``frame``, rendered by the main process (the retriever of ``prompt.retrieval``
    is built or loaded once) and shared."""
    def render() -> list[str]:
        model_dir = artifacts.find_model_dir(model_path) if model_path else None
        return prompts_of(frame, data, tokenizer, retrieval.for_inference(data, model_dir, dataset))

    return from_main_process(render)


def loss_scores(model, tokenizer, rows, data: dict) -> dict:
    """Loss, perplexity, token and sequence accuracy over every row (response tokens only): each process scores
    its share of the rows and the sums (not the averages) are added."""
    from fw.data.tokens import length_sorted_batches
    from fw.train import validation
    from fw.train.batch_size import inference_batch_size

    batch_size = inference_batch_size(data, model, [len(row.input_ids) for row in rows])
    share = distributed.split(rows)
    sums = validation.totals(model, tokenizer, share, length_sorted_batches([len(r.input_ids) for r in share],
                                                                            batch_size))
    return validation.metrics([sum(column) for column in zip(*distributed.gather(sums))])


def shown_prompts(prompts: list[str], data: dict, tokenizer) -> list[str]:
    """The prompts as the model reads them: through the chat template when the config uses one."""
    return chat.generation_prompts(prompts, tokenizer, data) if chat.uses_chat_template(data) else prompts


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
    """``predictions.parquet`` and ``predictions.csv`` in ``directory``, each written atomically, never over an
    existing file."""
    with atomic_file(directory / "predictions.parquet", replace=False) as temporary:
        table.to_parquet(temporary, index=False)
    with atomic_file(directory / "predictions.csv", replace=False) as temporary:
        table.to_csv(temporary, index=False)


def write_outputs(verb: str, write, output_directory, model_path, experiment_name: str, model_name: str) -> Path:
    """The directory of this call's outputs (:func:`fw.runs.output_directory`, chosen by the main process), filled by
    ``write(directory)`` on the main process only; every process of a job gets it once the files are written."""
    directory = from_main_process(lambda: runs.output_directory(verb, output_directory, model_path, experiment_name,
                                                                model_name))
    if distributed.is_main_process():
        with writing_outputs(verb, directory):
            write(directory)
    distributed.barrier()
    return directory


@contextlib.contextmanager
def writing_outputs(verb: str, directory: Path):
    """Say what this call kept when one of its outputs cannot be written for lack of space."""
    try:
        yield
    except DiskFull as exc:
        kept = [name for name in runs.OUTPUT_FILES if (directory / name).is_file()]
        what = f"Kept in {directory}: {', '.join(kept)}." if kept else "Nothing of this call was kept."
        raise exc.adding(f"{what} Free space, then run fw {verb} again.") from None
    except FileExistsError as exc:
        raise FwError(f"{exc.filename2 or exc.filename} appeared while fw {verb} was writing it (another fw {verb} "
                      "with the same --output_directory?); it was left as it is. Run again.") from None


def predict(model_path=None, config=None, dataset=None, split: str = "full", output_directory=None,
            experiment_name: str = "experiment", model_name: str = "run", show_progress: bool = True,
            adapter: str | None = None, base_model: str | None = None) -> PredictResult:
    """Generate for every row; write ``predictions.parquet`` and ``predictions.csv`` into a directory of this
    call's own (:func:`fw.runs.output_directory`). Every process of a job returns the same result."""
    runs.run_name(experiment_name, model_name)
    join_job()
    data, model, tokenizer = model_for_inference(model_path, config, adapter, base_model)
    seed_everything(view.seed(data))
    frame = select_rows(data, dataset, split)
    prompts = rendered_prompts(frame, data, tokenizer, model_path, dataset)
    generations, outputs = generate_for(prompts, data, model, tokenizer, show_progress)
    table = predictions_frame(frame, data, shown_prompts(prompts, data, tokenizer), generations, outputs)
    directory = write_outputs("predict", lambda target: write_predictions(table, target), output_directory,
                              model_path, experiment_name, model_name)
    console.info(f"wrote {len(table)} predictions to {directory / 'predictions.parquet'} (and .csv)")
    return PredictResult(table, directory, data)


def evaluate(model_path=None, config=None, dataset=None, split: str = "full", output_directory=None,
             experiment_name: str = "experiment", model_name: str = "run", show_progress: bool = True,
             adapter: str | None = None, base_model: str | None = None) -> EvaluateResult:
    """Predict, then score against the output column: ``test_statistics.json`` (loss, perplexity, exact
    match, token F1, BLEU / ROUGE for text outputs; accuracy, macro-F1, per-class precision / recall, confusion
    matrix and fallback rate for category outputs), with the predictions, into a directory of this call's own
    (:func:`fw.runs.output_directory`). Every process of a job returns the same result."""
    from fw.infer.metrics import fallback_warning, output_metrics

    runs.run_name(experiment_name, model_name)
    join_job()
    data, model, tokenizer = model_for_inference(model_path, config, adapter, base_model)
    seed_everything(view.seed(data))
    frame = select_rows(data, dataset, split, purpose="evaluate")
    prompts = rendered_prompts(frame, data, tokenizer, model_path, dataset)  # generation and loss share them
    generations, outputs = generate_for(prompts, data, model, tokenizer, show_progress)
    targets = targets_of(frame, data)
    scores = loss_scores(model, tokenizer, encode_pairs(prompts, targets, tokenizer, data, "evaluate"), data)
    scores.update(output_metrics(outputs.values, targets, view.output_type(data), outputs.matched, view.labels(data),
                                 outputs.timeouts))
    warning = fallback_warning(scores, view.fallback_label(data))
    if warning:
        console.warn(warning)
    statistics = {view.output_name(data): scores, "combined": {"loss": scores.get("loss")}, "rows": len(frame)}
    table = predictions_frame(frame, data, shown_prompts(prompts, data, tokenizer), generations, outputs)

    def write(target: Path) -> None:
        write_predictions(table, target)
        artifacts.write_json(target / artifacts.TEST_STATISTICS, statistics, replace=False)

    directory = write_outputs("evaluate", write, output_directory, model_path, experiment_name, model_name)
    console.info(f"wrote {directory / artifacts.TEST_STATISTICS}")
    return EvaluateResult(statistics, table, directory)

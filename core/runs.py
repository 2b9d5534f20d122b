"""Run directories: where a run goes, who may write in it, when it may be resumed, where outputs go.

- **Names.** ``--experiment_name`` and ``--model_name`` are plain names: a run is
  ``<output_directory>/<experiment_name>_<model_name>/`` (``_1``, ``_2`` … when taken, as Ludwig does), never a
  path that climbs out of ``--output_directory``. Groups of runs are directories: ``--output_directory results/team``.
- **The lock.** The process training in a run holds an exclusive ``flock`` on ``<run>/.lock`` (its pid written
  inside, for the message another process gets). The kernel drops the lock when the holder exits in any way,
  ``kill -9`` included, so a crash never leaves a stale lock (a pid file would need a liveness check, which pid
  reuse can fool). In a distributed job only the main process takes it.
- **Resume.** ``--resume`` continues a run only with the config it was started with (:func:`check_resumable`),
  checked before anything is written: the checkpoint holds that model, optimizer and schedule. Settings that change
  speed or checkpointing, not results (:data:`RESUMABLE_CHANGES`), may differ.
- **Outputs.** Every ``fw predict`` / ``fw evaluate`` call writes into a directory of its own
  (:func:`output_directory`): ``<run>/predictions/``, ``<run>/predictions_1/`` … (``evaluation/`` for evaluate),
  or ``--output_directory O`` as long as O holds no earlier outputs (else ``O_1``, ``O_2`` …). Inside, the files
  keep Ludwig's names: ``predictions.parquet``, ``predictions.csv``, ``test_statistics.json``.

No torch here: the light verbs may import it.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from fw import artifacts, atomic, console
from fw.config.view import schema_default
from fw.errors import FwError, UsageError, shown

LOCK_FILE = ".lock"
#: what fw predict / fw evaluate write; a directory holding any of them is never written into again
OUTPUT_FILES = ("predictions.parquet", "predictions.csv", artifacts.TEST_STATISTICS)
#: the directory each verb's outputs go to under the run of ``--model_path``
OUTPUT_DIRS = {"predict": "predictions", "evaluate": "evaluation"}
#: config paths that may change on ``--resume``: they change how fast the run goes, how often it saves, or what
#: happens after training, not the weights, optimizer and schedule a checkpoint continues
RESUMABLE_CHANGES = ("trainer.eval_batch_size", "trainer.enable_gradient_checkpointing", "trainer.chunked_loss",
                     "trainer.compile", "trainer.steps_per_checkpoint", "generation", "adapter.postprocessor",
                     "adapters.merge")
#: config sections that make up the model a checkpoint holds
MODEL_SECTIONS = ("base_model", "adapter", "adapters", "quantization", "model_parameters")


# -- names -------------------------------------------------------------------------------------------------------
def check_name(flag: str, value: str) -> str:
    """``value`` if it is one plain directory name; a :class:`UsageError` for anything that could leave
    ``--output_directory`` (``..``, an absolute path, a separator)."""
    if value and value not in (".", "..") and not any(sep in value for sep in ("/", "\\", "\0")):
        return value
    raise UsageError(f"{flag}: {shown(value)} is not a plain name (one without '/' or '\\', not '.' or '..'): "
                     "a run goes to <output_directory>/<experiment_name>_<model_name>/. To group runs, give "
                     "--output_directory results/<group> instead.")


def run_name(experiment_name: str, model_name: str) -> str:
    return f"{check_name('--experiment_name', experiment_name)}_{check_name('--model_name', model_name)}"


def numbered(base: Path) -> Iterator[Path]:
    """``base``, ``base_1``, ``base_2`` …"""
    base = Path(base) if Path(base).name else Path(base).resolve()
    yield base
    for number in itertools.count(1):
        yield base.with_name(f"{base.name}_{number}")


# -- run directories ---------------------------------------------------------------------------------------------
def new_run_directory(output_directory: str | Path, experiment_name: str, model_name: str = "run") -> Path:
    """Make ``<output>/<experiment>_<run>``, or the first free ``…_1``, ``…_2`` (made exclusively: two processes
    starting at once get two directories)."""
    for candidate in numbered(Path(output_directory) / run_name(experiment_name, model_name)):
        try:
            candidate.mkdir(parents=True)
        except FileExistsError:
            continue
        return candidate
    raise AssertionError("unreachable")


def existing_run_directories(output_directory: str | Path, experiment_name: str, model_name: str = "run") -> list[Path]:
    return [path for path in numbered_siblings(Path(output_directory) / run_name(experiment_name, model_name))
            if path.is_dir()]


def run_directory_to_resume(output_directory, experiment_name: str, model_name: str = "run") -> Path:
    """The newest run directory of this experiment that has a checkpoint."""
    for candidate in reversed(existing_run_directories(output_directory, experiment_name, model_name)):
        if latest_checkpoint_of(candidate) is not None:
            return candidate
    raise FwError(f"--resume: no run of experiment '{experiment_name}' with a checkpoint under "
                  f"{output_directory}/ (looked for {run_name(experiment_name, model_name)}*/checkpoints). "
                  "Run without --resume to start training.")


def clear_leftovers(run_dir: Path) -> None:
    """Remove what a killed process left half-written in a run (under the run lock)."""
    for directory in (run_dir, run_dir / "checkpoints"):
        atomic.remove_leftovers(directory)


# -- the lock ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[Path]:
    """Hold the run's lock for the block; another process holding it is a one-line :class:`FwError` naming its
    pid. POSIX only (``fcntl``); the lock is advisory: it stops fw, not other programs."""
    import fcntl

    path = Path(run_dir) / LOCK_FILE
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the whole block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()[:100] or "another process"
            raise FwError(f"{run_dir} is in use: {holder} is training in it. Wait for it to finish (or stop it: "
                          "Ctrl-C or kill saves a checkpoint), then run again; or start a new run without "
                          "--resume.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield path
    finally:
        handle.close()  # closing releases the lock; the file stays (deleting it would race with a new holder)


# -- a run, claimed ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def new_run(output_directory, experiment_name: str, model_name: str) -> Iterator[Path]:
    """A new run directory, locked for the block. When the block fails before a checkpoint was written, the
    directory is removed again: a run that never trained leaves nothing behind."""
    run_dir = new_run_directory(output_directory, experiment_name, model_name)
    with locked(run_dir):
        try:
            yield run_dir
        except BaseException:
            if latest_checkpoint_of(run_dir) is None:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


@contextlib.contextmanager
def resumed_run(output_directory, experiment_name: str, model_name: str, data: dict,
                trained_adapter: str | None = None) -> Iterator[Path]:
    """The run ``--resume`` continues, locked for the block, checked against ``data`` before anything is written
    (:func:`check_resumable`), cleared of what a killed process left half-written."""
    run_dir = run_directory_to_resume(output_directory, experiment_name, model_name)
    with locked(run_dir):
        check_resumable(run_dir, data, trained_adapter)
        clear_leftovers(run_dir)
        yield run_dir


def latest_checkpoint_of(run_dir: Path) -> Path | None:
    from fw.train.checkpoint import latest_checkpoint

    return latest_checkpoint(Path(run_dir) / "checkpoints")


def resume_hint(run_dir: Path, first: str = "") -> str:
    """What a failed ``fw train`` kept and how to go on from it (``first``: what to do before, e.g. free space)."""
    latest = latest_checkpoint_of(run_dir)
    if latest is None:
        return f"No checkpoint was written yet: {first}run fw train again."
    return f"Kept: the checkpoint {latest}; {first}run the same fw train command with --resume to continue from it."


# -- resume ------------------------------------------------------------------------------------------------------
def check_resumable(run_dir: Path, data: dict, trained_adapter: str | None = None) -> None:
    """Refuse (one line naming the keys) a ``--resume`` whose config differs from the run's ``config.yaml`` in
    anything but :data:`RESUMABLE_CHANGES`, or that trains another of its named adapters. A key the run's config
    lacks (written by an fw version without it) counts as unchanged when the new value is the schema default."""
    saved_file = Path(run_dir) / artifacts.CONFIG_FILE
    if not saved_file.is_file():
        return
    saved = yaml.safe_load(saved_file.read_text(encoding="utf-8")) or {}
    changes = [(".".join(map(str, path)), before, after) for path, before, after in changed_settings(saved, data)
               if not resumable_change(path) and not new_default(path, before, after)]
    recorded = artifacts.read_manifest(run_dir).get("trained_adapter")
    if recorded and trained_adapter and recorded != trained_adapter:
        changes.append(("--adapter", recorded, trained_adapter))
    if not changes:
        return
    listed = ", ".join(f"{path} {shown(before, 40)} -> {shown(after, 40)}" for path, before, after in changes[:4])
    more = f" and {len(changes) - 4} more" if len(changes) > 4 else ""
    held = any(path.split(".")[0] in MODEL_SECTIONS or path == "--adapter" for path, _, _ in changes)
    why = ("the checkpoint holds another model" if held else
           "the checkpoint's optimizer state and schedule were made for the old values")
    saved_model = Path(run_dir) / artifacts.MODEL_DIR
    restart = (f"; to train its saved adapter further, start a new run with adapter.pretrained_adapter_weights: "
               f"{saved_model}") if saved_model.is_dir() and not held else ""
    raise FwError(f"--resume: the config differs from the one {run_dir} was trained with: {listed}{more}; {why}. "
                  f"Put those values back to resume it, or train a new run without --resume{restart}.")


class Missing:
    """A key one of two configs does not have."""

    def __repr__(self) -> str:
        return "(absent)"


MISSING = Missing()


def changed_settings(before: Any, after: Any, path: tuple = ()) -> list[tuple[tuple, Any, Any]]:
    """(path, before, after) of every leaf that differs; lists of equal length are compared item by item."""
    if isinstance(before, dict) and isinstance(after, dict):
        keys = dict.fromkeys([*before, *after])
        return [change for key in keys
                for change in changed_settings(before.get(key, MISSING), after.get(key, MISSING), (*path, key))]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [change for index, (old, new) in enumerate(zip(before, after))
                for change in changed_settings(old, new, (*path, index))]
    return [] if before == after else [(path, before, after)]


def resumable_change(path: tuple) -> bool:
    dotted = ".".join(map(str, path))
    return any(dotted == allowed or dotted.startswith(allowed + ".") for allowed in RESUMABLE_CHANGES)


def new_default(path: tuple, before: Any, after: Any) -> bool:
    """Whether ``after`` is the core schema's default for a key that ``before`` did not have."""
    if before is not MISSING:
        return False
    try:
        return schema_default(*path) == after
    except (KeyError, TypeError):
        return False


# -- predict / evaluate outputs ----------------------------------------------------------------------------------
def output_directory(verb: str, output_directory=None, model_path=None, experiment_name: str = "experiment",
                     model_name: str = "run") -> Path:
    """A directory for this call's outputs only: ``output_directory`` (or the first free ``…_1``), else
    ``<run of model_path>/predictions`` (``evaluation``) or the first free ``…_1``, else a new
    ``results/<experiment>_<run>``. Said when it is not the one asked for."""
    if output_directory is not None:
        asked = Path(output_directory)
    elif model_path is not None:
        asked = artifacts.find_model_dir(model_path).parent / OUTPUT_DIRS[verb]
    else:
        return new_run_directory("results", experiment_name, model_name)
    chosen = fresh_directory(asked)
    if output_directory is not None and chosen != asked:
        console.info(f"--output_directory {asked} holds the outputs of an earlier call; this one goes to {chosen}")
    return chosen


def fresh_directory(base: Path) -> Path:
    """``base`` or the first ``base_1``, ``base_2`` … that holds none of :data:`OUTPUT_FILES` (made if missing)."""
    for candidate in numbered(base):
        try:
            candidate.mkdir(parents=True)
        except FileExistsError:
            if not candidate.is_dir() or holds_outputs(candidate):
                continue
        return candidate
    raise AssertionError("unreachable")


def holds_outputs(directory: Path) -> bool:
    return any((Path(directory) / name).exists() for name in OUTPUT_FILES)


def test_statistics_of(run_dir: Path) -> Path:
    """The ``test_statistics.json`` of the latest ``fw evaluate`` on this run (``evaluation_N/``, else
    ``evaluation/``, else one at the top: a run directory from before outputs had directories of their own)."""
    run_dir = Path(run_dir)
    evaluations = [path for path in numbered_siblings(run_dir / OUTPUT_DIRS["evaluate"])
                   if (path / artifacts.TEST_STATISTICS).is_file()]
    return (evaluations[-1] if evaluations else run_dir) / artifacts.TEST_STATISTICS


def run_records(run_dir: Path) -> dict[str, Path]:
    """File name -> where it is, of the records a model card reports: manifest, training and test statistics."""
    run_dir = Path(run_dir)
    return {artifacts.MANIFEST: run_dir / artifacts.MANIFEST,
            artifacts.TRAINING_STATISTICS: run_dir / artifacts.TRAINING_STATISTICS,
            artifacts.TEST_STATISTICS: test_statistics_of(run_dir)}


def numbered_siblings(base: Path) -> list[Path]:
    """The existing ``base``, ``base_1``, ``base_2`` …, in number order."""
    if not base.parent.is_dir():
        return []
    found = {0 if path.name == base.name else int(path.name[len(base.name) + 1:]): path
             for path in base.parent.iterdir()
             if path.name == base.name or (path.name.startswith(base.name + "_")
                                           and path.name[len(base.name) + 1:].isdigit())}
    return [found[number] for number in sorted(found)]

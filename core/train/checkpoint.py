"""Resumable training checkpoints, written atomically, in safetensors + JSON only (no pickle).

A checkpoint is a directory ``checkpoints/step-<N>/`` holding

- ``weights.safetensors``: every trainable parameter (the adapter's, or the whole model's in a full fine-tune);
- ``optimizer.safetensors`` + ``optimizer.json``: the optimizer's tensors and its param groups / scalars;
- ``state.json``: scheduler state, data position (epoch, next micro-batch, optimizer step), training history,
  RNG states (python, numpy; torch's in ``rng.safetensors``).

Each directory is written under a temporary name, every file fsynced, then renamed into place; the pointer
``checkpoints/latest.json`` is replaced atomically afterwards. A crash at any moment leaves either the previous
checkpoint or the new one, never a half-written one (:mod:`fw.atomic`, which also writes ``model/``).

In a job of several processes (fw.train.parallel) the random states of every process are kept (``rng.safetensors``
keys ``rank<N>.…`` and ``state.json``'s ``rng_ranks`` beside the main process's, which keep their one-process
names), so that dropout draws resume where they were. Under DDP every process holds the same weights and optimizer
state: the main process writes them as one process does. Under FSDP every process holds a shard: the weights and
optimizer tensors go through ``torch.distributed.checkpoint`` into ``sharded/`` (its safetensors storage, each
process writing its own shards, with their offsets in the file headers), the rest of the optimizer state into
``optimizer.json``; ``torch.distributed.checkpoint`` reads them back into any number of processes (it reshards).
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from fw.atomic import atomic_directory, write_json_atomic

LATEST = "latest.json"
BEST = "best"
KEEP = 2
#: the torch.distributed.checkpoint shards of an FSDP checkpoint
SHARDS = "sharded"


# -- what is saved -----------------------------------------------------------------------------------------------
def trainable_state(model) -> dict:
    """Name -> copy of every trainable parameter (copies: safetensors refuses shared storage)."""
    return {name: param.detach().to("cpu").contiguous().clone()
            for name, param in model.named_parameters() if param.requires_grad}


def load_trainable_state(model, state: dict) -> None:
    import torch

    parameters = dict(model.named_parameters())
    missing = [name for name in state if name not in parameters]
    if missing:
        from fw.errors import FwError

        raise FwError(f"checkpoint does not match the model (unknown parameter {missing[0]}); was the config "
                      "changed since the checkpoint was written? Start a new run instead of --resume.")
    with torch.no_grad():
        for name, value in state.items():
            parameters[name].copy_(value.to(parameters[name].device, parameters[name].dtype))


def optimizer_to_files(optimizer) -> tuple[dict, dict]:
    """(tensors, json) of an optimizer's state_dict."""
    import torch

    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars[f"{index}.{key}"] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in group.items()} for group in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_files(optimizer, tensors: dict, described: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in list(tensors.items()) + list(described["scalars"].items()):
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in described["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> tuple[dict, dict]:
    """(tensors, json) of the torch / cuda / python / numpy random states."""
    import numpy
    import torch

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, value in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = value
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = numpy.random.get_state()
    described = {"python": [version, list(internal), gauss],
                 "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)]}
    return tensors, described


def rng_files(states: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """(tensors, json) of the random states of every process, in rank order: the main process's under their
    one-process names, the others' tensors as ``rank<N>.<name>`` and their json in ``rng_ranks``."""
    (tensors, described), others = states[0], states[1:]
    tensors = dict(tensors)
    for rank, (their_tensors, _) in enumerate(others, start=1):
        tensors.update({f"rank{rank}.{key}": value for key, value in their_tensors.items()})
    return tensors, {**described, "rng_ranks": [their for _, their in others]}


def rng_of_rank(tensors: dict, described: dict, rank: int) -> tuple[dict, dict] | None:
    """The random states process ``rank`` saved (None: it did not save any)."""
    if rank == 0:
        return tensors, described
    ranks = described.get("rng_ranks") or []
    if rank > len(ranks):
        return None
    prefix = f"rank{rank}."
    return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}, ranks[rank - 1]


def restore_rng(tensors: dict, described: dict) -> None:
    import numpy
    import torch

    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[key] for key in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = described["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = described["numpy"]
    numpy.random.set_state((kind, numpy.array(keys, dtype=numpy.uint32), position, has_gauss, cached))


# -- checkpoints -------------------------------------------------------------------------------------------------
def checkpoint_directory(checkpoints: Path, step: int) -> Path:
    return Path(checkpoints) / f"step-{step:08d}"


def save_checkpoint(checkpoints: Path, step: int, model, optimizer, scheduler, position: dict,
                    history: dict | None = None, rngs: list[tuple[dict, dict]] | None = None) -> Path:
    """Write ``checkpoints/step-<step>`` atomically, point ``latest.json`` at it, keep the last few. ``rngs``: the
    random states of every process of a job, in rank order (default: this process's)."""
    from safetensors.torch import save_file

    final = checkpoint_directory(checkpoints, step)
    with atomic_directory(final) as directory:
        save_file(trainable_state(model), str(directory / "weights.safetensors"))
        tensors, described = optimizer_to_files(optimizer)
        save_file(tensors, str(directory / "optimizer.safetensors"))
        (directory / "optimizer.json").write_text(json.dumps(described))
        write_state(directory, step, scheduler, position, history, rngs)
    return point_latest(checkpoints, final, step)


def write_state(directory: Path, step: int, scheduler, position: dict, history: dict | None,
                rngs: list[tuple[dict, dict]] | None) -> None:
    """``rng.safetensors`` and ``state.json``: random states, schedule, data position, history."""
    from safetensors.torch import save_file

    rng_tensors, rng_described = rng_files(rngs or [rng_state()])
    save_file(rng_tensors, str(directory / "rng.safetensors"))
    state = {"step": step, "position": position, "scheduler": scheduler.state_dict(), "rng": rng_described,
             "history": history or {}}
    (directory / "state.json").write_text(json.dumps(state))


def point_latest(checkpoints: Path, final: Path, step: int) -> Path:
    """Make ``final`` the checkpoint a resume starts from; keep the last few."""
    write_json_atomic(Path(checkpoints) / LATEST, {"checkpoint": final.name, "step": step})
    prune(Path(checkpoints), keep=KEEP)
    return final


def prune(checkpoints: Path, keep: int) -> None:
    steps = sorted(path for path in Path(checkpoints).glob("step-*") if path.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(checkpoints: Path) -> Path | None:
    pointer = Path(checkpoints) / LATEST
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except (OSError, ValueError, KeyError):
        return None
    path = Path(checkpoints) / name
    return path if (path / "state.json").is_file() else None


def is_sharded(path: Path) -> bool:
    """Whether the checkpoint at ``path`` was written by an FSDP job (its weights are shards)."""
    return (Path(path) / SHARDS).is_dir()


def load_checkpoint(path: Path, model, optimizer, scheduler, rank: int = 0) -> dict:
    """Restore weights, optimizer, scheduler and the random states of process ``rank`` from ``path``; return its
    state (position, history)."""
    from safetensors.torch import load_file

    path = Path(path)
    if is_sharded(path):  # written by an FSDP job: torch.distributed.checkpoint reassembles its shards here
        return load_sharded_checkpoint(path, model, optimizer, scheduler, rank)
    load_trainable_state(model, load_file(str(path / "weights.safetensors")))
    optimizer_from_files(optimizer, load_file(str(path / "optimizer.safetensors")),
                         json.loads((path / "optimizer.json").read_text()))
    return read_state(path, scheduler, rank)


def read_state(path: Path, scheduler, rank: int = 0) -> dict:
    """Restore the schedule and the random states of process ``rank`` (when it saved them); the checkpoint's
    state (position, history)."""
    from safetensors.torch import load_file

    state = json.loads((Path(path) / "state.json").read_text())
    scheduler.load_state_dict(state["scheduler"])
    saved = rng_of_rank(load_file(str(Path(path) / "rng.safetensors")), state["rng"], rank)
    if saved is not None:
        restore_rng(*saved)
    return state


# -- sharded (FSDP) checkpoints --------------------------------------------------------------------------------------
def sharded_state(model, optimizer) -> tuple[dict, dict]:
    """(tensors, the rest): this process's shards of the trainable weights (``model.<name>``) and of the optimizer
    state (``optimizer.state.<name>.<key>``), and the optimizer's other values (learning rates, betas …), by
    torch.distributed.checkpoint's names. Initializes an optimizer that has not stepped yet (at learning rate 0)."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(ignore_frozen_params=True, flatten_optimizer_state_dict=True)
    model_state, optimizer_state = get_state_dict(model, optimizer, options=options)
    tensors = {f"model.{name}": value for name, value in model_state.items()}
    tensors.update({f"optimizer.{name}": value for name, value in optimizer_state.items() if torch.is_tensor(value)})
    rest = {name: list(value) if isinstance(value, tuple) else value for name, value in optimizer_state.items()
            if not torch.is_tensor(value)}
    return tensors, rest


def write_shards(directory: Path, model, optimizer) -> dict:
    """Every process writes its shards into ``directory/sharded`` (collective); the optimizer's other values."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    tensors, rest = sharded_state(model, optimizer)
    dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(Path(directory) / SHARDS), save_distributed=True))
    return rest


def load_sharded_checkpoint(path: Path, model, optimizer, scheduler, rank: int = 0) -> dict:
    """Restore an FSDP checkpoint into this process's shards — any number of processes, one included:
    torch.distributed.checkpoint reshards — the schedule and the random states of process ``rank``; the
    checkpoint's state (collective in a job)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    path = Path(path)
    if not is_sharded(path):
        from fw.errors import FwError

        raise FwError(f"--resume: {path} was not written by an FSDP job; resume it with the strategy it was "
                      "trained with (backend.trainer.strategy).")
    tensors, _ = sharded_state(model, optimizer)
    dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(path / SHARDS)))
    rest = json.loads((path / "optimizer.json").read_text())
    optimizer_state = {**{name[len("optimizer."):]: value for name, value in tensors.items()
                          if name.startswith("optimizer.")}, **rest}
    model_state = {name[len("model."):]: value for name, value in tensors.items() if name.startswith("model.")}
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state,
                   options=StateDictOptions(ignore_frozen_params=True, flatten_optimizer_state_dict=True, strict=False))
    return read_state(path, scheduler, rank)


def save_best(checkpoints: Path, model, metrics: dict) -> None:
    """Keep the best weights so far in ``checkpoints/best`` (atomically)."""
    from safetensors.torch import save_file

    with atomic_directory(Path(checkpoints) / BEST) as directory:
        save_file(trainable_state(model), str(directory / "weights.safetensors"))
        (directory / "metrics.json").write_text(json.dumps(metrics))


def restore_best(checkpoints: Path, model) -> dict | None:
    from safetensors.torch import load_file

    best = Path(checkpoints) / BEST
    if not (best / "weights.safetensors").is_file():
        return None
    load_trainable_state(model, load_file(str(best / "weights.safetensors")))
    return json.loads((best / "metrics.json").read_text())

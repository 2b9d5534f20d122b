"""Resumable training checkpoints, written atomically, in safetensors + JSON only (no pickle).

A checkpoint is a directory ``checkpoints/step-<N>/`` holding

- ``weights.safetensors``: every trainable parameter (the adapter's, or the whole model's in a full fine-tune);
- ``optimizer.safetensors`` + ``optimizer.json``: the optimizer's tensors and its param groups / scalars;
- ``state.json``: scheduler state, data position (epoch, next micro-batch, optimizer step), training history,
  RNG states (python, numpy; torch's in ``rng.safetensors``).

Each directory is written under a temporary name, every file fsynced, then renamed into place; the pointer
``checkpoints/latest.json`` is replaced atomically afterwards. A crash at any moment leaves either the previous
checkpoint or the new one, never a half-written one (:mod:`fw.atomic`, which also writes ``model/``).
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
def save_checkpoint(checkpoints: Path, step: int, model, optimizer, scheduler, position: dict,
                    history: dict | None = None) -> Path:
    """Write ``checkpoints/step-<step>`` atomically, point ``latest.json`` at it, keep the last few."""
    from safetensors.torch import save_file

    checkpoints = Path(checkpoints)
    final = checkpoints / f"step-{step:08d}"
    with atomic_directory(final) as directory:
        save_file(trainable_state(model), str(directory / "weights.safetensors"))
        tensors, described = optimizer_to_files(optimizer)
        save_file(tensors, str(directory / "optimizer.safetensors"))
        (directory / "optimizer.json").write_text(json.dumps(described))
        rng_tensors, rng_described = rng_state()
        save_file(rng_tensors, str(directory / "rng.safetensors"))
        state = {"step": step, "position": position, "scheduler": scheduler.state_dict(),
                 "rng": rng_described, "history": history or {}}
        (directory / "state.json").write_text(json.dumps(state))
    write_json_atomic(checkpoints / LATEST, {"checkpoint": final.name, "step": step})
    prune(checkpoints, keep=KEEP)
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


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG from ``path``; return its state (position, history)."""
    from safetensors.torch import load_file

    path = Path(path)
    load_trainable_state(model, load_file(str(path / "weights.safetensors")))
    optimizer_from_files(optimizer, load_file(str(path / "optimizer.safetensors")),
                         json.loads((path / "optimizer.json").read_text()))
    state = json.loads((path / "state.json").read_text())
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(load_file(str(path / "rng.safetensors")), state["rng"])
    return state


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

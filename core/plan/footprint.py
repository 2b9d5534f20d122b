"""What a model occupies while it trains, found without reading a single weight (for ``fw plan``).

- :func:`meta_model`: the base model built from its ``config.json`` alone on the meta device (shapes and dtypes,
  no storage); :func:`with_adapter` applies the configured adapter through fw's own
  :func:`fw.model.loading.apply_adapter`.
- :func:`inventory`: its parameters (total, trainable, bytes), with the storage the configured quantizer plugin
  gives the layers it replaces (its ``training_bytes``). Quantization is counted, not run: it needs the real
  weights (and some backends a GPU).
- :func:`simulate_step`: the peak memory of one micro-batch's forward and backward pass, run for real on fake
  tensors (torch's ``FakeTensorMode``: every operator computes its output's shape and dtype and allocates
  nothing), through fw's loss path, with gradient checkpointing as the trainer enables it. A dispatch mode adds
  up the bytes of the tensors alive after every operator; gradients are told apart from activations by a hook
  on every parameter.
"""
from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass, field

from fw.config import view
from fw.errors import FwError
from fw.model.loading import apply_adapter, refuse_remote_code, resolve_location
from fw.plugin.models import hub_error_message, hub_token
from fw.train.loss import chunked_cross_entropy, transformers_model


# -- the model, from its config -----------------------------------------------------------------------------------
def base_model_config(data: dict):
    """The base model's ``transformers`` config (a local directory or a hub id); no weights are read."""
    from transformers import AutoConfig

    name = view.base_model(data)
    location = resolve_location(name)
    if os.path.isdir(location):
        refuse_remote_code(location, name)
    try:
        return AutoConfig.from_pretrained(location, token=hub_token(), trust_remote_code=False)
    except Exception as exc:  # any library failure becomes one line
        raise FwError(hub_error_message(name, exc)) from None


def meta_model(model_config, dtype):
    """The causal LM of ``model_config`` on the meta device in ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        try:
            return AutoModelForCausalLM.from_config(model_config, dtype=dtype, attn_implementation="sdpa")
        except ValueError:  # an architecture without an SDPA kernel
            return AutoModelForCausalLM.from_config(model_config, dtype=dtype, attn_implementation="eager")


def with_adapter(model, data: dict):
    """The meta ``model`` wrapped with the config's adapter (or every parameter trainable: a full fine-tune)
    exactly as ``fw train`` wraps it (:func:`fw.model.loading.apply_adapter`)."""
    import torch

    with torch.device("meta"):
        return apply_adapter(model, without_data_initializers(data))


def without_data_initializers(data: dict) -> dict:
    """``data`` with every named LoRA initializer (``init_lora_weights: pissa``, ``eva``...) replaced by the default:
    an initializer sets starting values (from weights or data that a plan does not read), not shapes."""
    changed = dict(data)
    if isinstance((data.get("adapter") or {}).get("init_lora_weights"), str):
        changed["adapter"] = {**data["adapter"], "init_lora_weights": True}
    named = (data.get("adapters") or {}).get("adapters")
    if named:
        changed["adapters"] = {**data["adapters"], "adapters": {
            name: ({**section, "init_lora_weights": True}
                   if isinstance(section.get("init_lora_weights"), str) else section)
            for name, section in named.items()}}
    return changed


# -- parameters and their bytes ---------------------------------------------------------------------------------
@dataclass
class Inventory:
    """The parameters of the model as it trains."""

    total: int = 0
    #: parameters of the base model (the rest belong to the adapter)
    base: int = 0
    trainable: int = 0
    #: bytes of every parameter as stored (quantized layers at their quantized size)
    weight_bytes: float = 0.0
    #: bytes of the trainable parameters (= their gradients)
    trainable_bytes: float = 0.0
    #: (shape, bytes per element) of every trainable parameter (the optimizer's state is shaped after them)
    trainable_shapes: list = field(default_factory=list)
    quantized: int = 0
    #: the largest group of parameters FSDP gathers at once (a decoder layer, or what is left outside them)
    largest_unit_bytes: float = 0.0
    largest_unit_trainable_bytes: float = 0.0


def quantized_weights(model) -> set[int]:
    """``id`` of the weight of every ``nn.Linear`` a quantizer replaces: all but the output head (transformers'
    bitsandbytes and torchao quantizers keep it, and any layer sharing its weight, in full precision)."""
    import torch

    head = model.get_output_embeddings()
    keep = {id(head.weight)} if head is not None else set()
    return {id(module.weight) for module in model.modules()
            if isinstance(module, torch.nn.Linear) and id(module.weight) not in keep}


@dataclass(frozen=True)
class BaseModel:
    """What the base model had before an adapter was applied (PEFT wraps it in place): the ``id`` of its
    parameters, and of the Linear weights a quantizer replaces."""

    parameters: frozenset
    quantizable: frozenset

    @classmethod
    def of(cls, model) -> BaseModel:
        return cls(frozenset(id(parameter) for parameter in model.parameters()), frozenset(quantized_weights(model)))


def inventory(model, bytes_of=None, base: BaseModel | None = None) -> Inventory:
    """Count ``model``'s parameters (shared ones once) and their bytes; ``bytes_of(shape, element_size, replaced)``:
    bytes per element under the configured quantizer (its ``training_bytes``; ``replaced`` for the weight of a
    Linear layer it quantizes), None without quantization; ``base``: the base model as it was before the adapter
    (None: ``model`` is the base model)."""
    base = base or BaseModel.of(model)
    replaced = base.quantizable if bytes_of else frozenset()
    base_ids = base.parameters
    counted = Inventory()
    sizes = {}
    for parameter in {id(p): p for p in model.parameters()}.values():
        element = parameter.element_size()
        if bytes_of is not None:
            quantized = id(parameter) in replaced
            element = bytes_of(tuple(parameter.shape), element, quantized)
            counted.quantized += parameter.numel() if quantized and element < parameter.element_size() else 0
        size = parameter.numel() * element
        sizes[id(parameter)] = size
        counted.total += parameter.numel()
        counted.base += parameter.numel() if id(parameter) in base_ids else 0
        counted.weight_bytes += size
        if parameter.requires_grad:
            counted.trainable += parameter.numel()
            counted.trainable_bytes += size
            counted.trainable_shapes.append((tuple(parameter.shape), element))
    counted.largest_unit_bytes, counted.largest_unit_trainable_bytes = largest_unit(model, sizes)
    return counted


def decoder_layers(model):
    """The decoder's repeated blocks (the largest ``nn.ModuleList`` in the model)."""
    import torch

    lists = [module for module in model.modules() if isinstance(module, torch.nn.ModuleList)]
    return max(lists, key=len) if lists else []


def largest_unit(model, sizes: dict[int, float]) -> tuple[float, float]:
    """(bytes, trainable bytes) of the largest group FSDP shards and gathers as one: each decoder layer, and the
    parameters outside them (embeddings, final norm, output head) as the root's group."""
    units, inside = [], set()
    for layer in decoder_layers(model):
        parameters = list(layer.parameters())
        inside.update(id(p) for p in parameters)
        units.append(parameters)
    units.append([p for p in model.parameters() if id(p) not in inside])
    measured = [(sum(sizes.get(id(p), 0) for p in unit), sum(sizes.get(id(p), 0) for p in unit if p.requires_grad))
                for unit in units]
    return max(measured, key=lambda pair: pair[0])


# -- one training step on fake tensors --------------------------------------------------------------------------
@dataclass
class StepPeak:
    """Bytes of one forward + backward pass: ``activations`` is the peak of everything alive that is not a
    parameter or a gradient (saved activations, their gradients, temporaries); ``with_gradients`` the peak of that
    plus the parameters' gradients alive at the same moment; ``gradients`` the gradients at the end."""

    activations: int
    with_gradients: int
    gradients: int

    @property
    def gradients_at_peak(self) -> int:
        return self.with_gradients - self.activations


class LiveBytes:
    """A dispatch mode that keeps the bytes of the tensor storages alive (created inside it), and their peak;
    storages that become gradients (:meth:`as_gradient`) are counted apart, and those :meth:`ignore` names (the
    parameters: a view of one, such as the transposed weight a linear layer saves, holds no new memory) not at
    all."""

    def __init__(self):
        from torch.utils.weak import WeakIdKeyDictionary

        self.known = WeakIdKeyDictionary()
        self.other = self.gradients = self.peak_other = self.peak = 0
        self.mode = self._mode()

    def _mode(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for item in tree_leaves(out):
                    if isinstance(item, torch.Tensor):
                        counter.add(item.untyped_storage())
                return out

        return Mode()

    def ignore(self, storage) -> None:
        self.known[storage] = ({"size": 0, "gradient": False}, None)

    def add(self, storage) -> None:
        if storage in self.known:
            return
        size = storage.nbytes()
        entry = {"size": size, "gradient": False}
        self.known[storage] = (entry, weakref.ref(storage, lambda _: self.release(entry)))
        self.other += size
        self.peak_other = max(self.peak_other, self.other)
        self.peak = max(self.peak, self.other + self.gradients)

    def release(self, entry: dict) -> None:
        if entry["gradient"]:
            self.gradients -= entry["size"]
        else:
            self.other -= entry["size"]

    def as_gradient(self, storage) -> None:
        found = self.known.get(storage)
        if found is not None and not found[0]["gradient"]:
            found[0]["gradient"] = True
            self.other -= found[0]["size"]
            self.gradients += found[0]["size"]


def fake_parameters(model, fake_mode) -> None:
    """Swap every parameter and buffer of the meta ``model`` for a fake CPU tensor of the same shape, dtype and
    ``requires_grad`` (a tied weight stays one tensor)."""
    import torch

    swapped = {}
    with fake_mode:
        for module in model.modules():
            for name, parameter in list(module._parameters.items()):
                if parameter is None:
                    continue
                if id(parameter) not in swapped:
                    fake = torch.empty(parameter.shape, dtype=parameter.dtype, device="cpu")
                    swapped[id(parameter)] = torch.nn.Parameter(fake, requires_grad=parameter.requires_grad)
                module._parameters[name] = swapped[id(parameter)]
            for name, buffer in list(module._buffers.items()):
                if buffer is not None:
                    module._buffers[name] = torch.empty(buffer.shape, dtype=buffer.dtype, device="cpu")


def simulate_step(model, rows: int, length: int, labelled: int, chunked_loss: bool,
                  gradient_checkpointing: bool) -> StepPeak:
    """Forward and backward of one micro-batch of ``rows`` x ``length`` tokens (``labelled`` of them trained on)
    through the meta ``model`` (changed in place: its tensors become fake), on fake tensors."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    logging.getLogger("torch._subclasses.fake_tensor").setLevel(logging.CRITICAL)  # the error is reported below
    fake_mode = FakeTensorMode()
    fake_parameters(model, fake_mode)
    if gradient_checkpointing:
        from fw.train.trainer import enable_gradient_checkpointing

        enable_gradient_checkpointing(model)
    model.train()
    counter = LiveBytes()
    for tensor in [*model.parameters(), *model.buffers()]:
        counter.ignore(tensor.untyped_storage())
    hooks = [parameter.register_post_accumulate_grad_hook(lambda p: counter.as_gradient(p.grad.untyped_storage()))
             for parameter in model.parameters() if parameter.requires_grad]
    try:
        with fake_mode, counter.mode:  # noqa: SIM117 - the order matters: the counter sees the fake tensors
            batch = {"input_ids": torch.zeros(rows, length, dtype=torch.long),
                     "attention_mask": torch.ones(rows, length, dtype=torch.long)}
            loss = (chunked_head_loss(model, batch, labelled) if chunked_loss
                    else model(**batch, labels=torch.zeros(rows, length, dtype=torch.long), use_cache=False).loss)
            loss.backward()
            del loss, batch
    except Exception as exc:  # noqa: BLE001 - whatever the model's code does on fake tensors, one line for the user
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}" if str(exc) else type(exc).__name__
        raise FwError(f"fw plan: the training step of {type(model).__name__} could not be run on fake tensors "
                      f"({reason}), so its activations cannot be estimated.") from None
    finally:
        for hook in hooks:
            hook.remove()
    return StepPeak(activations=counter.peak_other, with_gradients=max(counter.peak, counter.peak_other),
                    gradients=counter.gradients)


def chunked_head_loss(model, batch: dict, labelled: int):
    """fw's chunked loss (:func:`fw.train.loss.chunked_loss_sum`) on fake tensors: the decoder, the hidden states
    of the ``labelled`` positions, then the head and cross-entropy in chunks (under checkpointing when there is
    more than one). The positions are taken with ``index_select``: fw's boolean mask has a data-dependent size,
    which fake tensors cannot compute."""
    import torch

    base = transformers_model(model)
    hidden = base.get_decoder()(**batch, use_cache=False).last_hidden_state
    flat = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    labelled = max(1, min(labelled, flat.shape[0]))
    states = flat.index_select(0, torch.zeros(labelled, dtype=torch.long))
    return chunked_cross_entropy(base.get_output_embeddings(), states, torch.zeros(labelled, dtype=torch.long))

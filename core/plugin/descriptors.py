"""Typed plugin descriptors: what a plugin hands to fw through its hook.

Each descriptor is a small frozen dataclass. Behaviour is referenced as a ``"module:function"`` string
and imported only when used, so listing plugins or validating a config never imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class PluginDescriptor:
    """Fields every plugin kind shares."""

    kind: ClassVar[str] = ""
    #: the value users write in the config (``adapter.type: lora``)
    name: str
    #: where the plugin's JSON Schema lives, as ``"package:relative/path.json"``
    schema: str
    #: one line for ``fw list-plugins``
    summary: str


@dataclass(frozen=True)
class AdapterPlugin(PluginDescriptor):
    """A PEFT method: turns validated ``adapter`` params into a PEFT config object."""

    kind: ClassVar[str] = "adapter"
    #: ``"module:function"``; ``function(params: dict) -> peft.PeftConfig``
    build_peft_config: str = ""
    #: LoRA-family adapters may be trained on a quantized base model (QLoRA) and take initializers
    lora_family: bool = False
    #: whether PEFT can merge this adapter's weights into the base model
    mergeable: bool = True
    #: optional ``"module:function"``; ``function(params, model) -> list[str]`` of problems found
    #: against the real model (e.g. a block size that does not divide a layer) before training
    check_model: str | None = None
    #: optional ``"module:function"``; ``function(params) -> list[tuple[key, message]]`` for cross-field
    #: rules of this adapter's own params that JSON Schema expresses poorly (OFT: r xor oft_block_size)
    check_params: str | None = None


@dataclass(frozen=True)
class InitializerPlugin(PluginDescriptor):
    """A LoRA weight initializer, chosen by ``adapter.init_lora_weights``."""

    kind: ClassVar[str] = "initializer"
    #: the value handed to PEFT's ``init_lora_weights``
    peft_value: str | bool = True
    #: adapter section key holding this initializer's sub-config (``eva_config``), validated by ``schema``
    config_key: str | None = None
    #: initializers that need a pass over training data before training (eva, corda)
    needs_data: bool = False
    #: adapter types this initializer can initialize
    adapters: tuple[str, ...] = ("lora",)
    #: optional ``"module:function"``; ``function(model, section, calibration, wrap) -> wrapped model``: wraps the
    #: model itself when the initializer needs a data pass or a step before / after wrapping (fw.model.initialization)
    prepare: str | None = None
    #: optional ``"module:function"``; ``function(section, config) -> list[tuple[key, message]]``: combinations
    #: with the adapter section or the rest of the config (quantization) this initializer cannot work with
    check_config: str | None = None


@dataclass(frozen=True)
class QuantizerPlugin(PluginDescriptor):
    """A quantization backend, chosen by ``quantization.backend``."""

    kind: ClassVar[str] = "quantizer"
    #: ``"module:function"``; ``function(params, device) -> dict`` of from_pretrained kwargs
    load_kwargs: str | None = None
    #: ``"module:function"``; ``function(model, params) -> model`` applied after loading
    transform: str | None = None
    supports_qat: bool = False


@dataclass(frozen=True)
class MatcherPlugin(PluginDescriptor):
    """A category-matching strategy for ``decoder.match.<label>``."""

    kind: ClassVar[str] = "matcher"
    #: ``"module:function"``; ``function(value) -> Callable[[str], bool]``; called once at config load,
    #: raising ``ValueError`` for a value it cannot use (a bad regex)
    compile: str = ""


@dataclass(frozen=True)
class MergeStrategyPlugin(PluginDescriptor):
    """A way of merging named adapters, chosen by ``adapters.merge.combination_type``."""

    kind: ClassVar[str] = "merge_strategy"
    #: the ``combination_type`` PEFT's ``add_weighted_adapter`` knows it by
    peft_combination_type: str = ""
    uses_density: bool = False
    #: PEFT requires all source adapters to have the same rank for this strategy
    requires_equal_ranks: bool = False


@dataclass(frozen=True)
class RetrieverPlugin(PluginDescriptor):
    """Few-shot example retrieval, chosen by ``prompt.retrieval.type``."""

    kind: ClassVar[str] = "retriever"
    #: ``"module:function"``; ``function(params, texts, directory) -> index``: ``params`` is the
    #: ``prompt.retrieval`` section plus ``seed``, ``texts`` the training rows' input texts, ``directory`` where the
    #: index keeps its files (load them when present, else write them); ``index.query(texts, k, exclude)`` returns,
    #: per query text, up to k example positions, best first, none in that query's ``exclude`` set (fw.data.retrieval)
    build_index: str = ""


DESCRIPTOR_TYPES: dict[str, type[PluginDescriptor]] = {
    cls.kind: cls
    for cls in (AdapterPlugin, InitializerPlugin, QuantizerPlugin, MatcherPlugin, MergeStrategyPlugin,
                RetrieverPlugin)
}

#: plugin kind -> name of the collecting hook
HOOK_FOR_KIND: dict[str, str] = {
    "adapter": "fw_adapters",
    "initializer": "fw_initializers",
    "quantizer": "fw_quantizers",
    "matcher": "fw_matchers",
    "merge_strategy": "fw_merge_strategies",
    "retriever": "fw_retrievers",
}
KINDS: tuple[str, ...] = tuple(HOOK_FOR_KIND)

"""Typed plugin descriptors: what a plugin hands to fw through its hook.

Each descriptor is a small frozen dataclass of data. Behaviour is referenced as a ``"module:function"`` string
and imported only when used, so listing plugins or validating a config never imports torch (see
docs/design-notes.md). Optional behaviour is ``None``: fw then does the ordinary thing.
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
    """A PEFT method: validated ``adapter`` params become a PEFT config.

    A method whose schema maps one to one onto its PEFT config class (each property's ``x-peft`` names the PEFT
    field) is declared with ``peft_config_class`` alone; ``build_peft_config`` is for methods that convert values.
    """

    kind: ClassVar[str] = "adapter"
    #: name of the ``peft`` config class (``"BOFTConfig"``) the schema's ``x-peft`` fields map onto
    peft_config_class: str = ""
    #: the method's name in prose (model cards: "A LoRA adapter"); empty: ``name``
    display_name: str = ""
    #: optional ``"module:function"``; ``function(params: dict) -> peft.PeftConfig``, replacing the plain mapping
    #: (use :func:`fw.plugin.build_peft_config` with the conversions as overrides)
    build_peft_config: str | None = None
    #: LoRA-family adapters may be trained on a quantized base model (QLoRA), take initializers and be merged
    #: with PEFT's ``add_weighted_adapter``
    lora_family: bool = False
    #: whether PEFT can merge this adapter's weights into the base model
    mergeable: bool = True
    #: PEFT's parameter-name prefix of this method's weights where it is not ``"<name>_"`` (LoHa: ``"hada_"``);
    #: fw warns when a named adapter's name is part of it
    peft_prefix: str | None = None
    #: optional ``"module:function"``; ``function(params, model) -> list[str]`` of ``"<key>: <message>"`` problems
    #: found against the real model (e.g. a block size that does not divide a layer) before training
    check_model: str | None = None
    #: optional ``"module:function"``; ``function(params, explicit_keys) -> list[tuple[key, message]]`` for
    #: cross-field rules of this adapter's own params that JSON Schema expresses poorly (OFT: r xor oft_block_size)
    check_params: str | None = None
    #: optional ``"module:function"``; ``function(name, params, first: bool) -> list[tuple[key, message, hint]]``:
    #: why PEFT's ``add_weighted_adapter`` cannot merge the adapter ``name`` as a merge source (``first``: listed first)
    check_merge_source: str | None = None
    #: optional ``"module:function"``; ``function(model) -> list[str]``: the modules to target when
    #: ``target_modules`` is null and PEFT has no default for the architecture (else: every linear layer)
    default_target_modules: str | None = None
    #: optional ``"module:function"``; ``function(params, planned_steps: int) -> params``: the section completed
    #: with what depends on the run's number of optimizer steps (AdaLoRA's ``total_step``); may raise FwError
    with_planned_steps: str | None = None
    #: optional ``"module:function"``; ``function(model, params, learning_rate, weight_decay) -> list[dict]``: the
    #: optimizer's parameter groups of the trainable parameters (LoRA+: the B matrices at a higher rate)
    parameter_groups: str | None = None
    #: optional ``"module:function"``; ``function(model, global_step: int) -> None`` run after every optimizer
    #: step, while the gradients still exist (AdaLoRA's rank reallocation)
    after_step: str | None = None
    #: optional ``"module:function"``; ``function(params) -> str | None``: why vLLM cannot serve an adapter of this
    #: section as a LoRA adapter (``LoRARequest``, ``--lora-modules``), a phrase naming vLLM, or None when it can
    #: (LoRA: it can but with DoRA). Unset: vLLM serves no adapter of this method. The model card shows the vLLM
    #: snippet, or the reason and ``fw export --merge``
    vllm_problem: str | None = None


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
    adapters: tuple[str, ...] = ()
    #: optional ``"module:function"``; ``function(model, section, calibration, wrap) -> wrapped model``: wraps the
    #: model itself when the initializer needs a data pass or a step before / after wrapping. ``wrap(model,
    #: **changes)`` is fw's own wrapping of the section (``wrap.peft_config(model)`` the PEFT config it would
    #: use); ``calibration.batches(n, device)`` / ``calibration.progress(label, total)`` give training rows
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
    #: optional ``"module:function"``; ``function(params) -> params``: the section as it is loaded for training
    #: (torchao: a mode whose kernels have no backward pass trains fake-quantized, ``qat: true``)
    training_params: str | None = None
    #: optional ``"module:function"``; ``function(model, params) -> model`` run on a model trained with
    #: ``qat: true`` before it is saved (torchao: fake-quantized layers become real quantized weights)
    after_training: str | None = None
    #: optional ``"module:function"``; ``function(model) -> model`` with plain weights and no quantization config,
    #: for a model loaded with weights stored quantized by this backend (its transformers ``quant_method`` is this
    #: plugin's name; ``fw export``). Unset: transformers' ``model.dequantize()`` (bitsandbytes)
    dequantize: str | None = None
    #: optional ``"module:function"``; ``function(params, shape, element_size, replaced) -> float``: bytes per element
    #: of a parameter while training on this backend (``fw plan``): ``replaced`` for the weight of a Linear layer the
    #: backend quantizes (its stored size, scales included), else for any other parameter. Unset: every parameter
    #: keeps its dtype
    training_bytes: str | None = None
    #: optional ``"module:function"``; ``function(params) -> params``: the section as it is loaded for a model whose
    #: weights FSDP shards (``strategy: fsdp``): stored in a float dtype FSDP can split; raises
    #: :class:`fw.errors.FwError` for a section whose storage cannot be sharded. Unset: the backend's weights
    #: cannot be sharded (fsdp is refused; ddp keeps the quantized base on every GPU)
    for_sharding: str | None = None


@dataclass(frozen=True)
class MatcherPlugin(PluginDescriptor):
    """A category-matching strategy for ``decoder.match.<label>``."""

    kind: ClassVar[str] = "matcher"
    #: ``"module:function"``; ``function(value, options) -> Callable[[str], bool]``; also called once while the
    #: config is validated, raising ``ValueError`` for a value it cannot use (a bad regex). The callable may raise
    #: ``TimeoutError`` when its search ran out of time: the text counts as not matched, and fw counts and reports it
    compile: str = ""


@dataclass(frozen=True)
class MergeStrategyPlugin(PluginDescriptor):
    """A way of merging named adapters, chosen by ``adapters.merge.combination_type``.

    The section keys whose schema property names a PEFT argument in ``x-peft`` (``density``, ``svd_rank``) are
    passed to ``add_weighted_adapter`` when set."""

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
    #: optional ``"module:function"``; ``function(params) -> params`` with local paths made absolute (and checked),
    #: so the saved index works from any directory; called before the index is built or looked up
    localize_params: str | None = None


@dataclass(frozen=True)
class DecoderPlugin(PluginDescriptor):
    """Turns generated texts into output values, chosen by ``output_features[0].decoder.type``."""

    kind: ClassVar[str] = "decoder"
    #: ``"module:function"``; ``function(texts: list[str], config: dict) -> fw.plugin.DecodedOutputs``: one value
    #: per generated text (the validated config gives the output feature and this decoder's section)
    decode: str = ""
    #: output feature types (``text``, ``category``) this decoder can produce
    output_types: tuple[str, ...] = ("text",)
    #: optional ``"module:function"``; ``function(params, explicit_keys) -> list[tuple[key, message]]``, as for
    #: adapters: cross-field rules of the decoder section
    check_params: str | None = None


@dataclass
class DecodedOutputs:
    """What a decoder returns: one output value per generated text, extra prediction columns (name -> one value
    per row), for category outputs whether a label really matched (False: ``fallback_label`` was used), and how
    many texts each label's matcher gave up on (``TimeoutError``: counted as no match; fw warns and records it)."""

    values: list
    columns: dict[str, list] = field(default_factory=dict)
    matched: list[bool] | None = None
    timeouts: dict[str, int] = field(default_factory=dict)


DESCRIPTOR_TYPES: dict[str, type[PluginDescriptor]] = {
    cls.kind: cls
    for cls in (AdapterPlugin, InitializerPlugin, QuantizerPlugin, MatcherPlugin, MergeStrategyPlugin,
                RetrieverPlugin, DecoderPlugin)
}

#: plugin kind -> name of the collecting hook
HOOK_FOR_KIND: dict[str, str] = {
    "adapter": "fw_adapters",
    "initializer": "fw_initializers",
    "quantizer": "fw_quantizers",
    "matcher": "fw_matchers",
    "merge_strategy": "fw_merge_strategies",
    "retriever": "fw_retrievers",
    "decoder": "fw_decoders",
}
KINDS: tuple[str, ...] = tuple(HOOK_FOR_KIND)

"""Hook specifications of fw's plugin system (pluggy project ``"fw"``).

A plugin is a module (or object) registered under the ``fw`` entry-point group. It implements one or more of
these collecting hooks, each returning descriptors (see :mod:`fw.plugin.descriptors`). fw never picks a plugin by
hook order: the config's ``type`` (or ``backend``, ``combination_type``) names it, and the registry looks it up.
"""
from __future__ import annotations

from collections.abc import Iterable

import pluggy

from fw.plugin.descriptors import (AdapterPlugin, DecoderPlugin, InitializerPlugin, MatcherPlugin,
                                   MergeStrategyPlugin, QuantizerPlugin, RetrieverPlugin)

PROJECT_NAME = "fw"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def fw_adapters() -> Iterable[AdapterPlugin]:
    """Return the PEFT adapter types this plugin provides (``adapter.type``)."""


@hookspec
def fw_initializers() -> Iterable[InitializerPlugin]:
    """Return the LoRA weight initializers this plugin provides (``adapter.init_lora_weights``)."""


@hookspec
def fw_quantizers() -> Iterable[QuantizerPlugin]:
    """Return the quantization backends this plugin provides (``quantization.backend``)."""


@hookspec
def fw_matchers() -> Iterable[MatcherPlugin]:
    """Return the category-matching strategies this plugin provides (``decoder.match.<label>.type``)."""


@hookspec
def fw_merge_strategies() -> Iterable[MergeStrategyPlugin]:
    """Return the adapter merge strategies this plugin provides (``adapters.merge.combination_type``)."""


@hookspec
def fw_retrievers() -> Iterable[RetrieverPlugin]:
    """Return the few-shot retrievers this plugin provides (``prompt.retrieval.type``)."""


@hookspec
def fw_decoders() -> Iterable[DecoderPlugin]:
    """Return the output decoders this plugin provides (``output_features[0].decoder.type``)."""

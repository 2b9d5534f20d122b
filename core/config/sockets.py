"""Where plugin-owned sections live in a config, and which key names their plugin.

A *socket* is a place in the config whose content a plugin validates: ``adapter`` (by ``type``),
``quantization`` (by ``backend``), ``adapters.merge`` (by ``combination_type``), ``prompt.retrieval`` (by
``type``), each output's ``decoder`` (by ``type``; its default follows the output type, as the core schema's
``x-fw-default-type`` says) and each ``decoder.match.<label>`` entry (by ``type``). The core knows the places;
plugins own the contents.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from fw.config.store import core_schema
from fw.config.walk import Path


@dataclass(frozen=True)
class Socket:
    kind: str
    #: the key whose value names the plugin
    selector: str
    #: plugin used when the selector key is absent
    default: str | None = None
    #: ``$defs`` entry of the core schema whose properties every plugin of this socket also accepts
    common: str | None = None
    #: a null selector means "no plugin" (``prompt.retrieval.type: null``)
    nullable: bool = False


ADAPTER = Socket("adapter", "type", default="lora", common="adapter_common")
QUANTIZER = Socket("quantizer", "backend", default="bitsandbytes")
MERGE = Socket("merge_strategy", "combination_type", default="linear")
RETRIEVER = Socket("retriever", "type", nullable=True)
MATCHER = Socket("matcher", "type", default="contains")
#: nullable: an output type with no default decoder is the core schema's error, not a second one here
DECODER = Socket("decoder", "type", nullable=True, common="decoder_common")


def decoder_socket(feature: dict[str, Any]) -> Socket:
    """The decoder socket of an output feature: its default decoder follows the output type."""
    defaults = core_schema()["$defs"]["decoder"]["x-fw-default-type"]
    kind = feature.get("type")
    return replace(DECODER, default=defaults.get(kind) if isinstance(kind, str) else None)  # else: schema's error


def _dict(value: Any) -> dict | None:
    return value if isinstance(value, dict) else None


def find_sockets(config: dict[str, Any]) -> Iterator[tuple[Path, dict[str, Any], Socket]]:
    """Every plugin-owned section present in ``config`` with its path."""
    if (section := _dict(config.get("adapter"))) is not None:
        yield ("adapter",), section, ADAPTER
    adapters = _dict(config.get("adapters")) or {}
    for name, section in (_dict(adapters.get("adapters")) or {}).items():
        if isinstance(section, dict):
            yield ("adapters", "adapters", name), section, ADAPTER
    if (section := _dict(adapters.get("merge"))) is not None:
        yield ("adapters", "merge"), section, MERGE
    if (section := _dict(config.get("quantization"))) is not None:
        yield ("quantization",), section, QUANTIZER
    if (section := _dict((_dict(config.get("prompt")) or {}).get("retrieval"))) is not None:
        yield ("prompt", "retrieval"), section, RETRIEVER
    outputs = config.get("output_features")
    for index, feature in enumerate(outputs if isinstance(outputs, list) else []):
        decoder = _dict((_dict(feature) or {}).get("decoder"))
        if decoder is None:
            continue
        yield ("output_features", index, "decoder"), decoder, decoder_socket(feature)
        for label, entry in (_dict(decoder.get("match")) or {}).items():
            if isinstance(entry, dict):
                yield ("output_features", index, "decoder", "match", label), entry, MATCHER

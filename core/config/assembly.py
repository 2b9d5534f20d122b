"""Assembles the full JSON Schema of a config from the core schema and the installed plugins' schemas.

Each plugin-owned section becomes "the selector is one of the installed names" plus "if the selector is X
then X's schema", the shape YAML editors (yaml-language-server) understand.
"""
from __future__ import annotations

import copy
from typing import Any

from fw.plugin.registry import Registry, get_registry
from fw.config.store import core_schema, load_schema
from fw.config.sockets import ADAPTER, DECODER, MATCHER, MERGE, QUANTIZER, RETRIEVER, Socket
from fw.config.validate import plugin_schema


def _socket_schema(socket: Socket, registry: Registry, nullable: bool = True) -> dict[str, Any]:
    names = registry.names(socket.kind)
    branches = []
    for name in names:
        if not registry.has(socket.kind, name):
            continue
        schema = copy.deepcopy(plugin_schema(registry.get(socket.kind, name), socket))
        schema.pop("$schema", None)
        condition = {"properties": {socket.selector: {"const": name}}}
        if socket.default == name:  # absent selector means the default plugin
            condition = {"anyOf": [condition, {"not": {"required": [socket.selector]}}]}
        branches.append({"if": condition, "then": schema})
    selector_values: list[Any] = list(names) + ([None] if socket.nullable else [])
    section = {
        "type": ["object", "null"] if nullable else "object",
        "properties": {socket.selector: {"enum": selector_values}},
        "allOf": branches,
    }
    return section


def _initializer_choices(registry: Registry) -> list[Any]:
    return [True, False] + registry.names("initializer")


def full_schema(registry: Registry | None = None) -> dict[str, Any]:
    registry = registry or get_registry()
    schema = copy.deepcopy(core_schema())
    adapter = _socket_schema(ADAPTER, registry)
    for branch in adapter["allOf"]:
        props = branch["then"].get("properties", {})
        if "init_lora_weights" in props:
            props["init_lora_weights"]["enum"] = _initializer_choices(registry)
    schema["properties"]["adapter"] = {**schema["properties"]["adapter"], **adapter}
    defs = schema["$defs"]
    defs["adapters"]["properties"]["adapters"]["additionalProperties"] = _socket_schema(ADAPTER, registry, False)
    defs["adapters"]["properties"]["merge"] = {**defs["adapters"]["properties"]["merge"],
                                               **_socket_schema(MERGE, registry)}
    schema["properties"]["quantization"] = {**schema["properties"]["quantization"],
                                            **_socket_schema(QUANTIZER, registry)}
    defs["prompt"]["properties"]["retrieval"] = {**defs["prompt"]["properties"]["retrieval"],
                                                 **_socket_schema(RETRIEVER, registry)}
    decoder = _socket_schema(DECODER, registry, False)
    for branch in decoder["allOf"]:
        match = branch["then"].get("properties", {}).get("match")
        if match is not None:  # a decoder that takes match entries: each is a matcher plugin's section
            match["additionalProperties"] = _socket_schema(MATCHER, registry, False)
    defs["decoder"] = {**defs["decoder"], **decoder}
    schema["$defs"]["initializer_configs"] = {
        p.name: load_schema(p.descriptor.schema) for p in registry.all("initializer") if p.descriptor.config_key}
    return schema


def one_plugin_schema(kind: str, name: str, registry: Registry | None = None) -> dict[str, Any]:
    registry = registry or get_registry()
    descriptor = registry.get(kind, name)
    socket = {"adapter": ADAPTER}.get(kind)
    return plugin_schema(descriptor, socket)

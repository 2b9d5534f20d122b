"""A plugin made of descriptors alone: ``declare(AdapterPlugin(...))``.

A module usually is the plugin (its ``@hookimpl`` functions return descriptors). Where one module declares several
plugins that are installed under their own entry points (``adapter-boft = "fw.plugins.adapters.peft_methods:boft"``),
each entry point names one ``declare(...)`` object instead: it answers every collecting hook with the descriptors
of that hook's kind.
"""
from __future__ import annotations

from fw.plugin.descriptors import DESCRIPTOR_TYPES, HOOK_FOR_KIND, PluginDescriptor
from fw.plugin.hookspecs import hookimpl


class Declared:
    """A pluggy plugin object returning fixed descriptors (one collecting hook per kind, added below)."""

    def __init__(self, *descriptors: PluginDescriptor):
        unknown = [d for d in descriptors if not isinstance(d, tuple(DESCRIPTOR_TYPES.values()))]
        if unknown:
            raise TypeError(f"declare() takes plugin descriptors, got {unknown[0]!r}")
        self.descriptors = descriptors

    def __repr__(self) -> str:
        return f"declare({', '.join(repr(d.name) for d in self.descriptors)})"


def _collecting_hook(kind: str):
    def collect(self: Declared) -> list[PluginDescriptor]:
        return [d for d in self.descriptors if d.kind == kind]

    collect.__name__ = HOOK_FOR_KIND[kind]
    return hookimpl(collect)


for _kind, _hook in HOOK_FOR_KIND.items():
    setattr(Declared, _hook, _collecting_hook(_kind))


def declare(*descriptors: PluginDescriptor) -> Declared:
    """A plugin object providing ``descriptors`` (name it in an entry point: ``"package.module:attribute"``)."""
    return Declared(*descriptors)

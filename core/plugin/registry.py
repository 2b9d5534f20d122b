"""The plugin registry: discovers plugins through the ``fw`` entry-point group and answers lookups.

Built-in plugins are found exactly like third-party ones (they are entry points of the ``fw``
distribution). A plugin whose import fails is kept as *broken* instead of taking the CLI down; two plugins
claiming one (kind, name) make that name unusable with an error naming both distributions.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType

import pluggy

from fw.errors import PluginConflictError, PluginNotFoundError, did_you_mean, shown
from fw.plugin import hookspecs
from fw.plugin.discovery import entry_points as installed_entry_points
from fw.plugin.descriptors import DESCRIPTOR_TYPES, HOOK_FOR_KIND, KINDS, PluginDescriptor

ENTRY_POINT_GROUP = "fw"


@dataclass(frozen=True)
class Distribution:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


@dataclass(frozen=True)
class RegisteredPlugin:
    """A descriptor plus where it came from."""

    descriptor: PluginDescriptor
    distribution: Distribution

    @property
    def kind(self) -> str:
        return self.descriptor.kind

    @property
    def name(self) -> str:
        return self.descriptor.name


@dataclass(frozen=True)
class BrokenPlugin:
    """An entry point that could not be loaded or whose hooks failed."""

    entry_point: str
    distribution: Distribution
    error: str


def _distribution_of(entry_point) -> Distribution:
    if hasattr(entry_point, "dist_name"):  # fw.plugin.discovery.CachedEntryPoint
        return Distribution(entry_point.dist_name, entry_point.dist_version)
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return Distribution("unknown", "?")
    return Distribution(dist.metadata["Name"] or dist.name, dist.version)


class Registry:
    """Plugins by (kind, name), loaded once from entry points (or from given modules, in tests)."""

    def __init__(self, plugin_manager: pluggy.PluginManager | None = None):
        self.plugin_manager = plugin_manager or new_plugin_manager()
        self.broken: list[BrokenPlugin] = []
        self._plugins: dict[tuple[str, str], RegisteredPlugin] = {}
        self._conflicts: dict[tuple[str, str], list[RegisteredPlugin]] = {}
        self._sources: dict[int, Distribution] = {}

    # -- loading -------------------------------------------------------------------------------
    def load_entry_points(self, entry_points: Iterable | None = None) -> "Registry":
        """Load plugins from ``entry_points`` (importlib.metadata EntryPoints), by default every installed
        one of the ``fw`` group."""
        if entry_points is None:
            entry_points = installed_entry_points(ENTRY_POINT_GROUP)
        for entry_point in entry_points:
            distribution = _distribution_of(entry_point)
            try:
                module = entry_point.load()
            except Exception as exc:  # any import failure: keep the CLI alive, report it as broken
                self.broken.append(BrokenPlugin(entry_point.name, distribution, f"{type(exc).__name__}: {exc}"))
                continue
            self.register(module, distribution, name=f"{distribution.name}:{entry_point.name}")
        self.collect()
        return self

    def register(self, module: ModuleType | object, distribution: Distribution, name: str | None = None) -> None:
        try:
            self.plugin_manager.register(module, name=name)
        except ValueError as exc:  # same module registered twice under two entry points
            self.broken.append(BrokenPlugin(name or repr(module), distribution, str(exc)))
            return
        self._sources[id(module)] = distribution

    def collect(self) -> None:
        """Verify hook implementations and gather every descriptor they return."""
        try:
            self.plugin_manager.check_pending()
        except pluggy.PluginValidationError as exc:
            plugin = exc.plugin
            distribution = self._sources.get(id(plugin), Distribution("unknown", "?"))
            self.plugin_manager.unregister(plugin)
            self.broken.append(BrokenPlugin(getattr(plugin, "__name__", repr(plugin)), distribution,
                                            f"unknown hook implementation: {exc}"))
            return self.collect()
        for kind in KINDS:
            caller = getattr(self.plugin_manager.hook, HOOK_FOR_KIND[kind])
            for impl in caller.get_hookimpls():
                distribution = self._sources.get(id(impl.plugin), Distribution("unknown", "?"))
                try:
                    descriptors = list(impl.function() or ())
                except Exception as exc:
                    self.broken.append(BrokenPlugin(impl.plugin_name, distribution,
                                                    f"{HOOK_FOR_KIND[kind]}() failed: {type(exc).__name__}: {exc}"))
                    continue
                for descriptor in descriptors:
                    self._add(kind, descriptor, distribution, impl.plugin_name)

    def _add(self, kind: str, descriptor: object, distribution: Distribution, plugin_name: str) -> None:
        expected = DESCRIPTOR_TYPES[kind]
        if not isinstance(descriptor, expected):
            self.broken.append(BrokenPlugin(plugin_name, distribution,
                                            f"{HOOK_FOR_KIND[kind]}() returned {descriptor!r}, "
                                            f"expected {expected.__name__}"))
            return
        key = (kind, descriptor.name)
        entry = RegisteredPlugin(descriptor, distribution)
        if key in self._conflicts:
            self._conflicts[key].append(entry)
        elif key in self._plugins:
            self._conflicts[key] = [self._plugins.pop(key), entry]
        else:
            self._plugins[key] = entry

    # -- queries -------------------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return sorted({name for (k, name) in list(self._plugins) + list(self._conflicts) if k == kind})

    def all(self, kind: str | None = None) -> list[RegisteredPlugin]:
        entries = list(self._plugins.values()) + [e for group in self._conflicts.values() for e in group]
        entries = [e for e in entries if kind is None or e.kind == kind]
        return sorted(entries, key=lambda e: (KINDS.index(e.kind), e.name, e.distribution.name))

    def conflicts(self) -> dict[tuple[str, str], list[RegisteredPlugin]]:
        return dict(self._conflicts)

    def has(self, kind: str, name: str) -> bool:
        return (kind, name) in self._plugins

    def get(self, kind: str, name: str) -> PluginDescriptor:
        """The descriptor for (kind, name), or a clear error with a 'did you mean'."""
        if kind not in HOOK_FOR_KIND:
            raise PluginNotFoundError(f"Unknown plugin kind '{kind}'. Kinds: {', '.join(KINDS)}.")
        key = (kind, name)
        if key in self._conflicts:
            raise PluginConflictError(conflict_message(kind, name, self._conflicts[key]))
        if key in self._plugins:
            return self._plugins[key].descriptor
        raise PluginNotFoundError(self.not_found_message(kind, name))

    def not_found_message(self, kind: str, name: object) -> str:
        available = self.names(kind)
        shown_name = shown(name, 40, quoted=False)
        message = f"Unknown {kind.replace('_', ' ')} '{shown_name}'. Available: {', '.join(available) or 'none'}."
        message += did_you_mean(str(name), available)
        broken = [b for b in self.broken if b.entry_point.rpartition("-")[2] == str(name)]
        if broken:
            message += f" A plugin that may provide it failed to load: {broken[0].error}"
        return message + f" (see fw list-plugins --kind {kind})"


def conflict_message(kind: str, name: str, entries: list[RegisteredPlugin]) -> str:
    providers = ", ".join(str(entry.distribution) for entry in entries)
    return (f"{kind} '{name}' provided by: {providers}. Uninstall one of them "
            f"(pip uninstall ...) so that '{name}' means one thing.")


def new_plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    return manager


_default_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded from installed entry points on first use."""
    global _default_registry
    if _default_registry is None:
        _default_registry = Registry().load_entry_points()
    return _default_registry

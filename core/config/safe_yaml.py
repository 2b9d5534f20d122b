"""Reading a YAML config file safely: text in, plain data out, or one line saying what is wrong.

A config is small text. What this module refuses, so that nothing downstream (validation, messages, the saved
config) ever walks an unbounded value:

- a file over :data:`MAX_BYTES`, or one that is not UTF-8 text (a binary file);
- aliases that expand past :data:`MAX_VALUES` values in all ("billion laughs": ten anchors of ten aliases each are
  1 KB of text and 10^10 values once expanded), an alias inside its own anchor, nesting deeper than
  :data:`MAX_DEPTH`;
- a key written twice in one mapping (YAML would silently keep the last: two ``trainer:`` sections);
- an integer too long for Python to read (over 4300 digits).

libyaml (PyYAML's ``CSafeLoader``) parses; PyYAML's own Python ``Composer`` builds the node graph from its events,
extended here to count values as it goes. Composing costs little next to parsing, and only the composer sees
aliases (the constructor shares one object between them, so the expansion only shows later, in whoever walks it).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, ScalarNode

from fw.config.walk import format_path
from fw.errors import ConfigError, ConfigIssue, shown

#: the largest config file read (bytes); real configs are a few KB
MAX_BYTES = 10 * 1024 * 1024
#: values (scalars, lists, mappings) a config may hold once every alias is expanded; real configs hold hundreds
MAX_VALUES = 50_000
#: nesting levels (a config is about five deep)
MAX_DEPTH = 64

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$")


class _Refused(Exception):
    """A config the loader will not build, with the issue that says why."""

    def __init__(self, issue: ConfigIssue):
        super().__init__(str(issue))
        self.issue = issue


class _BoundedComposer(Composer):
    """PyYAML's composer, counting every value as aliases expand it, and refusing duplicate keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._path.append(_path_part(index))
        try:
            if len(self._path) > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise _Refused(ConfigIssue(format_path(self._path[1:4]), f"nests values more than {MAX_DEPTH} "
                                                                         f"levels deep (line {line}); a config is "
                                                                         "a few levels of sections."))
            if self.check_event(AliasEvent):
                return self._expand_alias()
            anchor, before = self.peek_event().anchor, self._values
            self._values += 1
            node = super().compose_node(parent, index)
            if anchor is not None:
                self._sizes[id(node)] = self._values - before
            self._check_total(None, node.start_mark)
            return node
        finally:
            self._path.pop()

    def _expand_alias(self) -> Any:
        event = self.peek_event()
        node = super().compose_node(None, None)  # PyYAML's own lookup (an undefined alias is its error)
        if id(node) not in self._sizes:
            raise _Refused(ConfigIssue(self._where(), f"the alias *{event.anchor} (line {event.start_mark.line + 1}) "
                                                      f"is inside the anchor &{event.anchor} it refers to: a value "
                                                      "cannot contain itself."))
        self._values += self._sizes[id(node)]
        self._check_total(event.anchor, event.start_mark)
        return node

    def _check_total(self, anchor: str | None, mark: Any) -> None:
        if self._values <= MAX_VALUES:
            return
        what = f"the alias *{anchor} (line {mark.line + 1}) expands" if anchor else \
            f"the config (at line {mark.line + 1}) grows"
        raise _Refused(ConfigIssue(self._where(), f"{what} past {MAX_VALUES:,} values in all; a config holds "
                                                  "hundreds. Write the values out, or repeat anchors less often."))

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        first_line: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode):
                continue
            line = key.start_mark.line + 1
            if (key.tag, key.value) in first_line:
                self._duplicates.append((line, ConfigIssue(
                    format_path([*self._path[1:], key.value]),
                    f"written twice (lines {first_line[(key.tag, key.value)]} and {line}); YAML would silently keep "
                    "only the second.", "merge them into one")))
            else:
                first_line[(key.tag, key.value)] = line
        return node

    def _where(self) -> str:
        return format_path(self._path[1:])


def _path_part(index: Any) -> str | int:
    if isinstance(index, ScalarNode):
        return shown(index.value, quoted=False)
    return index if isinstance(index, int) else "?"


class Loader(_BoundedComposer, _BaseLoader):  # type: ignore[misc, valid-type]
    """Safe YAML loader with fw's bounds; also reads ``1e-4`` as a float (YAML 1.2), as every user expects."""

    def __init__(self, stream: str):
        _BaseLoader.__init__(self, stream)
        self.anchors: dict[str, Any] = {}
        self._path: list[str | int] = []
        self._values = 0
        self._sizes: dict[int, int] = {}
        self._duplicates: list[tuple[int, ConfigIssue]] = []

    def construct_yaml_int(self, node: ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # Python's int() refuses over 4300 digits
            raise ConstructorError(None, None, f"an integer of {len(node.value):,} digits is out of range",
                                   node.start_mark) from None


Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """The data in the YAML file at ``path``; every problem a ConfigError naming the line."""
    path = Path(path)
    text = _read_text(path)
    loader = Loader(text)
    try:
        data = loader.get_single_data()
    except _Refused as refused:
        raise ConfigError([refused.issue], source=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigIssue("", f"invalid YAML at {where}{problem}")], source=str(path)) from None
    finally:
        loader.dispose()
    if loader._duplicates:
        raise ConfigError([issue for _, issue in sorted(loader._duplicates, key=lambda pair: pair[0])],
                          source=str(path))
    return data


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError([ConfigIssue("", f"config file not found: {path}")]) from None
    except OSError as exc:
        raise ConfigError([ConfigIssue("", f"cannot read config file {path}: {exc.strerror}")]) from None
    if len(raw) > MAX_BYTES:
        raise ConfigError([ConfigIssue("", f"config file {path} is larger than {MAX_BYTES // 2**20} MB; a config is "
                                           "a small YAML text file. Is it the right file?")])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError([ConfigIssue("", f"config file {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on "
                                           f"line {line}); a config is a YAML text file. Is it the right file?")]) \
            from None

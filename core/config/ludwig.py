"""Configs written for (or saved by) Ludwig: the keys fw accepts without implementing them.

The schemas mark every Ludwig key fw does not act on with ``x-ludwig``:

- ``"x-ludwig": "ignored"`` — the key changes nothing in an LLM run (bookkeeping such as ``proc_column``, a
  tokenizer Ludwig itself replaces by the base model's, settings of a feature that is off): any value is accepted;
- ``"x-ludwig": {"only": [values]}`` — the key would change the run, fw does not implement it: accepted at
  Ludwig's default only, any other value is one error naming the key;
- ``"x-ludwig": {"tree": [mappings]}`` — a section accepted at Ludwig's defaults only (``loss``, ``defaults``):
  every key written must exist in one of the mappings with the same value.

:func:`check` walks a config (as written) against a schema and sorts what it meets: the keys accepted without
effect (reported together, in one warning line, by :func:`accepted_line`) and the errors. Unknown keys are not
its business: the schema reports them, with a did-you-mean.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fw.config.walk import Path, child_schema, deref, format_path
from fw.errors import ConfigIssue, ConfigWarning, did_you_mean

IGNORED = "ignored"


@dataclass
class Findings:
    """What :func:`check` found: paths of Ludwig keys accepted without effect, and errors."""

    accepted: list[str] = field(default_factory=list)
    issues: list[ConfigIssue] = field(default_factory=list)

    def extend(self, other: "Findings") -> None:
        self.accepted += other.accepted
        self.issues += other.issues


def check(schema: dict[str, Any], value: Any, path: Path = (), root: dict[str, Any] | None = None) -> Findings:
    """The ``x-ludwig`` keys of ``value`` (a config or section as written) under ``schema``."""
    root = root if root is not None else schema
    found = Findings()
    for key_path, prop, written in _annotated(schema, value, path, root):
        where, annotation = format_path(key_path), prop["x-ludwig"]
        if annotation == IGNORED:
            found.accepted.append(where)
        elif "only" in annotation:
            if any(_same(written, allowed) for allowed in annotation["only"]):
                found.accepted.append(where)
            else:
                found.issues.append(_not_implemented(where, written, annotation["only"], prop.get("description", "")))
        elif "tree" in annotation:
            issues = _tree_issues(written, annotation["tree"], key_path)
            found.issues += issues
            if not issues:
                found.accepted.append(where)
    return found


def _annotated(schema: dict[str, Any], value: Any, path: Path, root: dict[str, Any]) -> Iterator[tuple]:
    """(path, property schema, value) of every written key whose schema carries ``x-ludwig``."""
    schema = deref(schema, root)
    if isinstance(value, dict):
        for key, item in value.items():
            sub = child_schema(schema, key, root)
            if sub is None:
                continue
            if "x-ludwig" in sub:
                yield path + (key,), sub, item
            else:
                yield from _annotated(sub, item, path + (key,), root)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from _annotated(schema["items"], item, path + (index,), root)


def _same(a: Any, b: Any) -> bool:
    """Equal as config values: 0 == 0.0, but True is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def _not_implemented(where: str, written: Any, allowed: list, reason: str) -> ConfigIssue:
    shown = " or ".join(_literal(v) for v in allowed)
    message = f"fw implements only {shown} (Ludwig's default), got {_literal(written)}. {reason}"
    return ConfigIssue(where, message.strip(), "remove the key, or set it to Ludwig's default")


def _literal(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def _tree_issues(written: Any, trees: list, path: Path) -> list[ConfigIssue]:
    """Every key of ``written`` must hold the value of one of ``trees`` (Ludwig's defaults)."""
    if written is None:
        return []
    candidates = [tree for tree in trees if _fits(written, tree)]
    if candidates:
        return []
    return list(_tree_mismatches(written, trees[0] if len(trees) == 1 else _closest_tree(written, trees), path))


def _fits(written: Any, tree: Any) -> bool:
    if isinstance(written, dict) and isinstance(tree, dict):
        return all(key in tree and _fits(value, tree[key]) for key, value in written.items())
    return _same(written, tree)


def _closest_tree(written: dict, trees: list) -> Any:
    """The tree whose ``type`` matches the written one (loss sections), else the first."""
    kind = written.get("type") if isinstance(written, dict) else None
    return next((tree for tree in trees if tree.get("type") == kind), trees[0])


def _tree_mismatches(written: Any, tree: Any, path: Path) -> Iterator[ConfigIssue]:
    if not (isinstance(written, dict) and isinstance(tree, dict)):
        yield ConfigIssue(format_path(path), f"fw implements only Ludwig's default {_literal(tree)}, got "
                                             f"{_literal(written)}.", "remove the key")
        return
    for key, value in written.items():
        if key not in tree:
            yield ConfigIssue(format_path(path + (key,)), f"unknown key '{key}'." + did_you_mean(key, list(tree)))
        elif not _fits(value, tree[key]):
            yield from _tree_mismatches(value, tree[key], path + (key,))


def accepted_line(paths: list[str]) -> ConfigWarning | None:
    """The one warning naming every Ludwig key accepted without effect (paths sharing a parent grouped)."""
    if not paths:
        return None
    groups: dict[str, list[str]] = {}
    for path in paths:
        parent, _, key = path.rpartition(".") if "." in path else ("", "", path)
        groups.setdefault(parent, []).append(key)
    parts = [(f"{parent}.{{{', '.join(keys)}}}" if len(keys) > 1 else f"{parent}.{keys[0]}") if parent else
             ", ".join(keys) for parent, keys in groups.items()]
    return ConfigWarning("", f"{len(paths)} Ludwig key(s) accepted with no effect in fw: {', '.join(parts)}.")


def differences(schema: dict[str, Any], raw: Any, path: Path = (),
                root: dict[str, Any] | None = None) -> list[ConfigIssue]:
    """One note per default the config relies on where fw deliberately differs from Ludwig: the properties marked
    ``x-fw-differs-from-ludwig`` (its text says how, and why) that ``raw`` leaves out."""
    root = root if root is not None else schema
    schema = deref(schema, root)
    notes = []
    for key, prop in schema.get("properties", {}).items():
        prop = deref(prop, root)
        written = raw.get(key) if isinstance(raw, dict) else None
        if "x-fw-differs-from-ludwig" in prop and not (isinstance(raw, dict) and key in raw):
            notes.append(ConfigIssue(format_path(path + (key,)), prop["x-fw-differs-from-ludwig"]))
        elif prop.get("type") == "object" or "properties" in prop:
            notes += differences(prop, written, path + (key,), root)
    return notes

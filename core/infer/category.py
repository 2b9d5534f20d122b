"""Generated text -> category label (``decoder.type: category_extractor``).

The ``decoder.match`` entries are tried in config order and the first whose matcher accepts the text wins; a
text no entry matches gets ``preprocessing.fallback_label`` and counts as a fallback (the evaluation's
``fallback_rate``). With ``constrain_to_vocabulary`` the generation *is* a label, so an exact label match is
taken first. Matchers are compiled once per call (validation already compiled them at config load, turning a bad
regex into a config error naming its label).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Outputs:
    """Output values of every row, extra prediction columns, and (category) whether a label matched."""

    values: list
    columns: dict[str, list] = field(default_factory=dict)
    #: per row: True when a match entry (or label scoring) chose the label, False when fallback_label was used
    matched: list[bool] | None = None


def compile_matchers(match: dict) -> list[tuple[str, object]]:
    """``[(label, text -> bool)]`` in config order, through each entry's matcher plugin."""
    from fw.plugin.lazy import resolve
    from fw.plugin.registry import get_registry

    registry = get_registry()
    compiled = []
    for label, entry in match.items():
        descriptor = registry.get("matcher", entry.get("type", "contains"))
        options = {key: value for key, value in entry.items() if key not in ("type", "value")}
        compiled.append((str(label), resolve(descriptor.compile)(entry.get("value"), options)))
    return compiled


def extract_labels(texts: list[str], data: dict) -> Outputs:
    """The label of each generated text (first matching entry, else ``fallback_label``)."""
    from fw.infer.constrained import is_constrained

    feature = data["output_features"][0]
    matchers = compile_matchers((feature.get("decoder") or {}).get("match") or {})
    fallback = (feature.get("preprocessing") or {}).get("fallback_label")
    exact = {label for label, _ in matchers} if is_constrained(data) else set()
    values, matched = [], []
    for text in texts:
        label = text.strip() if text.strip() in exact else next(
            (label for label, matches in matchers if matches(text)), None)
        values.append(label if label is not None else fallback)
        matched.append(label is not None)
    return Outputs(values, matched=matched)


def output_values(texts: list[str], data: dict) -> Outputs:
    """Text outputs as generated; category outputs through :func:`extract_labels`."""
    if data["output_features"][0].get("type") != "category":
        return Outputs(list(texts))
    return extract_labels(texts, data)

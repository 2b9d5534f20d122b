"""Generated texts -> output values, by the decoder plugin ``output_features[0].decoder.type`` names
(``text_extractor``, ``category_extractor``, or a third-party one)."""
from __future__ import annotations

from fw import console
from fw.config import view
from fw.plugin import DecodedOutputs, get_registry, resolve


def decode(texts: list[str], data: dict) -> DecodedOutputs:
    """One output value per generated text (and any extra prediction columns the decoder adds); one warning
    when matchers timed out."""
    descriptor = get_registry().get("decoder", view.decoder(data)["type"])
    outputs = resolve(descriptor.decode)(list(texts), data)
    if outputs.timeouts:
        warn_about_timeouts(outputs.timeouts, len(texts))
    return outputs


def warn_about_timeouts(timeouts: dict[str, int], texts: int) -> None:
    per_label = ", ".join(f"'{label}': {count}" for label, count in timeouts.items())
    console.warn(f"decoder: {sum(timeouts.values())} match(es) over {texts} generation(s) ran out of time and counted "
                 f"as no match ({per_label}). Simplify the pattern: nested repetition such as (a+)+ backtracks "
                 "without end on some texts.")


def joined(parts: list[DecodedOutputs]) -> DecodedOutputs:
    """The outputs of consecutive shares of the rows (one per process of a job) as one, in order."""
    columns = {name: [value for part in parts for value in part.columns[name]] for name in parts[0].columns}
    matched = None if any(part.matched is None for part in parts) else [m for part in parts for m in part.matched]
    timeouts: dict[str, int] = {}
    for part in parts:
        for label, count in part.timeouts.items():
            timeouts[label] = timeouts.get(label, 0) + count
    return DecodedOutputs(values=[value for part in parts for value in part.values], columns=columns,
                          matched=matched, timeouts=timeouts)

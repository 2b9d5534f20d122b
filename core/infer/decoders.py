"""Generated texts -> output values, by the decoder plugin ``output_features[0].decoder.type`` names
(``text_extractor``, ``category_extractor``, or a third-party one)."""
from __future__ import annotations

from fw.config import view
from fw.plugin import DecodedOutputs, get_registry, resolve


def decode(texts: list[str], data: dict) -> DecodedOutputs:
    """One output value per generated text (and any extra prediction columns the decoder adds)."""
    descriptor = get_registry().get("decoder", view.decoder(data)["type"])
    return resolve(descriptor.decode)(list(texts), data)

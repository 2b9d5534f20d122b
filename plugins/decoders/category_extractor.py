"""category_extractor: generated text -> category label (the default decoder of category outputs).

The ``decoder.match`` entries are tried in config order and the first whose matcher plugin accepts the text wins;
a text no entry matches gets ``preprocessing.fallback_label`` and counts as a fallback (the evaluation's
``fallback_rate``). A matcher that gives up on a text (``TimeoutError``, e.g. a regex that backtracks) counts as
not matching it; the timeouts are returned per label, and fw reports them. With ``constrain_to_vocabulary`` the
generation *is* a label, so an exact label match is taken first. Matchers are compiled once per call (validation already compiled them at config load, turning a bad regex
into a config error naming its label). ``constrain_to_vocabulary`` and ``label_scoring`` themselves run during
generation, in fw's inference (``fw.infer.constrained``, ``fw.infer.label_scoring``).
"""
from fw.plugin import DecodedOutputs, DecoderPlugin, get_registry, hookimpl, resolve

SCHEMA = "fw.schemas:decoders/category_extractor.json"


@hookimpl
def fw_decoders():
    return [DecoderPlugin(name="category_extractor", schema=SCHEMA,
                          summary="Generated text -> a label, by the first matching decoder.match entry",
                          decode=f"{__name__}:extract_labels", output_types=("category",),
                          check_params=f"{__name__}:check_params")]


def check_params(params: dict, explicit_keys: set[str] | None = None) -> list[tuple[str, ...]]:
    if not params.get("match"):
        return [("match", "category_extractor needs match entries, one per label.",
                 "e.g. match: {positive: {type: contains, value: positive}}")]
    return []


def compile_matchers(match: dict) -> list[tuple[str, object]]:
    """``[(label, text -> bool)]`` in config order, through each entry's matcher plugin (validation has filled
    in every entry's ``type``)."""
    registry = get_registry()
    compiled = []
    for label, entry in match.items():
        descriptor = registry.get("matcher", entry["type"])
        options = {key: value for key, value in entry.items() if key not in ("type", "value")}
        compiled.append((str(label), resolve(descriptor.compile)(entry.get("value"), options)))
    return compiled


def extract_labels(texts: list[str], config: dict) -> DecodedOutputs:
    """The label of each generated text (first matching entry, else ``fallback_label``)."""
    feature = config["output_features"][0]
    decoder = feature.get("decoder") or {}
    matchers = compile_matchers(decoder.get("match") or {})
    fallback = (feature.get("preprocessing") or {}).get("fallback_label")
    exact = {label for label, _ in matchers} if decoder.get("constrain_to_vocabulary") else set()
    values, matched, timeouts = [], [], {}
    for text in texts:
        label = text.strip() if text.strip() in exact else _first_match(matchers, text, timeouts)
        values.append(label if label is not None else fallback)
        matched.append(label is not None)
    return DecodedOutputs(values, matched=matched, timeouts=timeouts)


def _first_match(matchers: list[tuple[str, object]], text: str, timeouts: dict[str, int]) -> str | None:
    """The first label whose matcher accepts ``text``; a matcher that times out counts (in ``timeouts``) as no."""
    for label, matches in matchers:
        try:
            if matches(text):
                return label
        except TimeoutError:
            timeouts[label] = timeouts.get(label, 0) + 1
    return None

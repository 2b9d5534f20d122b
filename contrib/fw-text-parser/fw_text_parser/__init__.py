"""text_parser for fw: fields parsed from the generated text, as extra prediction columns.

A complete third-party fw decoder: one hook, one descriptor, one JSON Schema, importing only ``fw.plugin``::

    output_features:
      - name: answer
        decoder: {type: text_parser, pattern: '(?P<city>[A-Z]\\w+)', fields: [country, population]}

predicts ``answer`` (the generated text) plus the columns ``answer_city``, ``answer_country`` and
``answer_population``.
"""
import re

from fw.plugin import DecodedOutputs, DecoderPlugin, hookimpl

#: a ``key: value`` or ``key = value`` line
KEY_VALUE = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*[:=]\s*(.*?)\s*$", re.MULTILINE)


@hookimpl
def fw_decoders():
    return [DecoderPlugin(name="text_parser", schema="fw_text_parser:schema.json",
                          summary="Generated text plus fields parsed from it (contrib example)",
                          decode=f"{__name__}:decode", output_types=("text",),
                          check_params=f"{__name__}:check_params")]


def check_params(params: dict, explicit_keys=None) -> list:
    """The pattern must compile and name at least one group."""
    pattern = params.get("pattern")
    if pattern is None:
        return []
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        return [("pattern", f"is not a valid regular expression ({exc}); escape special characters with \\")]
    if not compiled.groupindex:
        return [("pattern", "names no group, so it gives no column; write (?P<name>...) around each field")]
    return []


def parse(text: str, pattern: re.Pattern | None, fields: list) -> dict:
    """Field -> value (None when absent) of one generated text."""
    found = dict.fromkeys(fields)
    for key, value in KEY_VALUE.findall(text):
        if key in found and found[key] is None:
            found[key] = value
    if pattern is not None:
        match = pattern.search(text)
        found.update({group: match.group(group) if match else None for group in pattern.groupindex})
    return found


def decode(texts: list, config: dict) -> DecodedOutputs:
    feature = config["output_features"][0]
    params = feature["decoder"]
    pattern = re.compile(params["pattern"]) if params.get("pattern") else None
    parsed = [parse(text, pattern, params.get("fields") or []) for text in texts]
    names = list(parsed[0]) if parsed else []
    columns = {f"{feature['name']}_{name}": [row[name] for row in parsed] for name in names}
    return DecodedOutputs(list(texts), columns=columns)

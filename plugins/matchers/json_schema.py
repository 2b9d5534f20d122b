"""json_schema: the label is chosen when the JSON in the generated text matches a JSON value.

The response is parsed tolerantly: the whole text, else the body of a ```json code fence, else the first
JSON object or array found in the surrounding prose. A mapping ``value`` matches when each of its keys is in
the parsed object with a (recursively) matching value, so extra keys in the response are fine; any other value
must be equal (``true`` does not equal ``1``).
"""
import json
import re
from collections.abc import Callable

from fw.plugin import MatcherPlugin, hookimpl, shown

SCHEMA = "fw.schemas:matchers/json_schema.json"

_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n?(.*?)```", re.DOTALL | re.IGNORECASE)
_DECODER = json.JSONDecoder()
_NOTHING = object()


@hookimpl
def fw_matchers():
    return [MatcherPlugin(name="json_schema", schema=SCHEMA,
                          summary="Parse the response as JSON and match it against a JSON value",
                          compile=f"{__name__}:compile")]


def compile(value, options: dict | None = None) -> Callable[[str], bool]:
    """Return ``text -> bool`` comparing the JSON parsed from the text with ``value``.

    ``options`` holds the match entry's other keys (none are used). ``value`` must be JSON-serializable.
    """
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"json_schema needs a JSON value, got {shown(value)}: {exc}") from None

    def matches(text: str) -> bool:
        parsed = extract_json(text)
        return parsed is not _NOTHING and value_matches(value, parsed)

    return matches


def _decode_whole(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return _NOTHING


def _first_container(text: str):
    """The first JSON object or array that decodes, starting at any ``{`` or ``[`` in ``text``."""
    for index, char in enumerate(text):
        if char in "{[":
            try:
                return _DECODER.raw_decode(text, index)[0]
            except ValueError:
                continue
    return _NOTHING


def extract_json(text: str):
    """The JSON value in a model response, or a private sentinel when there is none."""
    stripped = text.strip()
    found = _decode_whole(stripped)
    if found is not _NOTHING:
        return found
    for fence in _FENCE.finditer(text):
        body = fence.group(1).strip()
        found = _decode_whole(body)
        if found is _NOTHING:
            found = _first_container(body)
        if found is not _NOTHING:
            return found
    return _first_container(text)


def value_matches(expected, actual) -> bool:
    """Subset match for mappings (recursively), strict equality otherwise."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and value_matches(item, actual[key]) for key, item in expected.items())
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(
            value_matches(e, a) for e, a in zip(expected, actual))
    return expected == actual

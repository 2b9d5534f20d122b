"""contains: the label is chosen when a literal string occurs in the generated text."""
from collections.abc import Callable

from fw.plugin import MatcherPlugin, hookimpl, shown

SCHEMA = "fw.schemas:matchers/contains.json"


@hookimpl
def fw_matchers():
    return [MatcherPlugin(name="contains", schema=SCHEMA,
                          summary="Substring match (case-insensitive by default)",
                          compile=f"{__name__}:compile")]


def compile(value, options: dict | None = None) -> Callable[[str], bool]:
    """Return ``text -> bool``: does ``value`` occur in the text?

    ``options`` holds the match entry's other keys (everything but ``type`` and ``value``); here only
    ``case_sensitive`` (default false: both sides are case-folded). Raises ValueError for a non-string or
    empty value, which would match nothing or everything.
    """
    options = options or {}
    if not isinstance(value, str):
        raise ValueError(f"contains needs a string value, got {type(value).__name__} {shown(value)}")
    if value == "":
        raise ValueError("contains needs a non-empty string value (an empty string matches every response)")
    if options.get("case_sensitive", False):
        return lambda text: value in text
    folded = value.casefold()
    return lambda text: folded in text.casefold()

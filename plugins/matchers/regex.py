"""regex: the label is chosen when a Python regular expression is found in the generated text."""
from collections.abc import Callable

from fw.plugin import MatcherPlugin, hookimpl, shown

SCHEMA = "fw.schemas:matchers/regex.json"

#: seconds one search may take; a pattern that backtracks catastrophically on hostile output counts as
#: no match, and fw counts and reports it
TIMEOUT_S = 0.25


@hookimpl
def fw_matchers():
    return [MatcherPlugin(name="regex", schema=SCHEMA, summary="Regular-expression search (time-limited)",
                          compile=f"{__name__}:compile")]


def compile(value, options: dict | None = None) -> Callable[[str], bool]:
    """Compile ``value`` once and return ``text -> bool``: is the pattern found anywhere in the text?

    Uses the third-party ``regex`` module (Python ``re`` syntax, plus a search timeout): a search running
    longer than :data:`TIMEOUT_S` raises TimeoutError, which the decoder counts as no match (and fw reports).
    ``options`` holds the match entry's other keys (none are used). Raises ValueError saying what is wrong with
    a pattern that does not compile.
    """
    import regex

    if not isinstance(value, str):
        raise ValueError(f"regex needs a string pattern, got {type(value).__name__} {shown(value)}")
    try:
        pattern = regex.compile(value)
    except regex.error as exc:
        raise ValueError(f"invalid regular expression {shown(value)}: {exc}") from None

    def matches(text: str) -> bool:
        return pattern.search(text, timeout=TIMEOUT_S) is not None

    return matches

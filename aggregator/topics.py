"""Which feeds a topic selects and which items its include/exclude terms match. No I/O.

A plain term ("North Korea", "DPRK", "C++") matches as whole words, case-insensitively, any run
of whitespace standing for the spaces inside a phrase. A term written `/…/` is a Python regular
expression searched case-insensitively, each search under a deadline (SEARCH_TIMEOUT).
Markup around words is ignored.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aggregator.model import FeedSource, Term, Topic

# Cheap, not a parser: fields are mostly clean already; this only keeps markup from hiding a word.
# Inline tags vanish ("Pyong<em>yang</em>" is one word); any other tag is a space, so
# "North<br>Korea" is two words.
_INLINE_TAG = re.compile(
    r"</?(?:a|abbr|b|bdi|bdo|cite|code|data|dfn|em|i|kbd|mark|q|s|samp|small|span|strong|sub"
    r"|sup|time|u|var|wbr)(?:\s[^<>]*)?/?>",
    re.IGNORECASE,
)
_TAG = re.compile(r"<[^<>]*>")

if TYPE_CHECKING:
    import regex


#: the longest one search of a term may take: a user's regular expression can backtrack
#: for hours on a few dozen characters ("/(a|aa)+$/"), and it runs on every stored item
SEARCH_TIMEOUT = 0.05
#: a term whose searches time out this often in one pass over the items is given up on
#: for the rest of that pass (it matches nothing), so a render stays bounded
MAX_TIMEOUTS = 3


def compile_term(raw: str) -> Term:
    """Compile one include/exclude term; ValueError with a readable message if it is unusable."""
    source = raw.strip()
    if not source:
        raise ValueError("empty term")
    import regex  # only a config with terms needs it (2 MB)

    if len(source) >= 2 and source.startswith("/") and source.endswith("/"):
        return Term(source=raw, pattern=_compile_regex(source[1:-1]))
    words = (regex.escape(word) for word in source.split())
    # Lookarounds, not \b: \b after "C++" or "U.S." would demand a word character next.
    pattern = r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)"
    return Term(source=raw, pattern=regex.compile(pattern, regex.IGNORECASE))


def _compile_regex(expression: str) -> regex.Pattern[str]:
    """The `regex` module, not `re`: the same syntax, but a search can be given a deadline
    and runs without holding the GIL."""
    import regex

    if not expression.strip():
        raise ValueError("empty regular expression")
    try:
        # checked by `re` first: the contract promises Python's syntax, and its messages
        re.compile(expression, re.IGNORECASE)
        pattern = regex.compile(expression, regex.IGNORECASE)
    except (re.error, regex.error) as error:
        raise ValueError(f"invalid regular expression: {error}") from error
    except (OverflowError, RecursionError, MemoryError) as error:
        raise ValueError(f"invalid regular expression: too large ({error})") from error
    try:
        empty = pattern.search("", timeout=SEARCH_TIMEOUT)
    except TimeoutError:
        empty = None
    if empty:
        # It would match (or, as an exclude, drop) every item: surely not what was meant.
        raise ValueError("regular expression matches empty text, so it would match every item")
    return pattern


def selects_feed(topic: Topic, feed: FeedSource, display_name: str | None = None) -> bool:
    """True when the topic takes items from this feed.

    `topic.feeds` lists feed names and tags; None selects every feed. `display_name` (the feed's
    own title) stands in for the name only when the feed has no configured name.
    """
    if topic.feeds is None:
        return True
    name = feed.name if feed.name is not None else display_name
    return any(wanted == name or wanted in feed.tags for wanted in topic.feeds)


class TopicMatcher:
    """Matches items against one topic's terms, each search under SEARCH_TIMEOUT: a search
    past it is a non-match, its term named in `slow_terms`, and a term that keeps timing
    out is given up on (it matches nothing more in this matcher's pass)."""

    def __init__(self, topic: Topic) -> None:
        self.topic = topic
        self._timeouts: dict[str, int] = {}

    @property
    def slow_terms(self) -> list[str]:
        """The terms whose search timed out at least once (those items did not match)."""
        return list(self._timeouts)

    def matches(self, fields: Sequence[str]) -> bool:
        """True when some field matches an include term (if any) and no field an exclude
        term. `fields` are an item's texts: title, summary, content, categories; markup
        is ignored."""
        texts = [_plain_text(field) for field in fields]
        if any(self._search(term, texts) for term in self.topic.exclude):
            return False
        return not self.topic.include or any(
            self._search(term, texts) for term in self.topic.include
        )

    def _search(self, term: Term, texts: Sequence[str]) -> bool:
        if self._timeouts.get(term.source, 0) >= MAX_TIMEOUTS:
            return False
        try:
            return any(
                term.pattern.search(text, timeout=SEARCH_TIMEOUT, concurrent=True) for text in texts
            )
        except TimeoutError:
            self._timeouts[term.source] = self._timeouts.get(term.source, 0) + 1
            return False


def matches_topic(topic: Topic, fields: Sequence[str]) -> bool:
    """`TopicMatcher(topic).matches(fields)`, for one item."""
    return TopicMatcher(topic).matches(fields)


def _plain_text(field: str) -> str:
    # Tags first, then entities: an escaped "&lt;b&gt;" is text, not markup to drop.
    if "<" in field:
        field = _TAG.sub(" ", _INLINE_TAG.sub("", field))
    return html.unescape(field) if "&" in field else field

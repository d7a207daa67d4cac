"""Which feeds a topic selects and which items its include/exclude terms match. No I/O.

A plain term ("North Korea", "DPRK", "C++") matches as whole words, case-insensitively, any run
of whitespace standing for the spaces inside a phrase. A term written `/…/` is a Python regular
expression searched case-insensitively. Markup around words is ignored.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

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


def compile_term(raw: str) -> Term:
    """Compile one include/exclude term; ValueError with a readable message if it is unusable."""
    source = raw.strip()
    if not source:
        raise ValueError("empty term")
    if len(source) >= 2 and source.startswith("/") and source.endswith("/"):
        return Term(source=raw, pattern=_compile_regex(source[1:-1]))
    words = (re.escape(word) for word in source.split())
    # Lookarounds, not \b: \b after "C++" or "U.S." would demand a word character next.
    pattern = r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)"
    return Term(source=raw, pattern=re.compile(pattern, re.IGNORECASE))


def _compile_regex(expression: str) -> re.Pattern[str]:
    if not expression.strip():
        raise ValueError("empty regular expression")
    try:
        pattern = re.compile(expression, re.IGNORECASE)
    except re.error as error:
        raise ValueError(f"invalid regular expression: {error}") from error
    if pattern.search(""):
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


def matches_topic(topic: Topic, fields: Sequence[str]) -> bool:
    """True when some field matches an include term (if any) and no field an exclude term.

    `fields` are an item's texts: title, summary, content, categories; markup is ignored.
    """
    texts = [_plain_text(field) for field in fields]
    if any(_matches(term, texts) for term in topic.exclude):
        return False
    return not topic.include or any(_matches(term, texts) for term in topic.include)


def _matches(term: Term, texts: Sequence[str]) -> bool:
    return any(term.pattern.search(text) for text in texts)


def _plain_text(field: str) -> str:
    # Tags first, then entities: an escaped "&lt;b&gt;" is text, not markup to drop.
    if "<" in field:
        field = _TAG.sub(" ", _INLINE_TAG.sub("", field))
    return html.unescape(field) if "&" in field else field

"""The search query language: what a user types → a safe FTS5 MATCH expression; and a
search request (query, topic, span, limit) checked against the config. No I/O.

The syntax (README "Search"):

    nuclear talks         both words, anywhere in the title or text (case and accents
                          ignored)
    sanction*             a word starting with "sanction" (at least MIN_PREFIX letters)
    "north korea"         the words next to each other, in this order; an unclosed quote
                          ends at the end of the query
    -sport  -"op-ed"      stories without the word or phrase
    nuclear OR missile    either; OR (in capitals) stands between two terms and binds
                          tighter than the implicit AND: `korea nuclear OR missile` is
                          korea AND (nuclear OR missile)

Nothing the user types reaches FTS5 as syntax: every term is passed as an FTS5 string
("…", with `"` doubled), and the operators are ours. So `NEAR(`, `col:`, `^`, `AND`,
`NOT`, `*` alone and parentheses are only text, split into words (or dropped) by the
index's tokenizer as the stories' text was. A term with no letter or digit is dropped;
a query left with nothing to look for, a dangling OR, or more than MAX_TERMS terms or
MAX_QUERY_CHARS characters is a QueryError with a message for the user.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from aggregator.errors import QueryError
from aggregator.model import Topic

#: the longest query accepted, in characters
MAX_QUERY_CHARS = 500
#: the most terms (words and phrases, excluded ones included) in one query
MAX_TERMS = 20
#: the shortest stem a prefix term may have: `a*` would walk most of the index
MIN_PREFIX = 2
#: results returned unless asked otherwise, and the most that can be asked for
DEFAULT_LIMIT = 20
MAX_LIMIT = 100

#: a bare word: up to whitespace or a quote
_WORD = re.compile(r'[^\s"]+')
#: the words FTS5's unicode61 tokenizer would see (letters and digits), near enough
_TOKEN = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class QueryTerm:
    """One word or phrase of a query."""

    #: the text between the quotes, or the word, without its `-` and `*`
    text: str
    phrase: bool = False
    #: `word*`: any word that starts with the (last) word
    prefix: bool = False
    #: `-word`: stories that do not contain it
    excluded: bool = False

    def fts5(self) -> str:
        """The term as an FTS5 string: quoted, so none of it is FTS5 syntax."""
        return '"' + self.text.replace('"', '""') + '"' + ("*" if self.prefix else "")


@dataclass(frozen=True)
class Query:
    """A parsed query: groups of alternatives (ANDed together), and exclusions."""

    #: the query as typed, whitespace collapsed: for titles and self links
    text: str
    #: each group is a list of alternatives (`a OR b`); every group must match
    groups: tuple[tuple[QueryTerm, ...], ...]
    excluded: tuple[QueryTerm, ...] = ()

    def match(self) -> str:
        """The FTS5 MATCH expression, fully parenthesised (FTS5's own precedence of AND,
        OR and NOT never comes into play)."""
        wanted = " AND ".join(
            "(" + " OR ".join(term.fts5() for term in group) + ")" for group in self.groups
        )
        if not self.excluded:
            return wanted
        unwanted = " OR ".join(term.fts5() for term in self.excluded)
        return f"({wanted}) NOT ({unwanted})"


_OR = object()


def parse_query(text: str) -> Query:
    """`text` as typed → Query; QueryError saying what is wrong with it."""
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise QueryError("the query is not valid text (bytes that are not UTF-8?)")
    # control and format characters (NUL, escapes, bidi controls) separate words
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Cf") else c for c in text)
    text = " ".join(text.split())
    if not text:
        raise QueryError("the query is empty: give a word to look for")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"the query is too long: at most {MAX_QUERY_CHARS} characters")
    tokens = [t for t in _lex(text) if t is _OR or _has_words(t)]
    groups: list[list[QueryTerm]] = []
    excluded: list[QueryTerm] = []
    previous: object = None  # the token before: _OR, a QueryTerm, or None at the start
    for token in tokens:
        if token is _OR:
            if not isinstance(previous, QueryTerm) or previous.excluded:
                raise QueryError("OR must stand between two terms, as in: nuclear OR missile")
        elif isinstance(token, QueryTerm):
            if token.excluded:
                if previous is _OR:
                    raise QueryError("an excluded term (-word) cannot be one side of OR")
                excluded.append(token)
            elif previous is _OR:
                groups[-1].append(token)
            else:
                groups.append([token])
        previous = token
    if previous is _OR:
        raise QueryError("OR must stand between two terms, as in: nuclear OR missile")
    count = sum(len(group) for group in groups) + len(excluded)
    if count > MAX_TERMS:
        raise QueryError(f"the query has {count} terms: at most {MAX_TERMS}")
    if not groups:
        if excluded:
            raise QueryError("the query only excludes (-word): add a word to look for")
        raise QueryError("the query has no word to look for (letters or digits)")
    for term in (*(t for g in groups for t in g), *excluded):
        if term.prefix and len(_TOKEN.findall(term.text)[-1]) < MIN_PREFIX:
            shown = f'"{term.text}"*' if term.phrase else f"{term.text}*"
            raise QueryError(f"{shown}: a prefix needs at least {MIN_PREFIX} letters before *")
    return Query(
        text=text, groups=tuple(tuple(group) for group in groups), excluded=tuple(excluded)
    )


def _lex(text: str) -> list[QueryTerm | object]:
    """Words, phrases and ORs, in order. A `-` starts an exclusion only at the start of a
    word or phrase (`e-mail` is one word); `*` makes a prefix only at its end."""
    tokens: list[QueryTerm | object] = []
    position, end = 0, len(text)
    while position < end:
        if text[position].isspace():
            position += 1
            continue
        excluded = text[position] == "-" and position + 1 < end and not text[position + 1].isspace()
        if excluded:
            position += 1
        if text[position] == '"':
            close = text.find('"', position + 1)
            body = text[position + 1 :] if close < 0 else text[position + 1 : close]
            position = end if close < 0 else close + 1
            prefix = position < end and text[position] == "*"
            position += prefix
            tokens.append(QueryTerm(" ".join(body.split()), True, prefix, excluded))
            continue
        found = _WORD.match(text, position)
        assert found is not None  # not a space, not a quote
        word = found.group()
        position = found.end()
        if word == "OR" and not excluded:
            tokens.append(_OR)
            continue
        stem = word.rstrip("*")
        tokens.append(QueryTerm(stem, False, stem != word, excluded))
    return tokens


def _has_words(token: QueryTerm | object) -> bool:
    """Whether a term holds anything the index has words for (a letter or a digit)."""
    return isinstance(token, QueryTerm) and bool(_TOKEN.search(token.text))


# --- a search request: the query and what narrows it ---------------------------------------


@dataclass(frozen=True)
class SearchRequest:
    """A checked search: what `aggregator search` and /search run."""

    query: Query
    #: only the stories this topic publishes (its feeds and include/exclude terms)
    topic: Topic | None = None
    #: only the stories published within this span before now
    since: timedelta | None = None
    #: `since` as given, for titles and self links
    since_text: str | None = None
    limit: int = DEFAULT_LIMIT

    def parameters(self) -> list[tuple[str, str]]:
        """The request as URL query parameters (q, topic, since, limit when not the
        default), in that order: a search's self link."""
        params = [("q", self.query.text)]
        if self.topic is not None:
            params.append(("topic", self.topic.slug))
        if self.since_text is not None:
            params.append(("since", self.since_text))
        if self.limit != DEFAULT_LIMIT:
            params.append(("limit", str(self.limit)))
        return params

    def title(self) -> str:
        """`Search: "north korea" in North Korea, last 7d`."""
        title = f"Search: {self.query.text}"
        if self.topic is not None:
            title += f" in {self.topic.title}"
        if self.since_text is not None:
            title += f", last {self.since_text}"
        return title


def make_request(
    topics: Sequence[Topic],
    query: str,
    topic: str | None = None,
    since: str | None = None,
    limit: int | str | None = None,
) -> SearchRequest:
    """A SearchRequest from what the user gave (command options, URL parameters);
    QueryError naming what is wrong: the query, an unknown topic, a bad span or limit."""
    from aggregator.config import parse_duration

    parsed = parse_query(query)
    chosen = None
    if topic is not None and topic.strip():
        slug = topic.strip()
        chosen = next((t for t in topics if t.slug == slug), None)
        if chosen is None:
            known = ", ".join(t.slug for t in topics)
            raise QueryError(f"no topic {slug[:60]!r}; the topics are: {known}")
    span = since_text = None
    if since is not None and since.strip():
        since_text = since.strip()
        try:
            span = parse_duration(since_text)
        except ValueError as e:
            raise QueryError(f"since: {e}") from None
    return SearchRequest(parsed, chosen, span, since_text, parse_limit(limit))


def parse_limit(value: int | str | None) -> int:
    """A result count from 1 to MAX_LIMIT; DEFAULT_LIMIT when not given."""
    if value is None or value == "":
        return DEFAULT_LIMIT
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9]{1,6}", value.strip()):
            raise QueryError(f"limit: expected a number from 1 to {MAX_LIMIT}")
        value = int(value.strip())
    if not 1 <= value <= MAX_LIMIT:
        raise QueryError(f"limit: expected a number from 1 to {MAX_LIMIT}, got {value}")
    return value


def request_from_parameters(
    topics: Sequence[Topic], parameters: Mapping[str, str]
) -> SearchRequest:
    """A SearchRequest from URL parameters (`q`, `topic`, `since`, `limit`)."""
    return make_request(
        topics,
        parameters.get("q", ""),
        parameters.get("topic"),
        parameters.get("since"),
        parameters.get("limit"),
    )

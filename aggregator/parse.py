"""Feed bytes and response headers → ParsedFeed (RSS, Atom, JSON Feed). No I/O.

RSS 0.9x/1.0/2.0 and Atom go through feedparser with its sanitizer and URI
rewriting turned off: clean.py does both with nh3, which is far faster. JSON
Feed 1.0/1.1 (https://jsonfeed.org/version/1.1) is read here, since
feedparser 6 does not know it. HTML is left as the feed gave it; only entry
links are made absolute. The feed's own link (its site) is kept only as an
http(s) URL without credentials, and author names as plain text.
"""

from __future__ import annotations

import copy
import functools
import html
import io
import json
import re
import time
import xml.sax
import xml.sax.expatreader
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

import feedparser
import feedparser.mixin
import feedparser.urls

from aggregator.clean import html_to_text
from aggregator.errors import ParseError
from aggregator.model import ParsedEntry, ParsedFeed
from aggregator.urls import http_url, publishable_url

#: bozo exceptions that only say the server mislabelled a readable document
_HARMLESS_BOZO: tuple[type[Exception], ...] = (
    feedparser.CharacterEncodingOverride,
    feedparser.NonXMLContentType,
)

#: how much of the body the entity guard and the HTML sniffer look at
_PROLOGUE_BYTES = 64 * 1024

#: more attributes than this on one element is no feed's: the most any element of the
#: 1,465 files of ../shared/realworld-feeds has (namespace declarations included) is 14
MAX_XML_ATTRIBUTES = 256
_XML_NAME_START = rb"A-Za-z_:\x80-\xff"
_XML_ATTRIBUTE = rb"""\s++[^\s/<>="']++(?:\s*+=\s*+(?:"[^"<]*+"|'[^'<]*+'|[^\s<>"']*+))?"""
#: matches from the start of a body as far as no element has more than MAX_XML_ATTRIBUTES
#: (quoted or not, with a value or not: the loose parser reads them all), stepping over
#: comments, CDATA sections and processing instructions (each to its first end, or to the
#: end of the body; written out rather than as a lazy `.*?`, which tried the end at every
#: byte: 10× faster on the CDATA sections of WordPress feeds)
_UNCROWDED_ELEMENTS = re.compile(
    rb"""(?:
        [^<]++
      | <!--(?:[^-]++|-(?!->))*+(?:-->|\Z)
      | <!\[CDATA\[(?:[^\]]++|\](?!\]>))*+(?:\]\]>|\Z)
      | <\?(?:[^?]++|\?(?!>))*+(?:\?>|\Z)
      | <[%(start)s][^\s/<>="']*+(?:%(attribute)s){0,%(limit)d}+(?!%(attribute)s)
      | <(?![%(start)s])
    )*+"""
    % {b"start": _XML_NAME_START, b"attribute": _XML_ATTRIBUTE, b"limit": MAX_XML_ATTRIBUTES},
    re.VERBOSE | re.DOTALL,
)

_FIRST_ELEMENT = re.compile(rb"<[A-Za-z_]")
_ENTITY_DECLARATION = re.compile(rb"<!ENTITY\s+(%\s+)?[^\s>]+\s+(.*?)>", re.DOTALL)
#: a general entity reference (&name;) inside an entity value; &#…; is fine
_ENTITY_REFERENCE = re.compile(rb"&[A-Za-z_:][\w.:-]*;")
_EXTERNAL_ENTITY = re.compile(rb"^\s*(SYSTEM|PUBLIC)\b")
#: a DOCTYPE with its internal subset: [ … ] may hold quoted ">" but never "]>"
_DOCTYPE = re.compile(rb"<!DOCTYPE[^\[>]*(\[.*?\]\s*)?>", re.DOTALL)
_HTML_START = re.compile(rb"<(!doctype\s+html|html[\s>]|head[\s>]|body[\s>])", re.IGNORECASE)
_FEED_ROOT = re.compile(rb"<(\w+:)?(rss|feed|RDF|channel)[\s>]")
#: the spec's version URL; a bare "1.0"/"1.1" (seen in the wild, read by other readers) too
_JSON_FEED_VERSION = re.compile(r"^(https?://jsonfeed\.org/version/)?1(\.\d+)?/?$")
_HAS_ENTITY = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[A-Za-z]\w*);")
_SPACE = re.compile(r"\s+")
_BLANK_LINE = re.compile(r"\n\s*\n")

# --- feedparser tuning ---------------------------------------------------------------
# Replacements for parts of feedparser, installed by `tune_feedparser`.

#: feedparser's URI joins with a small cache (see `tune_feedparser`)
_cached_make_safe_absolute_uri = functools.lru_cache(maxsize=1024)(
    feedparser.urls.make_safe_absolute_uri
)
_cached_urljoin = functools.lru_cache(maxsize=1024)(feedparser.urls._urljoin)


def _add_tag(self: Any, term: Any, scheme: Any, label: Any) -> None:
    """feedparser's `_add_tag` (a category, keyword or tag of the current entry or feed)
    without looking through all those before for an equal one, which made 10,000
    <category> in one item cost 1.3 s and 100,000 hours: a set of the tags seen does. The
    same tags in the same order; the last one is compared as it is now, since
    `_end_category` may still give it its term."""
    context = self._get_context()
    tags = context.setdefault("tags", [])
    if not term and not scheme and not label:
        return
    value = feedparser.util.FeedParserDict(term=term, scheme=scheme, label=label)
    sets: dict[int, _TagSet] = self.__dict__.setdefault("_aggregator_tag_sets", {})
    tag_set = sets.get(id(tags))
    if tag_set is None or tag_set.tags is not tags or tag_set.count >= len(tags):
        tag_set = sets[id(tags)] = _TagSet(tags)
    try:
        for tag in tags[tag_set.count : len(tags) - 1]:  # not the last: it may still change
            tag_set.seen.add(frozenset(dict.items(tag)))
        tag_set.count = max(tag_set.count, len(tags) - 1)
        known = frozenset(dict.items(value)) in tag_set.seen
    except TypeError:  # a value that cannot be hashed: feedparser's own look
        sets.pop(id(tags))
        known = value in tags[:-1]
    if not known and not (tags and tags[-1] == value):
        tags.append(value)


class _TagSet:
    """The tags of a list but its last, as frozensets of their items."""

    def __init__(self, tags: list[Any]) -> None:
        self.tags = tags
        self.count = 0
        self.seen: set[frozenset[Any]] = set()


#: the keys FeedParserDict maps to others or computes (see its `__getitem__`); it reads
#: every other key as a plain dict does
_FEEDPARSER_SPECIAL_KEYS = frozenset(
    {"category", "enclosures", "license", "updated", "updated_parsed"}
    | set(feedparser.util.FeedParserDict.keymap)
)
_feedparser_dict_get = feedparser.util.FeedParserDict.get
_feedparser_dict_contains = feedparser.util.FeedParserDict.__contains__


def _dict_get(self: Any, key: Any, default: Any = None) -> Any:
    """`FeedParserDict.get`, for a key it neither maps nor computes as `dict.get`: its
    own goes through `__getitem__`'s chain of tests in Python, and feedparser asks
    `contentparams.get("type")` for every run of text and element it ends."""
    if key in _FEEDPARSER_SPECIAL_KEYS:
        return _feedparser_dict_get(self, key, default)
    return dict.get(self, key, default)


def _dict_contains(self: Any, key: Any) -> bool:
    """`FeedParserDict.__contains__`, for a key it neither maps nor computes as a dict's."""
    if key in _FEEDPARSER_SPECIAL_KEYS:
        return bool(_feedparser_dict_contains(self, key))
    return dict.__contains__(self, key)


def _dict_deepcopy(self: Any, memo: dict[int, Any]) -> Any:
    """`copy.deepcopy` of a FeedParserDict as the generic way makes it (`copy._reconstruct`
    of its `__reduce_ex__(4)`): a new instance, entered in `memo` first, a copy of its
    instance dict if any, then a copy of each item set through `__setitem__`. The generic
    way first asks the instance for `__deepcopy__` and `__setstate__`, which the class's
    `__getattr__` answers by raising two exceptions in Python; feedparser copies its
    content parameters for every title, summary and content it ends."""
    cls: Any = type(self)
    copied = cls.__new__(cls)
    memo[id(self)] = copied
    if self.__dict__:
        copied.__dict__.update(copy.deepcopy(self.__dict__, memo))
    for key, value in dict.items(self):
        copied[copy.deepcopy(key, memo)] = copy.deepcopy(value, memo)
    return copied


#: (namespace URI or None, local name)
_Name = tuple[str | None, str]


class _Attributes(xml.sax.xmlreader.AttributesNSImpl):
    """Attributes whose value by qualified name is found in constant time: the standard
    library's looks through every attribute, and feedparser asks it for each one, so an
    element with 30,000 attributes took 31 s to parse (and 300,000 hours)."""

    def __init__(self, values: dict[_Name, str], qnames: dict[_Name, str]) -> None:
        super().__init__(values, qnames)
        self._values, self._names = values, qnames
        self._by_qname: dict[str, str] | None = None

    def getValueByQName(self, name: str) -> str:
        if len(self._names) < 16:
            return super().getValueByQName(name)
        if self._by_qname is None:
            self._by_qname = {}
            for key, qname in self._names.items():
                self._by_qname.setdefault(qname, self._values[key])
        try:
            return self._by_qname[name]
        except KeyError:
            raise KeyError(name) from None


class _BufferedExpatParser(xml.sax.expatreader.ExpatParser):
    """expat passing each run of text in one call instead of one per line and entity:
    feedparser handles every call in Python, and escaped HTML has an entity every few
    characters. A tenth of its time on the bench corpus; the same parsed feeds there and
    on every file of ../shared/realworld-feeds (compared field by field when it was added).
    Its attributes are `_Attributes`."""

    def reset(self) -> None:
        super().reset()
        self._parser.buffer_text = True  # type: ignore[attr-defined]  # set by reset()

    def start_element_ns(self, name: str, attrs: Mapping[str, str]) -> None:
        """The standard library's, with `_Attributes`: expat gives names as "uri local
        prefix", "uri local" or "local"."""
        parts = name.split()
        pair = (None, name) if len(parts) == 1 else (parts[0], parts[1])
        values: dict[_Name, str] = {}
        qnames: dict[_Name, str] = {}
        for attribute, value in attrs.items():
            parts = attribute.split()
            if len(parts) == 1:
                key: _Name = (None, attribute)
                qname = attribute
            elif len(parts) == 3:
                key, qname = (parts[0], parts[1]), f"{parts[2]}:{parts[1]}"
            else:
                key, qname = (parts[0], parts[1]), parts[1]
            values[key] = value
            qnames[key] = qname
        handler = self.getContentHandler()
        handler.startElementNS(pair, None, _Attributes(values, qnames))


def create_parser() -> xml.sax.xmlreader.XMLReader:
    """The SAX driver hook (`xml.sax.make_parser` imports the named module and calls this)."""
    return _BufferedExpatParser()


def tune_feedparser() -> None:
    """Install our changes to feedparser's module globals. Each gives the results
    feedparser gives without it, and takes away a cost:

    - `make_safe_absolute_uri` and `_urljoin`, as feedparser's mixin calls them, are
      cached: feedparser joins the xml:base in effect with each element's own on every
      start tag, nearly always the same two strings, a fifth of its time on our corpus
      (1.04 → 0.82 ms an entry). Both functions are pure.
    - `_FeedParserMixin._add_tag` is `_add_tag`, which finds an equal tag in a set rather
      than by looking through the list: tags cost time in proportion to their number.
    - `FeedParserDict.get` and `__contains__` read a key that the class neither maps to
      another nor computes (all but a few) as a dict does, without `__getitem__`'s chain
      of tests in Python: a tenth of feedparser's time on our corpus.
    - `FeedParserDict.__deepcopy__` is `_dict_deepcopy`: the copy `copy.deepcopy` makes
      without it, without the two exceptions its generic way raises on each copy.
    - `PREFERRED_XML_PARSERS` names this module, so the SAX parser is `create_parser`'s
      `_BufferedExpatParser` (text in runs, attributes by name in constant time).
      feedparser asks xml.sax for the first driver of the list that imports; its default,
      "drv_libxml2", is a module nobody has, looked for on sys.path at every parse.

    Idempotent: it assigns the same objects each time. Called once, by the last line of
    this module, so feedparser is tuned wherever this module is imported: in the parse
    workers before their first parse, and in tests that call feedparser itself to compare
    it with our replacements. (Tuning on the first `parse_feed` instead would leave such a
    comparison untuned, and a test that patched one of these attributes before the first
    parse would have its patch overwritten, then undone back to feedparser's own.)
    """
    feedparser.mixin.make_safe_absolute_uri = _cached_make_safe_absolute_uri
    feedparser.mixin._urljoin = _cached_urljoin
    feedparser.mixin._FeedParserMixin._add_tag = _add_tag
    feedparser.api.PREFERRED_XML_PARSERS[:] = [__name__]
    feedparser.util.FeedParserDict.get = _dict_get
    feedparser.util.FeedParserDict.__contains__ = _dict_contains
    feedparser.util.FeedParserDict.__deepcopy__ = _dict_deepcopy


# --- parsing -------------------------------------------------------------------------


def parse_feed(body: bytes, headers: Mapping[str, str], url: str) -> ParsedFeed:
    """Parse a fetched body. `url` is the URL it came from: base for relative links.

    Raises ParseError (one line for the user) when the body is not a feed.
    """
    stripped = body.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not stripped:
        raise ParseError(url, "empty body")
    lowered = {key.lower(): value for key, value in headers.items()}
    content_type = lowered.get("content-type", "").split(";")[0].strip().lower()
    if _is_json(stripped, content_type):
        return _parse_json_feed(body, lowered, url)
    return _parse_xml_feed(body, lowered, url)


# --- entries as bytes ----------------------------------------------------------------

#: what the entry scan stops at: markup to step over whole, and entry start and end tags
#: (unprefixed: a prefixed entry makes the body unsplit)
_SPLIT_TOKEN = re.compile(rb"<!--|<!\[CDATA\[|<\?|<!DOCTYPE|<(item|entry)[\s>/]|</(item|entry)\s*>")
_SKIPPED_MARKUP = {b"<!--": b"-->", b"<![CDATA[": b"]]>", b"<?": b"?>"}
#: the feed's dates, which change whenever an entry is added and which no entry inherits;
#: text only, so a match never runs past other markup
_VOLATILE_HEADER = re.compile(
    rb"<(lastBuildDate|pubDate|updated|dc:date|modified)(\s[^<>]*)?>[^<]*</\1\s*>"
)
#: feedparser reads both; see split_entries
_BASE_ATTRIBUTE = re.compile(rb"\s(xml:)?base\s*=")
#: what XML counts as space
_XML_SPACE = b" \t\r\n"


@dataclass(frozen=True)
class SplitBody:
    """An XML feed body cut at its entries: the header, each entry element, the footer
    (the space between entries is not kept)."""

    header: bytes
    entries: tuple[bytes, ...]
    footer: bytes

    def with_entries(self, entries: Iterable[bytes]) -> bytes:
        """The body with only `entries` (the feed itself, its namespaces and base kept)."""
        return self.header + b"\n".join(entries) + self.footer

    def context(self) -> bytes:
        """Everything outside the entries that could change how they read (declared
        encoding, namespaces, xml:base, a feed author entries inherit): the header and
        footer without the feed's dates, which change whenever an entry is added."""
        return _VOLATILE_HEADER.sub(b"", self.header) + b"\0" + self.footer


def split_entries(body: bytes) -> SplitBody | None:
    """Cut a body at its top-level `<item>`/`<entry>` elements by a forward byte scan that
    steps over comments, CDATA sections and processing instructions, or None when that
    cannot be done safely: a JSON or non-ASCII-compatible body, a DOCTYPE (its entities
    may stand for markup), no entries, an empty-element or nested entry, one that does not
    close, anything but space between entries, or an xml:base inside entries (feedparser
    can carry one entry's base over to the next when an element's end tag is swallowed by
    escaped markup, so an entry may read differently with its neighbour cut away). Callers
    still check what a reduced body parses into.
    """
    if body.lstrip(b"\xef\xbb\xbf" + _XML_SPACE).startswith(b"{"):
        return None  # JSON Feed: `parse_feed` reads it whole
    pieces: list[bytes] = []
    header_end = open_name = None
    entry_start = position = 0
    while match := _SPLIT_TOKEN.search(body, position):
        token = match.group()
        if token in _SKIPPED_MARKUP:
            close = body.find(_SKIPPED_MARKUP[token], match.end())
            if close < 0:
                return None
            position = close + len(_SKIPPED_MARKUP[token])
            continue
        if token == b"<!DOCTYPE":
            return None
        position = match.end()
        if match.group(1):  # an entry start tag
            tag_end = body.find(b">", match.start())
            if open_name is not None or tag_end < 0 or body[tag_end - 1 : tag_end] == b"/":
                return None
            if header_end is None:
                header_end = match.start()
            elif body[entry_start : match.start()].strip(_XML_SPACE):
                return None
            open_name, entry_start = match.group(1), match.start()
        else:  # an entry end tag
            if match.group(2) != open_name:
                return None
            pieces.append(body[entry_start : match.end()])
            open_name, entry_start = None, match.end()
    if header_end is None or open_name is not None:
        return None
    if _has_base_attribute(body, header_end, entry_start):
        return None
    return SplitBody(body[:header_end], tuple(pieces), body[entry_start:])


def _has_base_attribute(body: bytes, start: int, end: int) -> bool:
    """`_BASE_ATTRIBUTE.search(body, start, end)`, tried only where b"base" is: the pattern
    starts with a space, where re tries it, a byte at a time (most of split_entries's time)."""
    at = body.find(b"base", start, end)
    while at >= 0:
        # a match starts with the space before "base" or before "xml:base"
        for begin in (at - 1, at - 5):
            if begin >= start and _BASE_ATTRIBUTE.match(body, begin, end):
                return True
        at = body.find(b"base", at + 1, end)
    return False


def _parse_xml_feed(body: bytes, headers: dict[str, str], url: str) -> ParsedFeed:
    if _UNCROWDED_ELEMENTS.match(body).end() < len(body):  # type: ignore[union-attr]
        raise ParseError(
            url, f"not a feed: an element has more than {MAX_XML_ATTRIBUTES} attributes"
        )
    body = _defuse_entity_declarations(body)
    # feedparser takes the base URI for relative links from Content-Location only
    # (it has no URL of its own here); a relative Content-Location is resolved first.
    headers["content-location"] = urljoin(url, headers.get("content-location", ""))
    # A BytesIO, never the bytes: feedparser treats a bytes/str argument that names
    # an existing file as a path and reads it.
    result = feedparser.parse(
        io.BytesIO(body),
        response_headers=headers,
        sanitize_html=False,
        resolve_relative_uris=False,
    )
    feed = result["feed"]
    entries: list[Any] = result["entries"]
    version: str = result.get("version") or ""
    feed_title = _plain_title(feed)
    bozo_exception = result.get("bozo_exception") if result.get("bozo") else None

    if not entries and not version and not feed_title:
        if _looks_like_html(body, headers):
            raise ParseError(url, "not a feed (looks like an HTML page)")
        reason = _describe_bozo(bozo_exception) if bozo_exception else "unrecognized format"
        raise ParseError(url, f"not a feed: {reason}")

    feed_author = _name_of(dict.get(feed, "author_detail")) if version.startswith("atom") else None
    parsed = [_entry_from_feedparser(entry, url, feed_author) for entry in entries]
    # an <item> with nothing in it (no id, link, title or text; a cut-off body ends so)
    # is no entry: there is nothing to publish or to tell it from the next one by
    parsed = [entry for entry in parsed if _has_substance(entry)]
    warning = None
    if bozo_exception is not None and not isinstance(bozo_exception, _HARMLESS_BOZO):
        warning = _describe_bozo(bozo_exception)
        if not parsed:
            # the parser gave up before any entry: what it read is not the feed, and
            # calling the poll ok would hide that the feed is broken
            raise ParseError(url, f"malformed feed, no entry could be read: {warning}")

    links = [*link_header(headers.get("link", "")), *(dict.get(feed, "links") or [])]
    hubs, self_url = _websub_links(links, headers["content-location"])
    return ParsedFeed(
        title=feed_title or None,
        site_url=_feed_link(feed, headers["content-location"]),
        entries=tuple(parsed),
        icon_url=_feed_icon(feed, headers["content-location"]),
        ttl_minutes=_ttl_minutes(dict.get(feed, "ttl")),
        warning=warning,
        encoding_guessed=isinstance(bozo_exception, feedparser.CharacterEncodingOverride),
        hubs=hubs,
        self_url=self_url,
    )


#: hubs taken from one feed at most (the first is subscribed to)
MAX_HUBS = 4
#: how much of a Link header is read
MAX_LINK_HEADER = 8192
_LINK_VALUE = re.compile(r"<([^<>]*)>((?:\s*;\s*[^;,<>]*)*)")
_LINK_REL = re.compile(r';\s*rel\s*=\s*(?:"([^"]*)"|([^\s;,"]+))', re.IGNORECASE)


def link_header(value: str) -> list[dict[str, str]]:
    """The links of an HTTP Link header (RFC 8288), one {"rel", "href"} per relation,
    as feedparser gives a feed's <link> elements: WebSub's discovery reads them first
    (https://www.w3.org/TR/websub/#discovery)."""
    links = []
    for match in _LINK_VALUE.finditer(value[:MAX_LINK_HEADER]):
        found = _LINK_REL.search(match.group(2))
        if found is not None:
            for rel in (found.group(1) or found.group(2) or "").split():
                links.append({"rel": rel, "href": match.group(1).strip()})
    return links


def _websub_links(links: Iterable[Any], base_url: str) -> tuple[tuple[str, ...], str | None]:
    """The feed's WebSub hubs and self URL (https://www.w3.org/TR/websub/#discovery) from
    its Link header and <link>/<atom:link> elements, in that order: absolute http(s)
    URLs (hubs without credentials)."""
    hubs: list[str] = []
    self_url = None
    for link in links:
        if not isinstance(link, dict):
            continue
        rel = str(link.get("rel") or "").strip().lower()
        href = str(link.get("href") or "").strip()
        if rel == "hub" and len(hubs) < MAX_HUBS:
            hub = publishable_url(href, base_url)
            if hub is not None and hub not in hubs:
                hubs.append(hub)
        elif rel == "self" and self_url is None:
            # as written: the topic must be the very URL the publisher pings its hub with
            self_url = http_url(href, base_url)
    return tuple(hubs), self_url


def _defuse_entity_declarations(body: bytes) -> bytes:
    """Drop the DOCTYPE when its entities expand other entities or load external ones.

    Such declarations are how "billion laughs" bombs and XXE work, and no real feed
    needs them: references to them are left undefined (the feed stays readable, the text
    unexpanded). feedparser strips most of them and expat ≥ 2.4 limits amplification,
    but only after several megabytes of expansion; this cheap check on the prologue keeps
    us safe whatever the parser versions. Plain declarations such as
    <!ENTITY nbsp "&#160;"> are kept.
    """
    head = body[:_PROLOGUE_BYTES]
    if b"<!ENTITY" not in head:
        return body
    first_element = _FIRST_ELEMENT.search(head)
    prologue = head[: first_element.start()] if first_element else head
    for match in _ENTITY_DECLARATION.finditer(prologue):
        is_parameter_entity, value = match.group(1), match.group(2)
        if is_parameter_entity or _EXTERNAL_ENTITY.match(value) or _ENTITY_REFERENCE.search(value):
            doctype = _DOCTYPE.search(prologue)
            if doctype is None or first_element is None:
                return body[len(prologue) :]
            return body[: doctype.start()] + body[doctype.end() :]
    return body


def _has_substance(entry: ParsedEntry) -> bool:
    return bool(
        entry.entry_id
        or entry.link
        or entry.title.strip()
        or entry.content_html.strip()
        or entry.summary_html.strip()
    )


def _looks_like_html(body: bytes, headers: Mapping[str, str]) -> bool:
    head = body[:_PROLOGUE_BYTES]
    if _FEED_ROOT.search(head):
        return False
    return bool(_HTML_START.search(head)) or headers.get("content-type", "").startswith("text/html")


def _describe_bozo(exception: BaseException) -> str:
    """One short line for a feedparser bozo exception."""
    if isinstance(exception, xml.sax.SAXParseException):
        # no line number: feedparser may have rewritten the prologue, shifting lines
        return f"malformed XML: {exception.getMessage()}"
    message = str(exception).strip() or type(exception).__name__
    return _SPACE.sub(" ", message)[:200]


def _entry_from_feedparser(entry: Any, feed_url: str, feed_author: str | None) -> ParsedEntry:
    base_url = _entry_base(entry, feed_url)
    link = _entry_link(entry)
    content = _longest_content(dict.get(entry, "content") or [])
    summary_detail = dict.get(entry, "summary_detail")
    summary = _as_html(summary_detail) if summary_detail else ""
    published = (
        _datetime_from_struct(dict.get(entry, "published_parsed"))
        or _datetime_from_struct(dict.get(entry, "updated_parsed"))
        or _datetime_from_struct(dict.get(entry, "created_parsed"))
    )
    updated = _datetime_from_struct(dict.get(entry, "updated_parsed")) or published
    return ParsedEntry(
        entry_id=_clean_id(dict.get(entry, "id")),
        link=urljoin(base_url, link) if link else None,
        title=_plain_title(entry),
        content_html=content,
        summary_html=summary,
        author=_author_name(dict.get(entry, "author"))
        or _name_of(dict.get(entry, "author_detail"))
        or feed_author,
        categories=_unique(
            (tag.get("label") or tag.get("term") or "") for tag in dict.get(entry, "tags") or []
        ),
        published=published,
        updated=updated,
        base_url=base_url,
        image_url=_entry_image(entry),
    )


def _entry_image(entry: Any) -> str | None:
    """The entry's lead image as the feed names it: Media RSS thumbnail, then an image
    media:content, then an image enclosure (https://www.rssboard.org/media-rss). The URL
    is resolved and checked when cleaned."""
    for thumbnail in dict.get(entry, "media_thumbnail") or []:
        if isinstance(thumbnail, dict) and thumbnail.get("url"):
            return str(thumbnail["url"]).strip() or None
    for media in dict.get(entry, "media_content") or []:
        if not isinstance(media, dict) or not media.get("url"):
            continue
        kind = str(media.get("type") or "")
        if media.get("medium") == "image" or kind.startswith("image/"):
            return str(media["url"]).strip() or None
    # feedparser keeps enclosures among the links ("enclosures" is a computed key)
    for link in dict.get(entry, "links") or []:
        if isinstance(link, dict) and link.get("rel") == "enclosure" and link.get("href"):
            if str(link.get("type") or "").startswith("image/"):
                return str(link["href"]).strip() or None
    return None


def _feed_icon(feed: Any, base_url: str) -> str | None:
    """The feed's icon: Atom's square <icon> first, else its <logo> or RSS <image>;
    http(s) only and without credentials, as the site link."""
    image = dict.get(feed, "image")
    candidates = (
        dict.get(feed, "icon"),
        dict.get(feed, "logo"),
        image.get("href") if isinstance(image, dict) else None,
    )
    for candidate in candidates:
        if isinstance(candidate, str) and candidate.strip():
            url = publishable_url(candidate.strip(), base_url)
            if url:
                return url
    return None


def _entry_base(entry: Any, feed_url: str) -> str:
    """xml:base in effect for the entry's content (feedparser records it per element)."""
    for detail in (*(dict.get(entry, "content") or []), dict.get(entry, "summary_detail")):
        if detail and detail.get("base"):
            return urljoin(feed_url, str(detail["base"]))
    title_detail = dict.get(entry, "title_detail")
    if title_detail and title_detail.get("base"):
        return urljoin(feed_url, str(title_detail["base"]))
    return feed_url


def _entry_link(entry: Any) -> str | None:
    for link in dict.get(entry, "links") or []:
        if link.get("rel", "alternate") == "alternate" and link.get("href"):
            return str(link["href"]).strip()
    link = dict.get(entry, "link")
    return str(link).strip() or None if link else None


def _feed_link(feed: Any, base_url: str) -> str | None:
    """The feed's site: published (OPML htmlUrl, outlet links), so http(s) only and without
    the credentials the feed URL it may be resolved against can carry."""
    link = dict.get(feed, "link")
    return publishable_url(str(link), base_url) if link else None


def _longest_content(contents: Iterable[Any]) -> str:
    """The fullest of the entry's content elements (e.g. content:encoded), as HTML."""
    candidates = [_as_html(content) for content in contents]
    return max(candidates, key=len, default="")


def _as_html(detail: Any) -> str:
    value = str(detail.get("value") or "")
    if detail.get("type") == "text/plain":
        return text_to_html(value)
    return value.strip()


def text_to_html(text: str) -> str:
    """Plain text as HTML paragraphs: blank lines split paragraphs, newlines become <br>."""
    paragraphs = [part.strip() for part in _BLANK_LINE.split(text.strip()) if part.strip()]
    return "".join(
        "<p>" + html.escape(paragraph).replace("\n", "<br>") + "</p>" for paragraph in paragraphs
    )


def _plain_title(element: Any) -> str:
    """A title as plain text whatever markup the feed put in it: an HTML or XHTML title
    reads as a browser shows it (a script's or style's text is none of it, an inline tag
    is no word break: `AT<b>&amp;</b>T` is "AT&T")."""
    detail = dict.get(element, "title_detail")
    value = str(detail.get("value") or "") if detail else str(dict.get(element, "title") or "")
    if detail and detail.get("type") in ("text/html", "application/xhtml+xml"):
        return html_to_text(value)
    # RSS titles are often escaped twice ("AT&amp;T"); a text title with entities left
    # in it is one of those.
    if _HAS_ENTITY.search(value):
        value = html.unescape(value)
    return _clean_text(value) or ""


#: RSS 2.0 <author> is "email (Name)"; some feeds write "Name <email>"; feedparser gives
#: an Atom author as "Name (email)"
_EMAIL_THEN_NAME = re.compile(r"^\S+@\S+\s*\((?P<name>[^()]+)\)$")
_NAME_THEN_EMAIL = re.compile(r"^(?P<name>[^<>()]+?)\s*[<(]\S+@\S+[>)]$")
#: a start or end tag, as opposed to a "<" in text ("AT&T <3")
_MARKUP_TAG = re.compile(r"</?[A-Za-z][^<>]*>")


def _author_name(author: object) -> str | None:
    """The person's name from an author string, without the e-mail address around it
    (feedparser's own split of "email (Name)" cuts the address in the wrong place)."""
    text = _plain_name(author)
    if not text:
        return None
    match = _EMAIL_THEN_NAME.match(text) or _NAME_THEN_EMAIL.match(text)
    return match.group("name").strip() if match else text


def _name_of(detail: Any) -> str | None:
    if not detail:
        return None
    return _plain_name(detail.get("name"))


def _plain_name(value: object) -> str | None:
    """A name as plain text, which renderers escape once. feedparser hands names over with
    whatever the feed put in them: markup (`<dc:creator>&lt;b&gt;Bob&lt;/b&gt;` comes as
    "<b>Bob</b>") and, from feeds that escape twice, character references ("Tom &amp;
    Jerry"). References are decoded once, then tags dropped (their text kept)."""
    text = _clean_text(value)
    if not text:
        return None
    if _HAS_ENTITY.search(text):
        text = html.unescape(text)
    if "<" in text:
        text = _MARKUP_TAG.sub(" ", text)
    return _clean_text(text)


def _clean_text(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    return _SPACE.sub(" ", value).strip() or None


def _clean_id(value: object) -> str | None:
    if value is None:
        return None
    return str(value).strip() or None


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    """Non-empty values, stripped, first spelling kept, case-insensitively unique."""
    seen: set[str] = set()
    kept: list[str] = []
    for value in values:
        cleaned = _clean_text(value)
        if cleaned and cleaned.casefold() not in seen:
            seen.add(cleaned.casefold())
            kept.append(cleaned)
    return tuple(kept)


def _datetime_from_struct(value: object) -> datetime | None:
    """feedparser's *_parsed (a UTC struct_time) as an aware UTC datetime."""
    if not isinstance(value, time.struct_time):
        return None
    try:
        return datetime(*value[:6], tzinfo=UTC)
    except (ValueError, OverflowError):
        return None


def _ttl_minutes(value: object) -> int | None:
    try:
        minutes = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return minutes if minutes > 0 else None


# --- JSON Feed ---------------------------------------------------------------------


def _is_json(stripped_body: bytes, content_type: str) -> bool:
    if stripped_body.startswith(b"{"):
        return True
    is_json_type = content_type in ("application/feed+json", "application/json")
    return is_json_type and not stripped_body.startswith(b"<")


def _parse_json_feed(body: bytes, headers: Mapping[str, str], url: str) -> ParsedFeed:
    try:
        document = json.loads(body)
    except UnicodeDecodeError:
        document = _loads_lenient(body, url)
    except (ValueError, RecursionError) as error:
        raise ParseError(url, f"invalid JSON Feed: {_json_error(error)}") from error
    if not isinstance(document, dict):
        raise ParseError(url, "invalid JSON Feed: top level is not an object")
    version = document.get("version")
    if not isinstance(version, str) or not _JSON_FEED_VERSION.match(version.strip()):
        found = f"version {version!r}" if version is not None else "no version"
        raise ParseError(url, f"invalid JSON Feed: {found}, expected jsonfeed.org/version/1.x")
    items = document.get("items", [])
    if not isinstance(items, list):
        raise ParseError(url, "invalid JSON Feed: items is not a list")
    feed_authors = _json_authors(document)
    declared = document.get("hubs")
    hubs = [
        {"rel": "hub", "href": _json_string(hub.get("url"))}
        for hub in (declared if isinstance(declared, list) else [])
        if isinstance(hub, dict) and str(hub.get("type", "")).lower() == "websub"
    ]
    self_link = {"rel": "self", "href": _json_string(document.get("feed_url"))}
    links = [*link_header(headers.get("link", "")), *hubs, self_link]
    websub_hubs, self_url = _websub_links(links, url)
    return ParsedFeed(
        title=_json_string(document.get("title")),
        site_url=publishable_url(_json_string(document.get("home_page_url")), url),
        # favicon is the small one (JSON Feed 1.1: "for use in source lists"), icon 512 px
        icon_url=publishable_url(_json_string(document.get("favicon")), url)
        or publishable_url(_json_string(document.get("icon")), url),
        hubs=websub_hubs,
        self_url=self_url,
        entries=tuple(
            _entry_from_json(item, url, feed_authors) for item in items if isinstance(item, dict)
        ),
    )


def _loads_lenient(body: bytes, url: str) -> Any:
    """JSON Feed must be UTF-8 (RFC 8259); a stray bad byte is replaced, not fatal."""
    try:
        return json.loads(body.decode("utf-8", "replace"))
    except (ValueError, RecursionError) as error:
        raise ParseError(url, f"invalid JSON Feed: {_json_error(error)}") from error


def _json_error(error: BaseException) -> str:
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _entry_from_json(item: dict[str, Any], feed_url: str, feed_authors: str | None) -> ParsedEntry:
    link = _json_string(item.get("url")) or _json_string(item.get("external_url"))
    content_html = _json_string(item.get("content_html"))
    content_text = _json_string(item.get("content_text"))
    summary = _json_string(item.get("summary"))
    item_id = item.get("id")
    published = _rfc3339(item.get("date_published"))
    tags = item.get("tags")
    return ParsedEntry(
        entry_id=_clean_id(item_id) if isinstance(item_id, str | int) else None,
        link=urljoin(feed_url, link) if link else None,
        title=_plain_title({"title": _json_string(item.get("title")) or ""}),
        content_html=content_html or (text_to_html(content_text) if content_text else ""),
        # JSON Feed's summary is plain text
        summary_html=text_to_html(summary) if summary else "",
        author=_json_authors(item) or feed_authors,
        categories=_unique(tag for tag in tags if isinstance(tag, str))
        if isinstance(tags, list)
        else (),
        published=published,
        updated=_rfc3339(item.get("date_modified")) or published,
        base_url=feed_url,
        image_url=_json_string(item.get("image")) or _json_string(item.get("banner_image")),
    )


def _json_authors(container: Mapping[str, Any]) -> str | None:
    """Names from `authors` (1.1) or `author` (1.0), joined with commas."""
    authors = container.get("authors")
    if not isinstance(authors, list):
        author = container.get("author")
        authors = [author] if isinstance(author, dict) else []
    names = _unique(
        _plain_name(author["name"]) or ""
        for author in authors
        if isinstance(author, dict) and isinstance(author.get("name"), str)
    )
    return ", ".join(names) or None


def _json_string(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        value.encode()
    except UnicodeEncodeError:
        # a lone surrogate ("\ud800" is valid JSON): nothing can store or show it, and a
        # feed title holding one failed every poll of the feed
        value = value.encode(errors="ignore").decode()
    return value.strip() or None


def _rfc3339(value: object) -> datetime | None:
    """An RFC 3339 date as aware UTC; a date without offset is taken as UTC."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


# Last, so that every name it installs is defined; see its docstring for why at import.
tune_feedparser()

"""Published outputs: items → Atom, RSS, JSON Feed, HTML page, index and OPML bytes.

Pure and deterministic: the same arguments give byte-identical output (no clock, no
locale, no dict-order surprises), so publish.py can skip rewriting unchanged files.
No I/O.

Every document is built as a tree (lxml) or with json.dumps, never by pasting strings, so
hostile feed text always ends up as text. Item HTML (already sanitized by clean.py) is
embedded in the feeds as escaped text (Atom type="html", RSS description), never as
markup, and the HTML page shows only the plain-text excerpt.

This is also the last gate for what was stored before cleaning got stricter: every URL
taken from a feed, and every configured feed URL, goes through `published_url` (http(s)
only, no credentials, else left out), titles, names and category terms through `single_line` (no
bidirectional controls), and every item gets what each format requires (a title, content
when it has no link) whatever its source lacked.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from typing import Any

from lxml import etree

from aggregator import PROJECT_URL, __version__
from aggregator.model import PublishedItem, SourceRef, Topic
from aggregator.text import single_line, without_bidi_embeddings
from aggregator.timeutil import to_utc
from aggregator.urls import publishable_url, redact_text

ATOM_NS = "http://www.w3.org/2005/Atom"
DC_NS = "http://purl.org/dc/elements/1.1/"
CONTENT_NS = "http://purl.org/rss/1.0/modules/content/"
JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
RSS_DOCS = "https://www.rssboard.org/rss-specification"

ATOM_TYPE = "application/atom+xml"
RSS_TYPE = "application/rss+xml"
JSON_FEED_TYPE = "application/feed+json"
HTML_TYPE = "text/html; charset=utf-8"
OPML_TYPE = "text/x-opml; charset=utf-8"

#: an empty feed's date: any fixed value keeps the output deterministic
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

GENERATOR_NAME = "aggregator"
#: the title of an item that has none (every format shows one)
UNTITLED = "(untitled)"

# XML 1.0 allows only these characters (https://www.w3.org/TR/xml/#charsets); lxml refuses
# the rest, and lone surrogates cannot even be encoded, so hostile feed text loses them.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# The pages' one stylesheet, inline (no external resource, no script): readable measure and
# type, a dark scheme, and nothing wider than a 360 px phone (long words wrap anywhere,
# images have a fixed box). PAGE_STYLE_HASH lets a Content-Security-Policy allow exactly it.
_PAGE_CSS = """
*,*::before,*::after{box-sizing:border-box}
:root{color-scheme:light dark;--bg:#fdfdfc;--fg:#1d1f21;--muted:#5b6066;--link:#0b57b0;
--visited:#6b3fa0;--rule:#e3e4e6;--field:#fff}
@media (prefers-color-scheme:dark){:root{--bg:#16181b;--fg:#e4e6e8;--muted:#a2a8ae;
--link:#8ab4f8;--visited:#c7a6f0;--rule:#2c3035;--field:#1f2226}}
html{-webkit-text-size-adjust:100%;text-size-adjust:100%}
body{max-width:46rem;margin:0 auto;padding:1rem;font:17px/1.55 system-ui,-apple-system,
"Segoe UI",Roboto,"Noto Sans",sans-serif;color:var(--fg);background:var(--bg);
overflow-wrap:anywhere}
a{color:var(--link);text-underline-offset:.15em}
a:visited{color:var(--visited)}
h1{font-size:1.7rem;line-height:1.2;margin:.5rem 0}
header .description,.meta,.also,footer,.pages{color:var(--muted)}
.meta,.also,footer,nav{font-size:.9rem}
nav a{white-space:nowrap}
.search{display:flex;gap:.5rem;margin:.75rem 0 0}
.search input{flex:1;min-width:0;font:inherit;padding:.35rem .5rem;color:var(--fg);
background:var(--field);border:1px solid var(--muted);border-radius:4px}
.search button{font:inherit;padding:.35rem .8rem;border-radius:4px}
.visually-hidden{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);
white-space:nowrap}
h2.day{font-size:.8rem;font-weight:600;letter-spacing:.06em;text-transform:uppercase;
color:var(--muted);margin:1.75rem 0 0;padding-bottom:.3rem;border-bottom:2px solid var(--rule)}
article{display:flow-root;padding:.8rem 0;border-bottom:1px solid var(--rule)}
article h3{font-size:1.15rem;line-height:1.3;margin:0 0 .25rem}
article h3 a{text-decoration:none}
article h3 a:hover{text-decoration:underline}
.meta,.excerpt,.also{margin:.25rem 0}
.thumb{float:right;width:120px;height:80px;object-fit:cover;margin:.2rem 0 .4rem .8rem;
border-radius:4px;background:var(--rule)}
.icon{width:16px;height:16px;object-fit:cover;vertical-align:-.15em;margin-right:.3rem;border-radius:2px}
@media (max-width:30rem){body{font-size:16px;padding:.75rem}
.thumb{width:88px;height:60px;margin-left:.6rem}}
.pages{display:flex;justify-content:space-between;gap:1rem;margin:1.5rem 0}
footer{margin-top:2rem;border-top:1px solid var(--rule);padding-top:.5rem}
"""
#: the Content-Security-Policy source that allows the pages' <style> and nothing else
PAGE_STYLE_HASH = (
    "'sha256-" + base64.b64encode(hashlib.sha256(_PAGE_CSS.encode()).digest()).decode() + "'"
)
#: the policy the HTML pages are served with: their inline style, images over http(s),
#: the search form; no script, frame, plugin, font or connection of any kind
PAGE_CSP = (
    f"default-src 'none'; style-src {PAGE_STYLE_HASH}; img-src http: https:;"
    " form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
#: the size of a story's thumbnail and of an outlet's icon on the page (CSS fixes them)
THUMB_SIZE = (120, 80)
ICON_SIZE = 16


# --- text and dates ------------------------------------------------------------------


def clean_text(text: str | None) -> str:
    """`text` without the characters XML cannot carry (controls, lone surrogates)."""
    if not text:
        return ""
    return _NOT_XML_CHAR.sub("", text)


def _line(text: str | None) -> str:
    """A single-line field (title, name, category term) as published: one line, without
    the characters XML cannot carry or bidirectional controls."""
    return single_line(clean_text(text))


def published_url(url: str | None, base: str | None = None) -> str | None:
    """`url` as it may be published, resolved against `base` when relative: http(s) only,
    without userinfo or secret-looking parameters (`urls.publishable_url`), and a valid
    IRI (`_as_iri`); None means leave it out. Every URL that comes from a feed, and every
    configured feed URL, passes here (our own links, made from `base_url` and slugs, do
    not need to)."""
    url = publishable_url(clean_text(url), clean_text(base) or None)
    return _as_iri(url) if url else None


#: what no IRI may hold (RFC 3987 section 2.2 and 4.1) and browsers percent-encode: space
#: and the other characters outside the URI and IRI grammars, controls, and bidirectional
#: formatting characters (U+202E in a link would show "gpj.exe" as "exe.jpg")
_NOT_IRI_CHAR = re.compile(r'[\x00-\x20"<>\\^`{|}\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]')


def _as_iri(url: str) -> str:
    """`url` with every character no IRI may hold percent-encoded (UTF-8), as a browser
    sends it: the Atom href (an IRI), RSS link (a URL) and JSON Feed url stay valid."""
    return _NOT_IRI_CHAR.sub(lambda m: "".join(f"%{b:02X}" for b in m[0].encode()), url)


def format_rfc3339(moment: datetime) -> str:
    """`2024-03-05T14:07:09Z`: whole seconds, UTC, as Atom and JSON Feed want."""
    return to_utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_rfc822(moment: datetime) -> str:
    """`Tue, 05 Mar 2024 14:07:09 GMT`, as RSS 2.0 wants."""
    return format_datetime(to_utc(moment).replace(microsecond=0), usegmt=True)


def format_human(moment: datetime) -> str:
    """`5 March 2024, 14:07 UTC`; month names fixed, not taken from the locale."""
    utc = to_utc(moment)
    return f"{utc.day} {_MONTHS[utc.month - 1]} {utc.year}, {utc:%H:%M} UTC"


def format_day(moment: datetime, now: datetime) -> str:
    """The heading of a day's stories: "Today", "Yesterday", else `Tuesday 3 March`, with
    the year when it is not `now`'s. UTC days (a static page cannot know the reader's)."""
    day, today = to_utc(moment).date(), to_utc(now).date()
    if day == today:
        return "Today"
    if day == today - timedelta(days=1):
        return "Yesterday"
    label = f"{_WEEKDAYS[day.weekday()]} {day.day} {_MONTHS[day.month - 1]}"
    return label if day.year == today.year else f"{label} {day.year}"


def format_relative(moment: datetime, now: datetime) -> str:
    """How long before `now`: "just now", "5 min ago", "2 h ago"; a day or more before, the
    date and time (`3 March, 14:07`, with the year when it is not `now`'s)."""
    utc, reference = to_utc(moment), to_utc(now)
    seconds = (reference - utc).total_seconds()
    if seconds < 60:
        return "just now"  # a date after `now` too: the page cannot be older than its items
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    label = f"{utc.day} {_MONTHS[utc.month - 1]}, {utc:%H:%M}"
    return (
        label
        if utc.year == reference.year
        else f"{utc.day} {_MONTHS[utc.month - 1]} {utc.year}, {utc:%H:%M}"
    )


def _feed_updated(items: Sequence[PublishedItem]) -> datetime:
    return max((to_utc(item.updated) for item in items), default=EPOCH)


def _title(item: PublishedItem) -> str:
    """The item's title, never empty: Atom requires one, RSS one of title or description."""
    return _line(item.title) or UNTITLED


def _link(item: PublishedItem) -> str | None:
    """The item's link if it may be published; a relative one (stored before links were
    resolved when cleaned) is resolved against its first outlet's feed."""
    base = item.sources[0].feed_url if item.sources else None
    return published_url(item.link, base)


def _author(item: PublishedItem) -> str:
    """The item's author as one line, or ""."""
    return _line(item.author)


def _author_name(item: PublishedItem) -> str:
    """The item's author, else its first outlet: an Atom entry needs an author."""
    author = _author(item)
    if author:
        return author
    for source in item.sources:
        title = _source_title(source)
        if title:
            return title
    return "Unknown"


def _categories(item: PublishedItem) -> list[str]:
    """Non-empty categories, each once, in the feed's order."""
    seen: dict[str, None] = {}
    for category in item.categories:
        term = _line(category)
        if term:
            seen.setdefault(term, None)
    return list(seen)


def _source_title(source: SourceRef) -> str:
    """The outlet's name as one line. A feed with neither a configured name nor a title of
    its own is named by its URL: that name is published as URLs are (no credentials), and
    any URL quoted in a feed's title is shown redacted."""
    title = _line(source.title)
    if not title or title == _line(source.feed_url):
        return published_url(source.feed_url) or ""
    return redact_text(title)


def _source_url(source: SourceRef) -> str | None:
    """The outlet's site or its link to the story, else its feed; None if neither may be
    published."""
    return published_url(source.url, source.feed_url) or _source_feed_url(source)


def _source_feed_url(source: SourceRef) -> str | None:
    return published_url(source.feed_url)


def _summary_html(item: PublishedItem) -> str:
    """Summary as HTML: the sanitized summary, else the plain excerpt escaped."""
    if item.summary_html:
        return clean_text(item.summary_html)
    return html.escape(clean_text(item.excerpt), quote=False)


def _output_url(base_url: str, slug: str, extension: str) -> str:
    return f"{clean_text(base_url)}{clean_text(slug)}.{extension}"


def _generator_label() -> str:
    return f"{GENERATOR_NAME} {__version__} (+{PROJECT_URL})"


# --- XML helpers ---------------------------------------------------------------------


def _sub(
    parent: etree._Element,
    tag: str,
    text: str | None = None,
    attrib: dict[str, str] | None = None,
) -> etree._Element:
    """A child element; its text and attribute values are cleaned of non-XML characters."""
    element = etree.SubElement(parent, tag)
    for name, value in (attrib or {}).items():
        element.set(name, clean_text(value))
    if text is not None:
        element.text = clean_text(text)
    return element


def _xml_bytes(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="utf-8", pretty_print=True)


# --- Atom ----------------------------------------------------------------------------


def _atom(tag: str) -> str:
    return f"{{{ATOM_NS}}}{tag}"


@dataclass(frozen=True)
class PageLinks:
    """Where a topic's page points beyond its items: its older and newer pages (the archive,
    RFC 5005 paged feeds; see paging.py) and the WebSub hubs that push it. Every format
    renders the same links.

    `older`, `newer` and `page` are output name stems without extension: "north-korea" for
    the first page, "north-korea.before-<token>" for an archive page. Each format appends
    its own extension, `f"{stem}.{ext}"`: the feeds join that to the base URL, the HTML page
    links it relatively (every page is a file in the same folder, so relative links work
    from the static copies as well as from the daemon). None: there is no such page.
    """

    #: the next older page; None on the last page (feeds: rel="next", JSON Feed next_url)
    older: str | None = None
    #: where the newer stories are: on an archive page the first page (a page keyed by its
    #: cursor cannot name its immediate predecessor without shifting with new items), None
    #: on the first page (feeds: rel="first")
    newer: str | None = None
    hubs: tuple[str, ...] = ()
    #: this page when it is an archive page, for its self link; None on the first page
    page: str | None = None


#: a topic's only page: no archive pages, no hub
NO_LINKS = PageLinks()


def render_atom(
    topic: Topic, items: Sequence[PublishedItem], base_url: str, links: PageLinks = NO_LINKS
) -> bytes:
    """The topic as an Atom 1.0 feed (RFC 4287), items in the order given."""
    self_url = _output_url(base_url, links.page or topic.slug, "atom")
    # lxml-stubs do not admit None (the default namespace) as an nsmap key; lxml does.
    feed = etree.Element(_atom("feed"), nsmap={None: ATOM_NS})  # type: ignore[dict-item]
    # The first page's URL is the feed id, on every page of it: stable for as long as the
    # feed lives there.
    _sub(feed, _atom("id"), _output_url(base_url, topic.slug, "atom"))
    _sub(feed, _atom("title"), _line(topic.title), {"type": "text"})
    if topic.description:
        _sub(feed, _atom("subtitle"), topic.description, {"type": "text"})
    _sub(feed, _atom("updated"), format_rfc3339(_feed_updated(items)))
    _sub(feed, _atom("link"), attrib={"rel": "self", "type": ATOM_TYPE, "href": self_url})
    for hub in links.hubs:
        _sub(feed, _atom("link"), attrib={"rel": "hub", "href": hub})
    _sub(
        feed,
        _atom("link"),
        attrib={
            "rel": "alternate",
            "type": "text/html",
            "href": _output_url(base_url, topic.slug, "html"),
        },
    )
    _add_page_links(feed, _atom("link"), links, base_url, "atom")
    _sub(
        feed,
        _atom("generator"),
        GENERATOR_NAME,
        {"uri": PROJECT_URL, "version": __version__},
    )
    for item in items:
        _add_atom_entry(feed, item)
    return _xml_bytes(feed)


def _add_page_links(
    parent: etree._Element, tag: str, links: PageLinks, base_url: str, extension: str
) -> None:
    """RFC 5005 paged feed links (section 3), as `tag` (atom:link) in `parent`: rel="next"
    to the next older page, rel="first" on archive pages to the first page."""
    media = ATOM_TYPE if extension == "atom" else RSS_TYPE
    for rel, stem in (("next", links.older), ("first", links.newer)):
        if stem:
            href = _output_url(base_url, stem, extension)
            _sub(parent, tag, attrib={"rel": rel, "type": media, "href": href})


def _add_atom_entry(feed: etree._Element, item: PublishedItem) -> None:
    entry = _sub(feed, _atom("entry"))
    _sub(entry, _atom("id"), item.id)
    _sub(entry, _atom("title"), _title(item), {"type": "text"})
    link = _link(item)
    if link:
        _sub(entry, _atom("link"), attrib={"rel": "alternate", "href": link})
    # The contract: every outlet beyond the first (which is atom:source) is a via link.
    for source in item.sources[1:]:
        href = _source_url(source)
        if href:
            attrib = {"rel": "via", "href": href, "title": _source_title(source)}
            _sub(entry, _atom("link"), attrib=attrib)
    _sub(entry, _atom("published"), format_rfc3339(item.published))
    _sub(entry, _atom("updated"), format_rfc3339(item.updated))
    author = _sub(entry, _atom("author"))
    _sub(author, _atom("name"), _author_name(item))
    for term in _categories(item):
        _sub(entry, _atom("category"), attrib={"term": term})
    summary = _summary_html(item)
    if summary:
        _sub(entry, _atom("summary"), summary, {"type": "html"})
    # RFC 4287 4.1.1.1: an entry without an alternate link must carry content.
    content = clean_text(item.content_html) or ("" if link else summary)
    if content or not link:
        _sub(entry, _atom("content"), content, {"type": "html"})
    if item.sources:
        _add_atom_source(entry, item.sources[0])


def _add_atom_source(entry: etree._Element, source: SourceRef) -> None:
    element = _sub(entry, _atom("source"))
    feed_url = _source_feed_url(source)
    if feed_url:
        _sub(element, _atom("id"), feed_url)
    _sub(element, _atom("title"), _source_title(source), {"type": "text"})
    if feed_url:
        _sub(element, _atom("link"), attrib={"rel": "self", "href": feed_url})
    site = published_url(source.url, source.feed_url)
    if site:
        _sub(element, _atom("link"), attrib={"rel": "alternate", "href": site})


# --- RSS -----------------------------------------------------------------------------


def render_rss(
    topic: Topic, items: Sequence[PublishedItem], base_url: str, links: PageLinks = NO_LINKS
) -> bytes:
    """The topic as an RSS 2.0 feed, items in the order given."""
    rss = etree.Element(
        "rss", nsmap={"atom": ATOM_NS, "content": CONTENT_NS, "dc": DC_NS}, version="2.0"
    )
    channel = _sub(rss, "channel")
    _sub(channel, "title", _line(topic.title))
    _sub(channel, "link", _output_url(base_url, topic.slug, "html"))
    # <description> is required by RSS 2.0; the title is better than nothing.
    _sub(channel, "description", topic.description or topic.title)
    _sub(
        channel,
        f"{{{ATOM_NS}}}link",
        attrib={
            "href": _output_url(base_url, links.page or topic.slug, "rss"),
            "rel": "self",
            "type": RSS_TYPE,
        },
    )
    _add_page_links(channel, f"{{{ATOM_NS}}}link", links, base_url, "rss")
    # WebSub §4: the hub beside the self link, in the Atom namespace as RSS has no element
    for hub in links.hubs:
        _sub(channel, f"{{{ATOM_NS}}}link", attrib={"href": hub, "rel": "hub"})
    _sub(channel, "lastBuildDate", format_rfc822(_feed_updated(items)))
    _sub(channel, "generator", _generator_label())
    _sub(channel, "docs", RSS_DOCS)
    for item in items:
        _add_rss_item(channel, item)
    return _xml_bytes(rss)


def _add_rss_item(channel: etree._Element, item: PublishedItem) -> None:
    element = _sub(channel, "item")
    # RSS 2.0 wants a title or a description; _title is never empty.
    _sub(element, "title", _title(item))
    link = _link(item)
    if link:
        _sub(element, "link", link)
    _sub(element, "guid", item.id, {"isPermaLink": "false"})
    _sub(element, "pubDate", format_rfc822(item.published))
    # RSS <author> must be an e-mail address; Dublin Core takes a name.
    if _author(item):
        _sub(element, f"{{{DC_NS}}}creator", _author(item))
    for term in _categories(item):
        _sub(element, "category", term)
    # RSS has room for one <source>: the first outlet (the contract).
    feed_url = _source_feed_url(item.sources[0]) if item.sources else None
    if feed_url:
        _sub(element, "source", _source_title(item.sources[0]), {"url": feed_url})
    summary = _summary_html(item)
    if summary:
        _sub(element, "description", summary)
    if item.content_html:
        _sub(element, f"{{{CONTENT_NS}}}encoded", item.content_html)


# --- JSON Feed -----------------------------------------------------------------------


def render_json(
    topic: Topic, items: Sequence[PublishedItem], base_url: str, links: PageLinks = NO_LINKS
) -> bytes:
    """The topic as a JSON Feed 1.1 document, items in the order given."""
    feed: dict[str, Any] = {
        "version": JSON_FEED_VERSION,
        "title": _line(topic.title),
        "home_page_url": _output_url(base_url, topic.slug, "html"),
        "feed_url": _output_url(base_url, topic.slug, "json"),
    }
    if topic.description:
        feed["description"] = clean_text(topic.description)
    if links.older:  # JSON Feed 1.1: the feed of the next (older) items
        feed["next_url"] = _output_url(base_url, links.older, "json")
    if links.hubs:
        feed["hubs"] = [{"type": "WebSub", "url": clean_text(hub)} for hub in links.hubs]
    feed["items"] = [_json_item(item) for item in items]
    # Keys keep insertion order (no sort_keys), which is fixed by the code above.
    text = json.dumps(feed, ensure_ascii=False, indent=2)
    return (text + "\n").encode("utf-8")


def _json_item(item: PublishedItem) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": clean_text(item.id)}
    link = _link(item)
    if link:
        entry["url"] = link
    entry["title"] = _title(item)
    # JSON Feed wants content_html or content_text on every item.
    entry["content_html"] = clean_text(item.content_html) or _summary_html(item)
    if item.excerpt:
        entry["summary"] = clean_text(item.excerpt)
    entry["date_published"] = format_rfc3339(item.published)
    entry["date_modified"] = format_rfc3339(item.updated)
    if _author(item):
        entry["authors"] = [{"name": _author(item)}]
    categories = _categories(item)
    if categories:
        entry["tags"] = categories
    entry["_aggregator"] = {
        "sources": [
            {
                "title": _source_title(source),
                "url": _source_url(source),
                "feed_url": _source_feed_url(source),
            }
            for source in item.sources
        ]
    }
    return entry


# --- HTML pages ----------------------------------------------------------------------


def _html_page(
    title: str, alternates: Iterable[tuple[str, str, str]]
) -> tuple[etree._Element, etree._Element]:
    """A page skeleton: (root, body). `alternates` are (type, title, href) for the head."""
    root = etree.Element("html", lang="en")
    head = _sub(root, "head")
    _sub(head, "meta", attrib={"charset": "utf-8"})
    _sub(
        head, "meta", attrib={"name": "viewport", "content": "width=device-width, initial-scale=1"}
    )
    _sub(head, "meta", attrib={"name": "generator", "content": f"{GENERATOR_NAME} {__version__}"})
    _sub(head, "title", title)
    for media_type, link_title, href in alternates:
        _sub(
            head,
            "link",
            attrib={"rel": "alternate", "type": media_type, "title": link_title, "href": href},
        )
    _sub(head, "style", _PAGE_CSS)
    body = _sub(root, "body")
    return root, body


def _add_footer(body: etree._Element, as_of: datetime | None = None) -> None:
    """The generator's credit; with `as_of`, first when the page's times were told."""
    footer = _sub(body, "footer")
    if as_of is not None:
        updated = _sub(footer, "p", "Updated ", {"class": "updated"})
        stamp = _sub(updated, "time", format_human(as_of))
        stamp.set("datetime", format_rfc3339(as_of))
        stamp.tail = (
            ", when its stories last changed. The page is rewritten on each change, and its"
            " times (\u201c2 h ago\u201d) are as of then; days are UTC days."
        )
    _sub(footer, "p", "Generated by ").append(
        _anchor(f"{GENERATOR_NAME} {__version__}", PROJECT_URL)
    )


def _anchor(text: str, href: str | None, rel: str | None = None) -> etree._Element:
    anchor = etree.Element("a")
    if href:
        anchor.set("href", clean_text(href))
    if rel:
        anchor.set("rel", rel)
    anchor.text = clean_text(text)
    return anchor


def _append_inline(parent: etree._Element, child: etree._Element, tail: str = "") -> None:
    child.tail = clean_text(tail) or None
    parent.append(child)


def _html_bytes(root: etree._Element) -> bytes:
    return etree.tostring(
        root, method="html", encoding="utf-8", doctype="<!DOCTYPE html>", pretty_print=True
    )


def _feeds_of(topic: Topic) -> list[tuple[str, str, str]]:
    """(media type, label, file name) of the topic's subscribable formats."""
    return [
        (f.media_type, f.label, f.name(topic.slug)) for f in TOPIC_FORMATS if f.label is not None
    ]


def _feed_alternates(topic: Topic) -> list[tuple[str, str, str]]:
    title = _line(topic.title)
    return [(kind, f"{title} ({label})", name) for kind, label, name in _feeds_of(topic)]


def _add_feed_nav(parent: etree._Element, topic: Topic, label: str | None = None) -> etree._Element:
    nav = _sub(parent, "nav", label)
    feeds = _feeds_of(topic)
    for index, (_, label, name) in enumerate(feeds):
        separator = " · " if index < len(feeds) - 1 else ""
        _append_inline(nav, _anchor(label, name), separator)
    return nav


def render_html(
    topic: Topic,
    items: Sequence[PublishedItem],
    base_url: str,
    links: PageLinks = NO_LINKS,
    *,
    now: datetime | None = None,
) -> bytes:
    """The topic as a page for a person reading in a browser: the stories grouped by day,
    newest first, each with its outlet (and icon), its time, its excerpt, its lead image
    and the other outlets that carry it; links to the feeds, a search form, the older and
    newer pages. One inline stylesheet, no script; links relative, so the static copies
    in output_dir work as well as the served ones.

    Times are told relative to `now`, by default the latest change among the items
    (PublishedItem.changed_at): the page is static, rewritten when its stories change, so
    that is when it was rendered, and the footer says so. Rendering stays deterministic.
    """
    del base_url
    reference = to_utc(now) if now is not None else _last_change(items)
    root, body = _html_page(_line(topic.title), _feed_alternates(topic))
    header = _sub(body, "header")
    _sub(header, "h1", _line(topic.title))
    if topic.description:
        _sub(header, "p", topic.description, {"class": "description"})
    nav = _add_feed_nav(header, topic, "Subscribe: ")
    nav[-1].tail = " · "
    nav.append(_anchor("All topics", "index.html"))
    _add_search_form(header, topic)
    main = _sub(body, "main")
    if not items:
        _sub(main, "p", "No items yet.", {"class": "empty"})
    section: etree._Element | None = None
    day: date | None = None
    for item in items:
        published = to_utc(item.published)
        if section is None or published.date() != day:
            day = published.date()
            section = _sub(main, "section", attrib={"class": "day"})
            _sub(section, "h2", format_day(published, reference), {"class": "day"})
        _add_html_item(section, item, reference)
    _add_html_page_nav(body, links)
    _add_footer(body, reference if items else None)
    return _html_bytes(root)


def _last_change(items: Sequence[PublishedItem]) -> datetime:
    """When the latest of `items` last changed: the moment the page shows them as of."""
    return max((to_utc(item.changed_at or item.updated) for item in items), default=EPOCH)


def _add_search_form(parent: etree._Element, topic: Topic) -> None:
    """A GET form to the daemon's /search for this topic (a static copy has none: 404)."""
    form = _sub(
        parent,
        "form",
        attrib={"class": "search", "action": "search", "method": "get", "role": "search"},
    )
    _sub(form, "label", "Search stories", {"for": "q", "class": "visually-hidden"})
    _sub(
        form,
        "input",
        attrib={"type": "search", "id": "q", "name": "q", "placeholder": "Search stories"},
    )
    _sub(form, "input", attrib={"type": "hidden", "name": "topic", "value": topic.slug})
    _sub(form, "button", "Search", {"type": "submit"})


#: a page's own name stem: relative, no scheme, no path (see `_page_href`)
_PAGE_STEM = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def _page_href(stem: str | None) -> str | None:
    """`stem.html`, or None when `stem` is no plain name of ours (a colon could make it a
    scheme, a slash another path)."""
    if stem and _PAGE_STEM.fullmatch(stem):
        return f"{stem}.html"
    return None


def _add_html_page_nav(body: etree._Element, links: PageLinks) -> None:
    newer, older = _page_href(links.newer), _page_href(links.older)
    if not newer and not older:
        return
    nav = _sub(body, "nav", attrib={"class": "pages", "aria-label": "More stories"})
    if newer:
        # an archive page links the first page (see PageLinks.newer): the newest stories
        nav.append(_anchor("← Newest stories", newer, rel="first"))
    else:
        _sub(nav, "span")
    if older:
        nav.append(_anchor("Older stories →", older, rel="next"))


def _add_html_item(parent: etree._Element, item: PublishedItem, now: datetime) -> None:
    article = _sub(parent, "article")
    image = published_url(item.image_url) if item.image_url else None
    if image:
        width, height = THUMB_SIZE
        _sub(article, "img", attrib=_image_attributes(image, "thumb", width, height))
    # Feed text may be right-to-left: each piece of it takes its own direction from its
    # first strong character (dir="auto", which also isolates it), so an Arabic title ends
    # with its "?" on the left and a Hebrew outlet's name does not pull the time or the
    # separators around it into its order.
    heading = _sub(article, "h3", attrib={"dir": "auto"})
    heading.append(_anchor(_title(item), _link(item), rel="noopener"))
    meta = _sub(article, "p", attrib={"class": "meta"})
    if item.sources:
        first = item.sources[0]
        outlet = _anchor(_source_title(first), _source_url(first))
        outlet.set("dir", "auto")
        icon = published_url(first.icon_url) if first.icon_url else None
        if icon:
            mark = etree.Element("img", _image_attributes(icon, "icon", ICON_SIZE, ICON_SIZE))
            mark.tail = outlet.text
            outlet.text = None
            outlet.insert(0, mark)
        _append_inline(meta, outlet, " · ")
    when = _sub(meta, "time", format_relative(item.published, now))
    when.set("datetime", format_rfc3339(item.published))
    when.set("title", format_human(item.published))
    author = _author(item)
    if author:
        when.tail = " · by "
        _sub(meta, "bdi", author)
    # An override or isolate left open would reorder the rest of the page.
    excerpt = without_bidi_embeddings(clean_text(item.excerpt))
    if excerpt:
        _sub(article, "p", excerpt, {"class": "excerpt", "dir": "auto"})
    if len(item.sources) > 1:
        also = _sub(article, "p", "also in: ", {"class": "also"})
        further = item.sources[1:]
        for index, source in enumerate(further):
            separator = ", " if index < len(further) - 1 else ""
            anchor = _anchor(_source_title(source), _source_url(source))
            anchor.set("dir", "auto")
            _append_inline(also, anchor, separator)


def _image_attributes(url: str, role: str, width: int, height: int) -> dict[str, str]:
    """An <img> from a feed: decorative (alt=""), loaded lazily without telling the image's
    host which page it is on, in a box of fixed size so the page does not shift."""
    return {
        "class": role,
        "src": url,
        "alt": "",
        "width": str(width),
        "height": str(height),
        "loading": "lazy",
        "decoding": "async",
        "referrerpolicy": "no-referrer",
    }


def render_index(topics: Sequence[Topic], base_url: str) -> bytes:
    """The front page: every topic with links to its page and feeds, and the OPML."""
    del base_url  # links are relative, as on the topic pages
    alternates = [alt for topic in topics for alt in _feed_alternates(topic)]
    root, body = _html_page("Topics", alternates)
    header = _sub(body, "header")
    _sub(header, "h1", "Topics")
    main = _sub(body, "main")
    if not topics:
        _sub(main, "p", "No topics configured.", {"class": "empty"})
    else:
        listing = _sub(main, "ul", attrib={"class": "topics"})
        for topic in topics:
            entry = _sub(listing, "li")
            heading = _sub(entry, "h2")
            heading.append(_anchor(_line(topic.title) or topic.slug, f"{topic.slug}.html"))
            if topic.description:
                _sub(entry, "p", topic.description, {"class": "description"})
            _add_feed_nav(entry, topic)
    sources = _sub(body, "p", "The configured sources as OPML: ")
    sources.append(_anchor("feeds.opml", "feeds.opml"))
    _add_footer(body)
    return _html_bytes(root)


# --- OPML ----------------------------------------------------------------------------


def render_opml(title: str, sources: Sequence[SourceRef]) -> bytes:
    """The configured feeds as OPML 2.0 (http://opml.org/spec2.opml), in the order given,
    each with its tags as `category`."""
    opml = etree.Element("opml", version="2.0")
    head = _sub(opml, "head")
    _sub(head, "title", title)
    body = _sub(opml, "body")
    for source in sources:
        feed_url = _source_feed_url(source)
        if not feed_url:
            continue  # nothing a reader could subscribe to
        label = _source_title(source)
        attrib = {"type": "rss", "text": label, "title": label, "xmlUrl": feed_url}
        site = published_url(source.url, source.feed_url)
        if site:
            attrib["htmlUrl"] = site
        if source.tags:
            # OPML 2.0's category: comma-separated, slash-delimited; `aggregator import`
            # reads it back as tags
            attrib["category"] = ",".join(f"/{_line(tag)}" for tag in source.tags)
        _sub(body, "outline", attrib=attrib)
    return _xml_bytes(opml)


# --- the formats ---------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    """One published format of a topic: `<slug>.<extension>`. TOPIC_FORMATS is the one
    list that rendering, publishing, serving and the pages' navigation all go through."""

    extension: str
    #: the Content-Type it is served with
    media_type: str
    render: Callable[[Topic, Sequence[PublishedItem], str, PageLinks], bytes]
    #: its name in the pages' navigation and <link rel="alternate">; None for the page itself
    label: str | None = None

    def name(self, slug: str) -> str:
        return f"{slug}.{self.extension}"


TOPIC_FORMATS = (
    Format("atom", ATOM_TYPE, render_atom, "Atom"),
    Format("rss", RSS_TYPE, render_rss, "RSS"),
    Format("json", JSON_FEED_TYPE, render_json, "JSON Feed"),
    Format("html", HTML_TYPE, render_html),
)
#: the site's own files beside the topics' (the topic list and the sources)
SITE_OUTPUTS = {"index.html": HTML_TYPE, "feeds.opml": OPML_TYPE}


def media_type(name: str) -> str:
    """The Content-Type a published file is served with, by its name."""
    if name in SITE_OUTPUTS:
        return SITE_OUTPUTS[name]
    extension = name.rpartition(".")[2]
    return next(
        (f.media_type for f in TOPIC_FORMATS if f.extension == extension),
        "application/octet-stream",
    )


def render_topic(
    topic: Topic, items: Sequence[PublishedItem], base_url: str, links: PageLinks = NO_LINKS
) -> dict[str, bytes]:
    """Every format of one page of a topic: file name → bytes, the first page as
    `<slug>.<ext>`, an archive page by its own stem (`links.page`)."""
    stem = links.page or topic.slug
    return {f.name(stem): f.render(topic, items, base_url, links) for f in TOPIC_FORMATS}


def output_names(topics: Sequence[Topic]) -> list[str]:
    """Every file name published for these topics, the site's own files first."""
    return [*SITE_OUTPUTS, *(f.name(t.slug) for t in topics for f in TOPIC_FORMATS)]


# --- search results --------------------------------------------------------------------
# Kept apart from the topic pages: a search is rendered on request, never written to
# output_dir, and its links carry the query (`search.atom?q=…`).

#: the search's formats: extension → media type (the page itself is `/search`)
SEARCH_FORMATS = {"atom": ATOM_TYPE, "rss": RSS_TYPE, "json": JSON_FEED_TYPE, "html": HTML_TYPE}
#: shown under the search form
SEARCH_HELP = (
    'Words must all match; "a phrase" in quotes; word* for a prefix; -word to exclude; '
    "OR between two terms for either."
)
#: a search's synthetic topic: what the topic renderers are given
SEARCH_SLUG = "search"


def search_result(item: PublishedItem, score: float) -> dict[str, Any]:
    """One result as `aggregator search --json` prints it (and its text output shows),
    through the same gates as every published field."""
    return {
        "id": clean_text(item.id),
        "title": _title(item),
        "url": _link(item),
        "published": format_rfc3339(item.published),
        "source": _source_title(item.sources[0]) if item.sources else None,
        "excerpt": without_bidi_embeddings(clean_text(item.excerpt)),
        "score": float(f"{score:.6g}"),
    }


def _search_query(parameters: Sequence[tuple[str, str]]) -> str:
    from urllib.parse import urlencode

    return urlencode([(name, clean_text(value)) for name, value in parameters])


def search_url(base_url: str, extension: str, parameters: Sequence[tuple[str, str]]) -> str:
    """`…/search.atom?q=…`: where a search in one format is served (`html`: `/search`)."""
    path = SEARCH_SLUG if extension == "html" else f"{SEARCH_SLUG}.{extension}"
    return f"{clean_text(base_url)}{path}?{_search_query(parameters)}"


def render_search_feed(
    extension: str,
    title: str,
    items: Sequence[PublishedItem],
    base_url: str,
    parameters: Sequence[tuple[str, str]],
) -> bytes:
    """Search results as an Atom, RSS or JSON feed (subscribable: a reader polling it gets
    new matches). The topic renderers make it; its self and page links then get the query,
    which a topic's links never carry."""
    topic = Topic(slug=SEARCH_SLUG, title=title, description="Stored stories, best match first")
    self_url = search_url(base_url, extension, parameters)
    page_url = search_url(base_url, "html", parameters)
    if extension == "json":
        feed = json.loads(render_json(topic, items, base_url))
        feed["home_page_url"] = page_url
        feed["feed_url"] = self_url
        return (json.dumps(feed, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    if extension == "atom":
        root = etree.fromstring(render_atom(topic, items, base_url))
        root.find(_atom("id")).text = self_url  # type: ignore[union-attr]
        for link in root.findall(_atom("link")):
            if link.get("rel") in ("self", "alternate"):
                link.set("href", self_url if link.get("rel") == "self" else page_url)
        return _xml_bytes(root)
    if extension == "rss":
        root = etree.fromstring(render_rss(topic, items, base_url))
        channel = root.find("channel")
        assert channel is not None
        channel.find("link").text = page_url  # type: ignore[union-attr]
        channel.find(f"{{{ATOM_NS}}}link").set("href", self_url)  # type: ignore[union-attr]
        return _xml_bytes(root)
    raise ValueError(f"no search feed format {extension!r}")


def render_search_html(
    title: str,
    items: Sequence[PublishedItem],
    topics: Sequence[Topic],
    parameters: Sequence[tuple[str, str]],
    error: str | None = None,
) -> bytes:
    """The search page: the form (filled with `parameters`), then the results, or `error`
    (a bad query), or only the form when nothing was asked. Links are relative, as on the
    topic pages; the feeds of this search are advertised when there is one to subscribe to."""
    values = dict(parameters)
    asked = bool(values.get("q")) and error is None
    feeds = (
        [
            (kind, label, f"search.{ext}?{_search_query(parameters)}")
            for ext, kind, label in (
                ("atom", ATOM_TYPE, "Atom"),
                ("rss", RSS_TYPE, "RSS"),
                ("json", JSON_FEED_TYPE, "JSON Feed"),
            )
        ]
        if asked
        else []
    )
    root, body = _html_page(_line(title), [(k, f"{_line(title)} ({n})", h) for k, n, h in feeds])
    header = _sub(body, "header")
    _sub(header, "h1", _line(title))
    form = _sub(header, "form", attrib={"action": "search", "method": "get", "role": "search"})
    _sub(
        form,
        "input",
        attrib={
            "type": "search",
            "name": "q",
            "value": values.get("q", ""),
            "aria-label": "Search",
            "maxlength": "500",
            "required": "required",
        },
    )
    choice = _sub(form, "select", attrib={"name": "topic", "aria-label": "Topic"})
    _sub(choice, "option", "All topics", {"value": ""})
    for topic in topics:
        option = _sub(choice, "option", _line(topic.title) or topic.slug, {"value": topic.slug})
        if values.get("topic") == topic.slug:
            option.set("selected", "selected")
    _sub(
        form,
        "input",
        attrib={
            "name": "since",
            "value": values.get("since", ""),
            "placeholder": "since, e.g. 7d",
            "size": "10",
            "aria-label": "Published within",
        },
    )
    _sub(form, "button", "Search", {"type": "submit"})
    _sub(header, "p", SEARCH_HELP, {"class": "meta"})
    if error is not None:
        _sub(header, "p", error, {"class": "error", "role": "alert"})
    if feeds:
        nav = _sub(header, "nav", "Follow this search: ")
        for index, (_, label, href) in enumerate(feeds):
            _append_inline(nav, _anchor(label, href), " · " if index < len(feeds) - 1 else "")
    main = _sub(body, "main")
    if asked and not items:
        _sub(main, "p", "No stories match.", {"class": "empty"})
    reference = _last_change(items)  # times told as on the topic pages
    for item in items:
        _add_html_item(main, item, reference)
    _sub(body, "p").append(_anchor("All topics", "index.html"))
    _add_footer(body)
    return _html_bytes(root)

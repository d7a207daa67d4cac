"""Feed discovery in a web page: the feeds it advertises and the usual places. No I/O.

`feed_links` reads `<link rel="alternate" type="…" href="…">` (the RSS autodiscovery
convention, https://www.rssboard.org/rss-autodiscovery, and its Atom and JSON Feed
kin), relative hrefs resolved against the page's `<base href>` and URL. `usual_urls`
lists the paths feeds are usually found at on a site, for a page that advertises none.
`aggregator add` (manage.py) does the fetching.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from lxml import etree

from aggregator.config import feed_url_problem
from aggregator.text import single_line
from aggregator.urls import canonical_url, http_url

#: advertised types taken for feeds, in order of preference. `application/json` comes
#: last: WordPress also advertises its REST API under it (`/wp-json/wp/v2/pages/12`)
FEED_TYPES = (
    "application/rss+xml",
    "application/atom+xml",
    "application/feed+json",
    "application/json",
)
#: where feeds usually are when a page advertises none (WordPress, Hugo, Jekyll, Ghost…)
USUAL_PATHS = ("/feed", "/rss", "/atom.xml", "/index.xml", "/feed.json", "/rss.xml")


@dataclass(frozen=True)
class Candidate:
    """A feed a page points at."""

    url: str
    #: the link's title ("Example » Comments Feed"), one line; "" when none
    title: str = ""
    #: the advertised media type
    media_type: str = ""


def feed_links(html: bytes, page_url: str, encoding: str | None = None) -> list[Candidate]:
    """The feeds a page advertises, in order of preference (RSS, Atom and JSON Feed in
    document order, then plain `application/json`), each URL once; [] when the bytes are
    no HTML at all. Only http(s) URLs are returned. `encoding`: the charset the server
    named, if any (else the page's <meta charset>, else a guess)."""
    root = _parse_html(html, encoding)
    if root is None:
        return []
    base = page_url
    for element in root.iter("base"):
        href = element.get("href")
        if href:
            base = http_url(href.strip(), page_url) or page_url
            break
    found: list[tuple[int, int, Candidate]] = []
    seen: set[str] = set()
    for position, element in enumerate(root.iter("link")):
        rel = (element.get("rel") or "").lower().split()
        media_type = (element.get("type") or "").split(";")[0].strip().lower()
        href = (element.get("href") or "").strip()
        if "alternate" not in rel or media_type not in FEED_TYPES or not href:
            continue
        url = http_url(href, base)
        # one that could not be a feed's url: (control characters: a page's escape
        # sequences must not reach `add`'s terminal either)
        if url is None or feed_url_problem(url) is not None:
            continue
        key = canonical_url(url)
        if key in seen:
            continue
        seen.add(key)
        title = single_line(element.get("title"))
        rank = 1 if media_type == "application/json" else 0
        found.append((rank, position, Candidate(url, title, media_type)))
    return [candidate for _, _, candidate in sorted(found, key=lambda f: (f[0], f[1]))]


def usual_urls(page_url: str) -> list[str]:
    """The usual feed paths on the page's site (scheme, host and port; no credentials)."""
    parts = urlsplit(page_url)
    host = parts.netloc.rpartition("@")[2]
    return [urlunsplit((parts.scheme, host, path, "", "")) for path in USUAL_PATHS]


def _parse_html(html: bytes, encoding: str | None) -> etree._Element | None:
    if not html.strip():
        return None
    if encoding is not None:
        try:
            encoding = codecs.lookup(encoding).name
        except LookupError:
            encoding = None
    # no network, no huge text nodes: a page is read for its <link>s, nothing else
    parser = etree.HTMLParser(
        encoding=encoding, no_network=True, huge_tree=False, remove_comments=True
    )
    try:
        root = etree.fromstring(html, parser)
    except (etree.ParserError, etree.XMLSyntaxError, ValueError):
        return None
    return root

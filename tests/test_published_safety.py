"""`aggregator poll --once` over hostile feeds, then every published byte read back.

Two feeds served from 127.0.0.1: one fetched with a password in its URL (userinfo; the
test server answers whatever the credentials) whose channel and items link to
`javascript:`, `vbscript:` and `data:` URLs, some padded so that a browser would trim them
into live ones; the other fetched with an `?api_key=` and echoing that key in its own
links and with links in its text relative to the feed's own URL ("#notes", ""), with
no title of its own (so it is named by its URL). Every URL in every
published file must be http(s), and neither the password nor the key may appear in any
of them; the items themselves stay, with their ids and text.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import feedparser
import lxml.html
import pytest
from lxml import etree

from tests.feedserver import FeedServer
from tests.test_render import AtomSchema, convert_atom_rnc, strings

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "Pw7sEcretQ2"
TOKEN = "Tk9ApiKeyZ4"
BASE_URL = "http://127.0.0.1:8080/"
PUBLISHED = ("all.atom", "all.rss", "all.json", "all.html", "index.html", "feeds.opml")
ACTIVE = re.compile(rb"(java|vb)script:|data:(text|image)", re.IGNORECASE)
BIDI_EMBEDDINGS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"

HOSTILE_RSS = """<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/"
  xmlns:media="http://search.yahoo.com/mrss/"><channel>
<title>Hostile &#x202E;Outlet</title>
<link>javascript:alert('site')</link>
<description>Links that run code</description>
<image><url>javascript:alert('icon')</url><title>x</title><link>javascript:x</link></image>
<item><guid isPermaLink="false">h1</guid><title>Plain javascript link</title>
  <media:thumbnail url="javascript:alert('thumbnail')"/>
  <link>javascript:alert(1)</link><description>First story about envoys.</description>
  <pubDate>Mon, 02 Mar 2026 10:00:00 GMT</pubDate></item>
<item><guid isPermaLink="false">h2</guid><title>A vbscript link</title>
  <enclosure url="data:image/svg+xml;base64,PHN2Zy8+" type="image/svg+xml" length="9"/>
  <link>vbscript:msgbox(2)</link><description>Second story about sanctions.</description>
  <pubDate>Mon, 02 Mar 2026 09:00:00 GMT</pubDate></item>
<item><guid isPermaLink="false">h3</guid><title>A data link</title>
  <link>data:text/html;base64,PHNjcmlwdD5hbGVydCgzKTwvc2NyaXB0Pg==</link>
  <description>Third story about a harbour.&lt;img src="data:image/png;base64,iVBORw0KGgo="
  width="640" height="480"&gt;</description>
  <pubDate>Mon, 02 Mar 2026 08:00:00 GMT</pubDate></item>
<item><guid isPermaLink="false">h4</guid><title>Padded into a live link</title>
  <link> &#9;javascript:alert(4)</link><description>Fourth story about rail.</description>
  <pubDate>Mon, 02 Mar 2026 07:00:00 GMT</pubDate></item>
<item><guid isPermaLink="false">h5</guid><title>Split by a newline</title>
  <link>java&#10;script:alert(5)</link><description>Fifth story about fishing.</description>
  <pubDate>Mon, 02 Mar 2026 06:00:00 GMT</pubDate></item>
<item><guid isPermaLink="false">h6</guid><title>Invoice &#x202E;gpj.exe</title>
  <media:content url="/images/ok.jpg?id=6" medium="image"/>
  <link>/articles/ok?id=6</link><description>Sixth story, a relative link.</description>
  <dc:creator>&lt;b onclick=alert(6)&gt;Bob&lt;/b&gt;</dc:creator>
  <pubDate>Mon, 02 Mar 2026 05:00:00 GMT</pubDate></item>
<item><guid isPermaLink="false">h7</guid><link>javascript:alert(7)</link>
  <pubDate>Mon, 02 Mar 2026 04:00:00 GMT</pubDate></item>
</channel></rss>
"""

KEYED_RSS = """<?xml version="1.0" encoding="utf-8"?>
<rss version="2.0"><channel>
<link>{base}/keyed-site?api_key={token}&amp;lang=en</link>
<description>A feed behind an API key, with no title</description>
<item><guid isPermaLink="false">k1</guid><title>Keyed story</title>
  <link>{base}/story?id=9&amp;api_key={token}</link>
  <description>A story from the keyed feed about a summit. &lt;a href="#notes"&gt;Notes&lt;/a&gt;
  and &lt;a href=""&gt;the feed itself&lt;/a&gt;.</description>
  <pubDate>Mon, 02 Mar 2026 03:00:00 GMT</pubDate></item>
</channel></rss>
"""


@pytest.fixture
def published(tmp_path: Path) -> Iterator[tuple[dict[str, bytes], str]]:
    with FeedServer() as server:
        base = server.base_url.rstrip("/")
        server.set("/hostile.rss", HOSTILE_RSS.encode())
        server.set("/keyed.xml", KEYED_RSS.format(base=base, token=TOKEN).encode())
        credentialed = base.replace("http://", f"http://reader:{PASSWORD}@") + "/hostile.rss"
        keyed = f"{base}/keyed.xml?api_key={TOKEN}"
        config = tmp_path / "feeds.yaml"
        config.write_text(
            "settings:\n  per_host_spacing: 0\n"
            "  database: agg.db\n  output_dir: public\n  retention: 36500d\n"
            f'feeds:\n  - url: "{credentialed}"\n  - url: "{keyed}"\n'
        )
        env = {k: v for k, v in os.environ.items() if k != "AGGREGATOR_CONFIG"}
        run = subprocess.run(
            [sys.executable, "-m", "aggregator", "-c", str(config), "poll", "--once"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**env, "PYTHONPATH": str(REPO)},
        )
        assert run.returncode == 0, run.stderr
        assert len(server.requests_to("/hostile.rss")) == 1
        assert len(server.requests_to("/keyed.xml")) == 1
        public = tmp_path / "public"
        yield {name: (public / name).read_bytes() for name in PUBLISHED}, base


def xml_urls(document: bytes) -> list[str]:
    """Every URL of an Atom, RSS or OPML document: link attributes, RSS <link> and <docs>,
    Atom URIs and the feed URL that is an atom:source's id."""
    urls = []
    for element in etree.fromstring(document).iter(etree.Element):
        for name in ("href", "url", "xmlUrl", "htmlUrl", "src", "uri"):
            if element.get(name) is not None:
                urls.append(element.get(name, ""))
        tag = etree.QName(element)
        parent = element.getparent()
        in_source = parent is not None and etree.QName(parent).localname == "source"
        if tag.localname in ("link", "docs", "uri") or (tag.localname == "id" and in_source):
            if element.text and element.text.strip():
                urls.append(element.text)
    return urls


JSON_URL_KEYS = {"url", "feed_url", "home_page_url", "next_url", "external_url", "icon"}


def json_urls(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [
            url
            for key, inner in value.items()
            for url in ([inner] if key in JSON_URL_KEYS else json_urls(inner))
        ]
    if isinstance(value, list):
        return [url for inner in value for url in json_urls(inner)]
    return []


def urls_of(name: str, document: bytes) -> list[str]:
    if name.endswith(".json"):
        return json_urls(json.loads(document))
    if name.endswith(".html"):
        page = lxml.html.document_fromstring(document)
        # the page's own links are relative: as a browser resolves them
        return [
            urljoin(BASE_URL, value)
            for value in strings(page, "//@href | //@src | //@action | //@cite")
        ]
    return xml_urls(document)


def test_every_published_url_is_http_and_no_credential_is_published(
    published: tuple[dict[str, bytes], str],
) -> None:
    files, base = published
    for name, document in files.items():
        urls = urls_of(name, document)
        assert urls, name
        for url in urls:
            parts = urlsplit(url)
            assert parts.scheme in ("http", "https") and parts.hostname, (name, url)
            assert "@" not in parts.netloc, (name, url)
        assert not ACTIVE.search(document), (name, ACTIVE.search(document))
        assert PASSWORD.encode() not in document, name
        assert TOKEN.encode() not in document, name

    # the feeds are still listed, under the URLs a reader can use
    opml = etree.fromstring(files["feeds.opml"])
    assert sorted(strings(opml, "//outline/@xmlUrl")) == [
        f"{base}/hostile.rss",
        f"{base}/keyed.xml",
    ]
    sites = {outline.get("xmlUrl"): outline.get("htmlUrl") for outline in opml.iter("outline")}
    assert sites[f"{base}/keyed.xml"] == f"{base}/keyed-site?lang=en"

    # images: the javascript:/data: ones (a thumbnail, an enclosure, one in the text, the
    # feed's icon) are gone; the relative one is resolved against the feed, without its
    # password, and loaded lazily without a referrer
    page = lxml.html.document_fromstring(files["all.html"])
    images = page.findall(".//img")
    assert [image.get("src") for image in images] == [f"{base}/images/ok.jpg?id=6"]
    [image] = images
    assert (image.get("loading"), image.get("referrerpolicy"), image.get("alt")) == (
        "lazy",
        "no-referrer",
        "",
    )


def test_items_without_a_usable_link_keep_their_id_and_text(
    published: tuple[dict[str, bytes], str],
) -> None:
    files, base = published
    feed = json.loads(files["all.json"])
    by_title = {item["title"]: item for item in feed["items"]}
    assert len(feed["items"]) == 8
    for title in (
        "Plain javascript link",
        "A vbscript link",
        "A data link",
        "Padded into a live link",
        "Split by a newline",
        "(untitled)",
    ):
        assert "url" not in by_title[title], title
        assert by_title[title]["id"].startswith("urn:uuid:")
    assert by_title["Plain javascript link"]["content_html"] == "First story about envoys."
    # relative links resolve against the feed, without its credentials
    assert by_title["Invoice gpj.exe"]["url"] == f"{base}/articles/ok?id=6"
    assert by_title["Keyed story"]["url"] == f"{base}/story?id=9"
    # links in the text relative to the feed's URL resolve to it without its key
    keyed_html = by_title["Keyed story"]["content_html"]
    assert f'<a href="{base}/keyed.xml#notes">Notes</a>' in keyed_html
    assert f'<a href="{base}/keyed.xml">the feed itself</a>' in keyed_html
    # the feed without a title is named by its URL, minus the key
    assert by_title["Keyed story"]["_aggregator"]["sources"][0]["title"] == f"{base}/keyed.xml"

    atom = feedparser.parse(files["all.atom"])
    assert not atom.bozo
    assert AtomSchema(convert_atom_rnc()).errors(files["all.atom"]) == []
    for entry in atom.entries:
        if not entry.get("link"):
            assert entry.content, entry.title
    rss = etree.fromstring(files["all.rss"])
    for item in rss.iter("item"):
        assert (item.findtext("title") or "").strip() or (item.findtext("description") or "")


def test_names_and_titles_read_as_plain_text(published: tuple[dict[str, bytes], str]) -> None:
    files, _ = published
    for name, document in files.items():
        assert not set(BIDI_EMBEDDINGS) & set(document.decode("utf-8")), name
    text = "".join(strings(lxml.html.document_fromstring(files["all.html"]), "//text()"))
    assert "by Bob" in text
    assert b"&amp;lt;" not in files["all.html"] and b"onclick" not in files["all.html"]
    assert "Hostile Outlet" in text
